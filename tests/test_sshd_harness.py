"""The sshd harness itself: a real sshd answers a real ssh with the key made for it."""

import subprocess

import pytest

from tests.sshd import Sshd, SshdUnavailable


def test_real_sshd_runs_a_command(tmp_path):
    try:
        s = Sshd(tmp_path / "sshd").start()
    except SshdUnavailable as exc:
        pytest.skip(str(exc))
    try:
        out = subprocess.run(
            s.ssh_args("echo", "TEST", "PASSED"), capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "TEST PASSED"
    finally:
        s.close()

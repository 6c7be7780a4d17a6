"""``noports quickstart`` as a user runs it: a subprocess, checked by its output, its exit code
and by /proc afterwards (no process carrying its marker variable may remain)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from noports.quickstart import MARK_ENV, PAGE
from noports.quickstart.rig import Supervisor, find_sshd

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(150)
TOOLS = ("srvd", "sshnpd", "npt", "sshnp")


def marked(marker: str) -> list[int]:
    """PIDs of live processes whose environment carries the quickstart marker."""
    want = f"{MARK_ENV}={marker}".encode()
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
        except OSError:
            continue
        if want in env:
            pids.append(int(d))
    return pids


def wait_gone(marker: str, timeout: float = 5.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := marked(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def qs_env(marker: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NOPORTS_")}
    env["PYTHONPATH"] = str(REPO)
    env[MARK_ENV] = marker
    return env


def quickstart(*args: str, marker: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "noports.cli.noports", "quickstart", *args],
        env=qs_env(marker),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=str(REPO),
    )


@pytest.mark.skipif(
    any(importlib.util.find_spec(f"noports.cli.{t}") is None for t in TOOLS),
    reason="srvd/sshnpd/npt/sshnp not in this checkout",
)
def test_quickstart_exit_then_rerun_and_sigterm(tmp_path: Path) -> None:
    data = tmp_path / "qs"
    marker = uuid.uuid4().hex
    p = quickstart("--exit", "--data-dir", str(data), marker=marker)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert re.search(r"^\[ok\] embedded server .* on 127\.0\.0\.1:\d+$", out, re.M)
    for a in ("@qs_client", "@qs_device", "@qs_relay"):
        assert f"[ok] {a}: activated with a one-time secret" in out
    assert re.search(rf"^\[ok\] npt check: HTTP 200, {len(PAGE)} bytes fetched", out, re.M)
    ssh = find_sshd() is not None
    if ssh:
        assert re.search(r"^\[ok\] sshnp check: .*TEST PASSED$", out, re.M)
    assert "[ok] all checks passed" in out
    assert "Press Ctrl-C" not in out  # --exit does not wait
    assert wait_gone(marker) == []
    # nothing lands in the caller's real HOME; keys live under the data dir, private
    keys = data / "home" / ".atsign" / "keys" / "@qs_client_key.atKeys"
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    # the activation secrets went through a pipe into memory: never into a log file
    logs = list((data / "logs").iterdir())
    assert {p.name for p in logs} >= {"server.log", "srvd.log", "sshnpd.log", "npt.log"}
    assert not any("activation secret" in p.read_text(errors="replace") for p in logs)

    # a second run on the same data dir reuses the atSigns, keeps running, tunnel usable
    marker2 = uuid.uuid4().hex
    p = quickstart("--data-dir", str(data), marker=marker2)
    lines: list[str] = []
    done = threading.Event()

    def pump() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.append(line)
            if "Press Ctrl-C" in line:
                done.set()
        done.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert done.wait(120), "".join(lines)
        text = "".join(lines)
        assert "Press Ctrl-C to stop everything." in text, text
        assert "[ok] @qs_client: reusing the keys" in text
        assert re.search(r"^  export NOPORTS_ROOT=127\.0\.0\.1:\d+$", text, re.M)
        assert re.search(r"^  export NOPORTS_CA_FILE=\S+$", text, re.M)
        npt_line = re.search(
            r"^  npt -f @qs_client -t @qs_device -r @qs_relay -d quickstart "
            r"-p \d+ -k \S+$",
            text,
            re.M,
        )
        assert npt_line, text
        if ssh:
            assert re.search(r"^  sshnp -f @qs_client .* -i \S+ -u \S+ .*-k \S+$", text, re.M)
        port = re.search(r"curl http://127\.0\.0\.1:(\d+)/\)", text)
        assert port, text
        with urllib.request.urlopen(f"http://127.0.0.1:{port.group(1)}/", timeout=15) as r:
            assert r.read() == PAGE
        assert marked(marker2), "children should be running"
        p.send_signal(signal.SIGTERM)
        assert p.wait(60) == 0
        assert p.stderr is not None
        assert "stopped (SIGTERM)" in p.stderr.read()
        assert wait_gone(marker2) == []
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def test_quickstart_failing_step_cleans_up(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    # a step that cannot finish in time: one clear line, the timeout exit code, no strays
    p = quickstart("--exit", "--timeout", "0.01", "--data-dir", str(tmp_path / "d"), marker=marker)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 5, (out, err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("noports quickstart: error: server was not ready"), err
    assert wait_gone(marker) == []
    (tmp_path / "file").write_text("x")
    p = quickstart("--exit", "--data-dir", str(tmp_path / "file"), marker=marker)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2 and "is not a directory" in err


def test_supervisor_stops_grandchildren(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex
    sup = Supervisor({"PATH": os.environ["PATH"], MARK_ENV: marker}, tmp_path)
    child, m = sup.spawn(
        "tree", ["sh", "-c", "sleep 300 & sleep 300 & echo up; wait"], ready=r"^up$", timeout=10
    )
    assert m is not None
    assert len(marked(marker)) >= 3  # sh and two sleeps
    sup.close()
    assert wait_gone(marker) == []
    assert child.popen.returncode is not None
    assert (tmp_path / "tree.log").read_text() == "up\n"

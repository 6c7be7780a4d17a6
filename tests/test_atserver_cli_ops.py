"""``noports server`` operation: one server per data dir (the second names the first's PID
and leaves its state alone), a restart keeps its port, ``--output json`` on admin commands."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures_at import REPO, AtServerProcess, _env

pytestmark = pytest.mark.timeout(90)


def _noports(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "noports.cli.noports", *args], cwd=str(REPO),
                          env=_env(), capture_output=True, text=True, timeout=timeout)


def _start(data: Path, *extra: str) -> tuple[subprocess.Popen[str], dict[str, object]]:
    p = subprocess.Popen([sys.executable, "-m", "noports.cli.noports", "server", "--data-dir",
                          str(data), "--output", "json", *extra], cwd=str(REPO), env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout is not None
    line = p.stdout.readline()
    assert line, p.stderr.read() if p.stderr else ""
    return p, json.loads(line)


def _stop(p: subprocess.Popen[str]) -> None:
    p.send_signal(signal.SIGTERM)
    assert p.wait(20) == 0


def test_second_server_on_a_data_dir_refuses(
    make_at_server: Callable[..., AtServerProcess],
) -> None:
    srv = make_at_server()
    r = _noports("server", "--data-dir", str(srv.data_dir), "--port", "0")
    assert r.returncode == 2, r.stderr
    assert f"another noports server (pid {srv.pid}) is running on {srv.data_dir}" in r.stderr
    state = json.loads((srv.data_dir / "server.json").read_text())
    assert state["pid"] == srv.pid  # the first one's state is untouched


def test_restart_keeps_the_port_and_admin_json(tmp_path: Path) -> None:
    data = tmp_path / "data"
    p, info = _start(data)
    root = info["root"]
    _stop(p)
    p, info = _start(data)
    try:
        assert info["root"] == root  # an exported NOPORTS_ROOT stays valid
    finally:
        _stop(p)
    p, info = _start(data, "--port", "0")  # told otherwise: a new free port
    _stop(p)
    r = _noports("server", "add", "@jsonadd", "--data-dir", str(data), "--output", "json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["atsign"] == "@jsonadd" and out["added"] is True and len(out["secret"]) > 8
    r = _noports("server", "remove", "@jsonadd", "--data-dir", str(data), "--output", "json")
    assert r.returncode == 0 and json.loads(r.stdout) == {"atsign": "@jsonadd", "removed": True}

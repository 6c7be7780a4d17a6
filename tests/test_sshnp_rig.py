"""The rig for the sshnp/npt end-to-end tests: real ``srvd``, real ``sshnpd``, real sshd.

``rig`` (function scope) starts, in the test's private HOME on the shared embedded server:
a relay ``srvd -a @relay -i 127.0.0.1 --bind 127.0.0.1`` and a real OpenSSH sshd; daemons are
started per test with ``rig.daemon(device, *flags)`` (ready when the official harness regex
``Monitor .*monitor started`` appears). ``rig.sshnp(...)`` / ``rig.npt(...)`` run the clients
with ``-f/-t/-r`` filled in. The one test here is the official ``noop`` rig sanity check.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fixtures_np import NpEnv, Proc

DAEMON_READY = r"Monitor .*monitor started"
RELAY_READY = r"ready: monitor started"
CHECK = ["echo", "TEST", "PASSED"]


class Rig:
    def __init__(self, env: NpEnv) -> None:
        self.env = env
        self.client = env.atsign("client")
        self.device_atsign = env.atsign("device")
        self.relay = env.atsign("relay")
        self.sshd = env.sshd()
        self.user = self.sshd.user
        self.srvd: Proc = env.spawn(
            "srvd",
            "-a",
            self.relay,
            "-i",
            "127.0.0.1",
            "--bind",
            "127.0.0.1",
            "--drain-seconds",
            "0",
            "-v",
            ready=RELAY_READY,
            timeout=30,
        )
        self.daemons: dict[str, Proc] = {}

    def daemon(
        self, device: str, *flags: str, manager: str | None = None, permit: str | None = None
    ) -> Proc:
        """Start (or, when it already runs in this rig, reuse) the daemon for ``device``."""
        running = self.daemons.get(device)
        if running is not None and running.popen.poll() is None:
            return running
        po = permit if permit is not None else f"localhost:{self.sshd.port}"
        p = self.env.spawn(
            "sshnpd",
            "-a",
            self.device_atsign,
            "-m",
            manager or self.client,
            "-d",
            device,
            "--local-sshd-port",
            str(self.sshd.port),
            "--po",
            po,
            "-v",
            *flags,
            ready=DAEMON_READY,
            timeout=30,
        )
        self.daemons[device] = p
        return p

    def base(self, device: str, frm: str | None = None) -> list[str]:
        return ["-f", frm or self.client, "-t", self.device_atsign, "-r", self.relay, "-d", device]

    def sshnp(
        self, device: str, *args: str, timeout: float = 45.0, frm: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.env.run("sshnp", *self.base(device, frm), *args, timeout=timeout)

    def npt(
        self, device: str, *args: str, timeout: float = 45.0, frm: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self.env.run("npt", *self.base(device, frm), *args, timeout=timeout)

    def ssh_opts(self) -> list[str]:
        """Options for running a printed ssh command non-interactively in this HOME."""
        return [
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            "-o",
            f"UserKnownHostsFile={self.env.home / '.ssh' / 'known_hosts'}",
        ]

    def run_cmd(
        self, argv: list[str], timeout: float = 30.0, **kw
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            env=self.env.env,
            cwd=str(self.env.home),
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )


@pytest.fixture
def rig(np_env: NpEnv) -> Iterator[Rig]:
    yield Rig(np_env)


def module_rig(at_server, tmp_path_factory) -> Iterator[Rig]:
    """Body of a module-scoped ``rig`` fixture: one HOME, relay and sshd per test module
    (tests use distinct device names, or share ``dev1`` with default flags)."""
    home = tmp_path_factory.mktemp("rig") / "home"
    home.mkdir(mode=0o700)
    env = NpEnv(at_server, home, secrets.token_hex(3))
    try:
        yield Rig(env)
    finally:
        env.close()


def banner_after_connect(port: int, timeout: float = 10.0) -> float:
    """Connect to 127.0.0.1:port and return when the first byte (ssh banner) arrived."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.settimeout(timeout)
        data = s.recv(64)
        assert data.startswith(b"SSH-"), data
    return time.monotonic()


def client_processes_without_secrets() -> int:
    """Check every live sshnp/npt process: no relay auth line, key or secret in its argv or
    environment (T6). Returns how many were checked."""
    checked = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmdline = (d / "cmdline").read_bytes()
            environ = (d / "environ").read_bytes()
        except OSError:
            continue
        if b"noports.cli.sshnp" not in cmdline and b"noports.cli.npt" not in cmdline:
            continue
        checked += 1
        names = {e.split(b"=", 1)[0] for e in environ.split(b"\0") if e}
        assert not {n for n in names if n.startswith(b"RV_")}, names
        for marker in (b"signature", b"PRIVATE KEY", b"sessionAESKey", b"payload"):
            assert marker not in cmdline and marker not in environ, marker
    return checked


def sha256_file(path: os.PathLike[str] | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def test_rig_noop(rig: Rig) -> None:
    """Official ``noop``: relay, daemon and sshd up; a tunnel's far end answers with a banner."""
    rig.daemon("dev1")
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "-x", "-T", "5s")
    assert r.returncode == 0, r.stderr
    banner_after_connect(int(r.stdout.strip()))

"""Fixtures for the embedded control plane: the real ``noports server`` as a subprocess.

* ``at_server`` (session): one server for the whole run. Use fresh atSign names per test.
* ``make_at_server`` (function): a factory for private servers (restart tests, small limits);
  every server it made is stopped at teardown. ``make_at_server("--max-connections", "10")``.

Both give an ``AtServerProcess``: ``.root`` ("127.0.0.1:<port>"), ``.ca_file``, ``.data_dir``,
``.env`` ({"NOPORTS_ROOT", "NOPORTS_CA_FILE"}), ``.host``, ``.port``, ``.pid``,
``.add(atsign, keys=None)`` (runs ``noports server add``; returns the activation secret when no
keys are given, else None), ``.restart()``, ``.stop()``, ``.admin(*args)`` (any admin subcommand,
returns the CompletedProcess).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from noports.crypto.atkeys import AtKeys

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for var in ("NOPORTS_ROOT", "NOPORTS_CA_FILE"):
        env.pop(var, None)
    return env


class AtServerProcess:
    """A running ``noports server`` subprocess and helpers to administer it."""

    def __init__(self, data_dir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = extra_args
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.host = "127.0.0.1"
        self.root = ""
        self.ca_file = ""
        self.pid = 0
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def env(self) -> dict[str, str]:
        return {"NOPORTS_ROOT": self.root, "NOPORTS_CA_FILE": self.ca_file}

    def start(self) -> AtServerProcess:
        cmd = [
            sys.executable,
            "-m",
            "noports.cli.noports",
            "server",
            "--data-dir",
            str(self.data_dir),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--output",
            "json",
            *self.extra_args,
        ]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=log, cwd=str(REPO), env=_env(), text=True
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        line = ""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline()
                break
            if self.proc.poll() is not None:
                break
        if not line:
            self.stop()
            raise RuntimeError(f"noports server did not start; log:\n{self._log_tail()}")
        info = json.loads(line)
        self.root = info["root"]
        self.ca_file = info["ca_file"]
        self.pid = int(info["pid"])
        self.host, _, port = self.root.rpartition(":")
        self.port = int(port)
        return self

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [
            sys.executable,
            "-m",
            "noports.cli.noports",
            "server",
            *args[:1],
            "--data-dir",
            str(self.data_dir),
            *args[1:],
        ]
        proc = subprocess.run(
            cmd, capture_output=True, text=True, cwd=str(REPO), env=_env(), timeout=60
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"noports server {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def add(self, atsign: str, keys: AtKeys | None = None) -> str | None:
        if keys is None:
            out = self.admin("add", atsign).stdout.strip().splitlines()
            return out[-1]
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{keys.atsign}_key.atKeys"
            keys.save(path)
            self.admin("add", atsign, "--keys-file", str(path))
        return None

    def add_fast(self, atsign: str, keys: AtKeys | None = None) -> str | None:
        """Like ``add`` but in-process (same data dir, SQLite WAL): for tests that need many
        atSigns. The CLI path itself is covered by ``add``."""
        from noports.atserver import admin

        if keys is None:
            return admin.add(self.data_dir, atsign)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{keys.atsign}_key.atKeys"
            keys.save(path)
            return admin.add(self.data_dir, atsign, path)

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None:
            return
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        if p.stdout is not None:
            p.stdout.close()

    def restart(self) -> AtServerProcess:
        self.stop()
        return self.start()


@pytest.fixture(scope="session")
def at_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AtServerProcess]:
    """One embedded server for the whole session."""
    srv = AtServerProcess(tmp_path_factory.mktemp("at_server") / "data").start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def make_at_server(tmp_path: Path) -> Iterator[Callable[..., AtServerProcess]]:
    """Factory for private servers: ``make_at_server(*extra_cli_args)``; all stopped at teardown."""
    made: list[AtServerProcess] = []

    def make(*extra_args: str) -> AtServerProcess:
        srv = AtServerProcess(tmp_path / f"server{len(made)}", tuple(extra_args))
        made.append(srv)
        return srv.start()

    try:
        yield make
    finally:
        for srv in made:
            srv.stop()


class Wire:
    """A minimal blocking TLS line client for raw-protocol tests (independent of noports.at).

    ``cmd(line)`` sends one line and returns the response line (without ``\\n``), then consumes
    the prompt the server should send after it (``@`` before auth, ``@alice@`` after, none on
    monitor connections). Every read has a timeout, so a silent server fails the test.
    """

    def __init__(
        self, addr: str, ca_file: str, timeout: float = 10.0, *, read_prompt: bool = True
    ) -> None:
        import socket
        import ssl

        host, _, port = addr.rpartition(":")
        ctx = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.prompt = "@"
        self.monitoring = False
        self.atsign: str | None = None
        if read_prompt:
            got = self.read_exact(1)
            assert got == b"@", f"expected the @ prompt on connect, got {got!r}"

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buf += chunk
        return True

    def read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self._fill():
                raise EOFError(f"connection closed; had {self.buf!r}")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def readline(self) -> str:
        while b"\n" not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed; had {self.buf!r}")
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode("utf-8").rstrip("\r")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("utf-8") + b"\n")

    def read_prompt(self) -> None:
        if self.monitoring:
            return
        p = self.prompt.encode()
        got = self.read_exact(len(p))
        assert got == p, f"expected prompt {p!r}, got {got!r} (+{self.buf[:80]!r})"

    def cmd(self, line: str) -> str:
        self.send(line)
        resp = self.readline()
        self.read_prompt()
        return resp

    def data(self, line: str) -> str:
        """``cmd`` that must succeed; returns the payload after ``data:``."""
        resp = self.cmd(line)
        assert resp.startswith("data:"), f"{line.split(':')[0]} failed: {resp}"
        return resp[5:]

    def is_closed(self, wait: float = 3.0) -> bool:
        """True if the server closes the connection within ``wait`` seconds (data is skipped)."""
        import ssl

        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not self._fill():
                    return True
        except TimeoutError:
            return False
        except (ConnectionError, ssl.SSLError, OSError):
            return True
        return False

    def pkam(
        self,
        keys: AtKeys,
        enrollment_id: str | None = None,
        hashing: str = "sha256",
        dart_form: bool = False,
    ) -> str:
        """from + pkam; returns the pkam response line."""
        from noports.crypto import rsa

        challenge = self.data(f"from:{keys.atsign}")
        sig = rsa.sign(keys.pkam_private, challenge.encode(), hashing)
        if dart_form:
            line = f"pkam:signingAlgo:rsa2048:hashingAlgo:{hashing}:"
        else:
            line = "pkam:"
        if enrollment_id:
            line += f"enrollmentId:{enrollment_id}:"
        self.send(line + sig)
        resp = self.readline()
        if resp == "data:success":
            self.prompt = f"{keys.atsign}@"
            self.atsign = keys.atsign
        self.read_prompt()
        return resp

    def cram(self, atsign: str, secret: str) -> str:
        import hashlib

        challenge = self.data(f"from:{atsign}")
        self.send("cram:" + hashlib.sha512((secret + challenge).encode()).hexdigest())
        resp = self.readline()
        if resp == "data:success":
            self.prompt = f"{atsign}@"
            self.atsign = atsign
        self.read_prompt()
        return resp

    def notification(self) -> dict[str, Any]:
        """Next ``notification: {json}`` line on a monitor connection, skipping stats ones."""
        while True:
            line = self.readline()
            assert line.startswith("notification: "), f"not a notification: {line!r}"
            body = json.loads(line[len("notification: ") :])
            if body.get("id") != "-1":
                return body


@pytest.fixture
def wire(at_server: AtServerProcess) -> Iterator[Callable[..., Wire]]:
    """``wire()`` opens a Wire to the session server; all are closed at teardown."""
    opened: list[Wire] = []

    def open_wire(**kw: object) -> Wire:
        w = Wire(at_server.root, at_server.ca_file, **kw)  # type: ignore[arg-type]
        opened.append(w)
        return w

    try:
        yield open_wire
    finally:
        for w in opened:
            w.close()

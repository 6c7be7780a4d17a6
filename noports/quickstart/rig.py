"""Local processes and services for ``noports quickstart`` (and anything that needs the same).

* :class:`Supervisor` / :class:`Child`: subprocesses in their own process groups, output kept
  in memory and copied to ``<log_dir>/<name>.log``, readiness by regex on an output line,
  and a stop that signals the whole group (SIGTERM, then SIGKILL), so grandchildren go too.
  On Linux each child also gets SIGTERM if its parent dies (``PR_SET_PDEATHSIG``).
* :class:`HttpService`: a tiny HTTP server on 127.0.0.1 serving one page.
* :class:`SshdSetup`: a private OpenSSH ``sshd`` on a loopback port with its own host key
  and an authorized_keys file we choose.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import LocalError, PeerTimeoutError


class QuickstartError(LocalError):
    """A step failed (the message names the step and the reason)."""


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child when we die (resolved up front)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG

    return preexec


class Child:
    """A supervised process; its stdout/stderr lines are kept and copied to a log file.

    ``secret_stdout``: stdout carries a secret (``noports server add``), so it is kept in
    memory only and never written to the log file.
    """

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        preexec: Callable[[], None] | None,
        *,
        secret_stdout: bool = False,
    ) -> None:
        self.name = name
        self.secret_stdout = secret_stdout
        self.argv = argv
        self.log_path = log_path
        self.lines: list[tuple[str, str]] = []
        self._cv = threading.Condition()
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed when both pumps end
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=preexec,
        )
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, "out"), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, "err"), daemon=True),
        ]
        for t in self._pumps:
            t.start()

    def _pump(self, stream, which: str) -> None:  # type: ignore[no-untyped-def]
        for raw in iter(stream.readline, b""):
            with self._cv:
                if which == "err" or not self.secret_stdout:
                    self._log.write(raw)
                    self._log.flush()
                self.lines.append((which, raw.decode("utf-8", "replace").rstrip("\n")))
                self._cv.notify_all()
        stream.close()
        with self._cv:
            self._cv.notify_all()

    def text(self, which: str | None = None) -> str:
        with self._cv:
            return "\n".join(t for w, t in self.lines if which in (None, w))

    def tail(self, n: int = 5) -> str:
        with self._cv:
            return " | ".join(t for _, t in self.lines[-n:])

    def wait_for(self, pattern: str, timeout: float, which: str | None = None) -> re.Match[str]:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for w, t in self.lines[seen:]:
                    m = rx.search(t)
                    if m and which in (None, w):
                        return m
                seen = len(self.lines)
                if self.popen.poll() is not None and not any(p.is_alive() for p in self._pumps):
                    raise QuickstartError(
                        f"{self.name} exited with code {self.popen.returncode}: {self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise PeerTimeoutError(
                        f"{self.name} was not ready within {timeout:g}s (log {self.log_path})"
                    )
                self._cv.wait(min(left, 0.2))

    def stop(self, grace: float = 8.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``grace`` seconds."""
        pgid = self.popen.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        # the leader may be gone while grandchildren in its group live on: always sweep
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(5)
        for t in self._pumps:
            t.join(2)
        with self._cv:
            self._log.close()


class Supervisor:
    """Starts children with one environment and stops all of them, newest first."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._preexec = _pdeathsig()

    def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        ready: str | None = None,
        timeout: float = 30.0,
        which: str | None = None,
        secret_stdout: bool = False,
    ) -> tuple[Child, re.Match[str] | None]:
        child = Child(
            name,
            argv,
            self.env,
            self.log_dir / f"{name}.log",
            self._preexec,
            secret_stdout=secret_stdout,
        )
        self.children.append(child)
        match = child.wait_for(ready, timeout, which) if ready else None
        return child, match

    def run(
        self, name: str, argv: list[str], *, timeout: float = 60.0, secret_stdout: bool = False
    ) -> Child:
        """Run to completion (still supervised: a timeout or a signal stops it)."""
        child, _ = self.spawn(name, argv, secret_stdout=secret_stdout)
        try:
            child.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.children.remove(child)
            child.stop(2)
            raise PeerTimeoutError(
                f"{name} did not finish within {timeout:g}s: {child.tail()}"
            ) from None
        for t in child._pumps:
            t.join(5)
        self.children.remove(child)
        child.stop(0.1)
        return child

    def dead(self) -> Child | None:
        return next((c for c in self.children if c.popen.poll() is not None), None)

    def close(self) -> None:
        while self.children:
            self.children.pop().stop()


class HttpService:
    """A tiny HTTP server on 127.0.0.1 answering every GET with ``body``."""

    def __init__(self, body: bytes, content_type: str = "text/html; charset=utf-8") -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


def find_sshd() -> str | None:
    for cand in (shutil.which("sshd"), "/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if cand and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def keygen(path: Path, comment: str = "noports-quickstart") -> None:
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )


def sshd_config(
    port: int, host_key: Path, authorized_keys: Path, pid_file: Path, extra: tuple[str, ...] = ()
) -> str:
    """sshd_config for a private sshd on 127.0.0.1: keys only, no PAM, one authorized_keys."""
    return "\n".join(
        [
            f"ListenAddress 127.0.0.1:{port}",
            f"HostKey {host_key}",
            f"AuthorizedKeysFile {authorized_keys}",
            f"PidFile {pid_file}",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "StrictModes no",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "LogLevel ERROR",
            *extra,
            "",
        ]
    )


@dataclass
class SshdSetup:
    exe: str
    dir: Path
    port: int
    user_key: Path
    known_hosts: Path
    user: str

    def start(self, sup: Supervisor, authorized_keys: Path, timeout: float = 15.0) -> Child:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        host_key = self.dir / "host_ed25519"
        keygen(host_key)
        keygen(self.user_key)
        pub = Path(f"{self.user_key}.pub").read_text()
        have = authorized_keys.read_text() if authorized_keys.exists() else ""
        if pub.strip() not in have:
            authorized_keys.write_text(
                have + ("" if not have or have.endswith("\n") else "\n") + pub
            )
        os.chmod(authorized_keys, 0o600)
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        config = self.dir / "sshd_config"
        config.write_text(sshd_config(self.port, host_key, authorized_keys, self.dir / "sshd.pid"))
        child, _ = sup.spawn("sshd", [self.exe, "-D", "-e", "-f", str(config)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child.popen.poll() is not None:
                raise QuickstartError(f"sshd exited at start: {child.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    if s.recv(8).startswith(b"SSH-"):
                        return child
            except OSError:
                time.sleep(0.05)
        raise PeerTimeoutError(f"sshd did not listen on 127.0.0.1:{self.port} in {timeout:g}s")

"""End-to-end fixtures for the applications: real programs, real sockets, isolated HOME.

``np_env`` (function scope) gives an :class:`NpEnv`:

* a private HOME (``.home``) with ``~/.atsign/keys/<atSign>_key.atKeys`` for every atSign made
  with ``.atsign(name)`` (keys cached per session for speed, registered on the shared
  ``at_server`` under a name unique to this test, so tests never see each other's data);
* ``.env``: the environment for child programs (HOME, NOPORTS_ROOT, NOPORTS_CA_FILE, PATH,
  PYTHONPATH so ``python -m noports.cli.<prog>`` imports this checkout);
* ``.spawn(prog, *args, ready=regex)``: start ``python -m noports.cli.<prog> args`` with output
  captured; waits until ``ready`` appears on stdout or stderr (or raises with the log tail);
  every process is terminated (then killed) at teardown, so nothing outlives the test;
* ``.run(prog, *args)``: run a program to completion and return the CompletedProcess;
* ``.sshd()``: a real OpenSSH sshd on a loopback port whose authorized_keys file is the
  test HOME's ``~/.ssh/authorized_keys`` (skips when sshd is not installed).

Names: ``np_env.atsign("client")`` -> ``"@client_<tag>"`` where tag is unique per test.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from noports.crypto.atkeys import AtKeys
from tests.sshd import Sshd, SshdUnavailable

REPO = Path(__file__).resolve().parent.parent
_KEYS: dict[str, AtKeys] = {}


class Proc:
    """A running program with its output collected by reader threads."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: str, stdin: int | None) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._out: list[str] = []
        self._err: list[str] = []
        self._cv = threading.Condition()
        self._threads = [
            threading.Thread(target=self._pump, args=(self.popen.stdout, self._out), daemon=True),
            threading.Thread(target=self._pump, args=(self.popen.stderr, self._err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _pump(self, stream, sink: list[str]) -> None:
        for raw in iter(stream.readline, b""):
            with self._cv:
                sink.append(raw.decode("utf-8", "replace"))
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    @property
    def stdout(self) -> str:
        with self._cv:
            return "".join(self._out)

    @property
    def stderr(self) -> str:
        with self._cv:
            return "".join(self._err)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_for(
        self, pattern: str, timeout: float = 20.0, *, stream: str = "both"
    ) -> re.Match[str]:
        rx = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                text = {"stdout": "".join(self._out), "stderr": "".join(self._err)}.get(
                    stream, "".join(self._out) + "".join(self._err)
                )
                m = rx.search(text)
                if m:
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.popen.poll() is not None and not any(t.is_alive() for t in self._threads)
                ):
                    raise AssertionError(
                        f"{self.argv[2:4]} did not print {pattern!r} (exit {self.popen.poll()}):\n"
                        f"stdout:\n{''.join(self._out)[-2000:]}\nstderr:\n{''.join(self._err)[-3000:]}"
                    )
                self._cv.wait(min(left, 0.2))

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.popen.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(5)
        for t in self._threads:
            t.join(2)
        return self.popen.returncode


class NpEnv:
    def __init__(self, server, home: Path, tag: str) -> None:
        self.server = server
        self.home = home
        self.tag = tag
        self.procs: list[Proc] = []
        self._sshd: Sshd | None = None
        self.env = {
            "HOME": str(home),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": str(REPO),
            "LANG": "C.UTF-8",
            **server.env,
        }
        for k in ("USER", "LOGNAME", "NOPORTS_LOOP", "NOPORTS_NO_EXTENSIONS"):
            if k in os.environ:
                self.env[k] = os.environ[k]

    def atsign(self, name: str) -> str:
        """Register ``@<name>_<tag>`` (keys file in HOME) and return it."""
        a = f"@{name}_{self.tag}"
        if a not in _KEYS:
            _KEYS[a] = AtKeys.generate(a)
        keys = _KEYS[a]
        self.server.add(a, keys)
        keys.save(self.home / ".atsign" / "keys" / f"{a}_key.atKeys")
        return a

    def keys(self, atsign: str) -> AtKeys:
        return _KEYS[atsign]

    def argv(self, prog: str, *args: str) -> list[str]:
        return [sys.executable, "-m", f"noports.cli.{prog}", *args]

    def spawn(
        self,
        prog: str,
        *args: str,
        ready: str | None = None,
        timeout: float = 20.0,
        env: dict[str, str] | None = None,
        stdin: int | None = None,
    ) -> Proc:
        p = Proc(self.argv(prog, *args), {**self.env, **(env or {})}, str(self.home), stdin)
        self.procs.append(p)
        if ready is not None:
            p.wait_for(ready, timeout)
        return p

    def run(
        self,
        prog: str,
        *args: str,
        timeout: float = 60.0,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(prog, *args),
            env={**self.env, **(env or {})},
            cwd=str(self.home),
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def sshd(self) -> Sshd:
        """A real sshd that trusts this HOME's ``~/.ssh/authorized_keys`` (plus its own key)."""
        if self._sshd is None:
            try:
                self._sshd = Sshd(
                    self.home / "sshd", authorized_keys_file=self.home / ".ssh" / "authorized_keys"
                ).start()
            except SshdUnavailable as exc:
                pytest.skip(str(exc))
        return self._sshd

    def close(self) -> None:
        for p in reversed(self.procs):
            p.stop()
        if self._sshd is not None:
            self._sshd.close()


@pytest.fixture
def np_env(at_server, tmp_path: Path) -> Iterator[NpEnv]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    env = NpEnv(at_server, home, secrets.token_hex(3))
    try:
        yield env
    finally:
        env.close()

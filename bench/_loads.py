"""Traffic generators, helper processes and measurements shared by the data-plane benchmarks.

Everything runs on loopback with real sockets and real processes; nothing is mocked.

Helper processes (``python -m bench._loads <role>``, one JSON config line on stdin, then JSON
lines both ways) put each party where a deployment has it, so each one's CPU time is its own
and none shares a GIL with another:

* ``relay``: the relay engine (``noports.relay.Relay``, or the naive asyncio-streams
  reference relay ``StreamsRelay`` below) on the default event loop; commands create
  sessions and report the process's own CPU time (``time.process_time``, ns resolution) and
  RSS (``/proc/self/status``).
* ``sender``: the bulk generator: connect (optionally send a relay auth line), send N bytes of
  the reference pattern, half-close, wait for the peer's EOF.
* ``client_end`` / ``daemon_end``: the two tunnel ends in single mode
  (``open_client_single`` / ``run_daemon_single``).
* ``pairer``: opens, holds and closes many relay pairs (the idle-pairs load).
* ``echo``: a 64-byte ping-pong echo, listening or connecting out through a relay.
* ``client_multi`` / ``daemon_multi``: the two tunnel ends in multi mode (``ClientMulti`` /
  ``DaemonMulti``, one relay pair per connection, as ``npt``), and ``service``: echo or sink
  by the first byte of each connection (the mixed-load benchmark).

Every child dies with its parent (PR_SET_PDEATHSIG and EOF on stdin), every wait on a child
or socket has a deadline, and ``Proc.close`` terminates, then kills, then reaps.

The byte stream is a fixed random pattern with an odd period, so any lost, duplicated or
reordered byte shows up at an offset check; the receiver counts every byte and compares one
received chunk in ``sample_every`` (and the first and last) with the pattern at that offset.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import json
import os
import random
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GB = 1e9  # throughput and CPU-per-GB figures use decimal GB; transfer sizes are GiB
QUICK = bool(os.environ.get("NOPORTS_BENCH_QUICK"))

PERIOD = (1 << 20) + 13  # odd: never aligned with any socket or pump buffer size
SEND_CHUNK = 256 * 1024
RECV_CHUNK = 1 << 20
_PATTERN: bytes | None = None


def pattern() -> bytes:
    """Two periods of the reference pattern: any window of <= PERIOD bytes is one slice."""
    global _PATTERN
    if _PATTERN is None:
        one = random.Random(20260101).randbytes(PERIOD)
        _PATTERN = one + one
    return _PATTERN


def raise_nofile() -> int:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def tree_cpu(root: int) -> float:
    """CPU seconds (user + system, 10 ms ticks) of ``root`` and all its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, float]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        procs[int(d)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    keep = {root}
    changed = True
    while changed:
        changed = False
        for pid, (ppid, _) in procs.items():
            if ppid in keep and pid not in keep:
                keep.add(pid)
                changed = True
    return sum(procs[p][1] for p in keep if p in procs)


def settle_heap() -> None:
    """Collect garbage and give free heap pages back (glibc ``malloc_trim``), so an RSS
    delta counts what stays allocated, not how much slack the process's start left in the
    heap: compiling modules from source (no .pyc) leaves freed memory there that later
    allocations reuse without a page fault, which took 1.6 KiB per idle relay pair off the
    figure in a checkout without ``__pycache__`` (as against an installed wheel's .pyc)."""
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS in KiB; of this process (``self``) after :func:`settle_heap`."""
    if pid == "self":
        settle_heap()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# ---------------------------------------------------------------------------------------
# Helper processes (parent side)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class HelperError(RuntimeError):
    pass


class Proc:
    """A child process speaking JSON lines; ``close`` always reaps it."""

    def __init__(
        self,
        args: list[str],
        *,
        config: dict[str, Any] | None = None,
        name: str | None = None,
        python: bool = True,
    ) -> None:
        self.name = name or args[0]
        self._err = tempfile.TemporaryFile()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        cmd = [sys.executable, "-m", "bench._loads", *args] if python else args
        self.popen = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            preexec_fn=_die_with_parent,
        )
        self._buf = b""
        self.rusage: Any = None
        if config is not None:
            self.send(config)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def send(self, obj: dict[str, Any]) -> None:
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(json.dumps(obj).encode() + b"\n")
            self.popen.stdin.flush()
        except BrokenPipeError:
            raise HelperError(f"{self.name} exited: {self.stderr_tail()}") from None

    def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HelperError(
                    f"{self.name}: no answer within {timeout:g} s; {self.stderr_tail()}"
                )
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            data = os.read(fd, 65536)
            if not data:
                self.popen.wait(5)
                raise HelperError(
                    f"{self.name} exited ({self.popen.returncode}): {self.stderr_tail()}"
                )
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        msg = json.loads(line)
        if "error" in msg:
            raise HelperError(f"{self.name}: {msg['error']}")
        return msg

    def call(self, obj: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        self.send(obj)
        return self.recv(timeout)

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            self._err.seek(0)
            return self._err.read().decode(errors="replace")[-n:].strip()
        except (OSError, ValueError):
            return ""

    def wait_exit(self, timeout: float) -> Any:
        """Wait for a natural exit and keep the child's rusage (its CPU time)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.popen.returncode = os.waitstatus_to_exitcode(status)
                self.rusage = ru
                return ru
            time.sleep(0.01)
        raise HelperError(f"{self.name} did not exit within {timeout:g} s")

    def close(self, timeout: float = 5.0) -> None:
        p = self.popen
        with contextlib.suppress(OSError):
            if p.stdin is not None:
                p.stdin.close()
        if p.returncode is None:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.terminate()
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(timeout)
        with contextlib.suppress(OSError):
            if p.stdout is not None:
                p.stdout.close()
        self._err.close()

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def crypto_config(crypto: Any) -> dict[str, Any]:
    """A tunnel cipher setting as JSON for a child process (sent on its stdin, never argv)."""
    from noports.tunnel import AeadKeys, CtrKeys

    if crypto is None:
        return {"mode": "clear"}
    if isinstance(crypto, CtrKeys):
        cfg = {"mode": "ctr", "key": b64(crypto.key_c2d), "iv": b64(crypto.iv_c2d)}
        if crypto.twin:
            assert crypto.key_d2c is not None and crypto.iv_d2c is not None
            cfg.update(key_d2c=b64(crypto.key_d2c), iv_d2c=b64(crypto.iv_d2c))
        return cfg
    if isinstance(crypto, AeadKeys):
        return {"mode": "aead", "secret": b64(crypto.secret), "sid": crypto.session_id}
    raise TypeError(type(crypto).__name__)


def crypto_from_config(cfg: dict[str, Any]) -> Any:
    from noports.tunnel import AeadKeys, CtrKeys

    mode = cfg["mode"]
    if mode == "clear":
        return None
    if mode == "ctr":
        d = base64.b64decode
        if "key_d2c" in cfg:
            return CtrKeys(d(cfg["key"]), d(cfg["iv"]), d(cfg["key_d2c"]), d(cfg["iv_d2c"]))
        return CtrKeys(d(cfg["key"]), d(cfg["iv"]))
    if mode == "aead":
        return AeadKeys(base64.b64decode(cfg["secret"]), cfg["sid"])
    raise ValueError(mode)


# ---------------------------------------------------------------------------------------
# Relay process (parent side)


@dataclass
class RelaySession:
    sid: str
    host: str
    port_a: int
    port_b: int
    rvd_nonce: str
    line_a: bytes = b""
    line_b: bytes = b""

    @property
    def client_nonce(self) -> str:
        return "cn-" + self.sid


class RelayProc(Proc):
    """The relay in its own process. ``kind``: "noports" (the engine) or "streams"."""

    def __init__(self, impl: str | None, kind: str = "noports") -> None:
        super().__init__(
            ["relay"], config={"impl": impl, "kind": kind}, name=f"relay[{kind},{impl}]"
        )
        self.recv(30)  # ready

    def sessions(
        self, n: int, key_a: Any, key_b: Any, prefix: str, *, auth: bool = True
    ) -> tuple[list[RelaySession], float]:
        """Create ``n`` sessions; returns them (with signed auth lines) and the relay CPU used.

        ``auth=False``: sessions whose sides do not authenticate (engine only; no lines)."""
        from noports.crypto import rsa

        got = self.call(
            {
                "op": "sessions",
                "n": n,
                "prefix": prefix,
                "pub_a": rsa.public_to_b64(key_a.encrypt_public),
                "pub_b": rsa.public_to_b64(key_b.encrypt_public),
                "auth": auth,
            },
            timeout=60 + n / 20,
        )
        out = [RelaySession(*row) for row in got["sessions"]]
        if auth:
            from noports.crypto.envelope import relay_auth_line

            for s in out:
                s.line_a = (
                    relay_auth_line(
                        s.sid, s.client_nonce, s.rvd_nonce, key_a.encrypt_private
                    ).encode()
                    + b"\n"
                )
                s.line_b = (
                    relay_auth_line(
                        s.sid, s.client_nonce, s.rvd_nonce, key_b.encrypt_private
                    ).encode()
                    + b"\n"
                )
        return out, got["cpu"]

    def stats(self, light: bool = False) -> dict[str, Any]:
        """The relay's CPU, pair count and (unless ``light``) RSS, fds and session sums."""
        return self.call({"op": "stats", "light": light})

    def wait_pairs(self, n: int, timeout: float = 60.0) -> dict[str, Any]:
        return self.call({"op": "wait_pairs", "n": n, "timeout": timeout}, timeout=timeout + 10)

    def close_sessions(self) -> dict[str, Any]:
        return self.call({"op": "close_all"}, timeout=60)


# ---------------------------------------------------------------------------------------
# Sockets and the receiver (parent side)


def connect(
    host: str, port: int, first: bytes = b"", *, nodelay: bool = False, timeout: float = 30.0
) -> socket.socket:
    s = socket.create_connection((host, port), timeout=timeout)
    if nodelay:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if first:
        s.sendall(first)
    return s


def listener() -> socket.socket:
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    ls.settimeout(30)
    return ls


@dataclass
class Received:
    nbytes: int
    seconds: float
    checked: int

    @property
    def gbps(self) -> float:
        return self.nbytes / self.seconds / GB


def receive(
    sock: socket.socket, expect: int, *, timeout: float = 120.0, sample_every: int = 16
) -> Received:
    """Read to EOF; time from the first byte to EOF; check bytes against the pattern."""
    pat = pattern()
    buf = bytearray(RECV_CHUNK)
    mv = memoryview(buf)
    sock.settimeout(30)
    got = 0
    calls = 0
    checked = 0
    t0 = None
    deadline = time.monotonic() + timeout
    while True:
        n = sock.recv_into(buf)
        now = time.perf_counter()
        if t0 is None:
            t0 = now
        if not n:
            break
        if got + n > expect:
            raise AssertionError(f"received more than the {expect} bytes sent")
        calls += 1
        if calls % sample_every == 1 or got + n == expect:
            off = got % PERIOD
            if bytes(mv[:n]) != pat[off : off + n]:
                raise AssertionError(f"stream corrupted in the {n} bytes at offset {got}")
            checked += n
        got += n
        if calls % 256 == 0 and time.monotonic() > deadline:
            raise AssertionError(f"transfer did not finish within {timeout:g} s ({got} bytes)")
    end = time.perf_counter()
    if got != expect:
        raise AssertionError(f"received {got} bytes, expected {expect}")
    assert t0 is not None
    return Received(got, max(end - t0, 1e-9), checked)


def transfer(
    sender: Proc,
    sock_or_listener: socket.socket,
    host: str,
    port: int,
    nbytes: int,
    first: bytes = b"",
    *,
    accept: bool = False,
    timeout: float = 180.0,
) -> Received:
    """Tell ``sender`` to connect to host:port and send; receive on the given socket."""
    sender.send({"host": host, "port": port, "first": first.decode(), "nbytes": nbytes})
    if accept:
        sock, _ = sock_or_listener.accept()
    else:
        sock = sock_or_listener
    try:
        got = receive(sock, nbytes, timeout=timeout)
    finally:
        sock.close()
    done = sender.recv(timeout=30)
    assert done["sent"] == nbytes, done
    return got


# ---------------------------------------------------------------------------------------
# socat and ssh -L baselines


class Socat:
    """``socat TCP-LISTEN:<port> TCP:127.0.0.1:<target>`` (one connection, then it exits)."""

    def __init__(self, target_port: int) -> None:
        exe = shutil.which("socat")
        if exe is None:
            raise FileNotFoundError("socat is not installed")
        from tests.sshd import free_port

        self.port = free_port()
        self.proc = Proc(
            [
                exe,
                f"TCP-LISTEN:{self.port},bind=127.0.0.1,reuseaddr",
                f"TCP:127.0.0.1:{target_port}",
            ],
            name="socat",
            python=False,
        )
        wait_listening(self.port, self.proc)

    def __enter__(self) -> Socat:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.close(timeout=2)


def wait_listening(port: int, proc: Proc, timeout: float = 10.0) -> None:
    """Wait until something listens on 127.0.0.1:port (checked in /proc, without connecting)."""
    want = f":{port:04X} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            raise HelperError(f"{proc.name} exited: {proc.stderr_tail()}")
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                for line in Path(table).read_text().splitlines()[1:]:
                    parts = line.split()
                    if want in parts[1] + " " and parts[3] == "0A":
                        return
        time.sleep(0.01)
    raise HelperError(f"{proc.name} is not listening on {port} after {timeout:g} s")


class SshForward:
    """``ssh -N -L <port>:127.0.0.1:<target>`` through a real sshd, with one cipher."""

    def __init__(self, sshd: Any, target_port: int, cipher: str) -> None:
        from tests.sshd import free_port

        self.port = free_port()
        self.cipher = cipher
        args = [
            *sshd.ssh_base(),
            "-N",
            "-c",
            cipher,
            "-o",
            "ExitOnForwardFailure=yes",
            "-o",
            "Compression=no",
            "-o",
            "PermitLocalCommand=yes",
            "-o",
            "LocalCommand=echo '{\"ready\": 1}'",
            "-L",
            f"127.0.0.1:{self.port}:127.0.0.1:{target_port}",
            "-p",
            str(sshd.port),
            f"{sshd.user}@127.0.0.1",
        ]
        self.proc = Proc(args, name=f"ssh -L ({cipher})", python=False)
        try:
            self.proc.recv(30)  # LocalCommand runs once the forwarding listeners are bound
            wait_listening(self.port, self.proc)
        except BaseException:
            self.proc.close(2)
            raise

    def __enter__(self) -> SshForward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> float | None:
        """Stop ssh; returns its CPU seconds (user + system) for the whole run, if reaped."""
        cpu = None
        if self.proc.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.popen.terminate()
            with contextlib.suppress(HelperError, ChildProcessError):
                ru = self.proc.wait_exit(5)
                cpu = ru.ru_utime + ru.ru_stime
        self.proc.close(timeout=3)
        return cpu


def start_sshd(workdir: Path) -> Any:
    """A real sshd (tests/sshd.py) or ``pytest.skip`` with the reason."""
    import pytest

    from tests.sshd import Sshd, SshdUnavailable

    try:
        return Sshd(workdir).start()
    except (SshdUnavailable, OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"ssh -L baseline unavailable: {exc}")


# ---------------------------------------------------------------------------------------
# Tunnel ends (parent side)


class TunnelEnds:
    """A client end and a daemon end (separate processes) on one relay session.

    The daemon end connects ``service_port`` first, then relay side B; the client end listens
    and, on its first local connection, connects relay side A. ``port`` is the client's.
    """

    def __init__(
        self, sess: RelaySession, crypto: Any, impl: str | None, service_port: int
    ) -> None:
        cc = crypto_config(crypto)
        self.daemon = Proc(
            ["daemon_end"],
            name="daemon end",
            config={
                "relay_host": sess.host,
                "relay_port": sess.port_b,
                "auth": sess.line_b.decode(),
                "crypto": cc,
                "impl": impl,
                "local_port": service_port,
            },
        )
        try:
            self.client = Proc(
                ["client_end"],
                name="client end",
                config={
                    "relay_host": sess.host,
                    "relay_port": sess.port_a,
                    "auth": sess.line_a.decode(),
                    "crypto": cc,
                    "impl": impl,
                },
            )
        except BaseException:
            self.daemon.close(2)
            raise
        try:
            self.port = self.client.recv(30)["port"]
            self.daemon.recv(30)  # both daemon sockets are up
        except BaseException:
            self.close()
            raise

    def finish(self, timeout: float = 30.0) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.client.recv(timeout), self.daemon.recv(timeout)

    def close(self) -> None:
        for p in (self.client, self.daemon):
            with contextlib.suppress(Exception):
                p.close(timeout=3)

    def __enter__(self) -> TunnelEnds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------------
# Ping-pong


MSG = 64


def pingpong(sock: socket.socket, n: int, warmup: int = 0) -> list[float]:
    """``n`` timed 64-byte round trips (after ``warmup`` untimed ones); RTTs in microseconds."""
    sock.settimeout(10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    pat = pattern()
    out: list[float] = []
    buf = bytearray(MSG)
    mv = memoryview(buf)
    perf = time.perf_counter_ns
    for i in range(warmup + n):
        msg = pat[(i * 97) % PERIOD : (i * 97) % PERIOD + MSG]
        t0 = perf()
        sock.sendall(msg)
        got = 0
        while got < MSG:
            k = sock.recv_into(mv[got:])
            if not k:
                raise AssertionError("echo closed the connection")
            got += k
        t1 = perf()
        if buf != msg:
            raise AssertionError(f"round trip {i} came back altered")
        if i >= warmup:
            out.append((t1 - t0) / 1000)
    return out


def paced_pings(sock: socket.socket, period_us: float, stop: Any, limit: int) -> list[float]:
    """64-byte round trips on a fixed schedule (one every ``period_us``, like the frames of
    an interactive session) until ``stop()`` or ``limit``; each latency counts from the
    message's *scheduled* time, so a stall delays every message due during it (no
    coordinated omission: a closed loop would take few samples while the tunnel is slow and
    many while it is fast, and its median would hide the stalls). Microseconds."""
    sock.settimeout(10)
    buf = bytearray(MSG)
    mv = memoryview(buf)
    msg = pattern()[:MSG]
    out: list[float] = []
    perf = time.perf_counter_ns
    period = int(period_us * 1000)
    t_next = perf()
    while len(out) < limit and not stop():
        now = perf()
        if now < t_next:
            time.sleep((t_next - now) / 1e9)
        sock.sendall(msg)
        got = 0
        while got < MSG:
            k = sock.recv_into(mv[got:])
            if not k:
                raise AssertionError("echo closed the connection")
            got += k
        if buf != msg:
            raise AssertionError("a round trip came back altered")
        out.append((perf() - t_next) / 1000)
        t_next += period
    return out


def summary(rtts: list[float], block: int | None = None) -> dict[str, Any]:
    """Median, p99, mean, count; with ``block``, also each interleaved block's median (the
    spread between blocks shows how much other load on the machine moved the figure)."""
    s = sorted(rtts)
    out: dict[str, Any] = {
        "median": statistics.median(s),
        "p99": s[min(len(s) - 1, int(len(s) * 0.99))],
        "mean": statistics.fmean(s),
        "n": len(s),
    }
    if block:
        out["block_medians"] = [
            round(statistics.median(rtts[i : i + block]), 1) for i in range(0, len(rtts), block)
        ]
    return out


def interleave(blocks: int, runs: dict[str, Any], per_block: int) -> dict[str, list[float]]:
    """Run each ping-pong in turn, ``blocks`` times, so machine noise hits all of them alike."""
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(blocks):
        for name, sock in runs.items():
            out[name] += pingpong(sock, per_block)
    return out


# =======================================================================================
# Child roles


def _reply(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _exit_on_stdin_eof() -> None:
    def watch() -> None:
        while os.read(0, 4096):
            pass
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def role_sender() -> None:
    """Bulk generator: per command, connect, send, half-close, wait for EOF, report."""
    pat = memoryview(pattern())
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            s = socket.create_connection((cmd["host"], cmd["port"]), timeout=30)
            try:
                if cmd.get("first"):
                    s.sendall(cmd["first"].encode())
                left = cmd["nbytes"]
                pos = 0
                while left:
                    off = pos % PERIOD
                    k = s.send(pat[off : off + min(left, SEND_CHUNK)])
                    pos += k
                    left -= k
                s.shutdown(socket.SHUT_WR)
                while s.recv(65536):  # until the far end has closed too
                    pass
            finally:
                s.close()
            _reply({"sent": pos})
        except Exception as exc:  # noqa: BLE001 - reported to the parent
            _reply({"error": f"sender: {type(exc).__name__}: {exc}"})


def role_echo() -> None:
    """Per command: listen (echo every connection) or connect out with an auth line first."""

    def serve(s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(65536)
        mv = memoryview(buf)
        with s:
            while True:
                try:
                    n = s.recv_into(buf)
                except OSError:
                    return
                if not n:
                    return
                s.sendall(mv[:n])

    def accept_loop(ls: socket.socket) -> None:
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "listen":
            ls = socket.socket()
            ls.bind(("127.0.0.1", 0))
            ls.listen(16)
            threading.Thread(target=accept_loop, args=(ls,), daemon=True).start()
            _reply({"port": ls.getsockname()[1]})
        else:
            s = socket.create_connection((cmd["host"], cmd["port"]), timeout=30)
            s.sendall(cmd["first"].encode())
            threading.Thread(target=serve, args=(s,), daemon=True).start()
            _reply({"ok": 1})


def role_client_end() -> None:
    from noports import _compat
    from noports.tunnel import open_client_single

    cfg = json.loads(sys.stdin.readline())
    _exit_on_stdin_eof()

    async def main() -> None:
        client = await open_client_single(
            cfg["relay_host"],
            cfg["relay_port"],
            auth_line=cfg["auth"],
            crypto=crypto_from_config(cfg["crypto"]),
            impl=cfg["impl"],
            timeout=120,
        )
        cpu0 = time.process_time()  # CPU from here on: accept, relay connect, the bridge
        t0 = os.times()
        _reply({"port": client.port})
        try:
            st = await client.wait()
        except Exception as exc:  # noqa: BLE001
            _reply({"error": f"client end: {type(exc).__name__}: {exc}"})
            return
        t1 = os.times()
        _reply(
            {
                "up": st.up,
                "down": st.down,
                "cpu": time.process_time() - cpu0,
                "user": t1[0] - t0[0],
                "sys": t1[1] - t0[1],
            }
        )

    _compat.run(main())


def role_daemon_end() -> None:
    from noports import _compat
    from noports.tunnel import run_daemon_single

    cfg = json.loads(sys.stdin.readline())
    _exit_on_stdin_eof()

    cpu0 = [0.0]
    t0: list[Any] = []

    def ready() -> None:
        cpu0[0] = time.process_time()  # CPU from here on: the bridge
        t0.append(os.times())
        _reply({"ready": 1})

    async def main() -> None:
        try:
            st = await run_daemon_single(
                cfg["relay_host"],
                cfg["relay_port"],
                auth_line=cfg["auth"],
                crypto=crypto_from_config(cfg["crypto"]),
                impl=cfg["impl"],
                local_host="127.0.0.1",
                local_port=cfg["local_port"],
                on_ready=ready,
            )
        except Exception as exc:  # noqa: BLE001
            _reply({"error": f"daemon end: {type(exc).__name__}: {exc}"})
            return
        t1 = os.times()
        _reply(
            {
                "up": st.up,
                "down": st.down,
                "cpu": time.process_time() - cpu0[0],
                "user": t1[0] - t0[0][0],
                "sys": t1[1] - t0[0][1],
            }
        )

    _compat.run(main())


def role_service() -> None:
    """One port, two kinds of connection (the first byte says which): ``E`` echoes every
    byte back (the interactive connection), ``S`` reads to EOF and reports the byte count
    and the seconds from its first byte to EOF (the bulk connection). Used by the mixed-load
    benchmark, where both connections of one tunnel session reach the same service."""
    lock = threading.Lock()

    def serve(s: socket.socket) -> None:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(RECV_CHUNK)
        mv = memoryview(buf)
        with s:
            kind = s.recv(1)
            if kind == b"E":
                while True:
                    try:
                        n = s.recv_into(buf, 65536)
                    except OSError:
                        return
                    if not n:
                        return
                    s.sendall(mv[:n])
            got = 0
            t0 = None
            while True:
                n = s.recv_into(buf)
                if t0 is None:
                    t0 = time.monotonic()
                if not n:
                    break
                got += n
            t1 = time.monotonic()  # CLOCK_MONOTONIC: comparable between processes
            t0 = t0 or t1
            with lock:
                _reply({"sink": got, "seconds": max(t1 - t0, 1e-9), "t0": t0, "t1": t1})

    def accept_loop(ls: socket.socket) -> None:
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)
    threading.Thread(target=accept_loop, args=(ls,), daemon=True).start()
    _reply({"port": ls.getsockname()[1]})
    _exit_on_stdin_eof()
    threading.Event().wait()


def role_client_multi() -> None:
    """The client end of a multi-mode session (``ClientMulti``): every local connection gets
    its own relay pair, like ``npt``. Reports CPU from ready until stdin says ``stop``."""
    from noports import _compat
    from noports.tunnel import ClientMulti

    cfg = json.loads(sys.stdin.readline())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = await ClientMulti.open(
            cfg["relay_host"],
            cfg["relay_port"],
            auth_line=cfg["auth"],
            crypto=crypto_from_config(cfg["crypto"]),
            impl=cfg["impl"],
            timeout=300,
        )
        await _multi_serve(loop, client.port, lambda: client.stats, client.close)

    _compat.run(main())


def role_daemon_multi() -> None:
    from noports import _compat
    from noports.tunnel import DaemonMulti

    cfg = json.loads(sys.stdin.readline())

    async def main() -> None:
        loop = asyncio.get_running_loop()
        d = DaemonMulti(
            cfg["relay_host"],
            cfg["relay_port"],
            auth_line=cfg["auth"],
            crypto=crypto_from_config(cfg["crypto"]),
            impl=cfg["impl"],
            local_host="127.0.0.1",
            local_port=cfg["local_port"],
            timeout=300,
        )
        await d.connect()
        task = loop.create_task(d.run())

        async def stop() -> None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

        await _multi_serve(loop, 0, lambda: d.stats, stop)

    _compat.run(main())


async def _multi_serve(loop: Any, port: int, stats: Any, stop: Any) -> None:
    """Commands on stdin: ``cpu`` (CPU seconds so far, user, sys), ``stop``; EOF stops."""
    lines: asyncio.Queue[bytes] = asyncio.Queue()
    pending = bytearray()

    def on_stdin() -> None:
        data = os.read(0, 4096)
        if not data:
            loop.remove_reader(0)
            lines.put_nowait(b"")
            return
        pending.extend(data)
        while b"\n" in pending:
            i = pending.index(b"\n")
            lines.put_nowait(bytes(pending[:i]))
            del pending[: i + 1]

    loop.add_reader(0, on_stdin)
    _reply({"port": port})
    while True:
        raw = await lines.get()
        if not raw or json.loads(raw)["op"] == "stop":
            break
        t = os.times()
        st = stats()
        _reply(
            {
                "cpu": time.process_time(),
                "user": t[0],
                "sys": t[1],
                "up": st.bytes_up,
                "down": st.bytes_down,
                "failed": st.failed,
            }
        )
    await stop()
    loop.remove_reader(0)


class MultiEnds:
    """A multi-mode client end and daemon end (separate processes) on one relay session:
    every connection to ``port`` is one data connection of the same tunnel session."""

    def __init__(
        self, sess: RelaySession, crypto: Any, impl: str | None, service_port: int
    ) -> None:
        cc = crypto_config(crypto)
        self.daemon = Proc(
            ["daemon_multi"],
            name="daemon end (multi)",
            config={
                "relay_host": sess.host,
                "relay_port": sess.port_b,
                "auth": sess.line_b.decode(),
                "crypto": cc,
                "impl": impl,
                "local_port": service_port,
            },
        )
        try:
            self.daemon.recv(30)  # control socket up (side B first)
            self.client = Proc(
                ["client_multi"],
                name="client end (multi)",
                config={
                    "relay_host": sess.host,
                    "relay_port": sess.port_a,
                    "auth": sess.line_a.decode(),
                    "crypto": cc,
                    "impl": impl,
                },
            )
            self.port = self.client.recv(30)["port"]
        except BaseException:
            self.close()
            raise

    def cpu(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.client.call({"op": "cpu"}), self.daemon.call({"op": "cpu"})

    def close(self) -> None:
        for p in (getattr(self, "client", None), self.daemon):
            if p is not None:
                with contextlib.suppress(Exception):
                    p.close(timeout=3)

    def __enter__(self) -> MultiEnds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class StreamsRelay:
    """Reference point: the straightforward asyncio-streams relay (readline, verify, pair,
    ``read``/``write``/``drain`` copy tasks). Same auth check as the engine; not library code."""

    def __init__(self) -> None:
        self.sessions: list[dict[str, Any]] = []
        self.pairs = 0

    async def create(
        self, sid: str, client_nonce: str, rvd: str, keys: tuple[Any, Any]
    ) -> tuple[int, int]:
        from noports.crypto.envelope import relay_expected_bytes, verify_relay_auth_line

        expected = relay_expected_bytes(sid, client_nonce, rvd)
        sess: dict[str, Any] = {"waiting": ([], []), "servers": [], "tasks": set(), "writers": []}
        self.sessions.append(sess)

        def handler(side: int) -> Any:
            async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                try:
                    line = await asyncio.wait_for(r.readline(), 5)
                    verify_relay_auth_line(line.rstrip(b"\n"), expected, rvd, keys[side])
                except Exception:  # noqa: BLE001
                    w.close()
                    return
                other = sess["waiting"][1 - side]
                if other:
                    r2, w2 = other.pop(0)
                    self.pairs += 1
                    sess["writers"] += [w, w2]
                    for a, b in ((r, w2), (r2, w)):
                        t = asyncio.ensure_future(self._copy(a, b))
                        sess["tasks"].add(t)
                        t.add_done_callback(sess["tasks"].discard)
                else:
                    sess["waiting"][side].append((r, w))

            return handle

        for side in (0, 1):
            sess["servers"].append(await asyncio.start_server(handler(side), "127.0.0.1", 0))
        return tuple(s.sockets[0].getsockname()[1] for s in sess["servers"])  # type: ignore[return-value]

    @staticmethod
    async def _copy(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await r.read(65536)
                if not data:
                    break
                w.write(data)
                await w.drain()
            w.write_eof()
        except (OSError, RuntimeError):
            w.close()

    async def close(self) -> int:
        n = len(self.sessions)
        for sess in self.sessions:
            for s in sess["servers"]:
                s.close()
            for t in list(sess["tasks"]):
                t.cancel()
            for q in sess["waiting"]:
                for _, w in q:
                    w.close()
            for w in sess["writers"]:
                w.close()
        self.sessions = []
        await asyncio.sleep(0.05)
        return n


class _CountingPump:
    """The engine's pump module with a counter of pumps made (pairs formed): polling a sum
    over thousands of sessions would cost the relay CPU that the pairing figure counts."""

    def __init__(self, mod: Any) -> None:
        self._mod = mod
        self.formed = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._mod, name)

    def Pump(self, *args: Any, **kw: Any) -> Any:  # noqa: N802 - the module's class name
        self.formed += 1
        return self._mod.Pump(*args, **kw)


def role_relay() -> None:
    from noports import _compat
    from noports.crypto import rsa
    from noports.relay import Relay, new_rvd_nonce, raise_nofile_limit

    cfg = json.loads(sys.stdin.readline())
    raise_nofile_limit()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine: Any = None
        streams: StreamsRelay | None = None
        if cfg["kind"] == "noports":
            engine = Relay(bind_host="127.0.0.1", impl=cfg["impl"])
            await engine.start()
            engine.pump = _CountingPump(engine.pump)  # O(1) pair count for wait_pairs
        else:
            streams = StreamsRelay()
        all_sessions: list[Any] = []
        lines: asyncio.Queue[bytes] = asyncio.Queue()
        pending = bytearray()

        def on_stdin() -> None:
            data = os.read(0, 65536)
            if not data:
                loop.remove_reader(0)
                lines.put_nowait(b"")
                return
            pending.extend(data)
            while b"\n" in pending:
                i = pending.index(b"\n")
                lines.put_nowait(bytes(pending[:i]))
                del pending[: i + 1]

        loop.add_reader(0, on_stdin)

        def pairs() -> int:
            if streams is not None:
                return streams.pairs
            return engine.pump.formed

        def stats(light: bool = False) -> dict[str, Any]:
            # ``light``: O(1), no per-session sums, so a CPU window that ends or starts
            # with it (the pairing cost) does not count the bench's own bookkeeping
            d: dict[str, Any] = {
                "cpu": time.process_time(),
                "user_sys": list(os.times()[:2]),
                "pairs": pairs(),
            }
            if light:
                return d
            d.update(rss_kib=rss_kib(), fds=len(os.listdir("/proc/self/fd")))
            if engine is not None:
                d.update(
                    sessions=len(engine.sessions),
                    live_pairs=sum(s.live_pairs for s in engine.sessions),
                    refused=engine.gate.refused + sum(s.stats.refused for s in all_sessions),
                    auth_failed=sum(s.stats.auth_failed for s in all_sessions),
                    bytes=sum(s.stats.bytes_a_to_b + s.stats.bytes_b_to_a for s in all_sessions),
                )
            return d

        _reply({"ready": 1, "pid": os.getpid()})
        while True:
            raw = await lines.get()
            if not raw:
                break
            cmd = json.loads(raw)
            op = cmd["op"]
            try:
                if op == "sessions":
                    ka, kb = rsa.public_from_b64(cmd["pub_a"]), rsa.public_from_b64(cmd["pub_b"])
                    t0 = time.process_time()
                    rows = []
                    for i in range(cmd["n"]):
                        sid = f"{cmd['prefix']}-{i}"
                        if engine is not None:
                            from noports.relay import SessionSpec

                            s = await engine.create_session(
                                SessionSpec(
                                    sid,
                                    "@bench_a",
                                    "@bench_b",
                                    "cn-" + sid,
                                    auth_a=cmd.get("auth", True),
                                    auth_b=cmd.get("auth", True),
                                    public_key_a=ka,
                                    public_key_b=kb,
                                )
                            )
                            all_sessions.append(s)
                            rows.append([sid, s.host, s.port_a, s.port_b, s.rvd_nonce])
                        else:
                            assert streams is not None
                            rvd = new_rvd_nonce()
                            pa, pb = await streams.create(sid, "cn-" + sid, rvd, (ka, kb))
                            rows.append([sid, "127.0.0.1", pa, pb, rvd])
                    _reply({"sessions": rows, "cpu": time.process_time() - t0})
                elif op == "stats":
                    _reply(stats(bool(cmd.get("light"))))
                elif op == "wait_pairs":
                    end = loop.time() + cmd["timeout"]
                    while pairs() < cmd["n"] and loop.time() < end:
                        await asyncio.sleep(0.02)
                    _reply(stats(light=True))
                elif op == "idle_cpu":  # the relay's own CPU over a quiet interval
                    t0 = time.process_time()
                    await asyncio.sleep(cmd["seconds"])
                    _reply({"cpu": time.process_time() - t0, "seconds": cmd["seconds"]})
                elif op == "close_all":
                    if engine is not None:
                        n = len(engine.sessions)
                        for s in list(engine.sessions):
                            s.close("cancelled")
                        await asyncio.sleep(0.05)
                    else:
                        assert streams is not None
                        n = await streams.close()
                    all_sessions.clear()
                    _reply({"closed": n})
                else:
                    _reply({"error": f"unknown op {op}"})
            except Exception as exc:  # noqa: BLE001
                _reply({"error": f"{op}: {type(exc).__name__}: {exc}"})
        if engine is not None:
            await engine.close()

    _compat.run(main())


def role_pairer() -> None:
    """The idle-pairs load: opens pairs through relay sessions, holds them, closes them.

    ``{"op": "pair", "sessions": [[host, port_a, port_b, line_a, line_b], ...], "each": k}``
    opens ``k`` pairs per session (A then B, each sending its auth line), ``batch`` pairs
    at a time (under the relay's per-IP pre-auth cap), and checks every pair with 4 bytes
    each way before the next batch, so each reply means every pair is formed and bridges.
    ``{"op": "close"}`` closes them all with a reset (no TIME_WAIT left behind)."""
    import struct

    raise_nofile()
    held: list[socket.socket] = []
    reset = struct.pack("ii", 1, 0)
    _reply({"ready": 1, "pid": os.getpid()})
    for raw in sys.stdin:
        cmd = json.loads(raw)
        if cmd["op"] == "pair":
            todo = [s for s in cmd["sessions"] for _ in range(cmd["each"])]
            batch = int(cmd.get("batch", 100))
            t0 = time.monotonic()
            try:
                for i in range(0, len(todo), batch):
                    got = []
                    for host, pa, pb, la, lb in todo[i : i + batch]:
                        a = connect(host, pa, la.encode(), timeout=30)
                        held.append(a)
                        b = connect(host, pb, lb.encode(), timeout=30)
                        held.append(b)
                        got.append((a, b))
                    for a, b in got:
                        a.sendall(b"ping")
                        b.sendall(b"pong")
                    for a, b in got:
                        if b.recv(4) != b"ping" or a.recv(4) != b"pong":
                            raise RuntimeError("a pair does not bridge")
                _reply({"pairs": len(held) // 2, "seconds": time.monotonic() - t0})
            except Exception as exc:  # noqa: BLE001
                _reply({"error": f"{type(exc).__name__}: {exc}", "pairs": len(held) // 2})
        elif cmd["op"] == "close":
            for sock in held:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, reset)
                sock.close()
            n = len(held) // 2
            held.clear()
            _reply({"closed": n})


ROLES = {
    "pairer": role_pairer,
    "sender": role_sender,
    "echo": role_echo,
    "client_end": role_client_end,
    "daemon_end": role_daemon_end,
    "relay": role_relay,
    "service": role_service,
    "client_multi": role_client_multi,
    "daemon_multi": role_daemon_multi,
}


@contextlib.contextmanager
def closing_all(*objs: Any) -> Iterator[None]:
    try:
        yield
    finally:
        for o in objs:
            with contextlib.suppress(Exception):
                o.close()


if __name__ == "__main__":
    raise_nofile()
    ROLES[sys.argv[1]]()

"""npt end to end (spec 13 and ours): real srvd, sshnpd, sshd and ssh; a real echo service."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.test_sshnp_rig import CHECK, Rig, banner_after_connect, module_rig


@pytest.fixture(scope="module")
def rig(at_server, tmp_path_factory) -> Iterator[Rig]:
    yield from module_rig(at_server, tmp_path_factory)


pytestmark = pytest.mark.timeout(150)


class EchoServer:
    """A TCP echo service on 127.0.0.1 (what the tunnel carries to; not a stand-in)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        with c:
            while True:
                data = c.recv(1 << 16)
                if not data:
                    c.shutdown(socket.SHUT_WR)
                    return
                c.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    s = EchoServer()
    yield s
    s.close()


def _ssh_check(rig: Rig, port: int) -> None:
    out = rig.run_cmd([*rig.sshd.ssh_args(*CHECK, port=port)])
    assert out.returncode == 0 and "TEST PASSED" in out.stdout, out.stderr


def test_npt_to_port_22_with_and_without_encryption(rig: Rig) -> None:
    """``npt_to_port_22`` and ``npt_to_port_22_no_encrypt_traffic`` (``-x``, ssh to the port)."""
    rig.daemon("dev1")
    r = rig.npt("dev1", "--remote-port", str(rig.sshd.port), "--exit-when-connected", "--verbose")
    assert r.returncode == 0, r.stderr
    _ssh_check(rig, int(r.stdout.strip()))
    r = rig.npt(
        "dev1", "-p", str(rig.sshd.port), "-x", "--no-encrypt-rvd-traffic", "--output", "json"
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["event"] == "ready" and ev["mode"] == "clear"
    _ssh_check(rig, ev["port"])
    # strong mode demanded and given; a second ssh over the same multi session
    r = rig.npt(
        "dev1",
        "-p",
        str(rig.sshd.port),
        "-x",
        "--require-aead",
        "--output",
        "json",
        "-T",
        "1h,14m,30s",
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["mode"] == "aead"
    _ssh_check(rig, ev["port"])
    _ssh_check(rig, ev["port"])


def _move(port: int, size: int, seed: int) -> tuple[str, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (size // 32)
    got = hashlib.sha256()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.settimeout(30)

        def send() -> None:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=send)
        t.start()
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                break
            got.update(chunk)
        t.join()
    return hashlib.sha256(data).hexdigest(), got.hexdigest()


def test_npt_twenty_parallel_connections(rig: Rig, echo: EchoServer) -> None:
    """Multi mode: 20 concurrent connections over one session, each with its own keys, each
    moving 1 MB each way with the checksum compared (cross-pairing would mix streams)."""
    rig.daemon("devecho", permit=f"localhost:{echo.port},localhost:{rig.sshd.port}")
    p = rig.env.spawn(
        "npt",
        *rig.base("devecho"),
        "-p",
        str(echo.port),
        "--output",
        "json",
        "-T",
        "20s",
        ready=r'"event": "ready"',
        timeout=30,
    )
    ev = json.loads(p.stdout.strip().splitlines()[-1])
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: _move(ev["port"], 1 << 20, i), range(20)))
    for want, got in results:
        assert want == got
    assert echo.connections == 20
    assert len({w for w, _g in results}) == 20
    assert p.stop() == 1  # SIGTERM: exit 1, as official


def test_npt_permit_open_violation_and_local_host(rig: Rig) -> None:
    """A port the daemon does not permit: the official error text and exit 3. ``--local-host``
    binds another loopback address (127.0.0.2, as for SMB on 445)."""
    rig.daemon("dev1")
    r = rig.npt("dev1", "-p", "9", "-x")
    assert r.returncode == 3, r.stderr
    assert "Daemon does not permit connections to localhost:9" in r.stderr
    r = rig.npt("dev1", "-p", str(rig.sshd.port), "-h", "127.0.0.1", "-x")
    assert r.returncode == 3 and "127.0.0.1:" in r.stderr  # exact match: localhost != 127.0.0.1
    r = rig.npt(
        "dev1", "-p", str(rig.sshd.port), "--local-host", "127.0.0.2", "-x", "--output", "json"
    )
    assert r.returncode == 0, r.stderr
    ev = json.loads(r.stdout)
    assert ev["host"] == "127.0.0.2"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", ev["port"]), timeout=2).close()
    with socket.create_connection(("127.0.0.2", ev["port"]), timeout=10) as s:
        s.settimeout(10)
        assert s.recv(8).startswith(b"SSH-")


def _port_below_ephemeral_range() -> int:
    """A free port under the kernel's ephemeral range, so no outgoing connection takes it
    while -K is between sessions (it re-binds the same port)."""
    for port in range(24000 + os.getpid() % 4000, 32000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError("no free port")


def test_npt_keep_alive_reconnects(rig: Rig) -> None:
    """-K: when a session ends (idle timeout 2 s) a new one starts 5 s later on the same port."""
    rig.daemon("dev1")
    p = rig.env.spawn(
        "npt",
        *rig.base("dev1"),
        "-p",
        str(rig.sshd.port),
        "-K",
        "-T",
        "2s",
        "-l",
        str(_port_below_ephemeral_range()),
        "--output",
        "json",
        ready=r'"event": "ready"',
        timeout=30,
    )
    first = json.loads(p.stdout.strip().splitlines()[0])
    p.wait_for(r"starting a new one", timeout=20)
    deadline = time.monotonic() + 20
    while len(p.stdout.strip().splitlines()) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = p.stdout.strip().splitlines()
    assert len(lines) >= 2, p.stderr
    second = json.loads(lines[1])
    assert second["port"] == first["port"] and second["sessionId"] != first["sessionId"]
    banner_after_connect(second["port"])
    assert p.stop() == 1
    r = rig.npt("dev1", "-p", "22", "-K", "-x")
    assert r.returncode == 2 and "keep-alive" in r.stderr


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs)), "p95": round(_pct(xs, 0.95))}


def test_session_setup_latency(rig: Rig) -> None:
    """Command start -> first byte through the tunnel (the sshd banner), 10 runs each of
    npt (inline, ready event) and sshnp -x; also the in-process parts: from entering ``run``
    (interpreter and imports done) to ready, and the protocol set-up alone (``establish``:
    monitor, ping + relay request, signed request, verified response, keys). Reported
    (``NOPORTS_SETUP_REPORT=<file>`` keeps the raw runs); bounded loosely on this shared box."""
    rig.daemon("dev1")
    runs: dict[str, list[float]] = {
        k: []
        for k in (
            "npt_ms",
            "npt_in_process_ms",
            "npt_at_connect_ms",
            "npt_protocol_ms",
            "sshnp_ms",
            "sshnp_protocol_ms",
        )
    }
    for _ in range(10):
        t0 = time.monotonic()
        p = rig.env.spawn(
            "npt",
            *rig.base("dev1"),
            "-p",
            str(rig.sshd.port),
            "--output",
            "json",
            "-q",
            "-T",
            "5s",
            ready=r'"event": "ready"',
            timeout=30,
        )
        ev = json.loads(p.stdout.strip().splitlines()[-1])
        runs["npt_ms"].append((banner_after_connect(ev["port"]) - t0) * 1000)
        runs["npt_in_process_ms"].append(ev["setupMs"])
        runs["npt_protocol_ms"].append(ev["timingsMs"]["keys"])
        runs["npt_at_connect_ms"].append(ev["timingsMs"]["atConnect"])
        p.stop()
    for _ in range(10):
        t0 = time.monotonic()
        r = rig.sshnp("dev1", "-u", rig.user, "-x", "-q", "--output", "json")
        assert r.returncode == 0, r.stderr
        ev = json.loads(r.stdout)
        runs["sshnp_ms"].append((banner_after_connect(ev["port"]) - t0) * 1000)
        runs["sshnp_protocol_ms"].append(ev["timingsMs"]["keys"])
    report = {k: _stats(v) for k, v in runs.items()}
    print("session set-up:", json.dumps(report))
    out = os.environ.get("NOPORTS_SETUP_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump({"summary": report, "raw": runs}, f)
    assert statistics.median(runs["npt_ms"]) < 3000
    assert statistics.median(runs["sshnp_ms"]) < 3000

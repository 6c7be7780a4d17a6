"""The logic of ``noports demo``: the whole data path on one machine, in one process.

Starts the relay engine on loopback with a relay-authenticated session, a local service,
the daemon end and the client end of a multi-mode tunnel (as npt uses it), then pushes data
through and checks it: a bulk upload whose SHA-256 the service computes and sends back,
and a 64-byte ping-pong latency sample. :func:`run_demo` returns a :class:`Report`;
``noports demo`` (:mod:`noports.cli.demo`) prints it and exits 0 only if every byte arrived
intact and nothing was left running.

The application threads (bulk sender, ping-pong) use blocking sockets in worker threads;
relay, tunnel ends and service share one event loop, i.e. roughly one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass

from ..crypto.atkeys import AtKeys
from ..crypto.envelope import relay_auth_line
from ..crypto.stream import CtrKeys
from ..tunnel import AeadKeys, ClientMulti, DaemonMulti, TunnelCrypto

CHUNK = 1 << 20


@dataclass
class Report:
    mode: str
    bulk_bytes: int
    bulk_seconds: float
    digest_ok: bool
    rtt_us: list[float]
    direct_rtt_us: list[float]


class Service:
    """The local service, on its own threads with blocking sockets so it does not share
    the event loop with the tunnel. First byte picks the job: b"S" hash everything until
    EOF and reply with the SHA-256; b"E" echo."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.threads: list[threading.Thread] = []
        t = threading.Thread(target=self._accept, name="demo-service", daemon=True)
        t.start()
        self.threads.append(t)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    @staticmethod
    def _handle(conn: socket.socket) -> None:
        buf = bytearray(1 << 18)
        view = memoryview(buf)
        with conn:
            try:
                kind = conn.recv(1)
                if kind == b"S":
                    h = hashlib.sha256()
                    while True:
                        n = conn.recv_into(buf)
                        if not n:
                            break
                        h.update(view[:n])
                    conn.sendall(h.digest())
                elif kind == b"E":
                    while True:
                        n = conn.recv_into(buf)
                        if not n:
                            break
                        conn.sendall(view[:n])
            except OSError:
                pass

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for t in self.threads:
            t.join(timeout=5)


def _bulk(port: int, size: int) -> tuple[float, bool]:
    block = memoryview(os.urandom(CHUNK))
    h = hashlib.sha256()
    for off in range(0, size, CHUNK):  # expected digest, outside the timed part
        h.update(block[: min(CHUNK, size - off)])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"S")
        t0 = time.perf_counter()
        sent = 0
        while sent < size:
            n = min(CHUNK, size - sent)
            s.sendall(block[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        digest = b""
        while len(digest) < 32:
            d = s.recv(32 - len(digest))
            if not d:
                break
            digest += d
        return time.perf_counter() - t0, digest == h.digest()


def _pingpong(port: int, n: int, prefix: bytes = b"E") -> list[float]:
    msg = os.urandom(64)
    out: list[float] = []
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if prefix:
            s.sendall(prefix)
        for _ in range(n):
            t0 = time.perf_counter()
            s.sendall(msg)
            got = b""
            while len(got) < 64:
                d = s.recv(64 - len(got))
                if not d:
                    raise ConnectionError("tunnel closed during ping-pong")
                got += d
            out.append((time.perf_counter() - t0) * 1e6)
            if got != msg:
                raise ConnectionError("ping-pong data corrupted")
    return out


def _in_thread(fn, *args):  # type: ignore[no-untyped-def]
    """Run ``fn`` in a daemon thread; await its result without the default executor."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future = loop.create_future()

    def target() -> None:
        def settle(res: object, err: BaseException | None) -> None:
            if fut.done():
                return
            if err is not None:
                fut.set_exception(err)
            else:
                fut.set_result(res)

        try:
            res = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, res, None)

    threading.Thread(target=target, daemon=True).start()
    return fut


def _crypto(mode: str, session_id: str) -> TunnelCrypto:
    if mode == "aead":
        return AeadKeys.generate(session_id)
    return CtrKeys.generate(twin=(mode == "twin"))


async def run_demo(
    mode: str = "aead", size: int = 64 << 20, pings: int = 2000, impl: str | None = None
) -> Report:
    """Relay, service and both tunnel ends on this loop; push ``size`` bytes and ``pings``."""
    from ..relay import Relay, SessionSpec

    client_keys, daemon_keys = AtKeys.generate("@demo_client"), AtKeys.generate("@demo_device")
    sid, nonce = str(uuid.uuid4()), str(uuid.uuid4())
    crypto = _crypto(mode, sid)
    service = Service()
    service_port = service.port
    relay = Relay(bind_host="127.0.0.1")
    await relay.start()
    cm: ClientMulti | None = None
    daemon_task: asyncio.Task | None = None
    try:
        sess = await relay.create_session(
            SessionSpec(
                sid,
                "@demo_client",
                "@demo_device",
                nonce,
                auth_a=True,
                auth_b=True,
                public_key_a=client_keys.encrypt_public,
                public_key_b=daemon_keys.encrypt_public,
            )
        )
        auth_a = relay_auth_line(sid, nonce, sess.rvd_nonce, client_keys.encrypt_private)
        auth_b = relay_auth_line(sid, nonce, sess.rvd_nonce, daemon_keys.encrypt_private)
        dm = DaemonMulti(
            sess.host,
            sess.port_b,
            auth_line=auth_b,
            crypto=crypto,
            local_host="127.0.0.1",
            local_port=service_port,
            timeout=60,
            impl=impl,
        )
        await dm.connect()
        daemon_task = asyncio.ensure_future(dm.run())
        cm = await ClientMulti.open(
            sess.host, sess.port_a, auth_line=auth_a, crypto=crypto, timeout=60, impl=impl
        )
        direct = await _in_thread(_pingpong, service_port, max(1, pings // 4))
        rtt = await _in_thread(_pingpong, cm.port, pings)
        seconds, ok = await _in_thread(_bulk, cm.port, size)
        await cm.close()
        stats = await asyncio.wait_for(daemon_task, 30)
        if stats.failed:
            raise ConnectionError(f"daemon end: {'; '.join(stats.errors)}")
        return Report(mode, size, seconds, ok, rtt, direct)
    finally:
        if cm is not None:
            await cm.close()
        if daemon_task is not None and not daemon_task.done():
            daemon_task.cancel()
            await asyncio.gather(daemon_task, return_exceptions=True)
        await relay.close()
        service.close()


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]

"""``noports demo``: the whole data path on one machine, in one process, in seconds.

Starts the relay engine on loopback with a relay-authenticated session, a local service,
the daemon end and the client end of a multi-mode tunnel (as npt uses it), then pushes data
through and checks it: a bulk upload whose SHA-256 the service computes and sends back,
and a 64-byte ping-pong latency sample. Prints a short report and exits 0 only if every
byte arrived intact and nothing was left running.

The application threads (bulk sender, ping-pong) use blocking sockets in worker threads;
relay, tunnel ends and service share one event loop, i.e. roughly one core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import socket
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass

from .. import _compat
from ..crypto.atkeys import AtKeys
from ..crypto.envelope import relay_auth_line
from ..crypto.records import SUITE_LABELS, default_suite
from ..crypto.stream import CtrKeys
from ..log import setup_logging
from ..tunnel import AeadKeys, ClientMulti, DaemonMulti, TunnelCrypto
from .common import add_common, fail

CHUNK = 1 << 20


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        n = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 64M, 1G)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noports demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mode",
        choices=("aead", "twin", "legacy"),
        default="aead",
        help="tunnel cipher: aead (strong mode, default), twin (AES-CTR per direction), "
        "legacy (official snapshot AES-CTR)",
    )
    p.add_argument(
        "--size", type=parse_size, default=parse_size("64M"), help="bulk bytes (default 64M)"
    )
    p.add_argument("--pings", type=int, default=2000, help="ping-pong round trips (default 2000)")
    p.add_argument(
        "--impl", choices=("c", "py"), default=None, help="transfer loop (default: compiled)"
    )
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None, help="event loop")
    add_common(p)
    return p


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


async def run_demo(args: argparse.Namespace) -> Report:
    from ..relay import Relay, SessionSpec

    client_keys, daemon_keys = AtKeys.generate("@demo_client"), AtKeys.generate("@demo_device")
    sid, nonce = str(uuid.uuid4()), str(uuid.uuid4())
    crypto = _crypto(args.mode, sid)
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
            impl=args.impl,
        )
        await dm.connect()
        daemon_task = asyncio.ensure_future(dm.run())
        cm = await ClientMulti.open(
            sess.host, sess.port_a, auth_line=auth_a, crypto=crypto, timeout=60, impl=args.impl
        )
        direct = await _in_thread(_pingpong, service_port, max(1, args.pings // 4))
        rtt = await _in_thread(_pingpong, cm.port, args.pings)
        seconds, ok = await _in_thread(_bulk, cm.port, args.size)
        await cm.close()
        stats = await asyncio.wait_for(daemon_task, 30)
        if stats.failed:
            raise ConnectionError(f"daemon end: {'; '.join(stats.errors)}")
        return Report(args.mode, args.size, seconds, ok, rtt, direct)
    finally:
        if cm is not None:
            await cm.close()
        if daemon_task is not None and not daemon_task.done():
            daemon_task.cancel()
            await asyncio.gather(daemon_task, return_exceptions=True)
        await relay.close()
        service.close()


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    stray: list[str] = []

    async def guarded() -> Report:
        rep = await run_demo(args)
        await asyncio.sleep(0)
        me = asyncio.current_task()
        stray.extend(repr(t) for t in asyncio.all_tasks() if t is not me and not t.done())
        return rep

    try:
        rep = _compat.run(guarded(), loop=args.loop)
    except Exception as exc:  # noqa: BLE001
        return fail("noports demo", exc)
    x = _compat.speedups("xfer", args.impl)
    impl = "compiled (Cython)" if x.__name__.endswith("_c") else "pure Python"
    mode = {
        "aead": f"AEAD records, {SUITE_LABELS[default_suite()]}, HKDF keys per direction",
        "twin": "AES-256-CTR, twin keys (one key and IV per direction)",
        "legacy": "AES-256-CTR, legacy (same key and IV both ways)",
    }[rep.mode]
    mib = rep.bulk_bytes / (1 << 20)
    print("noports demo: relay (auth on) + daemon end + client end + local service, one process")
    print(f"  mode            {mode}")
    print(f"  transfer loop   {impl}; event loop {_compat.loop_name(args.loop)}")
    rate = rep.bulk_bytes / rep.bulk_seconds / 1e6
    check = "OK" if rep.digest_ok else "MISMATCH"
    med, p99 = statistics.median(rep.rtt_us), _pct(rep.rtt_us, 0.99)
    direct = statistics.median(rep.direct_rtt_us)
    secs = rep.bulk_seconds
    print(f"  bulk            {mib:.0f} MiB in {secs:.2f} s = {rate:.0f} MB/s; sha256 {check}")
    print(
        f"  ping-pong 64 B  tunnel median {med:.0f} us, p99 {p99:.0f} us "
        f"({len(rep.rtt_us)} round trips); direct median {direct:.0f} us"
    )
    if stray:
        print(f"  stray tasks     {len(stray)}: {stray[:3]}", file=sys.stderr)
        return 1
    return 0 if rep.digest_ok else 6


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

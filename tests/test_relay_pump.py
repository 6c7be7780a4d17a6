"""Both pump twins on real loopback TCP: transparency, half-close, backpressure, errors.

Topology: outer_a <-TCP-> inner_a =pump= inner_b <-TCP-> outer_b. The tests drive the
outer sockets; the pump owns the inner ones.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import pytest

from noports import _compat
from tests.relay_support import blob, sha


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        outer = socket.create_connection(lsock.getsockname())
        inner, _ = lsock.accept()
    for s in (outer, inner):
        s.setblocking(False)
    return outer, inner


class Rig:
    def __init__(self, impl: str, **kw: Any) -> None:
        self.loop = asyncio.get_running_loop()
        self.outer_a, self.inner_a = tcp_pair()
        self.outer_b, self.inner_b = tcp_pair()
        self.done: asyncio.Future[Any] = self.loop.create_future()
        self.calls = 0
        mod = _compat.speedups("pump", impl)
        self.pump = mod.Pump(self.loop, self.inner_a, self.inner_b, self._done, **kw)

    def _done(self, pump: Any) -> None:
        self.calls += 1
        if not self.done.done():
            self.done.set_result(pump)

    def start(self) -> Rig:
        self.pump.start()
        return self

    async def recv_all(self, sock: socket.socket, limit: int = 1 << 30) -> bytes:
        out = bytearray()
        while len(out) < limit:
            try:
                chunk = await self.loop.sock_recv(sock, 1 << 20)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return bytes(out)

    async def send_and_shut(self, sock: socket.socket, data: bytes) -> None:
        await self.loop.sock_sendall(sock, data)
        sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        # The pump first: closing fds it still polls would break uvloop (libuv aborts).
        self.pump.close()
        for s in (self.outer_a, self.outer_b, self.inner_a, self.inner_b):
            s.close()


def test_bidirectional_bulk_and_orderly_close(impl: str, run: Any) -> None:
    """A few MiB each way at once, then FIN both ways: every byte arrives, pair closes."""
    da, db = blob(3 << 20, 1), blob(3 << 20, 2)

    async def main() -> None:
        rig = Rig(impl).start()
        try:
            _, _, got_b, got_a = await asyncio.gather(
                rig.send_and_shut(rig.outer_a, da), rig.send_and_shut(rig.outer_b, db),
                rig.recv_all(rig.outer_b), rig.recv_all(rig.outer_a))
            assert sha(got_b) == sha(da) and sha(got_a) == sha(db)
            pump = await asyncio.wait_for(rig.done, 5)
            assert pump.error is None and pump.closed
            assert (pump.bytes_ab, pump.bytes_ba) == (len(da), len(db))
            assert rig.inner_a.fileno() == -1 and rig.inner_b.fileno() == -1
            await asyncio.sleep(0.05)
            assert rig.calls == 1
        finally:
            rig.close()

    run(main(), timeout=30)


def test_half_close_then_reply(impl: str, run: Any) -> None:
    """A sends and shuts its write side; B reads to EOF, then still sends a long reply."""
    request, reply = blob(100_000, 3), blob(2 << 20, 4)

    async def main() -> None:
        rig = Rig(impl).start()
        try:
            await rig.send_and_shut(rig.outer_a, request)
            assert await rig.recv_all(rig.outer_b) == request  # EOF propagated to B
            assert not rig.done.done()  # the other direction is still open
            reader = asyncio.ensure_future(rig.recv_all(rig.outer_a))
            await rig.loop.sock_sendall(rig.outer_b, reply)
            rig.outer_b.close()  # full close right after the last byte: nothing may be lost
            assert sha(await asyncio.wait_for(reader, 10)) == sha(reply)
            pump = await asyncio.wait_for(rig.done, 5)
            assert pump.error is None
        finally:
            rig.close()

    run(main(), timeout=30)


def test_head_bytes_and_early_eof(impl: str, run: Any) -> None:
    """Data buffered before pairing goes first; an EOF seen before pairing is propagated."""
    head = blob(300_000, 5)  # larger than a socket buffer: exercises partial writes

    async def main() -> None:
        rig = Rig(impl, head_ab=head, head_ba=b"early-b", eof_a=True).start()
        try:
            assert sha(await rig.recv_all(rig.outer_b)) == sha(head)
            await rig.loop.sock_sendall(rig.outer_b, b"late-b")
            assert await rig.recv_all(rig.outer_a, limit=13) == b"early-blate-b"
            rig.outer_b.shutdown(socket.SHUT_WR)
            assert await rig.recv_all(rig.outer_a) == b""
            assert (await asyncio.wait_for(rig.done, 5)).error is None
        finally:
            rig.close()

    run(main(), timeout=20)


def test_reset_closes_both(impl: str, run: Any) -> None:
    async def main() -> None:
        rig = Rig(impl).start()
        try:
            await rig.loop.sock_sendall(rig.outer_a, b"x" * 1000)
            assert len(await rig.recv_all(rig.outer_b, limit=1000)) == 1000
            rig.outer_a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rig.outer_a.close()
            pump = await asyncio.wait_for(rig.done, 5)
            assert isinstance(pump.error, OSError)
            assert await asyncio.wait_for(rig.recv_all(rig.outer_b), 5) == b""
        finally:
            rig.close()

    run(main(), timeout=20)


def test_close_aborts_once(impl: str, run: Any) -> None:
    async def main() -> None:
        rig = Rig(impl).start()
        try:
            rig.pump.close()
            rig.pump.close()
            assert rig.done.done() and rig.calls == 1
            assert rig.pump.error is None
            assert await asyncio.wait_for(rig.recv_all(rig.outer_a), 5) == b""
            assert await asyncio.wait_for(rig.recv_all(rig.outer_b), 5) == b""
        finally:
            rig.close()

    run(main(), timeout=20)


def test_backpressure_bounds_in_flight_bytes(impl: str, run: Any) -> None:
    """A stalled reader stops the sender long before 64 MiB; then every byte still arrives."""
    chunk = 256 * 1024
    total_cap = 64 << 20

    async def main() -> None:
        rig = Rig(impl).start()
        try:
            data = blob(chunk, 6)
            progress = [0]

            async def sender() -> None:
                while progress[0] < total_cap:
                    await rig.loop.sock_sendall(rig.outer_a, data)
                    progress[0] += chunk
                rig.outer_a.shutdown(socket.SHUT_WR)

            task = asyncio.ensure_future(sender())
            last, still = -1, 0.0
            while still < 0.5 and not task.done():  # wait for progress to stop for 0.5 s
                await asyncio.sleep(0.05)
                still = still + 0.05 if progress[0] == last else 0.0
                last = progress[0]
            assert not task.done(), "sender pushed 64 MiB into a stalled reader"
            stalled_at = progress[0]
            print(f"stalled after {stalled_at / 2**20:.1f} MiB")
            assert stalled_at < 48 << 20, f"relay accepted {stalled_at >> 20} MiB while stalled"
            # Resume reading: everything sent so far and afterwards arrives intact.
            received = 0
            mismatches = 0
            view = memoryview(data)
            while True:
                off = received % chunk
                got = await rig.loop.sock_recv(rig.outer_b, chunk - off)
                if not got:
                    break
                mismatches += got != view[off:off + len(got)]
                received += len(got)
            await task
            assert received == total_cap and mismatches == 0
        finally:
            rig.close()

    run(main(), timeout=40)


@pytest.mark.c_extension
def test_compiled_twin_uses_splice() -> None:
    mod = _compat.speedups("pump", "c")
    assert mod.IMPLEMENTATION == "c" and mod.SPLICE is True
    assert _compat.implementation() == "compiled"  # it probes this very module


@pytest.mark.c_extension
def test_splice_pipes_are_borrowed_only_while_busy(run: Any) -> None:
    """Idle directions hold no pipe; empty pipes are reused; bulk flows grow theirs."""
    mod = _compat.speedups("pump", "c")

    async def main() -> None:
        mod.trim_spare_pipes(0)
        s0 = mod.pipe_stats()
        rig = Rig("c", pipe_size=1 << 20).start()
        try:
            assert rig.pump.pipe_sizes == (0, 0) and mod.spare_pipes() == 0
            for word in (b"hi", b"again"):
                await rig.loop.sock_sendall(rig.outer_a, word)
                assert await rig.loop.sock_recv(rig.outer_b, 10) == word
                assert rig.pump.pipe_sizes == (0, 0)  # given back once empty
                assert mod.spare_pipes() == 1
            s1 = mod.pipe_stats()
            assert (s1["created"] - s0["created"], s1["reused"] - s0["reused"]) == (1, 1)
            sender = asyncio.ensure_future(rig.send_and_shut(rig.outer_a, bytes(16 << 20)))
            assert len(await rig.recv_all(rig.outer_b)) == 16 << 20
            await sender
            assert mod.pipe_stats()["grown"] > s1["grown"]
            rig.outer_b.shutdown(socket.SHUT_WR)
            assert (await asyncio.wait_for(rig.done, 5)).error is None
            assert mod.spare_pipes() >= 1  # shrunk back and kept
        finally:
            rig.close()
        assert mod.trim_spare_pipes(0) >= 1 and mod.spare_pipes() == 0

    run(main(), timeout=20)


def test_twins_expose_the_same_api(impl: str) -> None:
    mod = _compat.speedups("pump", impl)
    for name in ("Pump", "trim_spare_pipes", "spare_pipes", "pipe_stats", "IMPLEMENTATION",
                 "SPLICE"):
        assert hasattr(mod, name), name
    assert mod.IMPLEMENTATION == impl

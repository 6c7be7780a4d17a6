"""Fairness of the tunnel ends' transfer loop: the work of one wake-up is bounded per
connection (bytes and time), and a flow uses the small (fair) budget while another flow of
the process is active. Both twins (``impl``) follow the same rules."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import pytest

from noports import _compat
from noports.crypto.records import C2D, RecordOpener, RecordSealer


def _pairs() -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """(writer, src, dst, reader): src/dst are what a pump sees; both non-blocking."""
    w, src = socket.socketpair()
    dst, r = socket.socketpair()
    for s in (w, src, dst, r):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    src.setblocking(False)
    dst.setblocking(False)
    return w, src, dst, r


def _fill(w: socket.socket, n: int) -> bytes:
    data = os.urandom(n)
    w.setblocking(False)
    sent = w.send(data)
    return data[:sent]


def _read(r: socket.socket, n: int) -> bytes:
    r.settimeout(5)
    out = bytearray()
    while len(out) < n:
        chunk = r.recv(n - len(out))
        assert chunk
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("kind", ["copy", "seal"])
def test_one_step_moves_at_most_the_byte_budget(impl: str, kind: str) -> None:
    x = _compat.speedups("xfer", impl)
    w, src, dst, r = _pairs()
    with w, src, dst, r:
        data = _fill(w, 180_000)
        assert len(data) > 3 * 32768
        if kind == "copy":
            p = x.CopyPump(src, dst)
        else:
            sealer = RecordSealer(os.urandom(32), "sid", C2D, 1)
            p = x.SealPump(src, dst, sealer)
        p.budget = 32768
        p.budget_ns = 10**12
        assert p.step() == x.WANT_READ
        assert p.transferred == 32768  # more was readable: the budget stopped the step
        assert p.step() == x.WANT_READ
        assert p.transferred == 65536
        if kind == "copy":
            assert _read(r, 65536) == data[:65536]


def test_time_budget_zero_means_one_read_per_step(impl: str) -> None:
    x = _compat.speedups("xfer", impl)
    w, src, dst, r = _pairs()
    with w, src, dst, r:
        data = _fill(w, 100_000)
        p = x.CopyPump(src, dst)
        p.budget = 1 << 30
        p.budget_ns = 0
        p.step()
        assert p.transferred == x.INITIAL_BUFSIZE  # one full read of the initial buffer
        p.step()  # the grown buffer takes the rest in one read
        assert p.transferred == len(data) < x.INITIAL_BUFSIZE + x.DEFAULT_BUFSIZE


def test_open_pump_budget_still_reads_whole_records(impl: str) -> None:
    """The record stream side asks for at least one whole record per read, so a small budget
    never stalls it, and every byte arrives in order."""
    x = _compat.speedups("xfer", impl)
    secret = os.urandom(32)
    sealer = RecordSealer(secret, "sid", C2D, 1)
    payload = os.urandom(300_000)
    wire = sealer.seal(payload)
    w, src, dst, r = _pairs()
    with w, src, dst, r:
        w.setblocking(False)
        assert w.send(wire) == len(wire)
        p = x.OpenPump(src, dst, RecordOpener(secret, "sid", C2D, 1))
        p.budget = 1
        p.budget_ns = 10**12
        steps = 0
        while p.transferred < len(payload):
            p.step()
            steps += 1
            assert steps < 100
        assert steps > 1
        assert _read(r, len(payload)) == payload


def test_flow_uses_the_fair_budget_while_an_interactive_flow_is_active(impl: str) -> None:
    """Bulk flows alone or among themselves keep the large budget; once a flow of the
    process moved a small message, every flow uses the fair one for ``FAIR_WINDOW_NS``."""
    x = _compat.speedups("xfer", impl)
    loop = asyncio.new_event_loop()
    socks = [_pairs() for _ in range(2)]
    try:
        time.sleep(x.FAIR_WINDOW_NS / 1e9 + 0.02)  # no light flow from an earlier test
        flows = []
        for _w, src, dst, _r in socks:
            p = x.CopyPump(src, dst)
            flows.append((x.Flow(loop, p, src, dst, lambda: None, lambda e: None), p))
        (f1, p1), (f2, p2) = flows
        _fill(socks[0][0], 3 * x.LIGHT_BYTES)
        f1.drive()  # bulk: no fair mode
        assert (p1.budget, p1.budget_ns) == (x.SOLO_BYTES, x.SOLO_NS)
        f1.drive()
        assert p1.budget == x.SOLO_BYTES and p1.transferred >= x.LIGHT_BYTES
        socks[1][0].sendall(b"x" * 64)
        f2.drive()  # a small message: light
        assert p2.transferred == 64
        f1.drive()
        assert (p1.budget, p1.budget_ns) == (x.FAIR_BYTES, x.FAIR_NS)
        time.sleep(x.FAIR_WINDOW_NS / 1e9 + 0.02)
        f1.drive()  # no small message for longer than the window: the large budget again
        assert (p1.budget, p1.budget_ns) == (x.SOLO_BYTES, x.SOLO_NS)
        assert x.FAIR_BYTES < x.SOLO_BYTES
        f1.stop()
        f2.stop()
    finally:
        for group in socks:
            for s in group:
                s.close()
        loop.close()


def test_urgent_gives_every_flow_the_fair_budget_until_it_ends(impl: str) -> None:
    """``urgent_begin()`` (a connection of the session is being set up) switches every flow
    of the process to the fair budget until the matching ``urgent_end()``; they nest."""
    x = _compat.speedups("xfer", impl)
    loop = asyncio.new_event_loop()
    w, src, dst, r = _pairs()
    try:
        time.sleep(x.FAIR_WINDOW_NS / 1e9 + 0.02)  # no light flow from an earlier test
        assert x.urgent_pending() == 0
        p = x.CopyPump(src, dst)
        f = x.Flow(loop, p, src, dst, lambda: None, lambda e: None)
        _fill(w, 3 * x.LIGHT_BYTES)
        f.drive()
        assert (p.budget, p.budget_ns) == (x.SOLO_BYTES, x.SOLO_NS)
        x.urgent_begin()
        x.urgent_begin()
        f.drive()
        assert (p.budget, p.budget_ns) == (x.FAIR_BYTES, x.FAIR_NS)
        x.urgent_end()
        f.drive()
        assert (p.budget, p.budget_ns) == (x.FAIR_BYTES, x.FAIR_NS)
        x.urgent_end()
        x.urgent_end()  # one too many: ignored
        assert x.urgent_pending() == 0
        f.drive()
        assert (p.budget, p.budget_ns) == (x.SOLO_BYTES, x.SOLO_NS)
        f.stop()
    finally:
        for s in (w, src, dst, r):
            s.close()
        loop.close()


def test_a_bulk_wakeup_first_serves_interactive_flows_that_are_readable(impl: str) -> None:
    """A small message that arrived while the loop was busy does not wait for its own turn:
    the next wake-up of any bulk flow of the process drives it first. A flow leaves the
    interactive set once a wake-up of it moves LIGHT_BYTES or more (and its short reads in
    the next FAIR_WINDOW_NS do not count as messages), and when it stops."""
    x = _compat.speedups("xfer", impl)
    loop = asyncio.new_event_loop()
    socks = [_pairs() for _ in range(2)]
    try:
        flows = []
        for _w, src, dst, _r in socks:
            p = x.CopyPump(src, dst)
            flows.append((x.Flow(loop, p, src, dst, lambda: None, lambda e: None), p))
        (bulk, pb), (light, pl) = flows
        socks[1][0].sendall(b"a" * 64)
        light.drive()  # a small message: now an interactive flow, waiting to read
        assert pl.transferred == 64 and light.reading
        _fill(socks[0][0], 3 * x.LIGHT_BYTES)
        socks[1][0].sendall(b"b" * 64)
        bulk.drive()  # the bulk flow's wake-up serves the waiting message, then its batch
        assert pl.transferred == 128
        assert pb.transferred >= x.LIGHT_BYTES
        assert _read(socks[1][3], 128) == b"a" * 64 + b"b" * 64
        _fill(socks[1][0], 2 * x.LIGHT_BYTES)
        light.drive()  # a big wake-up: no longer interactive, so not served by others
        assert pl.transferred >= 128 + x.LIGHT_BYTES
        socks[1][0].sendall(b"c" * 64)
        before = pl.transferred
        bulk.drive()
        assert pl.transferred == before
        light.drive()  # small, but just after a batch: the tail of a batch, not a message
        assert pl.transferred == before + 64 and not light.light
        time.sleep(x.FAIR_WINDOW_NS / 1e9 + 0.02)
        socks[1][0].sendall(b"d" * 64)
        light.drive()  # a small message well after its last batch: interactive again
        assert pl.transferred == before + 128 and light.light
        light.stop()  # a stopped flow is never driven by others
        assert not light.light
        socks[1][0].sendall(b"e" * 64)
        bulk.drive()
        assert pl.transferred == before + 128
        bulk.stop()
    finally:
        for group in socks:
            for s in group:
                s.close()
        loop.close()


def test_short_reads_of_a_bulk_flow_do_not_turn_fair_mode_on(impl: str) -> None:
    """A bulk flow whose source is momentarily drained moves a few bytes in a wake-up; that
    is the tail of its batches, not an interactive message, so the budget stays solo."""
    x = _compat.speedups("xfer", impl)
    loop = asyncio.new_event_loop()
    w, src, dst, r = _pairs()
    try:
        time.sleep(x.FAIR_WINDOW_NS / 1e9 + 0.02)  # no light flow from an earlier test
        p = x.CopyPump(src, dst)
        f = x.Flow(loop, p, src, dst, lambda: None, lambda e: None)
        _fill(w, 3 * x.LIGHT_BYTES)
        f.drive()
        f.drive()
        assert p.transferred == 3 * x.LIGHT_BYTES
        w.sendall(b"t" * 100)
        f.drive()  # a short read right after batches
        assert p.transferred == 3 * x.LIGHT_BYTES + 100 and not f.light
        f.drive()
        assert (p.budget, p.budget_ns) == (x.SOLO_BYTES, x.SOLO_NS)
        f.stop()
    finally:
        for s in (w, src, dst, r):
            s.close()
        loop.close()

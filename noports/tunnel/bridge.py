"""Bridge a local socket and a relay socket through a transform, on the running event loop.

The byte work is done by the pumps of ``noports._speedups.xfer_{c,py}`` (chosen with
``noports._compat.speedups("xfer", impl)``); this module only tells the loop which file
descriptor each pump waits for. It uses ``add_reader``/``add_writer`` on raw non-blocking
sockets rather than transports: a transport would copy every chunk into its own buffer,
and that copy (plus the allocation) is what DESIGN decision 5 forbids.

Per direction: read readiness on the source, or write readiness on the destination, never
both, so a stalled receiver stops us reading from its peer (backpressure). When a direction
ends in order, its destination is half-closed (``SHUT_WR``), so the far application sees
EOF only after every byte; the other direction carries on until it ends too. Any error
(socket, integrity, truncation) aborts both directions and *resets* the local socket, so a
local application never mistakes an attack or a cut for an orderly end of stream.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from dataclasses import dataclass
from typing import Any

from .. import _compat
from ..crypto.records import C2D, D2C, RecordOpener, RecordSealer
from ..crypto.stream import CtrKeys
from .settings import AeadKeys, TunnelCrypto

log = logging.getLogger("noports.tunnel")

_LINGER_RST = struct.pack("ii", 1, 0)


@dataclass
class BridgeStats:
    """Plaintext bytes moved each way (local->relay is ``up``)."""

    up: int = 0
    down: int = 0


def make_pumps(
    local: socket.socket,
    relay: socket.socket,
    crypto: TunnelCrypto,
    *,
    is_client: bool,
    conn_id: int = 0,
    impl: str | None = None,
) -> tuple[Any, Any]:
    """(local->relay pump, relay->local pump) for ``crypto``."""
    x = _compat.speedups("xfer", impl)
    if crypto is None:
        return x.CopyPump(local, relay), x.CopyPump(relay, local)
    if isinstance(crypto, CtrKeys):
        enc, dec = crypto.contexts(is_client=is_client)
        return x.CopyPump(local, relay, enc), x.CopyPump(relay, local, dec)
    if isinstance(crypto, AeadKeys):
        send_dir, recv_dir = (C2D, D2C) if is_client else (D2C, C2D)
        sealer = RecordSealer(crypto.secret, crypto.session_id, send_dir, conn_id, crypto.suite)
        opener = RecordOpener(crypto.secret, crypto.session_id, recv_dir, conn_id)
        return x.SealPump(local, relay, sealer), x.OpenPump(relay, local, opener)
    raise TypeError(f"unknown tunnel crypto {type(crypto).__name__}")


class _Flow:
    """One direction: drives a pump from readiness callbacks."""

    def __init__(self, bridge: _Bridge, pump: Any, src: socket.socket, dst: socket.socket) -> None:
        self.bridge = bridge
        self.pump = pump
        self.src_fd = src.fileno()
        self.dst = dst
        self.dst_fd = dst.fileno()
        self.reading = False
        self.writing = False
        self.done = False
        self.step = pump.step

    def drive(self) -> None:
        if self.done:
            return
        try:
            code = self.step()
        except BaseException as exc:  # noqa: BLE001 - every failure aborts the bridge
            self.bridge.fail(exc)
            return
        x = self.bridge.x
        loop = self.bridge.loop
        if code == x.WANT_READ:
            if self.writing:
                loop.remove_writer(self.dst_fd)
                self.writing = False
            if not self.reading:
                loop.add_reader(self.src_fd, self.drive)
                self.reading = True
        elif code == x.WANT_WRITE:
            if self.reading:
                loop.remove_reader(self.src_fd)
                self.reading = False
            if not self.writing:
                loop.add_writer(self.dst_fd, self.drive)
                self.writing = True
        else:
            self.stop()
            self.done = True
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            self.bridge.flow_done()

    def stop(self) -> None:
        loop = self.bridge.loop
        if self.reading:
            loop.remove_reader(self.src_fd)
            self.reading = False
        if self.writing:
            loop.remove_writer(self.dst_fd)
            self.writing = False


class _Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop, x: Any) -> None:
        self.loop = loop
        self.x = x
        self.flows: list[_Flow] = []
        self.future: asyncio.Future[None] = loop.create_future()

    def flow_done(self) -> None:
        if all(f.done for f in self.flows) and not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        for f in self.flows:
            f.stop()
            f.done = True
        if not self.future.done():
            self.future.set_exception(exc)


async def bridge(
    local: socket.socket,
    relay: socket.socket,
    crypto: TunnelCrypto,
    *,
    is_client: bool,
    conn_id: int = 0,
    impl: str | None = None,
    pumps: tuple[Any, Any] | None = None,
) -> BridgeStats:
    """Pump ``local`` <-> ``relay`` until both directions end; close both sockets.

    Returns the byte counts. Raises what broke the bridge (``OSError``,
    ``IntegrityError``, ``TruncationError``); in that case the local socket is reset.
    Cancelling the awaiting task tears the bridge down the same way.
    """
    loop = asyncio.get_running_loop()
    x = _compat.speedups("xfer", impl)
    local.setblocking(False)
    relay.setblocking(False)
    for s in (local, relay):
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
    up, down = pumps or make_pumps(
        local, relay, crypto, is_client=is_client, conn_id=conn_id, impl=impl
    )
    b = _Bridge(loop, x)
    b.flows = [_Flow(b, up, local, relay), _Flow(b, down, relay, local)]
    ok = False
    try:
        for f in b.flows:
            f.drive()
        await b.future
        ok = True
    finally:
        for f in b.flows:
            f.stop()
        if not ok:
            try:
                local.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            except OSError:
                pass
        local.close()
        relay.close()
    return BridgeStats(up.transferred, down.transferred)

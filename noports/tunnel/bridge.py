"""Bridge a local socket and a relay socket through a transform, on the running event loop.

The byte work is done by the pumps of ``noports._speedups.xfer_{c,py}`` (chosen with
``noports._compat.speedups("xfer", impl)``), and each direction is driven by that module's
``Flow``, which tells the loop which file descriptor its pump waits for (the compiled one
does it without a Python frame per wakeup); this module wires the two directions together.
It uses ``add_reader``/``add_writer`` on raw non-blocking sockets rather than transports:
a transport would copy every chunk into its own buffer, and that copy (plus the allocation)
is what DESIGN decision 5 forbids.

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
from typing import Any

from .. import _compat
from ..crypto.records import C2D, D2C, RecordOpener, RecordSealer
from ..crypto.stream import CtrKeys
from ..record import Record
from .keys import AeadKeys, TunnelCrypto

log = logging.getLogger("noports.tunnel")

_LINGER_RST = struct.pack("ii", 1, 0)


class BridgeStats(Record):
    """Plaintext bytes moved each way (local->relay is ``up``)."""

    __slots__ = ("up", "down")
    up: int
    down: int

    def __init__(self, up: int = 0, down: int = 0) -> None:
        self.up = up
        self.down = down


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


class _Bridge:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.flows: list[Any] = []
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
    b = _Bridge(loop)
    b.flows = [
        x.Flow(loop, up, local, relay, b.flow_done, b.fail),
        x.Flow(loop, down, relay, local, b.flow_done, b.fail),
    ]
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

"""The 443 single-port listener (spec noports-latest 4): one port for every session.

Every accepted socket gets its own ESCR challenge; the response's ``sid`` picks the live
single-port session, its ``side`` picks A or B, and the signer must be that side's atSign.
The socket then joins that session's FIFO queue exactly as a socket on the session's own
port would. No session owns a listening socket, so creating one costs no bind and no fd,
and the number of sessions is not bounded by the port range.

The listener stands in for a session while a socket authenticates (``Inbound`` talks to it
through the same few callbacks); once verified, the socket is handed to its session.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from .escr_auth import EscrLine
from .inbound import NODELAY_INHERITED, Inbound, accept_fast
from .limits import RelayLimits

Relay = Any  # the relay.relay.Relay that owns this listener (it imports this module)

log = logging.getLogger("noports.relay")

_ACCEPTS_PER_WAKEUP = 64


class SinglePort:
    __slots__ = ("relay", "sock", "port", "limits", "closed", "_authenticating", "auth_ok",
                 "auth_failed", "failures", "refused", "_paused", "_family")

    def __init__(self, relay: Relay, sock: socket.socket) -> None:
        self.relay = relay
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self._family = int(sock.family)
        self.limits: RelayLimits = relay.limits
        self.closed = False
        self._authenticating: dict[Inbound, None] = {}
        self.auth_ok = 0
        self.auth_failed = 0
        self.failures: dict[str, int] = {}
        self.refused = 0
        self._paused = False

    def start(self) -> None:
        self.relay.loop.add_reader(self.sock.fileno(), self._on_accept)
        log.info("single-port listener on port %d", self.port)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self._paused:
            self.relay.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        for inbound in list(self._authenticating):
            inbound.close()
        self._authenticating.clear()

    @property
    def authenticating(self) -> int:
        return len(self._authenticating)

    def _on_accept(self) -> None:
        """Up to ``_ACCEPTS_PER_WAKEUP`` connections per wake-up: the one port takes every
        session's sockets, in bursts, so one wake-up serves many (and the last ``accept``
        failing with EAGAIN is paid once per burst, not per connection)."""
        for _ in range(_ACCEPTS_PER_WAKEUP):
            try:
                conn, ip = accept_fast(self.sock, self._family)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("single port: accept failed: %s", exc)
                self._pause()
                return
            self._admit(conn, ip)
            if self.closed:
                return

    def _pause(self) -> None:
        if self._paused or self.closed:
            return
        self.relay.loop.remove_reader(self.sock.fileno())
        self._paused = True

        def resume() -> None:
            self._paused = False
            if not self.closed:
                self.relay.loop.add_reader(self.sock.fileno(), self._on_accept)

        self.relay.loop.call_later(0.1, resume)

    def _admit(self, conn: socket.socket, ip: str) -> None:
        conn.setblocking(False)
        relay = self.relay
        if not NODELAY_INHERITED:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        verifier = EscrLine(relay, relay.single_session, None, self.limits.max_auth_line)
        inbound = Inbound(self, conn, -1, ip, verifier, relay.loop, relay.clock, gated=True,
                          deadlines=relay.deadlines)
        # a full gate sheds an older unauthenticated socket, never this one
        relay.gate.admit(ip, inbound)
        self._authenticating[inbound] = None
        if not inbound.greet():
            return
        inbound.deadline = relay.clock() + self.limits.auth_timeout
        relay.begin_auth_soon(inbound)

    # -- InboundOwner: the callbacks Inbound makes while it authenticates here ---------------

    def release_gate(self, inbound: Inbound) -> None:
        self.relay.gate.release(inbound.peer_ip, inbound)

    def forget(self, inbound: Inbound) -> None:
        self._authenticating.pop(inbound, None)
        self.auth_ok += 1

    def on_auth_failed(self, inbound: Inbound, reason: str) -> None:
        self._authenticating.pop(inbound, None)
        self.auth_failed += 1
        self.failures[reason] = self.failures.get(reason, 0) + 1
        log.debug("single port: authentication failed from %s (%s)", inbound.peer_ip, reason)

    def on_authenticated(self, inbound: Inbound) -> None:  # pragma: no cover - defensive
        self._authenticating.pop(inbound, None)
        inbound.close()

    def on_waiting_failed(self, inbound: Inbound) -> None:  # pragma: no cover - defensive
        inbound.close()

"""The relay engine: owns sessions, their port pairs, the pre-auth gate and the pump choice.

``srvd``'s control plane turns a session request into ``create_session`` and replies with
``host,port_a,port_b,rvd_nonce``; everything after that happens here, on one event loop,
without tasks: listeners, sockets and pumps are driven by fd callbacks and a few timers.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import secrets
import socket
import sys
from collections.abc import Callable
from types import ModuleType

from .. import _compat
from ..errors import ConfigError, LocalError, PortsExhaustedError
from .inbound import Inbound
from .limits import PreAuthGate, RelayLimits, raise_nofile_limit
from .session import Session, SessionSpec

log = logging.getLogger("noports.relay")

NONCE_BYTES = 24  # 192 bits, url-safe base64 text of 32 characters


def new_rvd_nonce() -> str:
    """A fresh relay nonce from the OS CSPRNG (the official relay used a timestamp)."""
    return secrets.token_urlsafe(NONCE_BYTES)


def select_pump(impl: str | None) -> ModuleType:
    """The pump twin: splice where the compiled twin can use it, else the pure copy loop."""
    mod = _compat.speedups("pump", impl)
    if impl is None and not getattr(mod, "SPLICE", False):
        mod = _compat.speedups("pump", "py")
    return mod


class Relay:
    """A set of relay sessions bound to one address.

    ``port_range=(lo, hi)`` (inclusive) restricts the listening ports; ``None`` lets the OS
    choose. ``impl`` forces the pump twin ("c" or "py"); ``clock`` replaces ``loop.time``
    for every deadline decision (tests and simulations).
    """

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        port_range: tuple[int, int] | None = None,
        limits: RelayLimits | None = None,
        impl: str | None = None,
        clock: Callable[[], float] | None = None,
        advertise_host: str | None = None,
    ) -> None:
        if port_range is not None:
            lo, hi = port_range
            if not (1 <= lo <= hi <= 65535) or hi - lo < 1:
                raise ConfigError(f"port range {lo}-{hi} must hold at least two ports in 1-65535")
        self.bind_host = bind_host
        self.advertise_host = advertise_host or bind_host
        self.port_range = port_range
        self.limits = limits or RelayLimits()
        self.impl = impl
        self.pump = select_pump(impl)
        self._clock_arg = clock
        self.gate = PreAuthGate(self.limits.max_preauth, self.limits.max_preauth_per_ip)
        self._sessions: set[Session] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._family: int | None = None
        self._closing = False
        self._fresh: list[Inbound] = []  # accepted this loop pass, first read still to do

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise LocalError("relay is not started")
        return self._loop

    @property
    def clock(self) -> Callable[[], float]:
        return self._clock_arg or self.loop.time

    @property
    def family(self) -> int | None:
        """The address family the relay listens on (None before ``start``)."""
        return self._family

    @property
    def sessions(self) -> frozenset[Session]:
        return frozenset(self._sessions)

    async def start(self) -> None:
        if self._loop is not None:
            raise LocalError("relay already started")
        self._loop = asyncio.get_running_loop()
        infos = await self._loop.getaddrinfo(self.bind_host, 0, type=socket.SOCK_STREAM,
                                             flags=socket.AI_PASSIVE)
        if not infos:
            raise ConfigError(f"cannot resolve relay bind address {self.bind_host!r}")
        self._family = infos[0][0]
        self._sockaddr = infos[0][4]
        limit = raise_nofile_limit()
        log.info("relay started on %s (pump %s, fd limit %s)", self.bind_host,
                 getattr(self.pump, "IMPLEMENTATION", "?"), limit)

    async def create_session(self, spec: SessionSpec) -> Session:
        if self._loop is None or self._closing:
            raise LocalError("relay is not running")
        for side, auth, key in (("A", spec.auth_a, spec.public_key_a),
                                ("B", spec.auth_b, spec.public_key_b)):
            if auth and key is None:
                raise ConfigError(f"side {side} requires authentication but has no public key")
        rvd_nonce = spec.rvd_nonce if spec.rvd_nonce is not None else new_rvd_nonce()
        listeners = self._bind_pair()
        session = Session(self, spec, rvd_nonce, listeners, self.advertise_host, self.pump)
        self._sessions.add(session)
        session._start()
        return session

    async def close(self) -> None:
        """Close every session (and with them every socket the relay holds)."""
        self._closing = True
        for session in list(self._sessions):
            session.close("cancelled")
        # Spare pipes belong to no pair; closing them leaves no fd behind the relay.
        self.pump.trim_spare_pipes(0)
        await asyncio.sleep(0)

    # -- SessionHost: callbacks from Session -------------------------------------------

    def begin_auth_soon(self, inbound: Inbound) -> None:
        """Queue an accepted socket's first read; one loop callback serves the whole batch."""
        if not self._fresh:
            self.loop.call_soon(self._begin_fresh)
        self._fresh.append(inbound)

    def _begin_fresh(self) -> None:
        fresh, self._fresh = self._fresh, []
        for inbound in fresh:
            inbound.begin_auth()  # a no-op for sockets closed meanwhile

    def session_closed(self, session: Session) -> None:
        self._sessions.discard(session)

    # -- ports --------------------------------------------------------------------------

    def _listener(self, port: int) -> socket.socket:
        assert self._family is not None
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            addr = (self._sockaddr[0], port, *self._sockaddr[2:])
            sock.bind(addr)
            sock.listen(self.limits.listen_backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        if self.port_range is None:
            a = self._listener(0)
            try:
                b = self._listener(0)
            except BaseException:
                a.close()
                raise
            return a, b
        lo, hi = self.port_range
        ports = list(range(lo, hi + 1))
        start = random.randrange(len(ports))  # noqa: S311 - spreading, not security
        ports = ports[start:] + ports[:start]
        got: list[socket.socket] = []
        for port in ports:
            try:
                got.append(self._listener(port))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                    for s in got:
                        s.close()
                    raise
                continue
            if len(got) == 2:
                return got[0], got[1]
        for s in got:
            s.close()
        raise PortsExhaustedError(
            f"no two free ports in relay port range {lo}-{hi} on {self.bind_host}")

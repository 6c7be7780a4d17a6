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
import time
from collections.abc import Awaitable, Callable
from types import ModuleType

from .. import _compat
from ..crypto import rsa
from ..errors import ConfigError, LocalError, PortsExhaustedError
from .inbound import AuthDeadlines, Inbound
from .limits import PreAuthGate, RelayLimits, raise_nofile_limit
from .session import Session, SessionSpec
from .single_port import SinglePort

log = logging.getLogger("noports.relay")

NONCE_BYTES = 24  # 192 bits, url-safe base64 text of 32 characters
SIGNING_KEY_TTL = 60.0  # seconds a fetched ESCR signing key is trusted
SIGNING_MISS_TTL = 1.0  # seconds a missing one is remembered as missing (it may be on its way)
PARSED_KEYS_MAX = 1024  # distinct prefetched signing-key values kept parsed
NOT_BOUND_443 = "Client requested port 443 but this relay is not bound to port 443"


class NotBound443Error(ConfigError):
    """An only443 session on a relay without the single-port listener (official NACK text)."""


def parse_signing_key(value: str | None) -> rsa.PublicKey | None:
    """A published ESCR signing key (base64 SPKI RSA); None for anything else."""
    if not value or value == "null" or value.lstrip().startswith("{"):
        return None  # JSON advertisements (trunk ML-DSA) are not supported
    try:
        return rsa.public_from_b64(value)
    except Exception:  # noqa: BLE001 - a bad published value verifies nothing
        return None


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
        single_port: int | None = None,
        lookup: Callable[[str], Awaitable[str | None]] | None = None,
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
        self.deadlines: AuthDeadlines | None = None  # every socket's auth deadline (at start)
        # ESCR: ``lookup(uri)`` fetches a public signing key's value (srvd: over the control
        # link, a plookup); results are cached briefly, concurrent fetches share one call.
        self.lookup = lookup
        self._signing: dict[str, tuple[rsa.PublicKey | None, float]] = {}
        self._fetching: dict[str, list[Callable[[rsa.PublicKey | None], None]]] = {}
        self._fetch_tasks: set[asyncio.Task[None]] = set()
        self._parsed: dict[str, rsa.PublicKey | None] = {}  # published value -> key
        self._single_port_arg = single_port
        self.single: SinglePort | None = None
        self._single_sessions: dict[str, Session] = {}

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
        self.deadlines = AuthDeadlines(self._loop, self.clock)
        infos = await self._loop.getaddrinfo(self.bind_host, 0, type=socket.SOCK_STREAM,
                                             flags=socket.AI_PASSIVE)
        if not infos:
            raise ConfigError(f"cannot resolve relay bind address {self.bind_host!r}")
        self._family = infos[0][0]
        self._sockaddr = infos[0][4]
        limit = raise_nofile_limit()
        if self._single_port_arg is not None:
            self.single = SinglePort(self, self._listener(self._single_port_arg))
            self.single.start()
        log.info("relay started on %s (pump %s, fd limit %s)", self.bind_host,
                 getattr(self.pump, "IMPLEMENTATION", "?"), limit)

    async def create_session(self, spec: SessionSpec) -> Session:
        if self._loop is None or self._closing:
            raise LocalError("relay is not running")
        escr = spec.auth_mode == "escr"
        if spec.auth_mode not in ("payload", "escr"):
            raise ConfigError(f"unknown relay auth mode {spec.auth_mode!r}")
        if escr and (spec.auth_a or spec.auth_b):
            from ..crypto.encoding import b64d
            from ..errors import ProtocolError

            try:
                b64d(spec.relay_auth_aes_key or "", what="relayAuthAesKey", length=32)
            except ProtocolError as exc:
                raise ConfigError(f"escr session without a usable key: {exc}") from None
        for side, auth, key in (("A", spec.auth_a, spec.public_key_a),
                                ("B", spec.auth_b, spec.public_key_b)):
            if auth and key is None and not escr:
                raise ConfigError(f"side {side} requires authentication but has no public key")
        rvd_nonce = spec.rvd_nonce if spec.rvd_nonce is not None else new_rvd_nonce()
        if spec.only443:
            if self.single is None:
                raise NotBound443Error(NOT_BOUND_443)
            if not (escr and spec.auth_a and spec.auth_b):
                raise ConfigError("a single-port session must authenticate both sides with escr")
            if spec.session_id in self._single_sessions:
                raise ConfigError(f"session {spec.session_id} is already live")
            session = Session(self, spec, rvd_nonce, None, self.advertise_host, self.pump,
                              single_port=self.single.port)
            self._single_sessions[spec.session_id] = session
        else:
            listeners = self._bind_pair()
            try:
                session = Session(self, spec, rvd_nonce, listeners, self.advertise_host,
                                  self.pump)
            except BaseException:  # e.g. a session id that cannot be encoded: no port leaks
                for lsock in listeners:
                    lsock.close()
                raise
        self._sessions.add(session)
        session._start()
        return session

    # -- ESCR signing keys ---------------------------------------------------------------

    def single_session(self, session_id: str) -> Session | None:
        return self._single_sessions.get(session_id)

    def signing_key(self, uri: str, spec: SessionSpec) -> rsa.PublicKey | None | bool:
        """The key at ``uri`` if known (None = known missing), else False (fetch it)."""
        if spec.prefetched and uri in spec.prefetched:
            return self._parsed_key(spec.prefetched[uri])
        hit = self._signing.get(uri)
        if hit is not None:
            key, until = hit
            if time.monotonic() < until:
                return key
            del self._signing[uri]
        if self.lookup is None:
            return None
        return False

    def _parsed_key(self, value: str) -> rsa.PublicKey | None:
        """``parse_signing_key(value)``, parsed once per distinct value (not per socket:
        every socket of a session repeats the same prefetched key)."""
        cache = self._parsed
        if value in cache:
            return cache[value]
        key = parse_signing_key(value)
        if len(cache) >= PARSED_KEYS_MAX:
            cache.clear()
        cache[value] = key
        return key

    def fetch_signing_key(self, uri: str, done: Callable[[rsa.PublicKey | None], None]) -> None:
        waiting = self._fetching.get(uri)
        if waiting is not None:
            waiting.append(done)
            return
        self._fetching[uri] = [done]
        task = self.loop.create_task(self._fetch(uri))
        self._fetch_tasks.add(task)
        task.add_done_callback(self._fetch_tasks.discard)

    async def _fetch(self, uri: str) -> None:
        key: rsa.PublicKey | None = None
        try:
            assert self.lookup is not None
            key = parse_signing_key(await self.lookup(uri))
        except Exception as exc:  # noqa: BLE001 - a failed lookup refuses the socket
            log.debug("signing key %s: lookup failed: %s", uri, exc)
        ttl = SIGNING_KEY_TTL if key is not None else SIGNING_MISS_TTL
        if len(self._signing) > 10_000:
            now = time.monotonic()
            self._signing = {k: v for k, v in self._signing.items() if v[1] > now}
        self._signing[uri] = (key, time.monotonic() + ttl)
        for cb in self._fetching.pop(uri, []):
            cb(key)

    async def close(self) -> None:
        """Close every session (and with them every socket the relay holds)."""
        self._closing = True
        if self.single is not None:
            self.single.close()
        for task in list(self._fetch_tasks):
            task.cancel()
        for session in list(self._sessions):
            session.close("cancelled")
        if self.deadlines is not None:
            self.deadlines.close()
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
        if self._single_sessions.get(session.session_id) is session:
            del self._single_sessions[session.session_id]

    # -- ports --------------------------------------------------------------------------

    def _listener(self, port: int) -> socket.socket:
        assert self._family is not None
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            addr = (self._sockaddr[0], port, *self._sockaddr[2:])
            sock.bind(addr)
            try:  # accepted sockets inherit it on Linux (inbound.NODELAY_INHERITED)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
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

"""One relay session: two listening ports, socket authentication, FIFO pairing, pumps.

Official semantics (spec 4.3) with the holes closed: any number of sockets per side; each
authenticates on its own (a failure closes that socket only and does not use up a slot);
authenticated sockets pair in the order they authenticated; data received before pairing
is kept (bounded) and delivered first. The session ends "lonely" if no pair forms within
``pair_timeout`` and "happy" when its last pair ends; ``close()`` ends it "cancelled".
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from ..crypto import rsa
from ..crypto.encoding import b64d
from ..crypto.envelope import RelayLineCheck
from ..errors import ProtocolError
from .auth import AuthLine
from .escr_auth import EscrLine
from .inbound import NODELAY_INHERITED, WAITING, AuthDeadlines, Inbound, accept_fast
from .limits import PreAuthGate, RelayLimits

log = logging.getLogger("noports.relay")

SIDES = ("A", "B")


class SessionHost(Protocol):
    """The port a Session reports to: the relay that made it (``relay.relay.Relay``)."""

    @property
    def limits(self) -> RelayLimits: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    @property
    def gate(self) -> PreAuthGate: ...

    def begin_auth_soon(self, inbound: Inbound) -> None: ...

    def session_closed(self, session: Session) -> None: ...

    # ESCR verifiers on this session's ports fetch signing keys through the host (KeySource)
    def signing_key(self, uri: str, spec: Any) -> rsa.PublicKey | None | bool: ...

    def fetch_signing_key(
        self, uri: str, done: Callable[[rsa.PublicKey | None], None]
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class SessionSpec:
    """What a session request asks for (spec 4.2, request R1)."""

    session_id: str
    atsign_a: str
    atsign_b: str
    client_nonce: str
    auth_a: bool = True
    auth_b: bool = True
    public_key_a: rsa.PublicKey | None = None
    public_key_b: rsa.PublicKey | None = None
    rvd_nonce: str | None = None
    auth_mode: str = "payload"  # relayAuthMode: "payload" (auth line) or "escr"
    relay_auth_aes_key: str | None = None  # relayAuthAesKey (base64 32 bytes), ESCR only
    only443: bool = False  # on the single-port listener, no ports of its own
    prefetched: dict[str, str] | None = None  # ESCR signing keys already fetched: uri -> b64


@dataclass(slots=True)
class SessionStats:
    """Counters of one session; ``outcome`` is its "mood" once closed.

    Moods: ``happy`` (at least one pair formed and all ended), ``lonely`` (no pair within
    the pair timeout), ``cancelled`` (closed by the relay or by ``Session.close``).
    """

    bytes_a_to_b: int = 0
    bytes_b_to_a: int = 0
    pairs: int = 0
    pairs_failed: int = 0
    auth_ok: int = 0
    auth_failed: int = 0
    refused: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    outcome: str | None = None


class _Seen(list):  # type: ignore[type-arg]
    """Digests of verified lines (at most ``auth.MAX_REMEMBERED``): the ``add``/``in``/``len``
    that ``AuthLine`` uses, in a list (a set costs 216 bytes per session side)."""

    __slots__ = ()

    def add(self, digest: bytes) -> None:
        if digest not in self:
            self.append(digest)


class Session:
    """Created by ``Relay.create_session``; not constructed directly."""

    __slots__ = ("spec", "session_id", "rvd_nonce", "host", "port_a", "port_b", "_stats",
                 "_done_ab", "_done_ba", "limits", "_relay", "_loop", "_clock", "_gate",
                 "_pump_mod", "_listeners", "_auth", "_keys", "_verified", "_line_check",
                 "_authenticating", "_pending", "_pumps", "_closed_fut", "_created", "_timer",
                 "_accept_paused", "closed", "escr_key", "_deadlines",
                 "_family")

    def __init__(
        self,
        relay: SessionHost,
        spec: SessionSpec,
        rvd_nonce: str,
        listeners: tuple[socket.socket, socket.socket] | None,
        host: str,
        pump_mod: ModuleType,
        single_port: int = 0,
    ) -> None:
        self.spec = spec
        self.session_id = spec.session_id
        self.rvd_nonce = rvd_nonce
        self.host = host
        # A single-port (443) session has no listeners: its sockets come from the relay's one
        # listener, routed here by the ESCR response's session id and side.
        self.port_a: int = listeners[0].getsockname()[1] if listeners else single_port
        self.port_b: int = listeners[1].getsockname()[1] if listeners else single_port
        self._stats = SessionStats()
        self._done_ab = 0  # bytes of pairs that have ended
        self._done_ba = 0
        self.limits: RelayLimits = relay.limits
        self._relay = relay
        self._loop: asyncio.AbstractEventLoop = relay.loop
        self._clock: Callable[[], float] = relay.clock
        self._gate: PreAuthGate = relay.gate
        self._deadlines: AuthDeadlines | None = getattr(relay, "deadlines", None)
        self._pump_mod = pump_mod
        self._listeners: list[socket.socket | None] = list(listeners or (None, None))
        self._family = int(listeners[0].family) if listeners else int(socket.AF_INET)
        self._auth = (spec.auth_a, spec.auth_b)
        self._keys = (spec.public_key_a, spec.public_key_b)
        self._verified: tuple[_Seen, _Seen] = (_Seen(), _Seen())
        # The auth line's expected bytes, digest and exact spelling, once per session. Made
        # for every session, as the expected bytes always were: a session id or nonce that
        # cannot be encoded fails here, at creation, not in a socket's accept callback.
        self._line_check = RelayLineCheck(spec.session_id, spec.client_nonce, rvd_nonce)
        # Dicts and lists, not sets and deques: an idle session holds them empty (64 and
        # 56 bytes against 216 and 624), and a side never has more than a few dozen waiting.
        self._authenticating: dict[Inbound, None] = {}
        self._pending: tuple[list[Inbound], list[Inbound]] = ([], [])
        self._pumps: dict[Any, None] = {}
        self._closed_fut: asyncio.Future[SessionStats] | None = None  # made by wait_closed
        self._created = self._clock()
        self._timer: asyncio.TimerHandle | None = None
        self._accept_paused = 0  # bit 1 << side: that listener backs off after an error
        self.closed = False
        # ESCR: the relayAuthAesKey decoded once, not per socket (None: not usable, and then
        # each socket is refused as before, by decoding the text again)
        self.escr_key: bytes | None = None
        if spec.auth_mode == "escr" and spec.relay_auth_aes_key:
            try:
                self.escr_key = b64d(spec.relay_auth_aes_key, what="relayAuthAesKey", length=32)
            except ProtocolError:
                pass

    # -- lifecycle ----------------------------------------------------------------------

    def _start(self) -> None:
        for side in (0, 1):
            self._listen(side)
        self._timer = self._loop.call_later(self.limits.pair_timeout, self._check_lonely)
        log.info("session %s started for %s to %s on ports (%d, %d)", self.session_id,
                 self.spec.atsign_a, self.spec.atsign_b, self.port_a, self.port_b)

    def _listen(self, side: int) -> None:
        lsock = self._listeners[side]
        if lsock is not None:
            self._loop.add_reader(lsock.fileno(), self._on_accept, side)

    async def wait_closed(self) -> SessionStats:
        """Wait until the session has ended; returns its final stats."""
        if self._closed_fut is None:
            self._closed_fut = self._loop.create_future()
            if self.closed:
                self._closed_fut.set_result(self._stats)
        return await asyncio.shield(self._closed_fut)

    @property
    def stats(self) -> SessionStats:
        """Counters so far; byte counts include the pairs still running."""
        st = self._stats
        st.bytes_a_to_b = self._done_ab + sum(p.bytes_ab for p in self._pumps)
        st.bytes_b_to_a = self._done_ba + sum(p.bytes_ba for p in self._pumps)
        return st

    @property
    def live_pairs(self) -> int:
        return len(self._pumps)

    @property
    def pending_counts(self) -> tuple[int, int, int]:
        """(authenticating, waiting on A, waiting on B): for tests and metrics."""
        return len(self._authenticating), len(self._pending[0]), len(self._pending[1])

    def close(self, outcome: str = "cancelled") -> None:
        """End the session now: listeners, waiting sockets and live pairs are all closed."""
        if self.closed:
            return
        self.closed = True
        self._stats.outcome = outcome
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for side, lsock in enumerate(self._listeners):
            if lsock is not None:
                if not self._accept_paused & (1 << side):
                    self._loop.remove_reader(lsock.fileno())
                lsock.close()
                self._listeners[side] = None
        for inbound in list(self._authenticating):
            inbound.close()
        self._authenticating.clear()
        for queue in self._pending:
            for inbound in queue:
                inbound.close()
            queue.clear()
        for pump in list(self._pumps):
            pump.close()
        stats = self.stats
        self._relay.session_closed(self)
        log.info("session %s finished (%s): %d pairs, %d bytes A->B, %d bytes B->A, "
                 "%d auth failures %s, %d refused", self.session_id, outcome, stats.pairs,
                 stats.bytes_a_to_b, stats.bytes_b_to_a, stats.auth_failed,
                 stats.failures or "", stats.refused)
        if self._closed_fut is not None and not self._closed_fut.done():
            self._closed_fut.set_result(stats)

    def _check_lonely(self) -> None:
        self._timer = None
        if self.closed or self._stats.pairs:
            return
        left = self._created + self.limits.pair_timeout - self._clock()
        if left > 0:
            self._timer = self._loop.call_later(left, self._check_lonely)
            return
        self.close("lonely")

    # -- accepting ----------------------------------------------------------------------

    def _on_accept(self, side: int) -> None:
        """One connection per wake-up: the listener stays readable (level-triggered) while
        more wait, so nothing is lost, and the usual single connection costs no second
        ``accept`` that can only fail with EAGAIN (a syscall and an exception per wake-up)."""
        lsock = self._listeners[side]
        if lsock is None:
            return
        try:
            conn, ip = accept_fast(lsock, self._family)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            # EMFILE/ENFILE/ENOBUFS: back off instead of spinning on a readable listener.
            log.warning("session %s: accept failed on side %s: %s", self.session_id,
                        SIDES[side], exc)
            self._pause_accept(side)
            return
        self._admit(side, conn, ip)

    def _pause_accept(self, side: int) -> None:
        lsock = self._listeners[side]
        if lsock is None or self._accept_paused & (1 << side):
            return
        self._loop.remove_reader(lsock.fileno())
        self._accept_paused |= 1 << side

        def resume() -> None:
            self._accept_paused &= ~(1 << side)
            if not self.closed:
                self._listen(side)

        self._loop.call_later(0.1, resume)

    def _admit(self, side: int, conn: socket.socket, ip: str) -> None:
        conn.setblocking(False)
        needs_auth = self._auth[side]
        if not NODELAY_INHERITED:
            try:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        verifier: Any = None
        if needs_auth and self.spec.auth_mode == "escr":
            verifier = EscrLine(self._relay, self._resolve, side, self.limits.max_auth_line)
        elif needs_auth:
            key = self._keys[side]
            assert key is not None
            verifier = AuthLine(self.session_id, self.spec.client_nonce, self.rvd_nonce, key,
                                self.limits.max_auth_line, verified=self._verified[side],  # type: ignore[arg-type]
                                check=self._line_check)
        inbound = Inbound(self, conn, side, ip, verifier, self._loop, self._clock,
                          gated=needs_auth, deadlines=self._deadlines)
        if needs_auth:
            # A full gate sheds an older unauthenticated socket, never this one.
            self._gate.admit(ip, inbound)
            self._authenticating[inbound] = None
            if not inbound.greet():  # the ESCR challenge could not be sent: closed
                return
            # The absolute deadline runs from the accept; the first read waits for the
            # next loop pass, after every listener that woke with this one has accepted
            # (a burst on one side must not fill its pending queue before the other side
            # is accepted), as a reader registered here would have.
            inbound.deadline = self._clock() + self.limits.auth_timeout
            self._relay.begin_auth_soon(inbound)
        else:
            self._enqueue(inbound)
            if inbound.state == WAITING:  # not paired at once: read what it sends meanwhile
                inbound.start(self.limits.auth_timeout)

    def _resolve(self, session_id: str) -> Session | None:
        """ESCR on this session's own ports: the response must name this session."""
        return self if session_id == self.session_id else None

    # -- InboundOwner: callbacks from Inbound ------------------------------------------

    def release_gate(self, inbound: Inbound) -> None:
        self._gate.release(inbound.peer_ip, inbound)

    def forget(self, inbound: Inbound) -> None:
        self._authenticating.pop(inbound, None)

    def on_auth_failed(self, inbound: Inbound, reason: str) -> None:
        self._authenticating.pop(inbound, None)
        self._stats.auth_failed += 1
        self._stats.failures[reason] = self._stats.failures.get(reason, 0) + 1
        # DEBUG per socket (a flood must not flood the log); the session's end line has totals.
        log.debug("session %s: authentication failed on side %s from %s (%s)",
                  self.session_id, SIDES[inbound.side], inbound.peer_ip, reason)

    def on_authenticated(self, inbound: Inbound) -> None:
        self._authenticating.pop(inbound, None)
        self._stats.auth_ok += 1
        log.debug("session %s: side %s authenticated from %s", self.session_id,
                  SIDES[inbound.side], inbound.peer_ip)
        self._enqueue(inbound)

    def on_waiting_failed(self, inbound: Inbound) -> None:
        queue = self._pending[inbound.side]
        try:
            queue.remove(inbound)
        except ValueError:
            pass
        inbound.close()

    # -- pairing ------------------------------------------------------------------------

    def _enqueue(self, inbound: Inbound) -> None:
        queue = self._pending[inbound.side]
        if len(queue) >= self.limits.max_pending_per_side:
            self._stats.refused += 1
            log.info("session %s: side %s has %d sockets waiting, refusing another",
                     self.session_id, SIDES[inbound.side], len(queue))
            inbound.close()
            return
        queue.append(inbound)
        self._pair()

    def _pair(self) -> None:
        qa, qb = self._pending
        while qa and qb and not self.closed:
            a = qa.pop(0)
            b = qb.pop(0)
            if a.state != WAITING or b.state != WAITING:  # pragma: no cover - defensive
                for x in (a, b):
                    if x.state == WAITING:
                        self._pending[x.side].insert(0, x)
                continue
            # Nothing buffered and no EOF on either side: each pump direction starts by
            # reading its source, so a waiting socket's reader is handed over, not removed
            # and registered again (see ``Inbound.detach``).
            handover = not (a.buf or b.buf or a.eof or b.eof)
            sock_a, head_ab, eof_a = a.detach(handover)
            sock_b, head_ba, eof_b = b.detach(handover)
            pump = self._pump_mod.Pump(
                self._loop, sock_a, sock_b, self._on_pump_done,
                head_ab=head_ab, head_ba=head_ba, eof_a=eof_a, eof_b=eof_b,
                bufsize=self.limits.pump_buffer, pipe_size=self.limits.pipe_size,
            )
            self._pumps[pump] = None
            self._stats.pairs += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            log.debug("session %s: pair %d formed", self.session_id, self._stats.pairs)
            pump.start()

    def _on_pump_done(self, pump: Any) -> None:
        self._pumps.pop(pump, None)
        self._done_ab += pump.bytes_ab
        self._done_ba += pump.bytes_ba
        if pump.error is not None:
            self._stats.pairs_failed += 1
            log.debug("session %s: a pair ended with %s", self.session_id,
                      type(pump.error).__name__)
        if not self._pumps and not self.closed:
            self.close("happy")

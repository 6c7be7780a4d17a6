"""One accepted relay socket before it is paired: authentication, then waiting.

The thin asyncio adapter around ``auth.AuthLine``. It reads with ``add_reader`` on the raw
fd (no transport, so the pump can take the fd over later without copies), enforces the
absolute auth deadline from an injected clock, and buffers a bounded amount of data while
waiting for a partner. It never logs received bytes: the auth line is a bearer token.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import sys
from collections.abc import Callable
from typing import Protocol

from .auth import Outcome, Verdict
from .limits import RelayLimits

AUTHENTICATING = 0
WAITING = 1
DETACHED = 2
CLOSED = 3

_LINGER_RESET = struct.pack("ii", 1, 0)

# Linux copies TCP_NODELAY from a listening socket to the sockets it accepts: the relay sets
# it on its listeners, and an accepted socket needs no setsockopt of its own there.
NODELAY_INHERITED = sys.platform == "linux"


def accept_fast(lsock: socket.socket, family: int) -> tuple[socket.socket, str]:
    """``lsock.accept()`` (``family`` is the listener's) returning the peer's address only,
    without ``socket.accept``'s per-call enum conversions of the listener's family and type.
    Non-blocking listeners only; raises what ``accept`` raises."""
    fd, addr = lsock._accept()  # type: ignore[attr-defined]  # what socket.accept calls
    return socket.socket(family, socket.SOCK_STREAM, 0, fd), addr[0]


class Verifier(Protocol):
    """What authenticates a socket: ``AuthLine`` (payload) or ``EscrLine`` (ESCR). ESCR adds
    optional attributes read with getattr: greeting, ok_line, fail_line, target, when_done."""

    def want(self) -> int: ...

    def feed(self, data: bytes) -> Verdict: ...

    def eof(self) -> Verdict: ...


class InboundOwner(Protocol):
    """The port an Inbound reports to: its session (``relay.session.Session`` implements it)."""

    @property
    def limits(self) -> RelayLimits: ...

    def on_authenticated(self, inbound: Inbound) -> None: ...

    def on_auth_failed(self, inbound: Inbound, reason: str) -> None: ...

    def on_waiting_failed(self, inbound: Inbound) -> None: ...

    def release_gate(self, inbound: Inbound) -> None: ...

    def forget(self, inbound: Inbound) -> None:
        """A socket verified here belongs to another session now (the single port)."""


def reset_close(sock: socket.socket) -> None:
    """Close with RST: refused or failed peers leave no TIME_WAIT or unread data behind."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass
    sock.close()


class AuthDeadlines:
    """The auth deadlines of a relay's authenticating sockets, behind one timer.

    A per-socket ``call_later`` costs a timer handle made and cancelled for every socket that
    does not authenticate within its first read (every ESCR socket: the relay speaks first).
    Every deadline is its accept time plus the same ``auth_timeout``, so they arrive in
    order and the queue (a dict, in insertion order) is in deadline order: the one timer
    waits for the oldest and, when it fires, expires every socket that is due and waits for
    the next. Leaving the queue is a dict pop. ``add`` refuses (False) a deadline earlier
    than one already queued; that socket keeps a timer of its own, so none is ever late.
    """

    __slots__ = ("_loop", "_clock", "_queue", "_timer", "_last")

    def __init__(self, loop: asyncio.AbstractEventLoop, clock: Callable[[], float]) -> None:
        self._loop = loop
        self._clock = clock
        self._queue: dict[Inbound, None] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._last = float("-inf")  # the latest deadline queued so far

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, inbound: Inbound) -> bool:
        deadline = inbound.deadline
        if deadline < self._last:
            return False
        self._last = deadline
        self._queue[inbound] = None
        if self._timer is None:
            self._arm(deadline)
        return True

    def discard(self, inbound: Inbound) -> None:
        self._queue.pop(inbound, None)

    def _arm(self, when: float) -> None:
        self._timer = self._loop.call_later(max(0.0, when - self._clock()), self._fire)

    def _fire(self) -> None:
        self._timer = None
        queue = self._queue
        now = self._clock()
        while queue:
            head = next(iter(queue))
            if head.deadline > now:  # not due (or the injected clock runs behind the loop's)
                self._arm(head.deadline)
                return
            del queue[head]
            head.deadline_passed()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._queue.clear()


class Inbound:
    """An accepted socket on side 0 (A) or 1 (B) of a session, until paired or closed."""

    __slots__ = ("session", "sock", "fd", "side", "peer_ip", "state", "verifier", "buf",
                 "eof", "deadline", "_timer", "_reading", "_loop", "_clock", "_gated",
                 "_deadlines", "_queued")

    def __init__(
        self,
        session: InboundOwner,
        sock: socket.socket,
        side: int,
        peer_ip: str,
        verifier: Verifier | None,
        loop: asyncio.AbstractEventLoop,
        clock: Callable[[], float],
        gated: bool,
        deadlines: AuthDeadlines | None = None,
    ) -> None:
        self.session = session
        self.sock = sock
        self.fd = sock.fileno()
        self.side = side
        self.peer_ip = peer_ip
        self.verifier = verifier
        self.state = AUTHENTICATING if verifier is not None else WAITING
        self.buf = bytearray()
        self.eof = False
        self.deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading = False
        self._loop = loop
        self._clock = clock
        self._gated = gated  # holds a PreAuthGate slot until it leaves AUTHENTICATING
        self._deadlines = deadlines  # the relay's shared deadline queue (else a timer each)
        self._queued = False

    def start(self, auth_timeout: float) -> None:
        """Start reading now (the deadline, when authenticating, runs from this call)."""
        if self.state == AUTHENTICATING:
            self.deadline = self._clock() + auth_timeout
            self.begin_auth()
        else:
            self._resume()

    def begin_auth(self) -> None:
        """Read the line if it is already there; otherwise arm the deadline and a reader.

        ``deadline`` must be set (at accept). The line usually arrives with the connection,
        so most sockets never cost a timer or an fd registration. A verifier that speaks
        first (ESCR's challenge) has no answer to read yet: no read is tried (it could only
        fail with EAGAIN), the reader is armed at once.
        """
        if self.state != AUTHENTICATING:
            return
        if getattr(self.verifier, "greeting", None) is None:
            self._read_auth()
        if self.state == AUTHENTICATING:
            left = self.deadline - self._clock()
            if left <= 0:
                self._fail("timeout")
                return
            if self._deadlines is not None and self._deadlines.add(self):
                self._queued = True
            else:
                self._timer = self._loop.call_later(left, self._check_deadline)
            if self.verifier is not None and self.verifier.want() <= 0:
                return  # ESCR: waiting for the signing key, not for bytes
        elif self.state != WAITING or len(self.buf) >= self.session.limits.prepair_buffer:
            return
        self._resume()

    # -- reading ------------------------------------------------------------------------

    def _resume(self) -> None:
        if not self._reading:
            self._loop.add_reader(self.fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _on_readable(self) -> None:
        if self.state == AUTHENTICATING:
            self._read_auth()
        elif self.state == WAITING:
            self._read_waiting()

    def greet(self) -> bool:
        """Write the verifier's greeting (the ESCR challenge) now, before any read.

        A fresh socket's send buffer is empty, so the short line goes out whole; anything
        else is treated as a dead peer (closed, False).
        """
        greeting = getattr(self.verifier, "greeting", None)
        if greeting is None:
            return True
        try:
            sent = self.sock.send(greeting)
        except OSError:
            sent = -1
        if sent != len(greeting):
            self._fail("error")
            return False
        return True

    def _read_auth(self) -> None:
        verifier = self.verifier
        assert verifier is not None
        want = verifier.want()
        if want <= 0:  # pending (or decided): nothing may be read now
            self._pause()
            return
        try:
            data = self.sock.recv(want)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._fail("error")
            return
        verdict = verifier.feed(data) if data else verifier.eof()
        self._on_verdict(verdict)

    def _on_verdict(self, verdict: Verdict) -> None:
        if verdict.outcome is Outcome.NEED_MORE:
            return
        if verdict.outcome is Outcome.PENDING:
            self._pause()
            assert self.verifier is not None
            self.verifier.when_done(self._auth_resumed)  # type: ignore[attr-defined]  # ESCR only
            return
        if verdict.outcome is Outcome.FAILED:
            self._fail(verdict.reason)
            return
        self._authenticated(verdict)

    def _auth_resumed(self, verdict: Verdict) -> None:
        if self.state != AUTHENTICATING:
            return
        self._on_verdict(verdict)
        if self.state == WAITING and len(self.buf) < self.session.limits.prepair_buffer:
            self._resume()

    def _authenticated(self, verdict: Verdict) -> None:
        verifier = self.verifier
        ok_line = getattr(verifier, "ok_line", None)
        if ok_line is not None:
            try:
                sent = self.sock.send(ok_line)
            except OSError:
                sent = -1
            if sent != len(ok_line):
                self._fail("error")
                return
        self._leave_auth()
        self.verifier = None
        self.state = WAITING
        if verdict.rest:
            self.buf += verdict.rest
        target = getattr(verifier, "target", None)
        if target is not None and target is not self.session:
            # single-port path: the response named the session and side
            self.session.forget(self)
            self.session = target
            self.side = verifier.target_side  # type: ignore[union-attr]
        self.session.on_authenticated(self)
        if self.state == WAITING and len(self.buf) >= self.session.limits.prepair_buffer:
            self._pause()

    def _read_waiting(self) -> None:
        room = self.session.limits.prepair_buffer - len(self.buf)
        if room <= 0:
            self._pause()
            return
        try:
            data = self.sock.recv(room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.session.on_waiting_failed(self)
            return
        if not data:
            # Half-close before pairing: remember it, the pump propagates it after the data.
            self.eof = True
            self._pause()
            return
        self.buf += data
        if len(self.buf) >= self.session.limits.prepair_buffer:
            self._pause()

    # -- deadline -----------------------------------------------------------------------

    def deadline_passed(self) -> None:
        """``AuthDeadlines``: this socket's deadline is due (it has left the queue)."""
        self._queued = False
        if self.state == AUTHENTICATING:
            self._fail("timeout")

    def _check_deadline(self) -> None:
        self._timer = None
        if self.state != AUTHENTICATING:
            return
        left = self.deadline - self._clock()
        if left > 0:  # the injected clock runs behind the loop's: wait for it
            self._timer = self._loop.call_later(left, self._check_deadline)
            return
        self._fail("timeout")

    # -- endings ------------------------------------------------------------------------

    def _leave_auth(self) -> None:
        if self._queued:
            self._queued = False
            self._deadlines.discard(self)  # type: ignore[union-attr]
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._gated:
            self._gated = False
            self.session.release_gate(self)

    def _fail(self, reason: str) -> None:
        fail_line = getattr(self.verifier, "fail_line", None)
        told = False
        if fail_line is not None and self.state == AUTHENTICATING:
            try:  # best effort: the peer learns why, then a plain close (a reset could
                told = self.sock.send(fail_line) == len(fail_line)  # discard the line)
            except OSError:
                pass
        self.close(reset=not told)
        self.session.on_auth_failed(self, reason)

    def shed(self) -> None:
        """The pre-auth gate is full and this socket is older: make room (PreAuthGate)."""
        if self.state == AUTHENTICATING:
            self._fail("shed")

    def detach(self, keep_reader: bool = False) -> tuple[socket.socket, bytes, bool]:
        """Hand the socket, its buffered data and its EOF flag to a pump.

        ``keep_reader``: leave a waiting socket's reader registered for the pump, whose
        ``add_reader`` on the same fd, in the same callback, replaces the callback (uvloop
        and asyncio alike). A removal and a new registration cost two fd-registry misses
        and three ``epoll_ctl`` calls in uvloop. The caller passes it only when the pump's
        first act on this socket is to read it: nothing buffered and no EOF on either side.
        """
        if keep_reader:
            self._reading = False  # the registration, if any, is the pump's now
        else:
            self._pause()
        self._leave_auth()
        self.state = DETACHED
        data = bytes(self.buf) if self.buf else b""
        self.buf = bytearray()
        return self.sock, data, self.eof

    def close(self, reset: bool = True) -> None:
        if self.state in (CLOSED, DETACHED):
            return
        self._pause()
        self._leave_auth()
        self.state = CLOSED
        cancel = getattr(self.verifier, "cancel", None)
        if cancel is not None:
            cancel()
        self.verifier = None
        self.buf = bytearray()
        if reset:
            reset_close(self.sock)
        else:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()

"""One TLS connection to an atServer or to the root directory: the thin asyncio adapter
around :class:`noports.at.protocol.AtClientCodec`.

Stable API (the onboarding code builds on it)::

    conn = await AtConnection.open(host, port, ssl_ctx=None, *, root=False,
                                   connect_timeout=10.0, command_timeout=10.0)
    text = await conn.execute("llookup:x@alice")   # data text; raises AtError subclasses
    reply = await conn.request(cmd)                 # Data | ErrorReply | RootReply, no raise
    await conn.send("monitor:0 .*")                # a command that has no reply
    n = await conn.next_notification(timeout=None) # Notification pushes (monitor)
    challenge = await conn.from_("@alice")
    await conn.authenticate(keys)                  # PKAM from AtKeys (enrollmentId if present)
    await conn.authenticate_pkam("@alice", private_key, enrollment_id=None)
    await conn.authenticate_cram("@alice", secret)
    await conn.close()
    host, port = await conn.lookup("@alice")       # root connections only

    host, port = await find_atserver("@alice", root=None, ssl_ctx=None)
    conn = await connect_atserver("@alice", root=None, ca_file=None, ssl_ctx=None)
    conn = await connect_authenticated(keys, root=None, ca_file=None, ssl_ctx=None)

Requests are serialised by a lock: the Dart server does not support pipelining, so exactly
one command is in flight. A command that times out raises PeerTimeoutError and **closes**
the connection, because its late reply would otherwise be taken as the next command's.
Secrets never reach the log: only verbs are logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

from ..crypto import rsa
from ..crypto.atkeys import AtKeys
from ..errors import (
    EXIT_AUTH,
    AtError,
    BufferLimitError,
    ConnectError,
    LocalError,
    PeerTimeoutError,
    ProtocolError,
    SecondaryNotFoundError,
    TooManyRequestsError,
)
from . import commands
from .config import RootAddress, root_address, ssl_context
from .protocol import (
    DEFAULT_MAX_BUFFER,
    AtClientCodec,
    Closed,
    Data,
    ErrorReply,
    Notification,
    Prompt,
    RootReply,
    State,
)


class UnknownEnrollmentError(TooManyRequestsError):  # type: ignore[misc,valid-type]
    """AT0028 on PKAM: the keys' enrollment is unknown here (another atSign's keys?)."""

    exit_code = EXIT_AUTH


log = logging.getLogger("noports.at")

Reply = Data | ErrorReply | RootReply

DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_COMMAND_TIMEOUT = 10.0
_QUEUE_HIGH = 10_000  # notifications buffered before we stop reading (backpressure)
_QUEUE_LOW = 1_000


class _AtProtocol(asyncio.Protocol):
    """Feeds bytes to the codec and routes events to the owning AtConnection."""

    def __init__(self, conn: AtConnection) -> None:
        self.conn = conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.conn._feed(data)

    def eof_received(self) -> bool | None:
        return None  # let the transport close; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn._lost(exc)


class AtConnection:
    """A connected (TLS) atProtocol connection; use :meth:`open` to make one."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        root: bool = False,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> None:
        self.host = host
        self.port = port
        self.root = root
        self.command_timeout = command_timeout
        self.codec = AtClientCodec(root=root, max_buffer=max_buffer)
        self._transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self._greeting: asyncio.Future[None] = loop.create_future()
        self._waiter: asyncio.Future[Reply] | None = None
        self._lock = asyncio.Lock()
        self._notes: asyncio.Queue[Notification | None] = asyncio.Queue()
        self._paused = False
        self._closed = loop.create_future()
        self._error: BaseException | None = None

    # -- opening -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        ssl_ctx: ssl.SSLContext | None = None,
        *,
        root: bool = False,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_buffer: int = DEFAULT_MAX_BUFFER,
    ) -> AtConnection:
        """Connect with TLS and wait for the server's first prompt."""
        ctx = ssl_ctx if ssl_ctx is not None else ssl_context()
        conn = cls(host, port, root=root, command_timeout=command_timeout, max_buffer=max_buffer)
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: _AtProtocol(conn), host, port, ssl=ctx, server_hostname=host
                ),
                connect_timeout,
            )
            await asyncio.wait_for(asyncio.shield(conn._greeting), connect_timeout)
        except asyncio.TimeoutError as exc:
            conn._abort()
            raise PeerTimeoutError(
                f"{host}:{port} did not greet within {connect_timeout:g}s"
            ) from exc
        except ssl.SSLError as exc:
            conn._abort()
            raise ConnectError(f"TLS with {host}:{port} failed: {exc}") from exc
        except OSError as exc:
            conn._abort()
            raise ConnectError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conn

    # -- state ---------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.done()

    @property
    def atsign(self) -> str | None:
        return self.codec.atsign

    @property
    def authenticated(self) -> bool:
        return self.codec.authenticated

    def __repr__(self) -> str:
        who = self.codec.atsign or "-"
        return f"<AtConnection {self.host}:{self.port} {who} {self.codec.state.value}>"

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    # -- requests ------------------------------------------------------------------------

    async def request(self, command: str, *, timeout: float | None = None) -> Reply:
        """Send one command and return its reply event (errors are returned, not raised)."""
        async with self._lock:
            if self.closed:
                raise ConnectError(f"connection to {self.host}:{self.port} is closed")
            loop = asyncio.get_running_loop()
            self._waiter = waiter = loop.create_future()
            self._write(command)
            t = self.command_timeout if timeout is None else timeout
            try:
                return await asyncio.wait_for(asyncio.shield(waiter), t)
            except asyncio.TimeoutError as exc:
                verb = command.split(":", 1)[0].split(" ", 1)[0]
                self._abort()
                raise PeerTimeoutError(
                    f"{self.host}:{self.port} did not answer {verb!r} within {t:g}s"
                ) from exc
            except asyncio.CancelledError:
                self._abort()  # the reply would land on the next request
                raise
            finally:
                self._waiter = None

    async def execute(self, command: str, *, timeout: float | None = None) -> str:
        """Send one command; return the text after ``data:``. Raises the AtError subclass."""
        reply = await self.request(command, timeout=timeout)
        if isinstance(reply, ErrorReply):
            raise reply.exception()
        if isinstance(reply, RootReply):
            return f"{reply.host}:{reply.port}" if reply.found else "null"
        return reply.text

    async def send(self, command: str) -> None:
        """Write a command that has no reply (``monitor``, ``@exit``)."""
        async with self._lock:
            if self.closed:
                raise ConnectError(f"connection to {self.host}:{self.port} is closed")
            self._write(command)

    def _write(self, command: str) -> None:
        data = self.codec.send(command)
        log.debug("-> %s:%d %s", self.host, self.port, _verb_of(command))
        assert self._transport is not None
        self._transport.write(data)

    async def next_notification(self, timeout: float | None = None) -> Notification:
        """The next pushed notification (monitor mode). Raises ConnectError once closed."""
        try:
            if timeout is None:
                n = await self._notes.get()
            else:
                n = await asyncio.wait_for(self._notes.get(), timeout)
        except asyncio.TimeoutError as exc:
            raise PeerTimeoutError("no notification within the timeout") from exc
        if self._paused and self._notes.qsize() <= _QUEUE_LOW and self._transport is not None:
            self._paused = False
            self._transport.resume_reading()
        if n is None:
            self._notes.put_nowait(None)  # every later caller sees the close too
            raise ConnectError(f"connection to {self.host}:{self.port} closed") from self._error
        return n

    # -- root ----------------------------------------------------------------------------

    async def lookup(self, atsign: str, *, timeout: float | None = None) -> tuple[str, int]:
        """Root lookup; raises SecondaryNotFoundError for ``null``."""
        if not self.root:
            raise LocalError("lookup() is for root connections")
        reply = await self.request(commands.root_lookup(atsign), timeout=timeout)
        if isinstance(reply, ErrorReply):
            raise reply.exception()
        if not isinstance(reply, RootReply):
            raise ProtocolError(f"root answered {reply!r}")
        if not reply.found:
            raise SecondaryNotFoundError(f"root has no atServer for {commands.atsign(atsign)}")
        assert reply.host is not None and reply.port is not None
        return reply.host, reply.port

    # -- authentication ------------------------------------------------------------------

    async def from_(self, atsign: str, client_config: dict[str, str] | None = None) -> str:
        """``from:``; returns the challenge (everything after ``data:``)."""
        return await self.execute(commands.from_(atsign, client_config))

    async def authenticate_pkam(
        self,
        atsign: str,
        private_key: rsa.PrivateKey,
        *,
        enrollment_id: str | None = None,
        dart_form: bool = True,
        client_config: dict[str, str] | None = None,
    ) -> None:
        """``from`` + ``pkam``. Raises ClientAuthFailedError / Apkam*Error on refusal."""
        challenge = await self.from_(atsign, client_config)
        sig = commands.pkam_signature(private_key, challenge)
        text = await self.execute(
            commands.pkam(sig, enrollment_id=enrollment_id, dart_form=dart_form)
        )
        if text.strip() != "success":
            raise AtError.for_code("AT0401", f"pkam answered {text[:40]!r}")

    async def authenticate(self, keys: AtKeys, *, dart_form: bool = True) -> None:
        """PKAM with an AtKeys; sends its enrollmentId when it has one."""
        try:
            await self.authenticate_pkam(
                keys.atsign,
                keys.pkam_private,
                enrollment_id=keys.enrollment_id,
                dart_form=dart_form,
            )
        except TooManyRequestsError as exc:  # AT0028 "enrollment_id ... expired or invalid"
            if not keys.enrollment_id:
                raise
            raise UnknownEnrollmentError(
                f"the atServer of {keys.atsign} does not know enrollment {keys.enrollment_id} "
                f"of these keys: they belong to another atSign, or the enrollment was deleted "
                f"or has expired (AT0028); use {keys.atsign}'s own atKeys file"
            ) from exc

    async def authenticate_cram(self, atsign: str, secret: str) -> None:
        """``from`` + ``cram`` (first onboarding only)."""
        challenge = await self.from_(atsign)
        text = await self.execute(commands.cram(secret, challenge))
        if text.strip() != "success":
            raise AtError.for_code("AT0401", f"cram answered {text[:40]!r}")

    # -- closing -------------------------------------------------------------------------

    async def close(self, *, timeout: float = 2.0) -> None:
        """Send ``@exit`` (politely) and close; safe to call twice."""
        if self.closed:
            return
        if self._transport is not None and not self._transport.is_closing():
            with contextlib.suppress(Exception):
                if not self._lock.locked() and self.codec.state is not State.CLOSED:
                    self._transport.write(self.codec.send(commands.EXIT))
            self._transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._closed), timeout)
        if not self.closed:
            self._abort()

    def _abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()
        self._lost(self._error)

    async def __aenter__(self) -> AtConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- protocol callbacks --------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        try:
            self.codec.receive_data(data)
            for ev in self.codec.events():
                self._dispatch(ev)
        except (ProtocolError, BufferLimitError) as exc:
            log.warning("%s:%d broke the protocol: %s", self.host, self.port, exc)
            self._error = exc
            if self._waiter is not None and not self._waiter.done():
                self._waiter.set_exception(exc)
            self._abort()

    def _dispatch(self, ev: object) -> None:
        if isinstance(ev, (Data, ErrorReply, RootReply)):
            w = self._waiter
            if w is not None and not w.done():
                w.set_result(ev)
            else:
                log.debug("unsolicited reply from %s:%d dropped", self.host, self.port)
        elif isinstance(ev, Notification):
            self._notes.put_nowait(ev)
            if not self._paused and self._notes.qsize() >= _QUEUE_HIGH and self._transport:
                self._paused = True
                self._transport.pause_reading()
        elif isinstance(ev, Prompt):
            if not self._greeting.done():
                self._greeting.set_result(None)

        elif isinstance(ev, Closed):
            pass  # connection_lost does the rest

    def _lost(self, exc: BaseException | None) -> None:
        if self.closed:
            return
        if exc is not None and self._error is None:
            self._error = exc
        err = ConnectError(f"connection to {self.host}:{self.port} closed")
        if self._error is not None:
            err.__cause__ = self._error
        if not self._greeting.done():
            self._greeting.set_exception(err)
            self._greeting.exception()  # mark retrieved
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(err)
        self._notes.put_nowait(None)
        self._closed.set_result(None)


def _verb_of(command: str) -> str:
    return command.split(":", 1)[0].split(" ", 1)[0][:20]


# ---------------------------------------------------------------------------------------
# convenience: directory lookup and connecting to an atSign's server


async def find_atserver(
    atsign: str,
    *,
    root: str | RootAddress | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    ca_file: str | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
) -> tuple[str, int]:
    """Ask the root directory where ``atsign`` lives (``proxy:`` roots answer themselves)."""
    ra = root if isinstance(root, RootAddress) else root_address(root)
    if ra.proxy:
        return ra.host, ra.port
    ctx = ssl_ctx if ssl_ctx is not None else ssl_context(ca_file)
    conn = await AtConnection.open(
        ra.host, ra.port, ctx, root=True, connect_timeout=timeout, command_timeout=timeout
    )
    try:
        return await conn.lookup(atsign)
    finally:
        await conn.close()


async def connect_atserver(
    atsign: str,
    *,
    root: str | RootAddress | None = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
) -> AtConnection:
    """Root lookup, then an (unauthenticated) TLS connection to the atSign's server."""
    ctx = ssl_ctx if ssl_ctx is not None else ssl_context(ca_file)
    host, port = await find_atserver(atsign, root=root, ssl_ctx=ctx, timeout=timeout)
    return await AtConnection.open(
        host, port, ctx, connect_timeout=timeout, command_timeout=command_timeout
    )


async def connect_authenticated(
    keys: AtKeys,
    *,
    root: str | RootAddress | None = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_CONNECT_TIMEOUT,
    command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    address: tuple[str, int] | None = None,
) -> AtConnection:
    """A PKAM-authenticated connection for ``keys.atsign`` (``address`` skips the root)."""
    ctx = ssl_ctx if ssl_ctx is not None else ssl_context(ca_file)
    if address is None:
        address = await find_atserver(keys.atsign, root=root, ssl_ctx=ctx, timeout=timeout)
    conn = await AtConnection.open(
        address[0], address[1], ctx, connect_timeout=timeout, command_timeout=command_timeout
    )
    try:
        await conn.authenticate(keys)
    except BaseException:
        await conn.close()
        raise
    return conn

"""An in-memory atServer and client pair: the real engine, the real client, no sockets, no TLS.

In the manner of h11's ``ConnectionPair``: the bytes one side writes are handed straight to
the other. The server half is the sans-IO core of ``noports.atserver`` (``Engine`` and one
``Session`` per connection, the verb table ``verbs.HANDLERS``) behind :class:`ServerConn`,
a ``Port`` that does what ``net.Connection`` does minus asyncio and TLS: split lines with
the real ``LineBuffer``, run each through ``Session.handle``, group a burst of requests in
one store transaction and send the replies after the commit, greet with ``@``. The server's
clock is injected (:class:`ManualClock`), so expiry is tested by moving time, not by sleeping.

Two client halves:

* :class:`Wire` (synchronous): command lines built by ``noports.at.commands`` go in, the
  exact text the server wrote comes back (``cmd``), and the same bytes are parsed by the
  real ``AtClientCodec`` (``request`` returns its ``Data``/``ErrorReply`` event). For prompt
  rules, error forms and hostile input.
* the real asyncio client: :meth:`MemoryAtServer.connect` gives a ``noports.at``
  ``AtConnection`` over a :class:`MemoryTransport` (an ``asyncio.Transport`` whose writes
  are queued to the other side with ``call_soon``), and :meth:`MemoryAtServer.routed`
  patches ``AtConnection.open`` so that every client code path that connects
  (``AtClient.connect``, its monitors, ``find_atserver``, the onboarding functions) reaches
  this server unchanged, at the address :attr:`MemoryAtServer.address`.

What the memory pair does not do, and the socket tests (``test_atserver_core`` etc.) cover:
TLS, the pre-auth admission limits, idle sweeps and the periodic jobs of ``net.AtServer``,
and real waiting on reply delays: a reply's ``delay`` (``noop:<ms>``, the bad-OTP back-off,
the slowed root lookup) is recorded in ``ServerConn.delays`` and the reply is sent at once
(the order of replies is kept either way, as in ``net``).

This module is a helper, not a test module (no ``test_`` prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from noports.at import commands
from noports.at import connection as at_connection
from noports.at.client import AtClient
from noports.at.connection import AtConnection
from noports.at.protocol import AtClientCodec, Data, ErrorReply, Event, Notification, RootReply
from noports.atserver import verbs
from noports.atserver.engine import Config, Engine, Session
from noports.atserver.keys import Record, normalise_atsign
from noports.atserver.parse import LineBuffer
from noports.atserver.store import Store
from noports.crypto import rsa
from noports.crypto.atkeys import AtKeys
from noports.errors import AtError, ConnectError

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed start makes runs reproducible
MEMORY_HOST = "atserver.memory"  # never resolved: no socket is ever opened to it
MEMORY_PORT = 6464


class ManualClock:
    """The server's injected clock: epoch milliseconds that move only when told to."""

    def __init__(self, start_ms: int = START_MS) -> None:
        self.now = start_ms

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int) -> int:
        self.now += ms
        return self.now


class ServerConn:
    """The server end of one in-memory connection (a session's ``Port``)."""

    def __init__(
        self,
        server: MemoryAtServer,
        deliver: Callable[[bytes], None],
        on_close: Callable[[], None],
    ) -> None:
        self.server = server
        self._deliver = deliver
        self._on_close = on_close
        cfg = server.engine.config
        self.buf = LineBuffer(min(cfg.buffer_limit, cfg.unauth_buffer_limit))
        self.session: Session = server.engine.session(self)
        self.out: list[str] = []
        self.closed = False
        self.delays: list[float] = []  # every Reply.delay asked for, in order
        self.received_lines = 0
        server.conns.add(self)
        deliver(b"@")  # net.Connection greets with the bare prompt

    # -- bytes from the client ----------------------------------------------------------

    def receive(self, data: bytes) -> None:
        if self.closed:
            return
        if not data:  # EOF from the client
            self.connection_lost()
            return
        try:
            lines = self.buf.feed(data)
        except AtError as exc:  # AT0005: as net.Connection, one error line then close
            self.write(f"error:{exc.code}-{exc.description}\n")
            self.close()
            return
        with self.server.batch():
            for line in lines:
                if self.closed:
                    break
                self.received_lines += 1
                reply = self.session.handle(line)
                if reply.delay > 0:
                    self.delays.append(reply.delay)
                if reply.text:
                    self.write(reply.text)
                if reply.close:
                    self.close()
        if self.session.authed:  # net.Connection lifts the pre-auth line cap once authed
            self.buf.limit = self.server.engine.config.buffer_limit

    # -- Port ---------------------------------------------------------------------------

    def write(self, text: str) -> None:
        if self.closed:
            return
        self.out.append(text)
        if self.server.depth:
            self.server.dirty.add(self)
        else:
            self.flush()

    def flush(self) -> None:
        if not self.out or self.closed:
            self.out.clear()
            return
        data = "".join(self.out).encode("utf-8")
        self.out.clear()
        self._deliver(data)

    def close(self) -> None:
        if self.closed:
            return
        self.flush()
        self.connection_lost()
        self._on_close()

    def connection_lost(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.session.closed = True
        self.server.engine.closed(self.session)
        self.server.conns.discard(self)
        self.server.dirty.discard(self)


class MemoryAtServer:
    """The embedded server's engine over a store in ``data_dir``, reachable only in memory."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        clock: ManualClock | None = None,
        config: Config | None = None,
    ) -> None:
        self.clock = clock or ManualClock()
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self.store = Store(Path(data_dir) / "server.db")
        self.engine = Engine(self.store, config or Config(), self.clock, handlers=verbs.HANDLERS)
        self.engine.address = self.address
        self.conns: set[ServerConn] = set()
        self.depth = 0
        self.dirty: set[ServerConn] = set()
        # what observe.Observer reads of net.AtServer besides the engine (no pre-auth limits
        # and no listening socket here)
        self.unauth: dict[ServerConn, None] = {}
        self.evicted = 0
        self._server = None

    @property
    def address(self) -> str:
        return f"{MEMORY_HOST}:{MEMORY_PORT}"

    def close(self) -> None:
        for c in list(self.conns):
            c.close()
        self.store.close()

    def __enter__(self) -> MemoryAtServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- as net.AtServer.batch_begin/batch_end --------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        if self.depth == 0:
            self.store.begin()
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.store.commit()
                dirty, self.dirty = self.dirty, set()
                for c in dirty:
                    c.flush()

    # -- hosting (what ``noports server add`` does, on the injected clock) -----------------

    def hosted(self, keys: AtKeys) -> AtKeys:
        """``host(keys)``, returning the keys (for fixtures)."""
        self.host(keys)
        return keys

    def host(self, who: str | AtKeys) -> str | None:
        """Host an atSign: with ``AtKeys`` (PKAM key and public key installed, returns None),
        or by name only (returns the CRAM secret, as ``noports server add`` prints it)."""
        import secrets

        a = normalise_atsign(who.atsign if isinstance(who, AtKeys) else who)
        now = self.clock()
        if not self.store.add_atsign(a, now):
            raise ValueError(f"{a} is already hosted")

        def put(key: str, value: str) -> None:
            self.store.put(a, Record(key, value, {}, now, now, None, None, None, 0, a))
            self.store.next_commit(a)

        if isinstance(who, AtKeys):
            put("privatekey:at_pkam_publickey", who.pkam_public_b64)
            put(f"public:publickey{a}", who.encrypt_public_b64)
            return None
        secret = secrets.token_hex(64)
        put("privatekey:at_secret", secret)
        return secret

    # -- client halves ------------------------------------------------------------------------

    def wire(self) -> Wire:
        return Wire(self)

    async def connect(
        self,
        *,
        root: bool = False,
        command_timeout: float = 10.0,
        max_buffer: int | None = None,
    ) -> AtConnection:
        """A real ``AtConnection`` (greeted, not authenticated) over a memory transport."""
        kw: dict[str, Any] = {"root": root, "command_timeout": command_timeout}
        if max_buffer is not None:
            kw["max_buffer"] = max_buffer
        conn = AtConnection(MEMORY_HOST, MEMORY_PORT, **kw)
        proto = at_connection._AtProtocol(conn)
        MemoryTransport(self, proto)
        # what AtConnection.open awaits after connecting: the server's first prompt
        await asyncio.wait_for(asyncio.shield(conn._greeting), command_timeout)
        return conn

    async def client(self, keys: AtKeys, **kw: Any) -> AtClient:
        """A real ``AtClient`` for ``keys`` (PKAM); use inside :meth:`routed`."""
        return await AtClient.connect(
            keys.atsign,
            keys=keys,
            address=(MEMORY_HOST, MEMORY_PORT),
            ssl_ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT),  # never used: no TLS in memory
            **kw,
        )

    @contextlib.contextmanager
    def routed(self) -> Iterator[MemoryAtServer]:
        """Patch ``AtConnection.open`` so connections to :attr:`address` reach this server
        (root lookups included: root and atServer share the address, as in ``net``); any
        other address fails with ConnectError, so nothing leaves the process."""
        server = self
        original = AtConnection.__dict__["open"]

        async def open_memory(
            cls: type[AtConnection],
            host: str,
            port: int,
            ssl_ctx: ssl.SSLContext | None = None,
            *,
            root: bool = False,
            connect_timeout: float = 10.0,
            command_timeout: float = 10.0,
            max_buffer: int | None = None,
        ) -> AtConnection:
            if (host, port) != (MEMORY_HOST, MEMORY_PORT):
                raise ConnectError(f"cannot connect to {host}:{port}: not the memory server")
            return await server.connect(
                root=root, command_timeout=command_timeout, max_buffer=max_buffer
            )

        AtConnection.open = classmethod(open_memory)  # type: ignore[method-assign,assignment]
        try:
            yield self
        finally:
            AtConnection.open = original  # type: ignore[method-assign]

    @property
    def root(self) -> str:
        """The ``--root`` value that reaches this server under :meth:`routed`."""
        return self.address


class MemoryTransport(asyncio.Transport):
    """The client's end of an in-memory connection.

    ``write`` hands the bytes to the server on the next loop iteration (``call_soon``, so
    neither side runs inside the other's call, as with a socket); what the server writes
    reaches the client protocol the same way. ``pause_reading`` holds server output back
    until ``resume_reading`` (the client's notification backpressure).
    """

    def __init__(self, server: MemoryAtServer, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._loop = asyncio.get_running_loop()
        self._protocol = protocol
        self._closing = False
        self._lost = False
        self._paused = False
        self._held: list[bytes] = []
        protocol.connection_made(self)
        self.server_conn = ServerConn(server, self._from_server, self._server_closed)

    # server -> client

    def _from_server(self, data: bytes) -> None:
        if not self._loop.is_closed():  # a test that failed may leave its loop behind
            self._loop.call_soon(self._arrive, data)

    def _arrive(self, data: bytes) -> None:
        if self._lost:
            return
        if self._paused:
            self._held.append(data)
            return
        self._protocol.data_received(data)

    def _server_closed(self) -> None:
        if not self._loop.is_closed():
            self._loop.call_soon(self._finish, None)

    def _finish(self, exc: Exception | None) -> None:
        if self._lost:
            return
        if self._held and not self._paused:
            self._release()
        self._lost = True
        self._closing = True
        self._protocol.connection_lost(exc)

    def _release(self) -> None:
        held, self._held = self._held, []
        for data in held:
            self._protocol.data_received(data)

    # asyncio.Transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        self._loop.call_soon(self.server_conn.receive, bytes(data))

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._loop.call_soon(self.server_conn.receive, b"")  # EOF
        self._loop.call_soon(self._finish, None)

    def abort(self) -> None:
        self._closing = True
        self.server_conn.connection_lost()
        self._loop.call_soon(self._finish, None)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._loop.call_soon(self._release)

    def is_reading(self) -> bool:
        return not self._paused

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return ("memory", 0)
        return default


class Wire:
    """A synchronous client end: each call runs the server to completion and returns what it
    wrote. Output is also parsed by the real ``AtClientCodec``."""

    def __init__(self, server: MemoryAtServer) -> None:
        self.server = server
        self.inbox = bytearray()
        self.transcript = bytearray()  # everything the server ever wrote here
        self.codec = AtClientCodec()
        self.events: list[Event] = []
        self.server_closed = False
        self.conn = ServerConn(server, self._from_server, self._closed)
        self.greeting = self.take()

    def _from_server(self, data: bytes) -> None:
        self.inbox += data
        self.transcript += data
        self.codec.receive_data(data)
        self.events.extend(self.codec.events())

    def _closed(self) -> None:
        self.server_closed = True

    def take(self) -> str:
        """The text the server wrote since the last call."""
        text = self.inbox.decode("utf-8")
        self.inbox.clear()
        return text

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def delays(self) -> list[float]:
        return self.conn.delays

    def send_bytes(self, data: bytes) -> str:
        """Raw bytes to the server (not through the codec); returns what it wrote back."""
        self.take()
        self.conn.receive(data)
        return self.take()

    def cmd(self, line: str) -> str:
        """One command line (encoded by ``commands.encode``); the exact reply text, prompt
        included."""
        self.take()
        self.codec.send(line)
        self.conn.receive(commands.encode(line))
        return self.take()

    def request(self, line: str) -> Data | ErrorReply | RootReply:
        """One command; its reply as the client codec parses it."""
        before = len(self.events)
        self.cmd(line)
        replies = [e for e in self.events[before:] if isinstance(e, (Data, ErrorReply, RootReply))]
        assert len(replies) == 1, f"{line.split(':')[0]!r} got {replies!r}"
        return replies[0]

    def data(self, line: str) -> str:
        """``request`` that must succeed; the text after ``data:``."""
        reply = self.request(line)
        if isinstance(reply, ErrorReply):
            raise reply.exception()
        assert isinstance(reply, Data), reply
        return reply.text

    def notifications(self) -> list[Notification]:
        """Notifications received so far (stats heartbeats excluded); consumes them."""
        got = [e for e in self.events if isinstance(e, Notification) and not e.is_stats]
        self.events = [e for e in self.events if not isinstance(e, Notification)]
        return got

    def pkam(
        self,
        keys: AtKeys,
        *,
        enrollment_id: str | None = None,
        pkam_private: rsa.PrivateKey | None = None,
    ) -> str:
        """``from`` + ``pkam`` built by the client's builders; the pkam reply text."""
        challenge = self.data(commands.from_(keys.atsign))
        key = pkam_private if pkam_private is not None else keys.pkam_private
        sig = commands.pkam_signature(key, challenge)
        return self.cmd(commands.pkam(sig, enrollment_id=enrollment_id, dart_form=True))

    def cram(self, atsign: str, secret: str) -> str:
        challenge = self.data(commands.from_(atsign))
        return self.cmd(commands.cram(secret, challenge))

    def close(self) -> None:
        self.conn.close()


def signed(keys: AtKeys, text: str) -> str:
    """``text`` signed with the encryption key, as ``AtClient.put(public=True)`` does."""
    return rsa.sign(keys.encrypt_private, text.encode("utf-8"))

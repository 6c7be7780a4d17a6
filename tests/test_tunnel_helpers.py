"""Shared real-socket fixtures for the tunnel, srv, records and stream tests (no tests here).

* ``relay_session``: the real relay engine (``noports.relay``) on loopback with one session
  whose both sides authenticate; yields the session and each side's auth line.
* ``EchoServer``: a local service echoing every byte and half-closing after the peer did.
* ``Middlebox``: a real TCP proxy on loopback that forwards the auth line untouched and then
  lets a test flip, drop, duplicate or reorder bytes of one direction (the T7 attacker).
* ``roundtrip``: connect, send, half-close, read to EOF.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from noports.crypto.envelope import relay_auth_line
from noports.relay import Relay, SessionSpec

Mutator = Callable[[int, bytes], bytes]


def _keep(tasks: set[asyncio.Task[None]]) -> None:
    """Hold a strong reference to the running handler task until it ends.

    asyncio keeps only weak references to tasks, and a stream protocol only a weak one to
    its StreamReader: a handler waiting on a reader whose transport is not registered for
    reading can be garbage-collected mid-flight, which closes its sockets ("Task was
    destroyed but it is pending"). Observed on the asyncio loop with the middlebox.
    """
    task = asyncio.current_task()
    if task is not None:
        tasks.add(task)
        task.add_done_callback(tasks.discard)


@dataclass
class RelayCtx:
    relay: Relay
    session: object
    host: str
    port_a: int
    port_b: int
    auth_a: str
    auth_b: str
    session_id: str


@contextlib.asynccontextmanager
async def relay_session(
    keys: Callable[[str], object], *, session_id: str | None = None
) -> AsyncIterator[RelayCtx]:
    """A started relay with one authenticated session (@client side A, @daemon side B)."""
    ka, kb = keys("@tclient"), keys("@tdaemon")
    sid = session_id or str(uuid.uuid4())
    nonce = str(uuid.uuid4())
    relay = Relay(bind_host="127.0.0.1")
    await relay.start()
    try:
        sess = await relay.create_session(
            SessionSpec(
                sid,
                "@tclient",
                "@tdaemon",
                nonce,
                auth_a=True,
                auth_b=True,
                public_key_a=ka.encrypt_public,
                public_key_b=kb.encrypt_public,
            )  # type: ignore[attr-defined]
        )
        yield RelayCtx(
            relay,
            sess,
            sess.host,
            sess.port_a,
            sess.port_b,
            relay_auth_line(sid, nonce, sess.rvd_nonce, ka.encrypt_private),  # type: ignore[attr-defined]
            relay_auth_line(sid, nonce, sess.rvd_nonce, kb.encrypt_private),  # type: ignore[attr-defined]
            sid,
        )
    finally:
        await relay.close()


class EchoServer:
    """Echo service on 127.0.0.1; counts connections and bytes."""

    def __init__(self) -> None:
        self.server: asyncio.AbstractServer | None = None
        self.port = 0
        self.connections = 0
        self.bytes = 0
        self.banner = b""
        self.received: list[bytearray] = []  # per connection, what the service got
        self.ends: list[str] = []  # per finished connection: "eof" or "reset"
        self.echo = True
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self, banner: bytes = b"") -> EchoServer:
        self.banner = banner
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _keep(self.tasks)
        self.connections += 1
        got = bytearray()
        self.received.append(got)
        try:
            if self.banner:
                w.write(self.banner)
            while True:
                data = await r.read(262144)
                if not data:
                    break
                self.bytes += len(data)
                got += data
                if self.echo:
                    w.write(data)
                    await w.drain()
            self.ends.append("eof")
            got = None  # type: ignore[assignment]
            if w.can_write_eof():
                w.write_eof()
            await w.drain()
        except (ConnectionError, OSError):
            if got is not None:
                self.ends.append("reset")
        finally:
            w.close()
            with contextlib.suppress(Exception):
                await w.wait_closed()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


async def roundtrip(
    port: int, data: bytes, *, host: str = "127.0.0.1", chunk: int = 65536
) -> bytes:
    """Send ``data``, half-close, return everything read until EOF (may raise on reset)."""
    r, w = await asyncio.open_connection(host, port)
    out = bytearray()

    async def reader() -> None:
        while True:
            d = await r.read(262144)
            if not d:
                return
            out.extend(d)

    rt = asyncio.ensure_future(reader())
    try:
        for i in range(0, len(data), chunk):
            w.write(data[i : i + chunk])
            await w.drain()
        w.write_eof()
        await rt
    finally:
        rt.cancel()
        w.close()
        with contextlib.suppress(Exception):
            await w.wait_closed()
    return bytes(out)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-looking data."""
    out = bytearray()
    ctr = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{ctr}".encode()).digest() * 64
        ctr += 1
    return bytes(out[:n])


class Middlebox:
    """TCP proxy on 127.0.0.1 in front of ``(host, port)``.

    The first line (the relay auth line) goes through untouched in the upstream direction;
    every later upstream byte passes through ``mutate(offset, chunk) -> chunk`` where
    ``offset`` counts bytes after the auth line. ``hold`` buffers all upstream payload until
    the client half-closes, then hands it to ``mutate(0, whole)`` (for reordering).
    """

    def __init__(
        self, host: str, port: int, mutate: Mutator | None = None, *, hold: bool = False
    ) -> None:
        self.target = (host, port)
        self.mutate = mutate
        self.hold = hold
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.auth_lines: list[bytes] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.errors: list[str] = []  # what ended each proxied connection abnormally
        self.events: list[str] = []  # "client eof" / "relay eof", in order
        self.up_orig = bytearray()  # upstream payload as received (before mutation)
        self.up_bytes = bytearray()  # upstream payload as forwarded (after the auth line)
        self.down_bytes = bytearray()  # downstream bytes as forwarded

    async def start(self) -> Middlebox:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        _keep(self.tasks)
        ur, uw = await asyncio.open_connection(*self.target)

        async def up() -> None:
            line = await cr.readline()
            self.auth_lines.append(line)
            uw.write(line)
            off = 0
            held = bytearray()
            while True:
                d = await cr.read(65536)
                if not d:
                    self.events.append("client eof")
                    break
                self.up_orig += d
                if self.hold:
                    held += d
                    continue
                if self.mutate is not None:
                    d2 = self.mutate(off, d)
                else:
                    d2 = d
                off += len(d)
                self.up_bytes += d2
                uw.write(d2)
                await uw.drain()
            if self.hold and self.mutate is not None:
                held = bytearray(self.mutate(0, bytes(held)))
            if self.hold:
                self.up_bytes += held
                uw.write(held)
            uw.write_eof()
            await uw.drain()

        async def down() -> None:
            while True:
                d = await ur.read(65536)
                if not d:
                    self.events.append("relay eof")
                    break
                self.down_bytes += d
                cw.write(d)
                await cw.drain()
            if cw.can_write_eof():
                cw.write_eof()

        t = asyncio.gather(up(), down(), return_exceptions=True)
        try:
            self.errors.extend(repr(e) for e in await t if e is not None)
        finally:
            cw.close()
            uw.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def flip_bit_at(pos: int, bit: int = 0) -> Mutator:
    """Flip one bit at stream offset ``pos``."""

    def m(off: int, chunk: bytes) -> bytes:
        p = pos if pos >= 0 else len(chunk) + pos  # negative: from the end (hold mode)
        if off <= p < off + len(chunk):
            b = bytearray(chunk)
            b[p - off] ^= 1 << bit
            return bytes(b)
        return chunk

    return m


def drop_range(start: int, length: int) -> Mutator:
    def m(off: int, chunk: bytes) -> bytes:
        lo, hi = max(start, off), min(start + length, off + len(chunk))
        if lo >= hi:
            return chunk
        return chunk[: lo - off] + chunk[hi - off :]

    return m


def cut_after(limit: int) -> Mutator:
    """Forward only the first ``limit`` bytes (the rest is silently discarded)."""

    def m(off: int, chunk: bytes) -> bytes:
        return chunk[: max(0, limit - off)]

    return m


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def random_bytes(n: int) -> bytes:
    return os.urandom(n)

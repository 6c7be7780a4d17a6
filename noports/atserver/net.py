"""The asyncio/TLS adapter: one port serving the root directory and every hosted atSign.

Root and atServer share the port. On a fresh connection a bare word that is not a verb
(``alice``) is a root lookup, answered ``127.0.0.1:<port>\\r\\n@``; everything else is the
atProtocol. That is why ``noports server add`` refuses atSigns named like bare verbs.

Per connection there is no task: an ``asyncio.Protocol`` feeds a ``LineBuffer`` and runs each
line through its ``Session`` synchronously. A reply with a delay (``noop:<ms>``, bad OTP back-off)
parks the remaining lines and pauses reading until a timer fires, so order is kept. Monitors
that stop reading are closed once their send buffer passes a cap; they catch up by replay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any, cast

from ..errors import AtError
from ..fsutil import secure_dir
from . import tls, verbs
from .engine import Clock, Config, Engine, Reply, Session, wall_ms
from .keys import dart_time
from .parse import LineBuffer
from .store import Store
from .verbs_notify import flush_queued, stats_text

log = logging.getLogger("noports.server")

STATE_FILE = "server.json"
DB_FILE = "server.db"


class Connection(asyncio.Protocol):
    """Thin adapter between a TLS transport and a Session (implements the session's Port)."""

    def __init__(self, server: AtServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.session: Session | None = None
        self.buf: LineBuffer | None = None
        self.waiting: list[str] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.out: list[str] = []
        self.closed = False
        self.source = ""  # peer address, for the per-source pre-auth cap
        self.pending = False  # counted as unauthenticated (in server.unauth)
        self.born = 0.0

    # -- asyncio callbacks -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass, only duck-typed as one
        t = self.transport = cast(asyncio.Transport, transport)
        srv = self.server
        cfg = srv.engine.config
        peer = t.get_extra_info("peername")
        self.source = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if not srv.admit(self):
            t.write(b"error:AT0012-inbound connection limit exceeded\n")
            t.close()
            self.transport = None
            self.closed = True
            return
        srv.conns.add(self)
        self.buf = LineBuffer(min(cfg.buffer_limit, cfg.unauth_buffer_limit))
        self.session = srv.engine.session(self)
        self.born = self.session.last_write = srv.loop.time()
        t.write(b"@")

    def data_received(self, data: bytes) -> None:
        if self.closed or self.buf is None:
            return
        srv = self.server
        if self.session is not None:
            self.session.last_write = srv.loop.time()  # idleness is the client's, not ours
        try:
            lines = self.buf.feed(data)
        except AtError as exc:
            self.write(f"error:{exc.code}-{exc.description}\n")
            self.close()
            return
        if not lines:
            return
        if self.waiting is not None:
            self.waiting.extend(lines)
            return
        srv.batch_begin()
        try:
            self._process(lines)
        finally:
            srv.batch_end()
            self._promote()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        srv = self.server
        srv.conns.discard(self)
        srv.dirty.discard(self)
        if self.pending:
            srv.unauth_discard(self)
        s, self.session = self.session, None
        if s is not None:
            s.closed = True
            srv.engine.closed(s)
            s.port = _CLOSED  # no Connection <-> Session cycle left for the collector
        # memory goes back now, not at the next full collection
        self.buf = None
        self.waiting = None
        self.out = []
        self.transport = None

    def _promote(self) -> None:
        """Once authenticated: leave the pre-auth accounting and lift the buffer cap."""
        s = self.session
        if self.pending and s is not None and s.authed:
            self.server.unauth_discard(self)
            if self.buf is not None:
                self.buf.limit = self.server.engine.config.buffer_limit

    # -- processing ----------------------------------------------------------------------

    def _process(self, lines: list[str]) -> None:
        session = self.session
        assert session is not None
        for i, line in enumerate(lines):
            if self.closed:
                return
            reply = session.handle(line)
            if reply.delay > 0:
                self.waiting = lines[i + 1 :]
                assert self.transport is not None
                self.transport.pause_reading()
                self.timer = self.server.loop.call_later(reply.delay, self._resume, reply)
                return
            self._emit(reply)

    def _resume(self, reply: Reply) -> None:
        self.timer = None
        if self.closed:
            return
        lines, self.waiting = self.waiting or [], None
        if self.transport is not None:
            self.transport.resume_reading()
        srv = self.server
        srv.batch_begin()
        try:
            self._emit(reply)
            if lines:
                self._process(lines)
        finally:
            srv.batch_end()
            self._promote()

    def _emit(self, reply: Reply) -> None:
        if reply.text:
            self.write(reply.text)
        if reply.close:
            self.close()

    # -- Port ----------------------------------------------------------------------------

    def write(self, text: str) -> None:
        """Queue ``text``; inside a batch it is sent after the batch's commit, in order."""
        if self.transport is None or self.closed:
            return
        self.out.append(text)
        srv = self.server
        if srv.depth:
            srv.dirty.add(self)
        else:
            self.flush()

    def flush(self) -> None:
        t = self.transport
        if not self.out or t is None or self.closed:
            self.out.clear()
            return
        data = "".join(self.out).encode("utf-8")
        self.out.clear()
        t.write(data)
        s = self.session
        if s is not None and s.monitoring:
            # an authenticated monitor that keeps taking what it is sent is busy, not idle
            # (only a request from the client counts for every other connection)
            s.last_write = self.server.loop.time()
            if t.get_write_buffer_size() > self.server.engine.config.monitor_buffer_limit:
                log.warning("closing a monitor of %s that is not reading", s.atsign)
                t.abort()
                self.closed = True

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.flush()
            self.closed = True
            self.transport.close()


class _ClosedPort:
    """What a session's port becomes once its connection is gone."""

    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


_CLOSED = _ClosedPort()


def pin_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Keep glibc from moving large per-connection buffers onto the heap.

    uvloop gives every TLS connection a 256 KiB read buffer. glibc normally mmaps blocks that
    big (only touched pages are resident, and they go back to the OS on close), but after the
    first such block is freed it raises its mmap threshold and later buffers come from reused,
    already-resident heap memory. Pinning the threshold halves idle memory per connection
    (measured 43 -> 22 KiB). No-op away from glibc.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


def advertised_host(host: str) -> str:
    if host in ("0.0.0.0", "", "localhost"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


class AtServer:
    """Owns the store, the engine, the listening socket and the periodic jobs."""

    def __init__(
        self, data_dir: str | os.PathLike[str], config: Config | None = None, clock: Clock = wall_ms
    ) -> None:
        self.data_dir = Path(data_dir)
        self.config = config or Config()
        self.clock = clock
        self.conns: set[Connection] = set()
        self.loop = asyncio.get_event_loop()
        self.engine: Engine
        self.store: Store
        self._server: asyncio.AbstractServer | None = None
        self._jobs: dict[str, asyncio.TimerHandle] = {}
        self.tls: tls.TlsFiles
        self.port = 0
        self.depth = 0  # nesting of batch_begin/batch_end
        self.dirty: set[Connection] = set()  # connections with output waiting for the commit
        # unauthenticated connections, oldest first, overall and per source address
        self.unauth: dict[Connection, None] = {}
        self.unauth_by_source: dict[str, dict[Connection, None]] = {}
        self.evicted = 0

    # -- pre-auth admission (OpenSSH MaxStartups / PerSourceMaxStartups, but shedding the
    # oldest unauthenticated connection instead of refusing the newcomer) ----------------------

    def admit(self, c: Connection) -> bool:
        """Make room for a new (unauthenticated) connection; False if there is none."""
        cfg = self.config
        by_src = self.unauth_by_source.get(c.source)
        if by_src is not None and len(by_src) >= cfg.max_unauth_per_source:
            self._evict(next(iter(by_src)))
        if len(self.unauth) >= cfg.max_unauth:
            self._evict(next(iter(self.unauth)))
        if len(self.conns) >= cfg.max_connections:
            if not self.unauth:
                return False  # every slot is an authenticated client
            self._evict(next(iter(self.unauth)))
        c.pending = True
        self.unauth[c] = None
        self.unauth_by_source.setdefault(c.source, {})[c] = None
        return True

    def unauth_discard(self, c: Connection) -> None:
        c.pending = False
        self.unauth.pop(c, None)
        by_src = self.unauth_by_source.get(c.source)
        if by_src is not None:
            by_src.pop(c, None)
            if not by_src:
                del self.unauth_by_source[c.source]

    def _evict(self, c: Connection) -> None:
        self.unauth_discard(c)
        self.conns.discard(c)
        self.evicted += 1
        t = c.transport
        c.closed = True
        if t is not None:
            t.abort()

    def batch_begin(self) -> None:
        """Group the store writes of a burst of requests into one transaction."""
        if self.depth == 0:
            self.store.begin()
        self.depth += 1

    def batch_end(self) -> None:
        """Commit, then send every reply and notification the batch produced."""
        self.depth -= 1
        if self.depth:
            return
        try:
            self.store.commit()
        except Exception:
            log.exception("commit failed")
        dirty, self.dirty = self.dirty, set()
        for c in dirty:
            c.flush()

    @property
    def root(self) -> str:
        return f"{advertised_host(self.config.host)}:{self.port}"

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        secure_dir(self.data_dir)
        self.tls = tls.ensure(self.data_dir, self.config.host)
        self.store = Store(self.data_dir / DB_FILE)
        self.store.start_checkpointer()
        self.engine = Engine(self.store, self.config, self.clock, handlers=verbs.HANDLERS)
        ctx = tls.server_context(self.tls)
        self._server = await self.loop.create_server(
            lambda: Connection(self),
            self.config.host,
            self.config.port,
            ssl=ctx,
            ssl_handshake_timeout=10.0,
            backlog=1024,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.engine.address = self.root
        self._write_state()
        self.batch_begin()
        try:
            n = flush_queued(self.engine)
        finally:
            self.batch_end()
        if n:
            log.info("delivered %d queued notifications at start", n)
        self._schedule(self.config.stats_interval, self._stats)
        self._schedule(5.0, self._housekeeping)
        self._schedule(
            min(5.0, max(0.5, min(self.config.unauth_timeout, self.config.auth_deadline) / 4)),
            self._sweep_idle,
        )
        log.info("serving root and atServer on %s", self.root)

    def _schedule(self, interval: float, fn: Any) -> None:
        name = fn.__name__

        def tick() -> None:
            self.batch_begin()
            try:
                fn()
            except Exception:
                log.exception("periodic job %s failed", name)
            finally:
                self.batch_end()
            self._jobs[name] = self.loop.call_later(interval, tick)

        self._jobs[name] = self.loop.call_later(interval, tick)

    def _stats(self) -> None:
        texts: dict[str, str] = {}
        for m in self.engine.hub.monitors():
            if m.atsign not in texts:
                texts[m.atsign] = stats_text(self.engine, m.atsign)
            m.sink.push(texts[m.atsign])

    def _housekeeping(self) -> None:
        self.store.forget_atsigns()  # notice atSigns removed by the admin CLI
        flush_queued(self.engine)
        now = self.clock()
        self.store.purge_keys(now - 10 * 60 * 1000)
        self.store.purge_notifications(now - 24 * 3600 * 1000)

    def _idle_limit(self, authed: bool) -> float:
        cfg = self.config
        full, floor = (cfg.auth_timeout, 60.0) if authed else (cfg.unauth_timeout, 5.0)
        load = len(self.conns) / max(1, cfg.max_connections)
        if load <= 0.5:
            return full
        frac = min(1.0, (load - 0.5) / 0.5)
        return max(min(floor, full), full - frac * (full - floor))

    def _sweep_idle(self) -> None:
        now = self.loop.time()
        limits = {True: self._idle_limit(True), False: self._idle_limit(False)}
        deadline = self.config.auth_deadline
        for c in list(self.conns):
            s = c.session
            if s is None:
                continue
            if not s.authed and now - c.born > deadline:
                c.close()  # too long without authenticating, however busy
            elif now - s.last_write > limits[s.authed]:
                c.close()

    def _write_state(self) -> None:
        state = {
            "pid": os.getpid(),
            "host": self.config.host,
            "port": self.port,
            "root": self.root,
            "ca_file": str(self.tls.ca_cert),
            "started": dart_time(self.clock()),
        }
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        tmp.replace(self.data_dir / STATE_FILE)

    async def stop(self) -> None:
        for j in self._jobs.values():
            j.cancel()
        if self._server is not None:
            self._server.close()
        for c in list(self.conns):
            c.close()
        if self._server is not None:
            try:
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            except (asyncio.TimeoutError, Exception):
                pass
        try:
            (self.data_dir / STATE_FILE).unlink()
        except FileNotFoundError:
            pass
        self.store.close()
        try:  # leave a compact database behind (the WAL folded in)
            import sqlite3

            with sqlite3.connect(str(self.data_dir / DB_FILE), timeout=5.0) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
        except Exception:
            pass

"""Multi mode (spec 5.3): one control channel, then one relay socket per local connection.

Both ends first open a control socket (auth line first); being the first socket on each
side, the two pair with each other at the relay. The control stream is clear, AES-CTR with
the session keys (twin keys per direction when given), or AEAD records (connection id 0).

Client, per accepted local connection, under one lock so set-ups never interleave:
connect a new relay socket and send its auth line, *then* send ``connect:...`` on the
control stream, then bridge. Daemon, per ``connect:`` in arrival order: connect the relay
(auth line first, 4 attempts 1 s apart), then the local service, then bridge. Relay pairing
is FIFO in authentication order, so the i-th client data socket meets the i-th daemon one.

Lifetime: an end stops when its control channel ends, or when no data connection has been
open for ``timeout`` seconds (counted from start and from each moment the last data
connection closed); running data connections are allowed to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

from ..crypto.escr import EscrAuth
from ..crypto.records import C2D, D2C, RecordOpener, RecordSealer
from ..crypto.stream import CtrKeys
from ..errors import NoPortsError
from ..record import Record
from .bridge import bridge
from .control import Connect, ControlParser, Heartbeat, format_connect, format_heartbeat
from .keys import AeadKeys, TunnelCrypto, mode_name
from .net import RELAY_CONNECT_TIMEOUT, client_bind_host, connect_relay, connect_tcp, listen

log = logging.getLogger("noports.tunnel")


class MultiStats(Record):
    __slots__ = ("connections", "failed", "bytes_up", "bytes_down", "errors")
    connections: int
    failed: int
    bytes_up: int
    bytes_down: int
    errors: list[str]

    def __init__(
        self,
        connections: int = 0,
        failed: int = 0,
        bytes_up: int = 0,
        bytes_down: int = 0,
        errors: list[str] | None = None,
    ) -> None:
        self.connections = connections
        self.failed = failed
        self.bytes_up = bytes_up
        self.bytes_down = bytes_down
        self.errors = [] if errors is None else errors


class ControlChannel:
    """The control socket with its stream transform (clear, CTR or AEAD records)."""

    def __init__(self, sock: socket.socket, crypto: TunnelCrypto, *, is_client: bool) -> None:
        self.sock = sock
        self.crypto = crypto
        self._enc: Any = None
        self._dec: Any = None
        self._sealer: RecordSealer | None = None
        self._opener: RecordOpener | None = None
        if isinstance(crypto, CtrKeys):
            self._enc, self._dec = crypto.contexts(is_client=is_client)
        elif isinstance(crypto, AeadKeys):
            send_dir, recv_dir = (C2D, D2C) if is_client else (D2C, C2D)
            self._sealer = RecordSealer(crypto.secret, crypto.session_id, send_dir, 0, crypto.suite)
            self._opener = RecordOpener(crypto.secret, crypto.session_id, recv_dir, 0)
        self._lock = asyncio.Lock()
        self.closed = False

    async def send(self, data: bytes) -> None:
        async with self._lock:
            if self.closed:
                raise ConnectionError("control channel closed")
            if self._enc is not None:
                data = self._enc.update(data)
            elif self._sealer is not None:
                data = self._sealer.seal(data)
            await asyncio.get_running_loop().sock_sendall(self.sock, data)

    async def recv(self) -> bytes | None:
        """Next plaintext (possibly empty), or None at an orderly end of the stream."""
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            if self._opener is not None:
                self._opener.receive_eof()
            return None
        if self._dec is not None:
            return self._dec.update(data)
        if self._opener is not None:
            out = b"".join(self._opener.receive_data(data))
            return out
        return data

    async def close(self) -> None:
        """Send our close record (AEAD), half-close, then close the socket."""
        async with self._lock:
            if self.closed:
                return
            self.closed = True
            with contextlib.suppress(OSError):
                if self._sealer is not None and not self._sealer.closed:
                    await asyncio.wait_for(
                        asyncio.get_running_loop().sock_sendall(self.sock, self._sealer.close()), 5
                    )
                self.sock.shutdown(socket.SHUT_WR)
        self.sock.close()


class _MultiBase:
    def __init__(self, crypto: TunnelCrypto, timeout: float, impl: str | None) -> None:
        self.crypto = crypto
        self.timeout = timeout
        self.impl = impl
        self.stats = MultiStats()
        self._bridges: set[asyncio.Task[None]] = set()
        self._active = 0  # data connections being set up or bridged
        self._idle = asyncio.Event()
        self._idle.set()
        self._busy = asyncio.Event()
        self.control: ControlChannel | None = None

    def _activity(self, delta: int) -> None:
        self._active += delta
        if self._active > 0:
            self._idle.clear()
            self._busy.set()
        else:
            self._busy.clear()
            self._idle.set()

    def _spawn(self, coro: Any) -> None:
        """Run one data connection's bridge; it counts as activity until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._bridges.add(task)
        self._activity(+1)

        def done(t: asyncio.Task[None]) -> None:
            self._bridges.discard(t)
            self._activity(-1)

        task.add_done_callback(done)

    async def _bridge(
        self,
        local: socket.socket,
        relay: socket.socket,
        crypto: TunnelCrypto,
        is_client: bool,
        conn_id: int,
    ) -> None:
        try:
            st = await bridge(
                local, relay, crypto, is_client=is_client, conn_id=conn_id, impl=self.impl
            )
        except (OSError, NoPortsError) as exc:
            self.stats.failed += 1
            self.stats.errors.append(f"connection {conn_id}: {exc}")
            log.warning("data connection %d ended with an error: %s", conn_id, exc)
            return
        self.stats.bytes_up += st.up
        self.stats.bytes_down += st.down

    async def _idle_watch(self) -> None:
        """Return once no data connection has been open for ``timeout`` seconds."""
        while True:
            await self._idle.wait()
            try:
                await asyncio.wait_for(self._busy.wait(), self.timeout)
            except (TimeoutError, asyncio.TimeoutError):
                return

    async def _finish(self, graceful: bool) -> None:
        """Close the control channel; let data connections finish (``graceful``) or tear
        them down (a ``close()`` or cancellation)."""
        if not graceful:
            for t in list(self._bridges):
                t.cancel()
        try:
            if self.control is not None:
                await self.control.close()
        finally:
            if self._bridges:
                await asyncio.gather(*list(self._bridges), return_exceptions=True)


class ClientMulti(_MultiBase):
    """Client end of a multi-mode tunnel. Create with ``await ClientMulti.open(...)``."""

    def __init__(
        self,
        relay_host: str,
        relay_port: int,
        auth_line: str | bytes | EscrAuth | None,
        crypto: TunnelCrypto,
        timeout: float,
        heartbeat: float | None,
        relay_timeout: float,
        impl: str | None,
    ) -> None:
        super().__init__(crypto, timeout, impl)
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.auth_line = auth_line
        self.heartbeat = heartbeat
        self.relay_timeout = relay_timeout
        self.listener: socket.socket | None = None
        self.host = ""
        self.port = 0
        self._next_id = 0
        self._setup = asyncio.Lock()
        self._setups: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[MultiStats] | None = None

    @classmethod
    async def open(
        cls,
        relay_host: str,
        relay_port: int,
        *,
        auth_line: str | bytes | EscrAuth | None = None,
        crypto: TunnelCrypto = None,
        local_host: str | None = "127.0.0.1",
        local_port: int = 0,
        timeout: float = 60.0,
        heartbeat: float | None = None,
        relay_timeout: float = RELAY_CONNECT_TIMEOUT,
        impl: str | None = None,
    ) -> ClientMulti:
        """Open the control channel and start listening; returns when ready."""
        self = cls(
            relay_host, relay_port, auth_line, crypto, timeout, heartbeat, relay_timeout, impl
        )
        sock = await connect_relay(relay_host, relay_port, auth_line, timeout=relay_timeout)
        self.control = ControlChannel(sock, crypto, is_client=True)
        try:
            self.listener = listen(client_bind_host(local_host), local_port)
        except BaseException:
            sock.close()
            raise
        self.host, self.port = self.listener.getsockname()[:2]
        self._task = asyncio.get_running_loop().create_task(self._run())
        log.info("multi client listening on %s:%d (%s)", self.host, self.port, mode_name(crypto))
        return self

    async def wait(self) -> MultiStats:
        assert self._task is not None
        return await self._task

    async def close(self) -> None:
        """Stop listening and tear down every data connection now."""
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: close() reports nothing

    async def _run(self) -> MultiStats:
        loop = asyncio.get_running_loop()
        side = [loop.create_task(self._accept_loop()), loop.create_task(self._read_control())]
        if self.heartbeat:
            side.append(loop.create_task(self._heartbeats()))
        watch = loop.create_task(self._idle_watch())
        graceful = False
        try:
            await asyncio.wait([watch, side[1]], return_when=asyncio.FIRST_COMPLETED)
            graceful = True
        finally:
            for t in (*side, watch, *self._setups):
                t.cancel()
            await asyncio.gather(*side, watch, *self._setups, return_exceptions=True)
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            await self._finish(graceful)
        return self.stats

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self.listener is not None
        while True:
            local, _ = await loop.sock_accept(self.listener)
            self._activity(+1)
            task = loop.create_task(self._open_one(local))
            self._setups.add(task)
            task.add_done_callback(self._setup_done)

    def _setup_done(self, task: asyncio.Task[None]) -> None:
        self._setups.discard(task)
        self._activity(-1)

    async def _open_one(self, local: socket.socket) -> None:
        assert self.control is not None
        spawned = False
        try:
            async with self._setup:
                relay = await connect_relay(
                    self.relay_host, self.relay_port, self.auth_line, timeout=self.relay_timeout
                )
                self._next_id += 1
                conn_id = self._next_id
                crypto: TunnelCrypto
                if isinstance(self.crypto, AeadKeys):
                    crypto, msg = self.crypto, format_connect(conn_id=conn_id)
                elif isinstance(self.crypto, CtrKeys):
                    crypto = CtrKeys.generate(twin=self.crypto.twin)
                    msg = format_connect(crypto)
                else:
                    crypto, msg = None, format_connect()
                try:
                    await self.control.send(msg)
                except BaseException:
                    relay.close()
                    raise
                self.stats.connections += 1
                self._spawn(self._bridge(local, relay, crypto, True, conn_id))
                spawned = True
        except (OSError, NoPortsError) as exc:
            self.stats.failed += 1
            self.stats.errors.append(str(exc))
            log.warning("could not open a data connection: %s", exc)
        finally:
            if not spawned:
                local.close()

    async def _read_control(self) -> None:
        """The daemon sends nothing in the protocol; log it, and return at end of stream."""
        assert self.control is not None
        try:
            while True:
                data = await self.control.recv()
                if data is None:
                    log.info("control channel closed by the daemon end")
                    return
                if data:
                    log.info("control channel: %d unexpected bytes from the daemon end", len(data))
        except (OSError, NoPortsError) as exc:
            self.stats.errors.append(f"control: {exc}")
            log.warning("control channel failed: %s", exc)

    async def _heartbeats(self) -> None:
        assert self.control is not None and self.heartbeat
        n = 0
        while True:
            await asyncio.sleep(self.heartbeat)
            n += 1
            await self.control.send(format_heartbeat(n))


class DaemonMulti(_MultiBase):
    """Daemon end of a multi-mode tunnel: ``await DaemonMulti(...).run()``."""

    def __init__(
        self,
        relay_host: str,
        relay_port: int,
        *,
        auth_line: str | bytes | EscrAuth | None = None,
        crypto: TunnelCrypto = None,
        local_host: str = "localhost",
        local_port: int = 22,
        timeout: float = 60.0,
        relay_timeout: float = RELAY_CONNECT_TIMEOUT,
        impl: str | None = None,
    ) -> None:
        super().__init__(crypto, timeout, impl)
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.auth_line = auth_line
        self.local_host = local_host
        self.local_port = local_port
        self.relay_timeout = relay_timeout
        self._last_id = 0
        twin = isinstance(crypto, CtrKeys) and crypto.twin
        self.parser = ControlParser(
            accept_unterminated=not twin and not isinstance(crypto, AeadKeys)
        )

    async def connect(self) -> None:
        """Open the control channel (the srv readiness point)."""
        sock = await connect_relay(
            self.relay_host, self.relay_port, self.auth_line, timeout=self.relay_timeout
        )
        self.control = ControlChannel(sock, self.crypto, is_client=False)

    async def run(self) -> MultiStats:
        if self.control is None:
            await self.connect()
        loop = asyncio.get_running_loop()
        reader = loop.create_task(self._read_control())
        watch = loop.create_task(self._idle_watch())
        graceful = False
        try:
            await asyncio.wait([reader, watch], return_when=asyncio.FIRST_COMPLETED)
            graceful = True
        finally:
            for t in (reader, watch):
                t.cancel()
            await asyncio.gather(reader, watch, return_exceptions=True)
            await self._finish(graceful)
        return self.stats

    def _accepts(self, msg: Connect) -> str | None:
        """Why ``msg`` is refused in this session's mode, or None (T11: no downgrade)."""
        if isinstance(self.crypto, AeadKeys):
            if msg.conn_id is None:
                return f"{msg.kind} connection refused in an AEAD session"
            if msg.conn_id <= self._last_id:
                return f"connection id {msg.conn_id} does not increase"
        elif isinstance(self.crypto, CtrKeys):
            if msg.keys is None:
                return f"{msg.kind} connection refused in an encrypted session"
        elif msg.conn_id is not None:
            return "AEAD connection requested but no AEAD secret configured"
        return None

    async def _read_control(self) -> None:
        assert self.control is not None
        try:
            while True:
                data = await self.control.recv()
                if data is None:
                    log.info("control channel closed by the client end")
                    return
                for ev in self.parser.feed(data):
                    if isinstance(ev, Heartbeat):
                        continue
                    if not isinstance(ev, Connect):
                        log.warning("Unknown request to control socket (%s)", ev.reason)
                        continue
                    why = self._accepts(ev)
                    if why:
                        self.stats.failed += 1
                        self.stats.errors.append(why)
                        log.warning("%s", why)
                        continue
                    await self._open_one(ev)
        except (OSError, NoPortsError) as exc:
            self.stats.errors.append(f"control: {exc}")
            log.warning("control channel failed: %s", exc)

    async def _open_one(self, msg: Connect) -> None:
        """Relay socket now (keeps FIFO order with the client); local service in the bridge task."""
        conn_id = msg.conn_id if msg.conn_id is not None else self._last_id + 1
        self._last_id = conn_id
        crypto: TunnelCrypto = self.crypto if msg.conn_id is not None else msg.keys
        try:
            relay = await connect_relay(
                self.relay_host,
                self.relay_port,
                self.auth_line,
                timeout=self.relay_timeout,
                attempts=4,
            )
        except (OSError, NoPortsError) as exc:
            self.stats.failed += 1
            self.stats.errors.append(str(exc))
            log.warning("could not connect a data socket to the relay: %s", exc)
            return
        self.stats.connections += 1
        self._spawn(self._local_then_bridge(relay, crypto, conn_id))

    async def _local_then_bridge(
        self, relay: socket.socket, crypto: TunnelCrypto, conn_id: int
    ) -> None:
        try:
            local = await connect_tcp(self.local_host, self.local_port, self.relay_timeout)
        except (OSError, NoPortsError) as exc:
            relay.close()
            self.stats.failed += 1
            self.stats.errors.append(f"local service: {exc}")
            log.warning("could not connect to the local service: %s", exc)
            return
        await self._bridge(local, relay, crypto, False, conn_id)


async def run_daemon_multi(relay_host: str, relay_port: int, **kw: Any) -> MultiStats:
    """Convenience: ``DaemonMulti(relay_host, relay_port, **kw).run()``."""
    return await DaemonMulti(relay_host, relay_port, **kw).run()


__all__ = ["ClientMulti", "ControlChannel", "DaemonMulti", "MultiStats", "run_daemon_multi"]

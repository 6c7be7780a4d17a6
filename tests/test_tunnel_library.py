"""The in-process tunnel library through the real relay: single and multi mode in every
cipher mode, on both transfer loops and both event loops; half-close, backpressure,
downgrade refusal, timeouts and clean shutdown."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest

from noports import _compat
from noports.errors import PeerTimeoutError
from noports.tunnel import (
    AeadKeys,
    ClientMulti,
    ControlChannel,
    CtrKeys,
    DaemonMulti,
    open_client_single,
    run_daemon_single,
)
from noports.tunnel.control import format_connect
from noports.tunnel.net import connect_relay

from .test_tunnel_helpers import EchoServer, _keep, pattern, relay_session, roundtrip, sha

MODES = ["clear", "legacy", "twin", "aead"]


def make_crypto(mode: str, sid: str = "sid"):  # type: ignore[no-untyped-def]
    return {
        "clear": None,
        "legacy": CtrKeys.generate(twin=False),
        "twin": CtrKeys.generate(),
        "aead": AeadKeys.generate(sid),
    }[mode]


@pytest.mark.parametrize("mode", MODES)
def test_single_mode(keys, impl, mode, run) -> None:
    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = make_crypto(mode, rc.session_id)
            echo = await EchoServer().start(banner=b"SSH-2.0-banner-before-client\r\n")
            # the daemon end (and its banner) is up before the client end even exists
            daemon = asyncio.ensure_future(
                run_daemon_single(
                    rc.host,
                    rc.port_b,
                    auth_line=rc.auth_b,
                    crypto=crypto,
                    local_host="127.0.0.1",
                    local_port=echo.port,
                    impl=impl,
                )
            )
            await asyncio.sleep(0.05)
            client = await open_client_single(
                rc.host, rc.port_a, auth_line=rc.auth_a, crypto=crypto, impl=impl
            )
            assert client.host == "127.0.0.1"
            data = pattern(1_500_000, seed=3)
            got = await roundtrip(client.port, data)
            assert got == b"SSH-2.0-banner-before-client\r\n" + data
            st = await client.wait()
            dst = await daemon
            assert st.up == len(data) == dst.down
            assert dst.up == len(got) == st.down
            await echo.close()

    run(go(), timeout=60)


class ReplyAfterEof:
    """Reads until EOF, then answers with the digest and a large body: only works if the
    tunnel propagates half-close and loses nothing on the orderly close."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.port = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> ReplyAfterEof:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        _keep(self.tasks)
        h = hashlib.sha256()
        while True:
            d = await r.read(65536)
            if not d:
                break
            h.update(d)
        w.write(h.digest() + self.body)
        await w.drain()
        w.close()

    async def close(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("mode", ["legacy", "aead"])
def test_half_close_and_no_byte_lost(keys, impl, mode, run) -> None:
    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = make_crypto(mode, rc.session_id)
            body = os.urandom(3_000_000)
            svc = await ReplyAfterEof(body).start()
            client = await open_client_single(
                rc.host, rc.port_a, auth_line=rc.auth_a, crypto=crypto, impl=impl
            )
            daemon = asyncio.ensure_future(
                run_daemon_single(
                    rc.host,
                    rc.port_b,
                    auth_line=rc.auth_b,
                    crypto=crypto,
                    local_host="127.0.0.1",
                    local_port=svc.port,
                    impl=impl,
                )
            )
            data = os.urandom(777_777)
            got = await roundtrip(client.port, data)
            assert got[:32] == hashlib.sha256(data).digest()
            assert got[32:] == body
            await client.wait()
            await daemon
            await svc.close()

    run(go(), timeout=60)


def test_backpressure_bounds_buffering(keys, impl, run) -> None:
    """A service that does not read: the sender must stall long before 256 MiB."""

    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = AeadKeys.generate(rc.session_id)
            gate = asyncio.Event()
            received = bytearray()

            tasks: set[asyncio.Task[None]] = set()

            async def slow(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                _keep(tasks)
                await gate.wait()
                while True:
                    d = await r.read(1 << 20)
                    if not d:
                        break
                    received.extend(d)
                w.close()

            server = await asyncio.start_server(slow, "127.0.0.1", 0, limit=65536)
            port = server.sockets[0].getsockname()[1]
            # the asyncio StreamReader pauses its transport at 2*limit: the service's
            # socket really stops reading, so everything upstream must fill and stop
            client = await open_client_single(
                rc.host, rc.port_a, auth_line=rc.auth_a, crypto=crypto, impl=impl
            )
            daemon = asyncio.ensure_future(
                run_daemon_single(
                    rc.host,
                    rc.port_b,
                    auth_line=rc.auth_b,
                    crypto=crypto,
                    local_host="127.0.0.1",
                    local_port=port,
                    impl=impl,
                )
            )
            loop = asyncio.get_running_loop()
            app = socket.create_connection(("127.0.0.1", client.port))
            app.setblocking(False)
            block = pattern(1 << 20, seed=9)
            view = memoryview(block)
            sent, last = 0, loop.time()
            while sent < 256 << 20:
                try:
                    sent += app.send(view[sent % len(block) :])
                    last = loop.time()
                except BlockingIOError:
                    if loop.time() - last > 1.0:
                        break  # stalled for a second: backpressure reached the sender
                    await asyncio.sleep(0.005)
            stalled_at = sent
            assert stalled_at < 96 << 20, stalled_at
            gate.set()
            # everything buffered so far arrives intact once the service reads again
            await asyncio.wait_for(loop.sock_sendall(app, view[sent % len(block) :]), 20)
            await asyncio.wait_for(loop.sock_sendall(app, block), 20)
            total = sent - sent % len(block) + 2 * len(block)
            app.shutdown(socket.SHUT_WR)
            await asyncio.wait_for(client.wait(), 30)
            await asyncio.wait_for(daemon, 30)
            app.close()
            assert len(received) == total
            assert received == block * (total // len(block))
            server.close()
            await server.wait_closed()

    run(go(), timeout=90)


@pytest.mark.parametrize("mode", MODES)
def test_multi_20_concurrent_connections(keys, impl, mode, run) -> None:
    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = make_crypto(mode, rc.session_id)
            echo = await EchoServer().start()
            dm = DaemonMulti(
                rc.host,
                rc.port_b,
                auth_line=rc.auth_b,
                crypto=crypto,
                local_host="127.0.0.1",
                local_port=echo.port,
                timeout=30,
                impl=impl,
            )
            await dm.connect()
            dtask = asyncio.ensure_future(dm.run())
            cm = await ClientMulti.open(
                rc.host,
                rc.port_a,
                auth_line=rc.auth_a,
                crypto=crypto,
                timeout=30,
                heartbeat=0.02,
                impl=impl,
            )
            datas = [pattern(60_000 + 1009 * i, seed=50 + i) for i in range(20)]
            res = await asyncio.gather(*(roundtrip(cm.port, d) for d in datas))
            assert [sha(r) for r in res] == [sha(d) for d in datas]
            await asyncio.sleep(0.1)  # a few heartbeats go by, and are ignored
            await cm.close()
            stats = await asyncio.wait_for(dtask, 20)
            assert stats.connections == 20 and stats.failed == 0, stats.errors
            assert stats.bytes_up == sum(map(len, datas)) == stats.bytes_down
            await echo.close()
            # every set-up released its hold on the fair budget (noports._speedups.xfer)
            assert _compat.speedups("xfer", impl).urgent_pending() == 0

    run(go(), timeout=60)


def test_multi_failed_setups_release_the_fair_budget(keys, impl, run) -> None:
    """A connection whose local service refuses still ends its set-up's hold on the fair
    budget (else every bulk flow of the process would keep small batches for good)."""

    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = make_crypto("aead", rc.session_id)
            closed = socket.socket()
            closed.bind(("127.0.0.1", 0))
            dead_port = closed.getsockname()[1]
            closed.close()  # nothing listens there: the local connect is refused
            dm = DaemonMulti(
                rc.host,
                rc.port_b,
                auth_line=rc.auth_b,
                crypto=crypto,
                local_host="127.0.0.1",
                local_port=dead_port,
                timeout=30,
                relay_timeout=5,
                impl=impl,
            )
            await dm.connect()
            dtask = asyncio.ensure_future(dm.run())
            cm = await ClientMulti.open(
                rc.host, rc.port_a, auth_line=rc.auth_a, crypto=crypto, timeout=30, impl=impl
            )
            for _ in range(3):
                r, w = await asyncio.open_connection("127.0.0.1", cm.port)
                w.write(b"x")
                try:  # the connection ends (reset or EOF) with nothing echoed
                    assert await asyncio.wait_for(r.read(1), 10) == b""
                except ConnectionError:
                    pass
                w.close()
            for _ in range(100):
                if dm.stats.failed >= 3:
                    break
                await asyncio.sleep(0.05)
            assert dm.stats.failed == 3, dm.stats.errors
            assert _compat.speedups("xfer", impl).urgent_pending() == 0
            await cm.close()
            await asyncio.wait_for(dtask, 20)

    run(go(), timeout=60)


def test_multi_idle_timeout_ends_both(keys, run) -> None:
    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = make_crypto("aead", rc.session_id)
            echo = await EchoServer().start()
            dm = DaemonMulti(
                rc.host,
                rc.port_b,
                auth_line=rc.auth_b,
                crypto=crypto,
                local_host="127.0.0.1",
                local_port=echo.port,
                timeout=0.5,
            )
            dtask = asyncio.ensure_future(dm.run())
            cm = await ClientMulti.open(
                rc.host, rc.port_a, auth_line=rc.auth_a, crypto=crypto, timeout=0.5
            )
            assert await roundtrip(cm.port, b"one") == b"one"
            st = await asyncio.wait_for(cm.wait(), 10)
            assert st.connections == 1
            await asyncio.wait_for(dtask, 10)
            await echo.close()

    run(go(), timeout=30)


@pytest.mark.parametrize("offer", ["no-encrypt", "ctr"])
def test_aead_daemon_refuses_downgraded_connects(keys, offer, run) -> None:
    """T11: inside an AEAD session the daemon opens nothing for a weaker request."""

    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = AeadKeys.generate(rc.session_id)
            echo = await EchoServer().start()
            dm = DaemonMulti(
                rc.host,
                rc.port_b,
                auth_line=rc.auth_b,
                crypto=crypto,
                local_host="127.0.0.1",
                local_port=echo.port,
                timeout=5,
            )
            dtask = asyncio.ensure_future(dm.run())
            ctl = ControlChannel(
                await connect_relay(rc.host, rc.port_a, rc.auth_a), crypto, is_client=True
            )
            msg = format_connect() if offer == "no-encrypt" else format_connect(CtrKeys.generate())
            await ctl.send(msg + format_connect(conn_id=5) + format_connect(conn_id=5))
            await asyncio.sleep(0.3)
            await ctl.close()
            stats = await asyncio.wait_for(dtask, 10)
            assert any("refused" in e for e in stats.errors), stats.errors
            assert any("does not increase" in e for e in stats.errors), stats.errors
            assert stats.connections == 1  # only the one valid aead request
            await echo.close()

    run(go(), timeout=30)


def test_single_client_timeout(run) -> None:
    async def go() -> None:
        client = await open_client_single("127.0.0.1", 9, timeout=0.2)
        with pytest.raises(PeerTimeoutError):
            await client.wait()
        # the listener is gone
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", client.port), timeout=1).close()

    run(go(), timeout=10)


def test_close_tears_down_running_connections_without_stray_tasks(keys, run) -> None:
    async def go() -> None:
        async with relay_session(keys) as rc:
            crypto = make_crypto("twin")
            echo = await EchoServer().start()
            dm = DaemonMulti(
                rc.host,
                rc.port_b,
                auth_line=rc.auth_b,
                crypto=crypto,
                local_host="127.0.0.1",
                local_port=echo.port,
                timeout=30,
            )
            dtask = asyncio.ensure_future(dm.run())
            cm = await ClientMulti.open(
                rc.host, rc.port_a, auth_line=rc.auth_a, crypto=crypto, timeout=30
            )
            r, w = await asyncio.open_connection("127.0.0.1", cm.port)
            w.write(b"ping")
            assert await asyncio.wait_for(r.readexactly(4), 10) == b"ping"
            await asyncio.wait_for(cm.close(), 10)
            dtask.cancel()
            await asyncio.gather(dtask, return_exceptions=True)
            w.close()
            await echo.close()
        await asyncio.sleep(0.05)
        me = asyncio.current_task()
        stray = [
            t
            for t in asyncio.all_tasks()
            if t is not me and not t.done() and not t.get_coro().__qualname__.endswith("guarded")
        ]  # conftest's wrapper
        assert stray == []

    run(go(), timeout=30)

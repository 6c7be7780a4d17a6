"""The real asyncio client (``AtConnection``, ``AtClient``, its ``Monitor``, the onboarding
functions) against the real server engine through the in-memory pair of ``tests/atpair.py``:
no sockets and no TLS, so the whole client/server conversation of each verb runs in
milliseconds. The same client code runs over TLS in ``test_at_client`` and the interop tests.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from noports.at import commands, onboard
from noports.at.connection import connect_authenticated, find_atserver
from noports.at.notifications import MonitorClosed
from noports.at.protocol import ErrorReply
from noports.crypto.atkeys import AtKeys
from noports.errors import (
    ApkamRevokedError,
    ClientAuthFailedError,
    ConnectError,
    KeyNotFoundError,
    SecondaryNotFoundError,
)
from tests.atpair import MEMORY_HOST, MEMORY_PORT, ManualClock, MemoryAtServer

pytestmark = pytest.mark.timeout(60)

RunFn = Callable[..., Any]  # conftest's ``run(coro, timeout)``: each loop kind the programs use


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def srv(tmp_path: Path, clock: ManualClock) -> Iterator[MemoryAtServer]:
    with MemoryAtServer(tmp_path / "server", clock=clock) as s, s.routed():
        yield s


@pytest.fixture
def alice(srv: MemoryAtServer, keys: Callable[[str], AtKeys]) -> AtKeys:
    return srv.hosted(keys("@alice"))


@pytest.fixture
def bob(srv: MemoryAtServer, keys: Callable[[str], AtKeys]) -> AtKeys:
    return srv.hosted(keys("@bob"))


def test_connection_requests_and_errors(run: RunFn, srv: MemoryAtServer, alice: AtKeys) -> None:
    async def main() -> None:
        conn = await srv.connect()
        assert not conn.authenticated
        await conn.authenticate(alice)
        assert conn.authenticated and conn.atsign == "@alice"
        assert await conn.execute(commands.update("x.app@alice", "v")) == "3"
        assert await conn.execute(commands.llookup("x.app@alice")) == "v"
        reply = await conn.request(commands.llookup("nothing@alice"))
        assert isinstance(reply, ErrorReply) and reply.code == "AT0015"
        with pytest.raises(KeyNotFoundError):
            await conn.execute(commands.llookup("nothing@alice"))
        assert len(srv.engine.sessions) == 1
        await conn.close()
        assert conn.closed
        await asyncio.sleep(0)
        assert srv.engine.sessions == set()
        with pytest.raises(ConnectError):
            await conn.execute(commands.noop(0))

    run(main(), 20)


def test_pkam_refused_is_client_auth_failed(
    run: RunFn, srv: MemoryAtServer, alice: AtKeys, keys: Callable[[str], AtKeys]
) -> None:
    async def main() -> None:
        conn = await srv.connect()
        with pytest.raises(ClientAuthFailedError):
            await conn.authenticate_pkam(alice.atsign, keys("@mallory").pkam_private)
        await conn.close()

    run(main(), 20)


def test_root_lookup_through_find_atserver(run: RunFn, srv: MemoryAtServer, alice: AtKeys) -> None:
    async def main() -> None:
        assert await find_atserver("@alice", root=srv.root) == (MEMORY_HOST, MEMORY_PORT)
        with pytest.raises(SecondaryNotFoundError):
            await find_atserver("@nobody", root=srv.root)
        # routed() never lets a connection leave the process
        with pytest.raises(ConnectError):
            await find_atserver("@alice", root="127.0.0.1:1")

    run(main(), 20)


def test_client_shares_encrypted_data_between_two_atsigns(
    run: RunFn, srv: MemoryAtServer, alice: AtKeys, bob: AtKeys
) -> None:
    async def main() -> None:
        a = await srv.client(alice)
        b = await srv.client(bob)
        await a.put("note.app", "for bob's eyes", shared_with="@bob")
        await a.put("diary.app", "self data")
        await a.put("motd.app", "hello world", public=True)
        assert await b.get("note.app", shared_by="@alice") == "for bob's eyes"
        assert await b.get("motd.app", shared_by="@alice", public=True) == "hello world"
        assert await a.get("diary.app") == "self data"
        assert await a.get("note.app", shared_with="@bob") == "for bob's eyes"
        # what is stored is ciphertext: the server never saw the plaintext
        stored = srv.store.get("@alice", "@bob:note.app@alice")
        assert stored is not None and stored.value and "bob's eyes" not in stored.value
        with pytest.raises(KeyNotFoundError):
            await b.get("diary.app", shared_by="@alice")
        assert await a.scan(r"\.app@") == [
            "@bob:note.app@alice",
            "diary.app@alice",
            "public:motd.app@alice",
        ]
        assert await a.scan("^diary") == ["diary.app@alice"]
        await a.delete("note.app", shared_with="@bob")
        with pytest.raises(KeyNotFoundError):
            await b.get("note.app", shared_by="@alice")
        await a.close()
        await b.close()

    run(main(), 20)


def test_monitor_gets_decrypted_notifications_and_status(
    run: RunFn, srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, bob: AtKeys
) -> None:
    async def main() -> None:
        a = await srv.client(alice)
        b = await srv.client(bob)
        async with b.monitor(r"\.memtest@") as mon:
            await mon.started(5)
            ids = [
                await a.notify("@bob", f"n{i}", f"payload {i}", namespace="memtest") for i in (1, 2)
            ]
            await a.notify("@bob", "other", "filtered out", namespace="elsewhere")
            got = [await mon.next(timeout=5) for _ in ids]
            assert [n.id for n in got] == ids
            assert [n.value for n in got] == ["payload 1", "payload 2"]
            assert all(n.decrypted and n.epoch_millis == clock() for n in got)
            assert [await a.notify_status(i) for i in ids] == ["delivered", "delivered"]
            assert len(srv.engine.hub.monitors("@bob")) == 1
        await asyncio.sleep(0)
        assert srv.engine.hub.monitors("@bob") == []
        await a.close()
        await b.close()

    run(main(), 20)


def test_signed_request_and_reply(
    run: RunFn, srv: MemoryAtServer, alice: AtKeys, bob: AtKeys
) -> None:
    """The NoPorts control-plane pattern: a signed request notified to the device, whose
    daemon answers with a signed reply the requester is already monitoring for."""

    async def main() -> None:
        a = await srv.client(alice)
        b = await srv.client(bob)

        async def device() -> None:
            async with b.monitor(r"ping\.memtest@") as mon:
                await mon.started(5)
                ready.set()
                n = await mon.next(timeout=5)
                payload = await b.verify_signed(n.value or "", n.from_atsign)
                await b.send_signed(
                    n.from_atsign, "pong", {"echo": payload["x"] * 2}, namespace="memtest"
                )

        ready = asyncio.Event()
        task = asyncio.ensure_future(device())
        await ready.wait()
        answer = await a.request(
            "@bob", "ping", {"x": 21}, namespace="memtest", reply_key="pong", timeout=5
        )
        assert answer["echo"] == 42
        await task
        await a.close()
        await b.close()

    run(main(), 20)


def test_monitor_resumes_after_the_server_drops_it(run: RunFn, tmp_path: Path, keys) -> None:
    """The client's resume point comes from its own clock before the first notification
    (notifications.py says so), so this server's clock starts at the real time."""
    clock = ManualClock(int(time.time() * 1000))
    with MemoryAtServer(tmp_path / "s", clock=clock) as srv, srv.routed():
        alice, bob = keys("@alice"), keys("@bob")
        srv.host(alice)
        srv.host(bob)

        async def main() -> None:
            a = await srv.client(alice)
            b = await srv.client(bob)
            mon = b.monitor(None)
            await mon.started(5)
            await a.notify("@bob", "before", "1", namespace="memtest")
            assert (await mon.next(timeout=5)).value == "1"
            # the server drops every monitor connection of bob's (as a restart would)
            for c in list(srv.conns):
                if c.session.monitoring:
                    c.close()
            clock.advance(5)
            await a.notify("@bob", "during", "2", namespace="memtest")
            n = await mon.next(timeout=10)  # after one reconnect backoff (<= 0.25 s)
            assert (n.short_key, n.value) == ("during.memtest", "2")
            assert mon.reconnects == 1
            await mon.close()
            with pytest.raises(MonitorClosed):
                await mon.next(timeout=1)
            await a.close()
            await b.close()

        run(main(), 20)


def test_onboard_with_the_cram_secret(run: RunFn, srv: MemoryAtServer, tmp_path: Path) -> None:
    secret = srv.host("@carol")
    assert secret is not None

    async def main() -> None:
        done = await onboard.onboard(
            "@carol",
            secret,
            root=srv.root,
            ssl_ctx=_unused_ctx(),
            device_name="memtest",
            keys_path=tmp_path / "carol_key.atKeys",
        )
        assert done.path.exists() and done.keys.enrollment_id == done.enrollment_id
        # the activation secret is gone, the public key is published, the keys work
        assert srv.store.get("@carol", "privatekey:at_secret") is None
        assert await onboard.public_key_published("@carol", root=srv.root, ssl_ctx=_unused_ctx())
        c = await srv.client(AtKeys.load(done.path, "@carol"))
        await c.put("hello.app", "world")
        assert await c.get("hello.app") == "world"
        await c.close()
        with pytest.raises(ClientAuthFailedError):  # a second activation is refused
            await onboard.onboard(
                "@carol",
                secret,
                root=srv.root,
                ssl_ctx=_unused_ctx(),
                keys_path=tmp_path / "again.atKeys",
            )

    run(main(), 20)


def test_otp_enrollment_approval_revocation(
    run: RunFn, srv: MemoryAtServer, alice: AtKeys, tmp_path: Path
) -> None:
    async def main() -> None:
        a = await srv.client(alice)
        await a.put("diary.app", "only alice's devices read this")
        otp = await onboard.get_otp(alice, root=srv.root, ssl_ctx=_unused_ctx())
        pending = await onboard.request_enrollment(
            "@alice",
            otp,
            app_name="memtest",
            device_name="laptop",
            namespaces={"app": "rw"},
            root=srv.root,
            ssl_ctx=_unused_ctx(),
        )
        async with await onboard.EnrollmentManager.connect(
            alice, root=srv.root, ssl_ctx=_unused_ctx()
        ) as mgr:
            listed = await mgr.list("pending")
            assert [e.enrollment_id for e in listed] == [pending.enrollment_id]
            await mgr.approve(pending.enrollment_id)
            new_keys = await pending.wait(timeout=5, interval=0.01)
            assert new_keys.enrollment_id == pending.enrollment_id
            # the approver handed over the encryption keys: the new device reads self data
            laptop = await srv.client(new_keys)
            assert await laptop.get("diary.app") == "only alice's devices read this"
            mon = laptop.monitor(None)
            await mon.started(5)
            assert await mgr.revoke(pending.enrollment_id) == "revoked"
            with pytest.raises(ApkamRevokedError):  # dropped, and refused on reconnect
                await mon.next(timeout=10)
            await mon.close()
            await laptop.close()
            with pytest.raises(ApkamRevokedError):
                await connect_authenticated(new_keys, root=srv.root, ssl_ctx=_unused_ctx())
        await a.close()

    run(main(), 20)


def test_enroll_request_with_a_wrong_otp(run: RunFn, srv: MemoryAtServer, alice: AtKeys) -> None:
    async def main() -> None:
        with pytest.raises(onboard.AuthRefusedError):
            await onboard.request_enrollment(
                "@alice",
                "ABCDEF",
                app_name="memtest",
                device_name="laptop",
                namespaces={"app": "rw"},
                root=srv.root,
                ssl_ctx=_unused_ctx(),
            )
        await asyncio.sleep(0)
        assert srv.conns == set()  # request_enrollment closed its connection

    run(main(), 20)


def test_many_clients_on_one_engine(
    run: RunFn, srv: MemoryAtServer, keys: Callable[[str], AtKeys]
) -> None:
    """Twenty atSigns, each sharing with the next: the engine keeps them apart."""
    base = keys("@alice")

    people = [base.replace(atsign=f"@p{i}") for i in range(20)]
    for k in people:
        srv.host(k)

    async def main() -> None:
        clients = await asyncio.gather(*(srv.client(k) for k in people))
        await asyncio.gather(
            *(
                c.put("msg.app", f"from p{i}", shared_with=f"@p{(i + 1) % 20}")
                for i, c in enumerate(clients)
            )
        )
        got = await asyncio.gather(
            *(c.get("msg.app", shared_by=f"@p{(i - 1) % 20}") for i, c in enumerate(clients))
        )
        assert got == [f"from p{(i - 1) % 20}" for i in range(20)]
        await asyncio.gather(*(c.close() for c in clients))
        await asyncio.sleep(0)
        assert srv.engine.sessions == set()

    run(main(), 20)


def _unused_ctx() -> Any:
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # routed() connections never use TLS


def test_json_reply_of_enroll_list_is_parsed(
    run: RunFn, srv: MemoryAtServer, alice: AtKeys
) -> None:
    async def main() -> None:
        c = await srv.client(alice)
        body = json.loads(await c.execute(commands.enroll("list")))
        assert body == {}
        await c.close()

    run(main(), 20)

"""AtClient against the real embedded server (``noports server``) over TLS, on both loops."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import pytest

from noports.at import commands
from noports.at.client import AtClient
from noports.at.connection import AtConnection, connect_atserver
from noports.at.notifications import MonitorClosed
from noports.crypto import aes, rsa
from noports.crypto.atkeys import AtKeys
from noports.crypto.envelope import envelope_json
from noports.errors import (
    ApkamAuthError,
    AtError,
    ClientAuthFailedError,
    KeyFileError,
    KeyNotFoundError,
    LocalError,
    PeerTimeoutError,
    SecondaryNotFoundError,
    SignatureError,
)

NewAtSign = Callable[[str], AtKeys]


@pytest.fixture
def new_atsign(at_server, keys) -> NewAtSign:
    """A fresh atSign on the session server, with cached key material under a unique name."""

    def make(base: str) -> AtKeys:
        name = f"@{base}{uuid.uuid4().hex[:8]}"
        k = keys("@" + base).replace(atsign=name)
        at_server.add(name, k)
        return k

    return make


async def connect(at_server, k: AtKeys) -> AtClient:
    return await AtClient.connect(k.atsign, keys=k, root=at_server.root, ca_file=at_server.ca_file)


def test_root_lookup_pkam_forms_and_refusals(run, at_server, new_atsign, keys) -> None:
    alice = new_atsign("alice")

    async def main() -> None:
        conn = await connect_atserver(alice.atsign, root=at_server.root, ca_file=at_server.ca_file)
        assert (conn.host, conn.port) == (at_server.host, at_server.port)
        await conn.authenticate(alice)  # Dart form
        assert conn.authenticated
        assert await conn.execute(commands.noop()) == "ok"
        info = json.loads(await conn.execute(commands.info()))
        assert "version" in info
        await conn.close()
        conn = await connect_atserver(alice.atsign, root=at_server.root, ca_file=at_server.ca_file)
        await conn.authenticate(alice, dart_form=False)  # atsdk / C form
        await conn.close()
        # clientConfig turns errors into JSON; they map to the same classes
        conn = await connect_atserver(alice.atsign, root=at_server.root, ca_file=at_server.ca_file)
        await conn.authenticate_pkam(
            alice.atsign, alice.pkam_private, client_config={"version": "3.0.38"}
        )
        with pytest.raises(KeyNotFoundError):
            await conn.execute(commands.llookup(f"nothing{alice.atsign}"))
        await conn.close()
        conn = await connect_atserver(alice.atsign, root=at_server.root, ca_file=at_server.ca_file)
        with pytest.raises(ClientAuthFailedError):
            await conn.authenticate_pkam(alice.atsign, keys("@mallory").pkam_private)
        with pytest.raises(AtError):  # still unauthenticated
            await conn.execute(commands.llookup(f"x{alice.atsign}"))
        await conn.close()
        with pytest.raises(SecondaryNotFoundError):
            await connect_atserver(
                f"@nobody{uuid.uuid4().hex[:6]}", root=at_server.root, ca_file=at_server.ca_file
            )

    run(main())


def test_local_misuse_raises_local_errors(run, at_server, new_atsign, keys) -> None:
    # Misuse on our side is a LocalError (exit 1 or 4), never a peer's ProtocolError (exit 6).
    alice = new_atsign("alice")

    async def main() -> None:
        with pytest.raises(KeyFileError, match="keys are for"):
            await AtClient.connect(
                alice.atsign, keys=keys("@bob"), root=at_server.root, ca_file=at_server.ca_file
            )
        conn = await connect_atserver(alice.atsign, root=at_server.root, ca_file=at_server.ca_file)
        with pytest.raises(LocalError, match="root connections"):
            await conn.lookup("@bob")
        await conn.close()
        a = await connect(at_server, alice)
        with pytest.raises(LocalError, match="oneself"):
            await a.shared_keys.incoming(alice.atsign)
        await a.close()

    run(main())


def test_put_get_delete_scan(run, at_server, new_atsign) -> None:
    alice, bob = new_atsign("alice"), new_atsign("bob")

    async def main() -> None:
        a = await connect(at_server, alice)
        b = await connect(at_server, bob)
        assert await a.put("phone.test", "+1 555 é") > 0
        assert await a.get("phone.test") == "+1 555 é"
        raw = json.loads(await a.execute(commands.llookup(f"phone.test{alice.atsign}", "all")))
        assert raw["data"] != "+1 555 é" and raw["metaData"]["ivNonce"]  # stored encrypted
        await a.put("card.test", "hello world", public=True, ttl=60_000)
        assert await b.get("card.test", shared_by=alice.atsign, public=True) == "hello world"
        assert await a.get("card.test", public=True) == "hello world"
        keys_ = await a.scan("test")
        assert f"phone.test{alice.atsign}" in keys_ and f"public:card.test{alice.atsign}" in keys_
        await a.delete("phone.test")
        with pytest.raises(KeyNotFoundError):
            await a.get("phone.test")
        with pytest.raises(KeyNotFoundError):
            await b.get("nothing.test", shared_by=alice.atsign)
        await a.close()
        await b.close()

    run(main())


def test_shared_key_exchange_both_ways(run, at_server, new_atsign) -> None:
    alice, bob = new_atsign("alice"), new_atsign("bob")

    async def main() -> None:
        a = await connect(at_server, alice)
        b = await connect(at_server, bob)
        await a.put("secret.test", "for bob only", shared_with=bob.atsign, ttr=-1)
        assert await b.get("secret.test", shared_by=alice.atsign) == "for bob only"
        assert await a.get("secret.test", shared_with=bob.atsign) == "for bob only"
        await b.put("answer.test", "for alice", shared_with=alice.atsign)
        assert await a.get("answer.test", shared_by=bob.atsign) == "for alice"

        # the stored copies are what official clients expect
        k = (await a.shared_keys.outgoing(bob.atsign)).key_b64
        mine = await a.execute(commands.llookup(f"shared_key.{bob.atsign[1:]}{alice.atsign}"))
        assert rsa.decrypt(alice.encrypt_private, mine).decode() == k
        theirs = await a.execute(commands.llookup(f"{bob.atsign}:shared_key{alice.atsign}"))
        assert rsa.decrypt(bob.encrypt_private, theirs).decode() == k
        # a fresh bob (empty caches) finds the key by lookup, without metadata
        b2 = await connect(at_server, bob)
        assert await b2.shared_keys.incoming(alice.atsign) == k
        # a fresh alice reuses the existing pair instead of making a new key
        a2 = await connect(at_server, alice)
        assert (await a2.shared_keys.outgoing(bob.atsign)).key_b64 == k
        for c in (a, b, a2, b2):
            await c.close()

    run(main())


def test_public_key_cache_refresh_and_signatures(run, at_server, new_atsign, keys) -> None:
    alice, bob = new_atsign("alice"), new_atsign("bob")

    async def main() -> None:
        a = await connect(at_server, alice)
        b = await connect(at_server, bob)
        first = await a.public_key(bob.atsign)
        assert rsa.public_to_b64(first) == bob.encrypt_public_b64
        env = envelope_json({"sessionId": "s1", "note": "ü"}, bob.encrypt_private)
        assert await a.verify_signed(env, bob.atsign) == {"sessionId": "s1", "note": "ü"}

        # bob re-onboards with a new encryption key: the cached key is stale
        new = keys("@bobnew")
        await b.execute(commands.update(f"public:publickey{bob.atsign}", new.encrypt_public_b64))
        assert await a.public_key(bob.atsign) is first  # served from the cache
        env2 = envelope_json({"sessionId": "s2"}, new.encrypt_private)
        assert await a.verify_signed(env2, bob.atsign) == {"sessionId": "s2"}  # refetch on failure
        assert rsa.public_to_b64(await a.public_key(bob.atsign)) == new.encrypt_public_b64

        tampered = json.loads(env2)
        tampered["payload"]["sessionId"] = "evil"
        with pytest.raises(SignatureError):
            await a.verify_signed(tampered, bob.atsign)
        forged = envelope_json({"sessionId": "s3"}, keys("@mallory").encrypt_private)
        with pytest.raises(SignatureError):
            await a.verify_signed(forged, bob.atsign)
        await b.execute(commands.update(f"public:publickey{bob.atsign}", bob.encrypt_public_b64))
        await a.close()
        await b.close()

    run(main())


def test_encrypted_notify_to_monitor(run, at_server, new_atsign) -> None:
    alice, bob = new_atsign("alice"), new_atsign("bob")

    async def main() -> None:
        a = await connect(at_server, alice)
        b = await connect(at_server, bob)
        b2 = await connect(at_server, bob)
        keymon = b2.monitor("shared_key")  # alice's new key reaches bob by autoNotify
        await keymon.started(5)
        async with b.monitor(r"\.test", heartbeat=0.2) as mon:
            await mon.started(5)
            nid = await a.notify(
                bob.atsign,
                "ping",
                "hello bob\nsecond line",
                namespace="dev.test",
                ttln_ms=60_000,
                ttl_ms=10_000,
            )
            n = await mon.next(timeout=5)
            assert n.id == nid and n.decrypted and n.value == "hello bob\nsecond line"
            assert n.from_atsign == alice.atsign and n.short_key == "ping.dev.test"
            assert n.metadata.iv_nonce and n.is_encrypted
            await a.notify(bob.atsign, "plain", "clear text", namespace="test", encrypted=False)
            n2 = await mon.next(timeout=5)
            assert n2.value == "clear text" and not n2.decrypted
            await asyncio.sleep(0.5)  # heartbeats (noop:0 in monitor mode) keep it alive
            assert mon.reconnects == 0
            with pytest.raises(PeerTimeoutError):
                await mon.next(timeout=0.2)
            assert await a.notify_status(nid) in ("delivered", "queued")
        # the shared_key notification was consumed (learnt), not delivered
        with pytest.raises(PeerTimeoutError):
            await keymon.next(timeout=0.3)
        k = (await a.shared_keys.outgoing(bob.atsign)).key_b64
        assert b2.shared_keys._in.get(alice.atsign) == k
        await keymon.close()
        await b2.close()
        with pytest.raises(MonitorClosed):
            await mon.next(timeout=1)
        with pytest.raises(commands.CommandError):
            b.monitor("two\nlines")
        await a.close()
        await b.close()

    run(main())


def test_signed_request_response(run, at_server, new_atsign, keys) -> None:
    alice, dev = new_atsign("alice"), new_atsign("dev")

    async def main() -> None:
        a = await connect(at_server, alice)
        d = await connect(at_server, dev)
        forge = {"on": False}

        async def daemon() -> None:
            async with d.monitor(r"request\.test") as mon:
                async for n in mon:
                    payload = await d.verify_signed(n.value, n.from_atsign)
                    reply = {"sessionId": payload["sessionId"], "ok": True}
                    if forge["on"]:
                        text = envelope_json(reply, keys("@mallory").encrypt_private)
                        await d.notify(n.from_atsign, payload["sessionId"], text, namespace="test")
                    else:
                        await d.send_signed(
                            n.from_atsign, payload["sessionId"], reply, namespace="test"
                        )

        task = asyncio.create_task(daemon())
        got = await a.request(
            dev.atsign,
            "request",
            {"sessionId": "s-1", "cmd": "x"},
            namespace="test",
            reply_key="s-1",
            timeout=10,
        )
        assert got == {"sessionId": "s-1", "ok": True}
        forge["on"] = True
        with pytest.raises(SignatureError):
            await a.request(
                dev.atsign,
                "request",
                {"sessionId": "s-2"},
                namespace="test",
                reply_key="s-2",
                timeout=10,
            )
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(PeerTimeoutError):
            await a.request(
                dev.atsign,
                "request",
                {"sessionId": "s-3"},
                namespace="test",
                reply_key="s-3",
                timeout=0.5,
            )
        assert asyncio.get_running_loop().time() - t0 < 3
        await a.close()
        await d.close()

    run(main())


def test_apkam_enrollment_pkam(run, at_server) -> None:
    """CRAM bootstrap, auto-approved enroll:request, then PKAM with enrollmentId."""
    name = f"@carol{uuid.uuid4().hex[:8]}"
    secret = at_server.add(name)
    assert secret

    async def main() -> None:
        conn = await connect_atserver(name, root=at_server.root, ca_file=at_server.ca_file)
        await conn.authenticate_cram(name, secret)
        k = AtKeys.generate(name)
        sym = k.apkam_symmetric_key
        assert sym
        reply = json.loads(
            await conn.execute(
                commands.enroll(
                    "request",
                    {
                        "appName": "noports-test",
                        "deviceName": "laptop",
                        "apkamPublicKey": k.pkam_public_b64,
                        "encryptedDefaultEncryptionPrivateKey": aes.encrypt_b64(
                            sym, rsa.private_to_b64(k.encrypt_private)
                        ),
                        "encryptedDefaultSelfEncryptionKey": aes.encrypt_b64(
                            sym, k.self_encryption_key
                        ),
                    },
                )
            )
        )
        assert reply["status"] == "approved"
        k.enrollment_id = reply["enrollmentId"]
        await conn.execute(commands.update(f"public:publickey{name}", k.encrypt_public_b64))
        await conn.close()

        c = await AtClient.connect(name, keys=k, root=at_server.root, ca_file=at_server.ca_file)
        assert c.keys.enrollment_id
        await c.put("x.test", "apkam")
        assert await c.get("x.test") == "apkam"
        await c.close()
        bad = k.replace(enrollment_id=str(uuid.uuid4()))
        with pytest.raises(AtError):
            await AtClient.connect(name, keys=bad, root=at_server.root, ca_file=at_server.ca_file)
        conn = await AtConnection.open(
            at_server.host,
            at_server.port,
            __import__("noports.at.config", fromlist=["x"]).ssl_context(at_server.ca_file),
        )
        with pytest.raises((ClientAuthFailedError, ApkamAuthError, AtError)):
            await conn.authenticate_pkam(name, k.encrypt_private, enrollment_id=k.enrollment_id)
        await conn.close()

    run(main())


def test_monitor_close_ends_a_loop_that_swallowed_its_cancellation(
    run, at_server, new_atsign, monkeypatch
) -> None:
    """Python 3.11's wait_for returns a result that lands with a cancellation and drops the
    cancellation (the monitor's key look-ups use it); close() must still end the loop, not
    wait for it forever (seen as a web-app Stop that never returned)."""
    alice = new_atsign("alice")
    swallowed: list[bool] = []
    entered: list[asyncio.Event] = []

    async def stubborn(self, timeout=None):  # what the race leaves: cancelled once, waits on
        entered[0].set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            swallowed.append(True)
        await asyncio.sleep(3600)

    async def main() -> None:
        entered.append(asyncio.Event())
        a = await connect(at_server, alice)
        mon = a.monitor(r"\.nothing")
        await mon.started(5)
        monkeypatch.setattr(AtConnection, "next_notification", stubborn)
        mon.connection._notes.put_nowait(None)  # the running read ends; the next is stubborn
        await asyncio.wait_for(entered[0].wait(), 10)  # reconnected, in the stubborn read
        loop_task = mon._task
        assert loop_task is not None
        closing = asyncio.ensure_future(mon.close())
        done, _ = await asyncio.wait((closing,), timeout=10)  # no cancel of its own
        try:
            assert done and swallowed == [True], "close() waited on the loop for ever"
        finally:
            for _ in range(2):  # a failed run leaves both behind: end them
                loop_task.cancel()
                closing.cancel()
                await asyncio.wait((loop_task, closing), timeout=1)
            await a.close()

    run(main())


def test_monitor_resumes_after_server_restart(run, make_at_server, keys) -> None:
    srv = make_at_server("--stats-interval", "0.2")  # stats heartbeats must be ignored
    alice = keys("@alice").replace(atsign="@alice")
    bob = keys("@bob").replace(atsign="@bob")
    srv.add("@alice", alice)
    srv.add("@bob", bob)

    async def main() -> None:
        a = await AtClient.connect("@alice", keys=alice, root=srv.root, ca_file=srv.ca_file)
        b = await AtClient.connect("@bob", keys=bob, root=srv.root, ca_file=srv.ca_file)
        got: list[str] = []
        ids: list[str] = []
        async with b.monitor("resume", heartbeat=0.5) as mon:
            await mon.started(5)
            for i in range(3):
                await a.notify("@bob", f"m{i}", f"before {i}", namespace="resume")
            while len(got) < 3:
                n = await mon.next(timeout=5)
                got.append(n.value or "")
                ids.append(n.id)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, srv.restart)
            # alice's main connection died too: the client reconnects before the next command
            for i in range(3):
                await a.notify("@bob", f"m{i + 3}", f"after {i}", namespace="resume")
            while len(got) < 6:
                n = await mon.next(timeout=15)
                got.append(n.value or "")
                ids.append(n.id)
            with pytest.raises(PeerTimeoutError):  # nothing more: no duplicates from the replay
                await mon.next(timeout=1.5)
            assert mon.reconnects >= 1
            # drop the monitor's connection and notify before its backoff ends: the gap is
            # filled by the replay from the resume point, whose margin re-sends older ones
            assert mon.connection is not None
            mon.connection._abort()
            for i in range(3):
                await a.notify("@bob", f"g{i}", f"gap {i}", namespace="resume")
            while len(got) < 9:
                n = await mon.next(timeout=10)
                got.append(n.value or "")
                ids.append(n.id)
            with pytest.raises(PeerTimeoutError):
                await mon.next(timeout=1)
            assert mon.reconnects >= 2
            assert mon.stats_seen > 0
        assert got == (
            [f"before {i}" for i in range(3)]
            + [f"after {i}" for i in range(3)]
            + [f"gap {i}" for i in range(3)]
        )
        assert len(set(ids)) == 9

        # a new monitor from 0 replays everything once, in order
        async with b.monitor("resume", since=0) as mon2:
            replay = [(await mon2.next(timeout=5)).value for _ in range(9)]
        assert replay == got
        await a.close()
        await b.close()

    run(main(), timeout=90)


def test_monitor_stops_when_authentication_is_refused(run, at_server, new_atsign, keys) -> None:
    """Retrying cannot fix refused keys: the monitor ends with the error instead of looping."""
    alice = new_atsign("alice")

    async def main() -> None:
        a = await connect(at_server, alice)
        mon = a.monitor("x")
        await mon.started(5)
        other = keys("@mallory").pkam_public_b64
        await a.execute(f"update:privatekey:at_pkam_publickey {other}")
        assert mon.connection is not None
        mon.connection._abort()  # the reconnect must PKAM again, and is refused
        with pytest.raises(ClientAuthFailedError):
            await mon.next(timeout=10)
        with pytest.raises(ClientAuthFailedError):  # and stays ended
            await mon.next(timeout=1)
        await mon.close()
        await a.close()

    run(main())

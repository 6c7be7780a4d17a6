"""The embedded server's verbs through the in-memory pair (``tests/atpair.py``): the real
``Engine``/``Session`` and the client's command builders and codec, no sockets, no TLS,
the server's clock injected. The socket tests (``test_atserver_core`` and friends) run the
same verbs over TLS; these are the fast layer, and the only ones that can move time."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from noports.at import commands
from noports.at.commands import Metadata
from noports.at.protocol import Data, ErrorReply, Prompt, RootReply
from noports.atserver.engine import Config
from noports.crypto.atkeys import AtKeys
from noports.errors import AtError, KeyNotFoundError
from tests.atpair import MEMORY_HOST, MEMORY_PORT, ManualClock, MemoryAtServer, Wire, signed

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def srv(tmp_path: Path, clock: ManualClock) -> Iterator[MemoryAtServer]:
    with MemoryAtServer(tmp_path, clock=clock) as s:
        yield s


@pytest.fixture
def alice(srv: MemoryAtServer, keys: Callable[[str], AtKeys]) -> AtKeys:
    return srv.hosted(keys("@alice"))


@pytest.fixture
def bob(srv: MemoryAtServer, keys: Callable[[str], AtKeys]) -> AtKeys:
    return srv.hosted(keys("@bob"))


def authed(srv: MemoryAtServer, k: AtKeys) -> Wire:
    w = srv.wire()
    assert w.pkam(k) == f"data:success\n{k.atsign}@"
    return w


def error_code(reply: object) -> str | None:
    assert isinstance(reply, ErrorReply), reply
    return reply.code


# -- greeting, prompts, framing of errors ------------------------------------------------------


def test_greeting_and_prompt_rules(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = srv.wire()
    assert w.greeting == "@"
    assert w.cmd(commands.info(brief=True)).endswith("\n@")
    assert w.pkam(alice) == "data:success\n@alice@"
    assert w.cmd(commands.noop(0)) == "data:ok\n@alice@"
    assert w.codec.authenticated and w.codec.expected_prompt == "@alice@"
    prompts = [e.text for e in w.events if isinstance(e, Prompt)]
    assert prompts[0] == "@" and prompts[-1] == "@alice@"
    # a monitor connection gets pushes and replies without any prompt
    assert w.cmd(commands.monitor(None)) == ""
    assert w.cmd(commands.noop(0)) == "data:ok\n"
    assert w.cmd("@exit") == ""
    assert w.closed and w.server_closed


def test_bare_line_and_unknown_verb_errors(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = srv.wire()
    # the Dart server's exact answers to a bare CRLF, before and after authentication
    assert w.send_bytes(b"\r\n") == "error:AT0003-Exception: invalid command\n@"
    w.pkam(alice)
    assert w.send_bytes(b"\r\n") == "error:AT0003-Invalid syntax : invalid command\n@alice@"
    reply = w.request("frobnicate:x")
    assert error_code(reply) == "AT0003"
    assert w.cmd(commands.noop(0)) == "data:ok\n@alice@"  # the connection survives


def test_json_errors_follow_client_config(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = srv.wire()
    w.data(commands.from_(alice.atsign, {"version": "3.0.38"}))
    text = w.cmd("llookup:nothing@alice")
    body = json.loads(text.split("\n", 1)[0][len("error:") :])
    assert body["errorCode"] == "AT0401"  # llookup needs auth; JSON form for >= 3.0.38
    w.data(commands.from_(alice.atsign, {"version": "3.0.37"}))
    assert w.cmd("llookup:nothing@alice").startswith("error:AT0401-Exception: ")


def test_noop_limit_and_recorded_delay(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = authed(srv, alice)
    assert w.data(commands.noop(250)) == "ok"
    assert w.delays == [0.25]
    # the client's builder refuses this already; the server must too
    assert error_code(w.request(f"noop:{srv.engine.config.noop_max_ms + 1}")) == "AT0022"


def test_oversized_line_is_at0005_and_closes(tmp_path: Path, alice: AtKeys) -> None:
    cfg = Config(unauth_buffer_limit=1024)
    with MemoryAtServer(tmp_path / "small", config=cfg) as small:
        w = small.wire()
        out = w.send_bytes(b"x" * 2048)
        assert out.startswith("error:AT0005-")
        assert w.closed and w.server_closed


def test_root_lookups_on_the_shared_port(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = srv.wire()
    w.codec.root = True  # parse the answers as the client's root connection does
    assert w.request(commands.root_lookup("@ALICE")) == RootReply(MEMORY_HOST, MEMORY_PORT)
    assert w.request(commands.root_lookup("nobody1")) == RootReply(None, None)
    assert w.request(commands.root_lookup("nobody2")) == RootReply(None, None)
    assert w.delays == [srv.engine.config.root_unknown_delay]  # the second miss is slowed
    w.cmd(commands.root_lookup("nobody3"))
    assert w.closed  # and the third closes


# -- authentication ---------------------------------------------------------------------------


def test_from_unknown_atsign(srv: MemoryAtServer) -> None:
    w = srv.wire()
    assert w.cmd(commands.from_("@nobody")).startswith("error:AT0401-Exception: ")


def test_pkam_wrong_key_replay_and_stale_challenge(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, keys: Callable[[str], AtKeys]
) -> None:
    w = srv.wire()
    wrong = keys("@mallory").pkam_private
    assert w.pkam(alice, pkam_private=wrong).startswith("error:AT0401-")
    assert not w.conn.session.authed
    # a challenge is good for one pkam only
    challenge = w.data(commands.from_(alice.atsign))
    sig = commands.pkam_signature(alice.pkam_private, challenge)
    assert w.cmd(commands.pkam(sig)) == "data:success\n@alice@"
    assert w.cmd(commands.pkam(sig)).startswith("error:AT0401-")
    # and only while fresh: the server's clock decides
    w2 = srv.wire()
    challenge = w2.data(commands.from_(alice.atsign))
    clock.advance(srv.engine.config.challenge_ttl_ms + 1)
    sig = commands.pkam_signature(alice.pkam_private, challenge)
    assert w2.cmd(commands.pkam(sig)).startswith("error:AT0401-")
    assert w2.pkam(alice) == "data:success\n@alice@"


def test_cram_activation_secret(srv: MemoryAtServer) -> None:
    secret = srv.host("@carol")
    assert secret is not None
    w = srv.wire()
    assert w.cram("@carol", "0" * 128).startswith("error:AT0401-")
    assert w.cram("@carol", secret) == "data:success\n@carol@"
    assert w.conn.session.auth_kind == "cram"


def test_verbs_that_need_auth(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = srv.wire()
    for line in (
        commands.llookup("x@alice"),
        commands.update("x@alice", "v"),
        commands.delete("x@alice"),
        commands.notify("@bob:x@alice", "v"),
        commands.notify_status("id"),
        commands.monitor(None),
        commands.otp_get(),
    ):
        assert error_code(w.request(line)) == "AT0401", line


# -- data verbs ------------------------------------------------------------------------------


def test_update_llookup_lookup_between_two_atsigns(
    srv: MemoryAtServer, alice: AtKeys, bob: AtKeys
) -> None:
    a, b = authed(srv, alice), authed(srv, bob)
    assert int(a.data(commands.update("@bob:greeting.app@alice", "hi bob"))) > 0
    assert a.data(commands.update("public:motd.app@alice", "hello all")).isdigit()
    assert a.data(commands.update("secret.app@alice", "mine")).isdigit()
    # owner: llookup of each, with metadata on request
    assert a.data(commands.llookup("@bob:greeting.app@alice")) == "hi bob"
    full = json.loads(a.data(commands.llookup("secret.app@alice", "all")))
    assert full["key"] == "secret.app@alice" and full["data"] == "mine"
    assert "createdAt" in full["metaData"]
    # bob reads what alice shared with him, and her public data; not her self data
    assert b.data(commands.lookup("greeting.app@alice")) == "hi bob"
    assert b.data(commands.lookup("motd.app@alice")) == "hello all"
    with pytest.raises(KeyNotFoundError):
        b.data(commands.lookup("secret.app@alice"))
    # an unauthenticated connection sees public data only
    anon = srv.wire()
    assert anon.data(commands.lookup("motd.app@alice")) == "hello all"
    assert error_code(anon.request(commands.lookup("greeting.app@alice"))) == "AT0015"
    # alice cannot write keys owned by bob
    assert error_code(a.request(commands.update("@alice:x@bob", "v"))) == "AT0016"


def test_missing_key_is_at0015(srv: MemoryAtServer, alice: AtKeys) -> None:
    a = authed(srv, alice)
    reply = a.request(commands.llookup("nothing.app@alice"))
    assert isinstance(reply, ErrorReply) and reply.code == "AT0015"
    assert isinstance(reply.exception(), KeyNotFoundError)


def test_ttl_ttb_on_the_injected_clock(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, bob: AtKeys
) -> None:
    a, b = authed(srv, alice), authed(srv, bob)
    a.data(commands.update("@bob:brief.app@alice", "soon gone", Metadata(ttl=1000)))
    a.data(commands.update("@bob:later.app@alice", "not yet", Metadata(ttb=5000)))
    assert b.data(commands.lookup("brief.app@alice")) == "soon gone"
    assert b.data(commands.lookup("later.app@alice")) == "null"
    clock.advance(1000)
    assert b.data(commands.lookup("brief.app@alice")) == "null"
    clock.advance(4000)
    assert b.data(commands.lookup("later.app@alice")) == "not yet"
    assert "brief.app" not in a.data(commands.scan())


def test_public_data_carries_its_signature(srv: MemoryAtServer, alice: AtKeys, bob: AtKeys) -> None:
    a, b = authed(srv, alice), authed(srv, bob)
    sig = signed(alice, "v1")
    meta = Metadata(data_signature=sig, is_encrypted=False)
    a.data(commands.update("public:signed.app@alice", "v1", meta))
    got = json.loads(b.data(commands.plookup("signed.app@alice", "all")))
    assert got["data"] == "v1" and got["metaData"]["dataSignature"] == sig


def test_immutable_first_writer_wins(srv: MemoryAtServer, alice: AtKeys) -> None:
    a = authed(srv, alice)
    line = "update:immutable:true:mutex.app@alice first"
    assert a.data(line).isdigit()
    assert error_code(a.request("update:immutable:true:mutex.app@alice second")) == "AT0001"
    assert a.data(commands.llookup("mutex.app@alice")) == "first"


def test_delete_and_commit_ids(srv: MemoryAtServer, alice: AtKeys, bob: AtKeys) -> None:
    a, b = authed(srv, alice), authed(srv, bob)
    c1 = int(a.data(commands.update("@bob:gone.app@alice", "x")))
    c2 = int(a.data(commands.delete("@bob:gone.app@alice")))
    assert c2 > c1
    assert error_code(a.request(commands.llookup("@bob:gone.app@alice"))) == "AT0015"
    assert error_code(b.request(commands.lookup("gone.app@alice"))) == "AT0015"


def test_scan_regex_hidden_and_other_atsign(
    srv: MemoryAtServer, alice: AtKeys, bob: AtKeys
) -> None:
    a, b = authed(srv, alice), authed(srv, bob)
    for key in (
        "one.app@alice",
        "two.app@alice",
        "three.other@alice",
        "_hidden.app@alice",
        "public:pub.app@alice",
        "@bob:for_bob.app@alice",
    ):
        a.data(commands.update(key, "v"))
    everything = json.loads(a.data(commands.scan()))
    assert {"one.app@alice", "two.app@alice", "three.other@alice"} <= set(everything)
    assert "_hidden.app@alice" not in everything
    assert "_hidden.app@alice" in json.loads(a.data(commands.scan(show_hidden=True)))
    assert json.loads(a.data(commands.scan(r"^t\w+\.app"))) == ["two.app@alice"]
    assert json.loads(a.data(commands.scan(r"\.other@"))) == ["three.other@alice"]
    # scan:@alice from bob lists what alice shared with bob
    assert json.loads(b.data("scan:@alice")) == ["@bob:for_bob.app@alice"]
    # before authentication, after from: only public keys, without the prefix
    anon = srv.wire()
    anon.data(commands.from_(alice.atsign))
    assert "pub.app@alice" in json.loads(anon.data(commands.scan()))
    assert "one.app@alice" not in json.loads(anon.data(commands.scan()))
    assert error_code(a.request(commands.scan("(unclosed"))) == "AT0003"


# -- notifications ---------------------------------------------------------------------------


def test_notify_reaches_a_monitor_in_order(srv: MemoryAtServer, alice: AtKeys, bob: AtKeys) -> None:
    a = authed(srv, alice)
    m = authed(srv, bob)
    m.cmd(commands.monitor(r"\.app@"))
    ids = [a.data(commands.notify(f"@bob:n{i}.app@alice", f"v{i}", id=f"id-{i}")) for i in range(3)]
    a.data(commands.notify("@bob:skip.other@alice", "x"))  # not matched by the regex
    got = m.notifications()
    assert [n.id for n in got] == ids == ["id-0", "id-1", "id-2"]
    assert [n.value for n in got] == ["v0", "v1", "v2"]
    assert got[0].from_atsign == "@alice" and got[0].to_atsign == "@bob"
    assert got[0].epoch_millis == srv.clock()
    assert a.data(commands.notify_status("id-0")) == "delivered"


def test_monitor_replays_from_epoch(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, bob: AtKeys
) -> None:
    a = authed(srv, alice)
    a.data(commands.notify("@bob:old.app@alice", "1", id="old"))
    t_mid = clock.advance(10)
    clock.advance(10)
    a.data(commands.notify("@bob:new.app@alice", "2", id="new"))
    m = authed(srv, bob)
    m.cmd(commands.monitor(None, since=t_mid))
    assert [n.id for n in m.notifications()] == ["new"]
    m2 = authed(srv, bob)
    m2.cmd(commands.monitor(None, since=0))
    assert [n.id for n in m2.notifications()] == ["old", "new"]


def test_notify_status_queued_expired_and_later_delivery(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, keys: Callable[[str], AtKeys]
) -> None:
    a = authed(srv, alice)
    a.data(commands.notify("@dave:x.app@alice", "v", id="to-dave", ttln=60_000))
    a.data(commands.notify("@erin:x.app@alice", "v", id="to-erin", ttln=1_000))
    assert a.data(commands.notify_status("to-dave")) == "queued"
    clock.advance(1_000)
    assert a.data(commands.notify_status("to-erin")) == "expired"
    assert a.data(commands.notify_status("unknown-id")) == "null"
    # dave is hosted later: his from: delivers what waited for him
    dave = keys("@dave")
    srv.host(dave)
    d = authed(srv, dave)
    assert a.data(commands.notify_status("to-dave")) == "delivered"
    d.cmd(commands.monitor(None, since=0))
    assert [n.id for n in d.notifications()] == ["to-dave"]


def test_shared_update_notifies_and_caches_with_ttr(
    srv: MemoryAtServer, alice: AtKeys, bob: AtKeys
) -> None:
    a, m = authed(srv, alice), authed(srv, bob)
    m.cmd(commands.monitor(None))
    a.data(commands.update("@bob:cfg.app@alice", "v1", Metadata(ttr=-1, ccd=True)))
    (n,) = m.notifications()
    assert (n.key, n.operation, n.value) == ("@bob:cfg.app@alice", "update", "v1")
    b = authed(srv, bob)
    assert b.data(commands.llookup("cached:@bob:cfg.app@alice")) == "v1"
    a.data(commands.delete("@bob:cfg.app@alice"))
    (n,) = m.notifications()
    assert n.operation == "delete"
    assert error_code(b.request(commands.llookup("cached:@bob:cfg.app@alice"))) == "AT0015"


def test_notify_remove_list_and_fetch(srv: MemoryAtServer, alice: AtKeys, bob: AtKeys) -> None:
    a, b = authed(srv, alice), authed(srv, bob)
    a.data(commands.notify("@bob:keep.app@alice", "1", id="keep"))
    a.data(commands.notify("@bob:drop.app@alice", "2", id="drop"))
    listed = json.loads(b.data("notify:list"))
    assert [n["id"] for n in listed] == ["keep", "drop"]
    assert json.loads(b.data("notify:fetch:keep"))["value"] == "1"
    assert b.data(commands.notify_remove("drop")) == "success"
    assert [n["id"] for n in json.loads(b.data("notify:list"))] == ["keep"]
    assert json.loads(b.data("notify:list:^drop")) == []


def test_a_closed_monitor_is_unregistered(srv: MemoryAtServer, alice: AtKeys, bob: AtKeys) -> None:
    a, m = authed(srv, alice), authed(srv, bob)
    m.cmd(commands.monitor(None))
    assert len(srv.engine.hub.monitors("@bob")) == 1
    m.close()
    assert srv.engine.hub.monitors("@bob") == []
    a.data(commands.notify("@bob:x.app@alice", "v"))  # nobody to push to: no error
    assert srv.engine.hub.delivered == 0


# -- APKAM: enroll, otp, keys --------------------------------------------------------------------


def _enroll_params(k: AtKeys, **extra: object) -> dict[str, object]:
    return {
        "appName": "memtest",
        "deviceName": "dev1",
        "apkamPublicKey": k.pkam_public_b64,
        **extra,
    }


def test_otp_gated_enrollment_approve_and_namespaces(
    srv: MemoryAtServer, alice: AtKeys, keys: Callable[[str], AtKeys]
) -> None:
    mgr = authed(srv, alice)  # legacy PKAM: unrestricted, may manage
    otp = mgr.data(commands.otp_get())
    assert len(otp) == 6
    watcher = authed(srv, alice)
    watcher.cmd(commands.monitor(None, self_notifications=True))
    device = keys("@alice_device")
    req = srv.wire()
    req.data(commands.from_(alice.atsign))
    got = json.loads(
        req.data(
            commands.enroll("request", _enroll_params(device, otp=otp, namespaces={"app": "rw"}))
        )
    )
    assert got["status"] == "pending"
    eid = got["enrollmentId"]
    (n,) = watcher.notifications()  # the approver sees the request
    assert n.key == f"{eid}.new.enrollments.__manage" and n.id == eid
    # pending: pkam with the enrollment is refused with AT0026 (response form)
    w = srv.wire()
    assert w.pkam(alice, enrollment_id=eid, pkam_private=device.pkam_private).startswith(
        "error:AT0026:"
    )
    assert mgr.data(commands.enroll("approve", {"enrollmentId": eid})).count("approved") == 1
    w = srv.wire()
    assert w.pkam(alice, enrollment_id=eid, pkam_private=device.pkam_private) == (
        "data:success\n@alice@"
    )
    # the enrollment may use its namespace and nothing else
    assert w.data(commands.update("x.app@alice", "ok")).isdigit()
    assert error_code(w.request(commands.update("x.other@alice", "no"))) == "AT0009"
    assert error_code(w.request(commands.otp_get())) == "AT0009"
    # the OTP was single use
    again = srv.wire()
    again.data(commands.from_(alice.atsign))
    reply = again.request(
        commands.enroll("request", _enroll_params(device, otp=otp, namespaces={"app": "r"}))
    )
    assert error_code(reply) == "AT0011"
    assert again.delays == [srv.engine.config.bad_otp_delay]


def test_revoke_closes_the_enrollment_s_connections(
    srv: MemoryAtServer, alice: AtKeys, keys: Callable[[str], AtKeys]
) -> None:
    mgr = authed(srv, alice)
    device = keys("@alice_device")
    params = _enroll_params(device, namespaces={"app": "rw"})
    eid = json.loads(mgr.data(commands.enroll("request", params)))["enrollmentId"]
    w = srv.wire()
    assert w.pkam(alice, enrollment_id=eid, pkam_private=device.pkam_private).startswith(
        "data:success"
    )
    assert json.loads(mgr.data(commands.enroll("revoke", {"enrollmentId": eid})))["status"] == (
        "revoked"
    )
    assert w.closed
    w = srv.wire()
    assert w.pkam(alice, enrollment_id=eid, pkam_private=device.pkam_private).startswith(
        "error:AT0027:"
    )
    listed = json.loads(mgr.data(commands.enroll("list", {"enrollmentStatusFilter": ["revoked"]})))
    assert list(listed) == [f"{eid}.new.enrollments.__manage@alice"]


def test_pending_enrollment_expires_on_the_clock(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, keys: Callable[[str], AtKeys]
) -> None:
    mgr = authed(srv, alice)
    assert mgr.data(commands.otp_put("my-passcode-1")) == "ok"
    device = keys("@alice_device")
    req = srv.wire()
    req.data(commands.from_(alice.atsign))
    params = _enroll_params(device, otp="my-passcode-1", namespaces={"app": "rw"})
    eid = json.loads(req.data(commands.enroll("request", params)))["enrollmentId"]
    clock.advance(srv.engine.config.enroll_pending_ttl_ms)
    assert error_code(mgr.request(commands.enroll("approve", {"enrollmentId": eid}))) == "AT0029"
    w = srv.wire()
    assert w.pkam(alice, enrollment_id=eid, pkam_private=device.pkam_private).startswith(
        "error:AT0028:"
    )


def test_cram_first_enrollment_is_auto_approved(
    srv: MemoryAtServer, keys: Callable[[str], AtKeys]
) -> None:
    secret = srv.host("@carol")
    assert secret is not None
    carol = keys("@carol")
    w = srv.wire()
    w.cram("@carol", secret)
    got = json.loads(w.data(commands.enroll("request", _enroll_params(carol))))
    assert got["status"] == "approved"
    w2 = srv.wire()
    assert w2.pkam(carol, enrollment_id=got["enrollmentId"]) == "data:success\n@carol@"
    assert w2.conn.session.namespaces == {"__manage": "rw", "*": "rw"}


# -- the engine's bookkeeping ---------------------------------------------------------------------


def test_info_uptime_is_on_the_injected_clock(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys
) -> None:
    w = srv.wire()
    assert json.loads(w.data(commands.info(brief=True)))["uptimeAsMillis"] == 0
    clock.advance(90_061_000)
    words = json.loads(w.data(commands.info()))["uptimeAsWords"]
    assert words == "1 days 1 hours 1 minutes 1 seconds"


def test_status_snapshot_counts_and_uptime(
    srv: MemoryAtServer, clock: ManualClock, alice: AtKeys, bob: AtKeys
) -> None:
    from noports.atserver.observe import Observer

    obs = Observer(srv)
    authed(srv, alice)
    m = authed(srv, bob)
    m.cmd(commands.monitor(None))
    srv.wire()  # one unauthenticated connection
    authed(srv, alice).data(commands.notify("@bob:x.app@alice", "v"))
    clock.advance(61_500)
    snap = asyncio.run(obs.snapshot())
    assert snap["connections"]["authenticated"] == 3
    assert snap["atsigns_connected"] == 2 and snap["atsigns_hosted"] == 2
    assert snap["monitors"] == 1 and snap["delivered"] == 1
    assert snap["summary"]["uptime s"] == 61  # the engine's injected clock


def test_sessions_are_forgotten_on_close(srv: MemoryAtServer, alice: AtKeys) -> None:
    before = len(srv.engine.sessions)
    w = authed(srv, alice)
    assert len(srv.engine.sessions) == before + 1
    w.cmd("@exit")
    assert len(srv.engine.sessions) == before


def test_a_burst_is_one_transaction_and_replies_follow_the_commit(
    srv: MemoryAtServer, alice: AtKeys
) -> None:
    w = authed(srv, alice)
    lines = [commands.update(f"k{i}.app@alice", str(i)) for i in range(5)]
    out = w.send_bytes(b"".join(commands.encode(line) for line in lines))
    replies = [e for e in w.events if isinstance(e, Data)][-5:]
    assert [int(r.text) for r in replies] == sorted(int(r.text) for r in replies)
    assert out.count("@alice@") == 5
    assert not srv.store.db.in_transaction


def test_error_reply_is_the_client_s_exception(srv: MemoryAtServer, alice: AtKeys) -> None:
    w = authed(srv, alice)
    with pytest.raises(AtError) as err:
        w.data(commands.delete("x@bob"))
    assert err.value.code == "AT0016"

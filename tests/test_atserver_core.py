"""Raw-protocol tests against the real ``noports server`` process over TLS (spec 1.0-1.10)."""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable

import pytest

from noports.crypto import rsa
from noports.crypto.atkeys import AtKeys
from tests.fixtures_at import AtServerProcess, Wire

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ident(at_server: AtServerProcess, keys: Callable[[str], AtKeys]) -> Callable[[str], AtKeys]:
    """``ident("alice")`` registers a fresh, unique atSign (reusing cached RSA keys)."""

    def make(base: str) -> AtKeys:
        name = f"@{base}_{uuid.uuid4().hex[:8]}"
        k = keys("@" + base).replace(atsign=name)
        at_server.add_fast(name, k)
        return k

    return make


def authed(wire: Callable[..., Wire], k: AtKeys) -> Wire:
    w = wire()
    assert w.pkam(k) == "data:success"
    return w


def test_prompt_root_lookup_and_exit(
    at_server: AtServerProcess, wire: Callable[..., Wire], ident
) -> None:
    alice = ident("alice")
    w = wire()  # asserts the bare '@' prompt arrives first
    w.send(alice.atsign[1:])
    assert w.readline() == at_server.root
    w.read_prompt()
    w.send(alice.atsign.upper())  # '@' stripped, case folded
    assert w.readline() == at_server.root
    w.read_prompt()
    w.send("nobody_" + uuid.uuid4().hex[:6])
    assert w.readline() == "null"
    w.read_prompt()
    assert at_server.root.startswith("127.0.0.1:")
    w.send("@exit")
    assert w.is_closed()


def test_root_drops_after_three_unknown(make_at_server) -> None:
    srv = make_at_server("--root-unknown-delay", "0.3")
    w = Wire(srv.root, srv.ca_file)
    try:
        assert w.cmd("nobody1") == "null"
        t0 = time.monotonic()
        assert w.cmd("nobody2") == "null"
        assert time.monotonic() - t0 >= 0.25  # the second unknown lookup is slowed down
        w.send("nobody3")
        assert w.readline() == "null"
        assert w.is_closed()
    finally:
        w.close()


def test_pkam_forms(wire: Callable[..., Wire], ident) -> None:
    alice = ident("alice")
    for kw in ({}, {"dart_form": True}, {"hashing": "sha512", "dart_form": True}):
        w = wire()
        assert w.pkam(alice, **kw) == "data:success", kw
        assert w.data("noop:0") == "ok"


def test_pkam_bad_signature_and_replay(wire: Callable[..., Wire], ident, keys) -> None:
    alice = ident("alice")
    w = wire()
    challenge = w.data(f"from:{alice.atsign}")
    assert challenge.startswith("_") and f"{alice.atsign}:" in challenge
    other = keys("@mallory")
    bad = rsa.sign(other.pkam_private, challenge.encode())
    assert w.cmd("pkam:" + bad) == "error:AT0401-Exception: pkam authentication failed"
    # the challenge is single-use: a correct signature over it no longer works
    good = rsa.sign(alice.pkam_private, challenge.encode())
    assert w.cmd("pkam:" + good).startswith("error:AT0401")
    assert w.cmd("llookup:x@" + alice.atsign[1:]).startswith("error:AT0401")
    assert w.pkam(alice) == "data:success"  # same connection can still authenticate


def test_from_unknown_atsign(wire: Callable[..., Wire]) -> None:
    assert wire().cmd("from:@nobody_" + uuid.uuid4().hex[:6]).startswith("error:AT0401")


def test_cram_onboarding_secret(at_server: AtServerProcess, wire: Callable[..., Wire]) -> None:
    name = "@cram_" + uuid.uuid4().hex[:8]
    secret = at_server.add(name)
    assert secret and len(secret) >= 64
    w = wire()
    assert w.cram(name, "0" * len(secret)).startswith("error:AT0401")
    assert w.cram(name, secret) == "data:success"
    assert w.data(
        "update:privatekey:at_pkam_publickey " + rsa.public_to_b64(rsa.generate(1024).public_key())
    ).isdigit()
    w.data("delete:privatekey:at_secret")
    w2 = wire()
    assert w2.cram(name, secret).startswith("error:AT0401")


def test_update_and_lookups(wire: Callable[..., Wire], ident) -> None:
    alice, bob = ident("alice"), ident("bob")
    a, b = alice.atsign, bob.atsign
    wa = authed(wire, alice)
    # metadata pairs in any order, booleans in any case (atsdk writes ccd:True)
    commit = wa.data(
        f"update:isEncrypted:TRUE:ttr:-1:sharedKeyEnc:c2s=:ccd:True:ivNonce:aXY=:ttl:60000:{b}:k.ns{a} v:1"  # noqa: E501
    )
    assert commit.isdigit()
    assert wa.data(f"llookup:{b}:k.ns{a}") == "v:1"
    meta = json.loads(wa.data(f"llookup:meta:{b}:k.ns{a}"))
    assert meta["ttl"] == 60000 and meta["ttr"] == -1 and meta["ccd"] is True
    assert (
        meta["isEncrypted"] is True and meta["ivNonce"] == "aXY=" and meta["sharedKeyEnc"] == "c2s="
    )
    assert meta["expiresAt"].endswith("Z") and " " in meta["createdAt"]
    assert None not in meta.values()
    full = json.loads(wa.data(f"llookup:all:{b}:k.ns{a}"))
    assert (
        full["key"] == f"{b}:k.ns{a}"
        and full["data"] == "v:1"
        and full["metaData"]["ivNonce"] == "aXY="
    )
    # public data: plookup by others, lookup without auth
    wa.data(f"update:public:card.ns{a} hello card")
    wb = authed(wire, bob)
    assert wb.data(f"plookup:card.ns{a}") == "hello card"
    assert json.loads(wb.data(f"plookup:all:card.ns{a}"))["key"] == f"public:card.ns{a}"
    assert wb.data(f"plookup:publickey{a}") == alice.encrypt_public_b64
    anon = wire()
    assert anon.data(f"lookup:card.ns{a}") == "hello card"
    assert anon.data(f"lookup:publickey{a}") == alice.encrypt_public_b64
    assert anon.cmd(f"lookup:k.ns{a}").startswith("error:AT0015")  # shared data is not public
    # bob reads what alice shared with him (cache, then alice's store)
    assert wb.data(f"lookup:k.ns{a}") == "v:1"
    assert wb.data(f"lookup:bypassCache:true:k.ns{a}") == "v:1"
    assert json.loads(wb.data(f"lookup:all:k.ns{a}"))["metaData"]["ivNonce"] == "aXY="
    # sharedBy must be the connection's atSign
    assert wb.cmd(f"update:{b}:x{a} nope").startswith("error:AT0016")
    # update:json form
    wa.data(
        "update:json:"
        + json.dumps({"key": f"j.ns{a}", "value": "jv", "metadata": {"ttl": 5000, "ccd": True}})
    )
    assert json.loads(wa.data(f"llookup:meta:j.ns{a}"))["ttl"] == 5000


def test_missing_keys_are_at0015(wire: Callable[..., Wire], ident) -> None:
    alice, bob = ident("alice"), ident("bob")
    wa = authed(wire, alice)
    a = alice.atsign
    assert wa.cmd(f"llookup:shared_key.{bob.atsign[1:]}{a}") == (
        f"error:AT0015-key not found : shared_key.{bob.atsign[1:]}{a} does not exist in keystore"
    )
    assert wa.cmd(f"lookup:nothing{bob.atsign}").startswith("error:AT0015")
    assert wa.cmd("plookup:publickey@nobody_zz").startswith("error:AT0015")
    assert wa.data(f"delete:never_existed{a}").isdigit()  # delete of a missing key still succeeds
    assert wa.cmd("update:toolong" + "x" * 250 + f"{a} v").startswith("error:AT0016")


def test_ttl_and_ttb(wire: Callable[..., Wire], ident) -> None:
    alice = ident("alice")
    a = alice.atsign
    wa = authed(wire, alice)
    wa.data(f"update:ttl:300:short{a} soon gone")
    wa.data(f"update:ttb:300:later{a} not yet")
    assert wa.data(f"llookup:short{a}") == "soon gone"
    assert wa.data(f"llookup:later{a}") == "null"
    assert "later" not in wa.data("scan")
    time.sleep(0.45)
    assert wa.data(f"llookup:short{a}") == "null"
    assert wa.data(f"llookup:later{a}") == "not yet"
    assert "short" not in wa.data("scan")


def test_scan_filtering(wire: Callable[..., Wire], ident) -> None:
    alice, bob = ident("alice"), ident("bob")
    a, b = alice.atsign, bob.atsign
    wa = authed(wire, alice)
    for key in (
        f"public:pub.app{a}",
        f"self.app{a}",
        f"{b}:shared.app{a}",
        f"_hidden{a}",
        f"public:__hidpub{a}",
        f"other.zzz{a}",
    ):
        wa.data(f"update:{key} v")
    keys = json.loads(wa.data("scan"))
    assert f"public:pub.app{a}" in keys and f"self.app{a}" in keys and f"{b}:shared.app{a}" in keys
    assert f"_hidden{a}" not in keys and f"public:__hidpub{a}" not in keys
    assert not any(k.startswith(("privatekey:", "private:")) for k in keys)
    hidden = json.loads(wa.data("scan:showHidden:true .*"))
    assert f"_hidden{a}" in hidden and f"public:__hidpub{a}" in hidden
    assert json.loads(wa.data(r"scan \.app@")) == sorted(
        [f"public:pub.app{a}", f"self.app{a}", f"{b}:shared.app{a}"]
    )
    assert wa.cmd("scan (unclosed").startswith("error:AT0003")
    anon = wire()
    anon.data(f"from:{a}")
    assert sorted(json.loads(anon.data("scan"))) == sorted(["pub.app" + a, "publickey" + a])


def test_notify_and_monitor(wire: Callable[..., Wire], ident) -> None:
    alice, bob = ident("alice"), ident("bob")
    a, b = alice.atsign, bob.atsign
    wa, wb = authed(wire, alice), authed(wire, bob)
    wb.send("monitor:0 sshnp")
    wb.monitoring = True
    ids = [
        wa.data(
            f"notify:id:n{i}-{a[1:]}:update:ttln:60000:isEncrypted:true:ivNonce:aXY=:{b}:cmd{i}.dev.sshnp{a}:payload{i}"
        )
        for i in range(20)
    ]
    assert ids == [f"n{i}-{a[1:]}" for i in range(20)]
    wa.data(f"notify:update:{b}:unrelated.other{a}:x")  # not matched by the regex
    got = [wb.notification() for _ in range(20)]
    assert [g["id"] for g in got] == ids  # delivered in order
    n = got[0]
    assert n["from"] == a and n["to"] == b and n["key"] == f"{b}:cmd0.dev.sshnp{a}"
    assert n["value"] == "payload0" and n["operation"] == "update" and n["isEncrypted"] is True
    assert n["messageType"] == "MessageType.key" and n["metadata"]["ivNonce"] == "aXY="
    # responses on a monitor connection carry no prompt (atsdk reads line by line)
    wb.send("noop:0")
    assert wb.readline() == "data:ok"
    wa.data(f"notify:update:{b}:last.dev.sshnp{a}:z")
    assert wb.notification()["key"] == f"{b}:last.dev.sshnp{a}"
    # text messages and the regex on the sender
    wb2 = authed(wire, bob)
    wb2.send(f"monitor {a[1:]}")
    wb2.monitoring = True
    wa.data(f"notify:messageType:text:{b}:hello there")
    t = wb2.notification()
    assert t["messageType"] == "MessageType.text" and t["key"] == f"{b}:hello there"
    # replay: everything after a given epochMillis, oldest first
    since = int(got[9]["epochMillis"])
    wb3 = authed(wire, bob)
    wb3.send(f"monitor:{since} sshnp")
    wb3.monitoring = True
    replay = [
        wb3.notification()["id"]
        for _ in range(len([g for g in got if int(g["epochMillis"]) > since]))
    ]
    assert replay == [g["id"] for g in got if int(g["epochMillis"]) > since]


def test_notify_status_remove_and_offline_queue(wire: Callable[..., Wire], ident) -> None:
    alice, bob = ident("alice"), ident("bob")
    a, b = alice.atsign, bob.atsign
    wa = authed(wire, alice)
    nid = wa.data(f"notify:ttln:60000:{b}:offline.sshnp{a}:while-you-were-out")
    assert wa.data(f"notify:status:{nid}") == "delivered"
    assert wa.data("notify:status:no-such-id") == "null"
    nid2 = wa.data(f"notify:{b}:second.sshnp{a}:two")
    nid3 = wa.data(f"notify:ttln:1:{b}:expired.sshnp{a}:gone")
    time.sleep(0.05)
    wb = authed(wire, bob)
    wb.send("monitor:0")
    wb.monitoring = True
    first, second = wb.notification(), wb.notification()
    assert (first["id"], first["value"]) == (nid, "while-you-were-out") and second["id"] == nid2
    assert "expiresAt" in first["metadata"]
    wb.send("noop:0")
    assert wb.readline() == "data:ok"  # nothing else (the expired one) was replayed
    assert nid3 != nid2
    # notify:remove: a handled notification is not replayed again
    wb2 = authed(wire, bob)
    assert wb2.data(f"notify:remove:{nid}") == "success"
    listed = json.loads(wb2.data("notify:list"))
    assert [x["id"] for x in listed] == [nid2]
    wb2.send("monitor:0")
    wb2.monitoring = True
    assert wb2.notification()["id"] == nid2


def test_shared_key_autonotify_and_cache(wire: Callable[..., Wire], ident) -> None:
    alice, bob = ident("alice"), ident("bob")
    a, b = alice.atsign, bob.atsign
    wa, wb = authed(wire, alice), authed(wire, bob)
    wb.send("monitor:0")
    wb.monitoring = True
    wa.data(f"update:ttr:86400000:ccd:true:{b}:shared_key{a} RSAENCRYPTED")
    n = wb.notification()
    assert (
        n["key"] == f"{b}:shared_key{a}"
        and n["value"] == "RSAENCRYPTED"
        and n["operation"] == "update"
    )
    wb2 = authed(wire, bob)
    assert wb2.data(f"llookup:cached:{b}:shared_key{a}") == "RSAENCRYPTED"
    assert wb2.data(f"lookup:shared_key{a}") == "RSAENCRYPTED"  # atsdk's lookup path
    assert f"cached:{b}:shared_key{a}" in json.loads(wb2.data("scan"))
    # a shared key without ttr notifies but is not cached
    wa.data(f"update:{b}:nocache{a} v")
    assert wb.notification()["key"] == f"{b}:nocache{a}"
    assert wb2.cmd(f"llookup:cached:{b}:nocache{a}").startswith("error:AT0015")
    # delete notifies, and ccd removes bob's cached copy
    wa.data(f"delete:{b}:shared_key{a}")
    d = wb.notification()
    assert d["operation"] == "delete" and d["key"] == f"{b}:shared_key{a}"
    assert wb2.cmd(f"llookup:cached:{b}:shared_key{a}").startswith("error:AT0015")


def test_noop_keeps_order_and_limit(wire: Callable[..., Wire], ident) -> None:
    alice = ident("alice")
    wa = authed(wire, alice)
    wa.data(f"update:k{alice.atsign} v")
    t0 = time.monotonic()
    wa.sock.sendall(f"noop:300\nllookup:k{alice.atsign}\n".encode())  # pipelined
    assert wa.readline() == "data:ok"
    wa.read_prompt()
    assert wa.readline() == "data:v"
    wa.read_prompt()
    assert time.monotonic() - t0 >= 0.28
    assert wa.cmd("noop:5001").startswith("error:AT0022")


def test_json_errors_with_client_config(wire: Callable[..., Wire], ident) -> None:
    alice = ident("alice")
    w = wire()
    w.data(f'from:{alice.atsign}:clientConfig:{{"version":"3.0.40"}}')
    resp = w.cmd("llookup:x@y")
    assert resp.startswith("error:{")
    assert json.loads(resp[6:])["errorCode"] == "AT0401"
    w2 = wire()
    w2.data(f'from:{alice.atsign}:clientConfig:{{"version":"3.0.37"}}')
    assert w2.cmd("llookup:x@y").startswith("error:AT0401-")


def test_info_and_crlf(wire: Callable[..., Wire], ident) -> None:
    alice = ident("alice")
    w = wire()
    w.sock.sendall(b"info\r\n")
    assert json.loads(w.readline()[5:])["version"]
    w.read_prompt()
    assert "uptimeAsMillis" in json.loads(w.data("info:brief"))
    digest = hashlib.sha256(b"x").hexdigest()
    assert digest  # (keeps hashlib used when cram tests are deselected)
    assert w.pkam(alice) == "data:success"


def test_bad_input_does_not_disturb_others(
    at_server: AtServerProcess, wire: Callable[..., Wire], ident
) -> None:
    alice = ident("alice")
    good = authed(wire, alice)
    good.data(f"update:k{alice.atsign} still-here")
    bad = wire()
    bad.sock.sendall(b"\xff\xfe\x00garbage\x01\n")
    assert bad.readline().startswith("error:AT0003")
    bad.read_prompt()
    assert bad.cmd("frobnicate:yes").startswith("error:AT0003")
    assert bad.cmd("update:nope@x v").startswith("error:AT0401")
    assert bad.cmd("monitor:notanumber").startswith("error:AT0003")
    assert bad.cmd("pkam:AAAA").startswith("error:AT0401")
    assert good.data(f"llookup:k{alice.atsign}") == "still-here"


def test_oversized_line_closes_with_at0005(make_at_server, keys) -> None:
    srv = make_at_server("--buffer-limit", "4096")
    alice = keys("@alice")
    srv.add("@alice", alice)
    good = Wire(srv.root, srv.ca_file)
    bad = Wire(srv.root, srv.ca_file)
    try:
        assert good.pkam(alice) == "data:success"
        bad.sock.sendall(b"update:k@alice " + b"x" * 8000)
        assert bad.readline().startswith("error:AT0005")
        assert bad.is_closed()
        assert good.data("noop:0") == "ok"
        ok = Wire(srv.root, srv.ca_file)  # the server still accepts
        ok.close()
    finally:
        good.close()
        bad.close()


def test_connection_flood_is_bounded(make_at_server, keys) -> None:
    """Unauthenticated newcomers shed the oldest unauthenticated connection; once every slot is
    an authenticated client, newcomers are refused with AT0012."""
    srv = make_at_server("--max-connections", "10")
    alice = keys("@alice")
    srv.add("@alice", alice)
    first = Wire(srv.root, srv.ca_file)
    assert first.pkam(alice) == "data:success"
    held: list[Wire] = []
    try:
        for _ in range(20):
            held.append(Wire(srv.root, srv.ca_file))  # each gets the prompt
        assert first.data("noop:0") == "ok"
        shed = sum(1 for w in held if w.is_closed(wait=0.2))
        assert shed == 11  # 10 slots, one taken by `first`; the oldest went
        assert all(not w.is_closed(wait=0.01) for w in held[11:])
        for w in held:
            w.close()
        held.clear()
        time.sleep(0.3)
        for _ in range(9):
            w = Wire(srv.root, srv.ca_file)
            held.append(w)
            assert w.pkam(alice) == "data:success"
        w = Wire(srv.root, srv.ca_file, read_prompt=False)
        held.append(w)
        line = w.read_exact(1)
        assert (line.decode() + w.readline()).startswith("error:AT0012")
        assert w.is_closed()
        assert first.data("noop:0") == "ok"
    finally:
        first.close()
        for w in held:
            w.close()


def test_stats_heartbeat_and_idle_timeout(make_at_server, keys) -> None:
    srv = make_at_server("--stats-interval", "0.3", "--unauth-timeout", "1")
    alice = keys("@alice")
    srv.add("@alice", alice)
    mon = Wire(srv.root, srv.ca_file)
    idle = Wire(srv.root, srv.ca_file)
    try:
        assert mon.pkam(alice) == "data:success"
        mon.data("update:k@alice v")
        mon.send("monitor nothing-matches-this")
        mon.monitoring = True
        line = mon.readline()
        body = json.loads(line[len("notification: ") :])
        assert (
            body["id"] == "-1"
            and body["key"] == "statsNotification.@alice"
            and body["value"].isdigit()
        )
        assert idle.is_closed(wait=4.0)  # unauthenticated and silent: closed
        assert mon.readline().startswith(
            "notification: "
        )  # monitors stay (heartbeats keep them busy)
    finally:
        mon.close()
        idle.close()


def test_monitor_that_stops_reading_is_dropped(make_at_server, keys) -> None:
    """Backpressure: a monitor that never reads cannot make the server buffer without bound."""
    srv = make_at_server("--monitor-buffer-limit", "65536")
    alice, bob = keys("@alice"), keys("@bob")
    srv.add_fast("@alice", alice)
    srv.add_fast("@bob", bob)
    sender = Wire(srv.root, srv.ca_file)
    stuck = Wire(srv.root, srv.ca_file)
    try:
        assert stuck.pkam(bob) == "data:success"
        stuck.send("monitor")
        stuck.monitoring = True
        assert sender.pkam(alice) == "data:success"
        value = "x" * 4000
        batch = "".join(f"notify:@bob:flood{i}@alice:{value}\n" for i in range(200)).encode()
        for _ in range(12):  # ~10 MB offered to a reader that reads nothing
            sender.sock.sendall(batch)
            for _ in range(200):
                assert sender.readline().startswith("data:")
                sender.read_prompt()
        assert sender.data("noop:0") == "ok"  # everyone else is still served
        # the stuck monitor was cut off: draining it ends in EOF, well short of 10 MB
        assert stuck.is_closed(wait=10.0), (
            "the server kept buffering for a monitor that does not read"
        )
        assert len(stuck.buf) < 8_000_000
    finally:
        sender.close()
        stuck.close()

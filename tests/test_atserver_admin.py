"""Admin CLI, restart durability, and the sans-IO parser of the embedded server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest

from noports.atserver.keys import parse_key
from noports.atserver.parse import LineBuffer, parse_line
from noports.errors import AtError
from tests.fixtures_at import REPO, AtServerProcess, Wire

pytestmark = pytest.mark.timeout(90)


# -- parser (no I/O) ------------------------------------------------------------------------


def test_linebuffer_splits_pipelined_and_crlf() -> None:
    b = LineBuffer(limit=64)
    assert b.feed(b"from:@alice\r\nnoop:0\nll") == ["from:@alice", "noop:0"]
    assert b.feed(b"ookup:x@alice\n\n\r\n") == ["llookup:x@alice", "", ""]  # blanks answered
    with pytest.raises(AtError) as ei:
        b.feed(b"x" * 65)
    assert ei.value.code == "AT0005"


def test_update_metadata_any_order_and_case() -> None:
    a = parse_line(
        "UPDATE:sharedKeyEnc:abc=:pubKeyCS:ff:isEncrypted:True:ttr:-1:ccd:TRUE:@bob:k@alice v a l"
    )
    assert a.verb == "update" and a["value"] == "v a l" and a["key"] == "@bob:k@alice"
    assert a["meta"] == {
        "sharedKeyEnc": "abc=",
        "pubKeyCS": "ff",
        "isEncrypted": True,
        "ttr": -1,
        "ccd": True,
    }
    with pytest.raises(AtError):
        parse_line("update:ttl:-5:k@alice v")  # ttl may not be negative (only ttr -1)
    with pytest.raises(AtError):
        parse_line("update:ccd:maybe:k@alice v")


def test_notify_options_and_c_spelling() -> None:
    n = parse_line(
        "notify:id:abc-1:update:message_type:key:priority:high:strategy:latest:latestN:3:"
        "notifier:me:ttln:60000:ttl:10000:ivNonce:aXY=:@bob:req.dev.sshnp@alice:payload:with:colons"
    )
    assert (
        n["id"] == "abc-1"
        and n["priority"] == "high"
        and n["strategy"] == "latest"
        and n["latest_n"] == 3
    )
    assert n["ttln"] == 60000 and n["meta"] == {"ttl": 10000, "ivNonce": "aXY="}
    assert (
        n["key"] == "req.dev.sshnp@alice"
        and n["value"] == "payload:with:colons"
        and n["target"] == "@bob"
    )
    d = parse_line("notify:delete:@bob:k@alice")
    assert d["operation"] == "delete" and d["value"] is None


def test_other_verbs_parse() -> None:
    assert parse_line("monitor:selfNotifications:1700000000000 .*sshnp").args == {
        "strict": False,
        "self": True,
        "multiplexed": False,
        "since": 1700000000000,
        "regex": ".*sshnp",
    }
    assert parse_line("monitor .*:x")["regex"] == ".*:x"
    assert parse_line("scan:showHidden:true .*")["show_hidden"] is True
    p = parse_line("pkam:signingAlgo:rsa2048:hashingAlgo:sha512:enrollmentId:e-1:c2ln")
    assert (p["hashing_algo"], p["enrollment_id"], p["signature"]) == ("sha512", "e-1", "c2ln")
    assert (
        parse_line("llookup:all:cached:@alice:shared_key@bob").args["key"]
        == "cached:@alice:shared_key@bob"
    )
    assert parse_line("lookup:bypassCache:true:meta:x@bob")["bypass_cache"] is True
    assert parse_line("alice").verb == "root"
    for bad in ("nosuchverb:x", "pkam:", "cram:xyz", "noop:abc", "otp:frob", "enroll:request:[1]"):
        with pytest.raises(AtError):
            parse_line(bad)


def test_parse_key_shapes() -> None:
    assert parse_key("@Bob:Shared_Key@Alice").full == "@bob:shared_key@alice"
    assert parse_key("cached:@alice:x.ns@bob").cached is True
    assert parse_key("x", default_owner="@alice").full == "x@alice"
    assert parse_key("@alice:x@alice").visibility == "self"
    assert parse_key("privatekey:at_pkam_publickey").visibility == "system"
    with pytest.raises(AtError):
        parse_key("a:b:c@alice")


# -- admin CLI ----------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "noports.cli.noports", "server", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        timeout=60,
    )


def test_admin_commands(make_at_server, keys, tmp_path) -> None:
    srv: AtServerProcess = make_at_server()
    assert stat.S_IMODE(os.stat(srv.data_dir / "tls" / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(srv.data_dir / "tls" / "server.key").st_mode) == 0o600
    out = srv.admin("add", "@zed").stdout.strip().splitlines()
    assert len(out[-1]) == 128 and all(c in "0123456789abcdef" for c in out[-1])
    srv.add("@yan", keys("@yan"))
    assert srv.admin("add", "@zed", check=False).returncode != 0  # already registered
    assert srv.admin("add", "@scan", check=False).returncode != 0  # reserved (bare verb)
    assert srv.admin("list").stdout.split() == ["@yan", "@zed"]
    st = json.loads(srv.admin("status", "--output", "json").stdout)
    assert (
        st["running"] is True
        and st["pid"] == srv.pid
        and st["root"] == srv.root
        and st["atsigns"] == 2
    )
    w = Wire(srv.root, srv.ca_file)
    try:
        assert w.pkam(keys("@yan")) == "data:success"  # admin add is visible to the running server
        w.data("notify:@nobody:x@yan:v")  # recipient not hosted: stays queued
        st = json.loads(srv.admin("status", "--output", "json").stdout)
        assert st["queued_notifications"] == 1
        assert srv.admin("remove", "@zed").returncode == 0
        assert srv.admin("remove", "@zed", check=False).returncode == 4
        srv.add("@nobody", keys("@nobody"))  # queued notifications reach a later recipient
        r = Wire(srv.root, srv.ca_file)
        assert r.pkam(keys("@nobody")) == "data:success"
        r.send("monitor:0")
        r.monitoring = True
        r.sock.settimeout(3)
        assert r.notification()["key"] == "@nobody:x@yan"
        r.close()
    finally:
        w.close()
    srv.stop()
    st = json.loads(srv.admin("status", "--output", "json").stdout)
    assert st["running"] is False
    v = _cli("--version")
    assert v.returncode == 0 and "noports server" in v.stdout


def test_text_output_prints_exports(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "noports.cli.noports",
            "server",
            "--data-dir",
            str(tmp_path / "d"),
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=str(REPO),
    )
    try:
        assert p.stdout is not None
        first, second = p.stdout.readline().strip(), p.stdout.readline().strip()
        assert first.startswith("export NOPORTS_ROOT=127.0.0.1:")
        assert second == f"export NOPORTS_CA_FILE={tmp_path / 'd' / 'tls' / 'ca.pem'}"
    finally:
        p.terminate()
        assert p.wait(10) == 0  # SIGTERM is a graceful stop


# -- restart durability ------------------------------------------------------------------


def test_restart_keeps_keys_and_undelivered_notifications(make_at_server, keys) -> None:
    srv: AtServerProcess = make_at_server()
    alice, bob = keys("@alice"), keys("@bob")
    srv.add("@alice", alice)
    srv.add("@bob", bob)
    w = Wire(srv.root, srv.ca_file)
    assert w.pkam(alice) == "data:success"
    w.data("update:ttr:-1:@bob:shared_key@alice SK")
    w.data("update:public:card@alice hello")
    sent = [w.data(f"notify:ttln:600000:@bob:msg{i}.sshnp@alice:v{i}") for i in range(5)]
    w.close()
    port = srv.port
    srv.restart()
    assert srv.port == port
    b = Wire(srv.root, srv.ca_file)
    try:
        assert b.pkam(bob) == "data:success"
        assert b.data("lookup:card@alice") == "hello"
        assert b.data("llookup:cached:@bob:shared_key@alice") == "SK"
        b.send("monitor:0 sshnp")
        b.monitoring = True
        assert [b.notification()["id"] for _ in range(5)] == sent
    finally:
        b.close()
    a = Wire(srv.root, srv.ca_file)
    try:
        assert a.pkam(alice) == "data:success"
        assert a.data(f"notify:status:{sent[0]}") == "delivered"
        t0 = time.monotonic()
        assert a.data("llookup:public:card@alice") == "hello"
        assert time.monotonic() - t0 < 2
    finally:
        a.close()


# -- the core without sockets, on an injected clock -------------------------------------


class _Port:
    def __init__(self) -> None:
        self.out: list[str] = []
        self.closed = False

    def write(self, text: str) -> None:
        self.out.append(text)

    def close(self) -> None:
        self.closed = True


def test_engine_on_a_fake_clock(tmp_path) -> None:
    from noports.atserver.engine import Config, Engine
    from noports.atserver.store import Store
    from noports.atserver.verbs import HANDLERS

    now = [1_700_000_000_000]
    store = Store(tmp_path / "db")
    store.add_atsign("@alice", now[0])
    store.add_atsign("@bob", now[0])
    eng = Engine(
        store, Config(notification_expiry_ms=10_000), clock=lambda: now[0], handlers=HANDLERS
    )
    a = eng.session(_Port())
    a.atsign, a.authed = "@alice", True
    b_port = _Port()
    b = eng.session(b_port)
    b.atsign, b.authed = "@bob", True
    assert a.handle("update:ttl:1000:ttb:500:k@alice v").text == "data:1\n@alice@"
    assert a.handle("llookup:k@alice").text.startswith("data:null")  # not yet available
    now[0] += 600
    assert a.handle("llookup:k@alice").text.startswith("data:v\n")
    now[0] += 800  # t=1400: ttl counts from availableAt (500), so it lives until 1500
    assert a.handle("llookup:k@alice").text.startswith("data:v\n")
    now[0] += 200
    assert a.handle("llookup:k@alice").text.startswith("data:null")
    nid = a.handle("notify:@bob:x@alice:hi").text[5:].split("\n")[0]
    assert b.handle("monitor:0").text == ""  # monitor has no reply
    assert len(b_port.out) == 1 and f'"id":"{nid}"' in b_port.out[0]
    b_port.out.clear()
    now[0] += 10_001  # past the notification expiry: not replayed
    b2_port = _Port()
    b2 = eng.session(b2_port)
    b2.atsign, b2.authed = "@bob", True
    b2.handle("monitor:0")
    assert b2_port.out == []
    assert b2.handle("noop:0").text == "data:ok\n"  # no prompt once monitoring
    store.close()

"""The sans-IO codec and the command builders: fast, no sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.at import commands
from noports.at.commands import CommandError, Metadata
from noports.at.protocol import (
    NEED_DATA,
    AtClientCodec,
    Closed,
    Data,
    ErrorReply,
    Notification,
    Prompt,
    RootReply,
    State,
    parse_error,
)
from noports.crypto import rsa
from noports.errors import (
    ApkamAuthError,
    AtError,
    BufferLimitError,
    ClientAuthFailedError,
    KeyNotFoundError,
    LocalError,
    ProtocolError,
    RemoteError,
)

NOTE = {
    "id": "n-1",
    "from": "@bob",
    "to": "@alice",
    "key": "@alice:ping.dev.sshnp@bob",
    "value": "abc=",
    "operation": "update",
    "epochMillis": 1700000000123,
    "messageType": "MessageType.key",
    "isEncrypted": True,
    "metadata": {
        "ivNonce": "AAAAAAAAAAAAAAAAAAAAAA==",
        "encKeyName": None,
        "sharedKeyEnc": "x/y+z=",
    },
}


def authed_codec() -> AtClientCodec:
    c = AtClientCodec()
    c.receive_data(b"@")
    c.send("from:@alice")
    c.receive_data(b"data:_s@alice:u\n@")
    c.send("pkam:sig")
    c.receive_data(b"data:success\n@alice@")
    assert c.events()[-1] == Prompt("@alice@")
    assert c.authenticated and c.state is State.READY
    return c


# -- parser ---------------------------------------------------------------------------------


def test_greeting_and_unauthenticated_prompt() -> None:
    c = AtClientCodec()
    assert c.state is State.GREETING
    assert c.next_event() is NEED_DATA
    c.receive_data(b"@")
    assert c.next_event() == Prompt("@")
    assert c.state is State.READY
    assert c.next_event() is NEED_DATA


def test_from_challenge_is_everything_after_data() -> None:
    c = AtClientCodec()
    c.receive_data(b"@")
    c.events()
    c.send("from:@Alice")
    assert c.atsign == "@alice"
    c.receive_data(b"data:_4af2-1@alice:d6ca-2\n@")
    assert c.events() == [Data("_4af2-1@alice:d6ca-2", "from"), Prompt("@")]


def test_pkam_success_switches_the_expected_prompt() -> None:
    c = AtClientCodec()
    c.receive_data(b"@")
    c.send("from:@alice")
    c.receive_data(b"data:x\n@")
    c.events()
    c.send("pkam:sig")
    c.receive_data(b"data:success\n@")  # "@" might still grow into "@alice@"
    assert c.events() == [Data("success", "pkam")]
    c.receive_data(b"alice@")
    assert c.events() == [Prompt("@alice@")]


def test_error_forms_map_to_classes() -> None:
    c = authed_codec()
    c.send("llookup:x@alice")
    c.receive_data(b"error:AT0015-key not found : x@alice does not exist in keystore\n@alice@")
    ev = c.events()
    assert isinstance(ev[0], ErrorReply) and ev[0].verb == "llookup"
    exc = ev[0].exception()
    assert isinstance(exc, KeyNotFoundError) and exc.code == "AT0015"
    assert "does not exist" in exc.description


@pytest.mark.parametrize(
    ("payload", "code", "cls", "desc"),
    [
        (
            "AT0401-Exception: pkam authentication failed",
            "AT0401",
            ClientAuthFailedError,
            "Exception: pkam authentication failed",
        ),
        (
            "AT0026:enrollment_id: 123 is pending",
            "AT0026",
            ApkamAuthError,
            "enrollment_id: 123 is pending",
        ),
        (
            '{"errorCode":"AT0015","errorDescription":"key not found"}',
            "AT0015",
            KeyNotFoundError,
            "key not found",
        ),
        ("AT9999-brand new", "AT9999", AtError, "brand new"),
        ("something odd", None, AtError, "something odd"),
    ],
)
def test_parse_error(payload: str, code: str | None, cls: type, desc: str) -> None:
    got_code, got_desc = parse_error(payload)
    assert (got_code, got_desc) == (code, desc)
    exc = ErrorReply(got_code, got_desc).exception()
    assert type(exc) is cls


def test_notification_after_prompt_on_same_line_and_stats() -> None:
    c = authed_codec()
    c.send("noop:0")
    body = json.dumps(NOTE).encode()
    stats = json.dumps(
        {
            "id": "-1",
            "from": "@alice",
            "to": "@alice",
            "key": "statsNotification.@alice",
            "value": "17",
            "operation": "update",
            "epochMillis": 5,
            "messageType": "MessageType.key",
            "isEncrypted": False,
            "metadata": None,
        }
    )
    c.receive_data(
        b"data:ok\n@alice@notification: " + body + b"\nnotification:" + stats.encode() + b"\n"
    )
    ev = c.events()
    assert ev[0] == Data("ok", "noop")
    assert ev[1] == Prompt("@alice@")
    n = ev[2]
    assert isinstance(n, Notification)
    assert n.id == "n-1" and n.from_atsign == "@bob" and n.is_encrypted
    assert n.metadata.iv_nonce == NOTE["metadata"]["ivNonce"]
    assert n.metadata.shared_key_enc == "x/y+z="
    assert n.short_key == "ping.dev.sshnp"
    assert n.raw["epochMillis"] == 1700000000123
    assert isinstance(ev[3], Notification) and ev[3].is_stats and not n.is_stats


def test_monitor_has_no_reply_and_crlf_is_accepted() -> None:
    c = authed_codec()
    c.send("monitor:0 .*")
    assert c.state is State.MONITOR and c.awaiting_reply == 0
    c.send("noop:0")
    c.receive_data(b"data:ok\r\n")
    assert c.events() == [Data("ok", "noop")]


def test_root_replies() -> None:
    r = AtClientCodec(root=True)
    r.receive_data(b"@")
    r.send("alice")
    r.send("nobody")
    r.send("v6")
    r.receive_data(b"127.0.0.1:6464\r\n@null\r\n@[::1]:7000\r\n@")
    ev = r.events()
    assert [e for e in ev if not isinstance(e, Prompt)] == [
        RootReply("127.0.0.1", 6464),
        RootReply(None, None),
        RootReply("::1", 7000),
    ]
    assert ev[-1] == Prompt("@")


def test_eof_gives_closed_once() -> None:
    c = authed_codec()
    c.receive_data(b"")
    assert c.events() == [Closed()]
    assert c.state is State.CLOSED
    assert c.events() == []
    with pytest.raises(LocalError):  # sending after Closed is our misuse (h11 does the same)
        c.send("noop:0")


def test_eof_with_unterminated_line() -> None:
    c = authed_codec()
    c.send("noop:0")
    c.receive_data(b"data:ok")
    assert c.events() == []
    c.receive_data(b"")
    assert c.events() == [Data("ok", "noop"), Closed()]


def test_buffer_limit() -> None:
    c = AtClientCodec(max_buffer=100)
    c.receive_data(b"@")
    c.receive_data(b"data:" + b"x" * 50 + b"\n" + b"y" * 90)  # complete line + 90 pending: fine
    with pytest.raises(BufferLimitError):
        c.receive_data(b"z" * 20)
    with pytest.raises(BufferLimitError):
        c.next_event()


def test_long_line_within_limit_in_many_chunks() -> None:
    c = AtClientCodec(max_buffer=1 << 20)
    c.receive_data(b"@")
    c.send("llookup:big@alice")
    for _ in range(100):
        c.receive_data(b"a" * 5000 if _ else b"data:" + b"a" * 4995)
    c.receive_data(b"\n@")
    ev = c.events()
    assert isinstance(ev[1], Data) and len(ev[1].text) == 500_000 - 5


@pytest.mark.parametrize(
    "bad",
    [b"garbage line\n", b"notification: {not json\n", b"notification: [1]\n", b"data:\xff\xfe\n"],
)
def test_malformed_lines_raise(bad: bytes) -> None:
    c = AtClientCodec()
    c.receive_data(b"@" + bad)
    with pytest.raises(ProtocolError):
        c.events()
    assert c.state is State.CLOSED
    with pytest.raises(ProtocolError):
        c.receive_data(b"data:ok\n")


def test_send_after_close_is_local_misuse() -> None:
    # Our own mistake, not the peer's: LocalError (exit 1), never ProtocolError (exit 6).
    c = AtClientCodec()
    c.send("@exit")
    assert c.state is State.CLOSED
    with pytest.raises(LocalError) as info:
        c.send(commands.noop())
    assert not isinstance(info.value, RemoteError)


def test_buffer_overflow_error_closes() -> None:
    c = authed_codec()
    c.send("update:x@alice v")
    c.receive_data(b"error:AT0005-buffer limit exceeded\n")
    ev = c.events()
    assert isinstance(ev[0].exception(), AtError) and ev[0].code == "AT0005"
    assert c.state is State.CLOSED


# -- chunking invariance (hypothesis) -------------------------------------------------------

_STREAM = (
    b"@"
    b"data:_abc@alice:uuid-1\n@"
    b"data:success\n@alice@"
    b"error:AT0015-key not found : k@alice does not exist\n@alice@"
    b'error:{"errorCode":"AT0009","errorDescription":"unauthorized"}\n@alice@'
    b"data:\xc3\xa9t\xc3\xa9 \xe2\x9c\x93\n@alice@"
    b"notification: " + json.dumps(NOTE).encode() + b"\n"
    b"data:ok\n@alice@notification: " + json.dumps(dict(NOTE, id="n-2")).encode() + b"\r\n"
    b"data:" + b"v" * 3000 + b"\n@alice@"
)
_CMDS = [
    "from:@alice",
    "pkam:sig",
    "llookup:k@alice",
    "scan",
    "llookup:x@alice",
    "noop:0",
    "noop:0",
    "llookup:big@alice",
]


def _parse_chunks(chunks: list[bytes]) -> list[object]:
    c = AtClientCodec()
    for cmd in _CMDS:
        c.send(cmd)
    out: list[object] = []
    for ch in chunks:
        c.receive_data(ch)
        out += c.events()
    c.receive_data(b"")
    out += c.events()
    return out


_REFERENCE = _parse_chunks([_STREAM])


def test_reference_stream() -> None:
    kinds = [type(e).__name__ for e in _REFERENCE]
    assert kinds.count("Notification") == 2
    assert kinds.count("ErrorReply") == 2
    assert Data("été ✓", "llookup") in _REFERENCE
    assert _REFERENCE[-1] == Closed()


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(_STREAM)), max_size=40))
def test_any_chunking_gives_the_same_events(cuts: list[int]) -> None:
    points = sorted(set(cuts))
    chunks, prev = [], 0
    for p in points + [len(_STREAM)]:
        if p > prev:
            chunks.append(_STREAM[prev:p])
            prev = p
    assert _parse_chunks(chunks) == _REFERENCE


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_differently(data: bytes) -> None:
    """Arbitrary input gives events or ProtocolError, never another exception type."""
    c = AtClientCodec(max_buffer=200)
    try:
        c.receive_data(data)
        c.events()
        c.receive_data(b"")
        c.events()
    except ProtocolError:
        pass


# -- builders --------------------------------------------------------------------------------


def test_pkam_forms() -> None:
    assert commands.pkam("SIG") == "pkam:signingAlgo:rsa2048:hashingAlgo:sha256:SIG"
    assert commands.pkam("SIG", enrollment_id="e-1") == (
        "pkam:signingAlgo:rsa2048:hashingAlgo:sha256:enrollmentId:e-1:SIG"
    )
    assert commands.pkam("SIG", dart_form=False) == "pkam:SIG"
    assert commands.pkam("SIG", dart_form=False, enrollment_id="e") == "pkam:enrollmentId:e:SIG"


def test_pkam_signature_verifies(keys) -> None:
    k = keys("@alice")
    sig = commands.pkam_signature(k.pkam_private, "_s@alice:u")
    rsa.verify(k.pkam_public, b"_s@alice:u", sig)


def test_cram_digest_is_sha512_hex_of_secret_plus_challenge() -> None:
    import hashlib

    assert (
        commands.cram("s3cret", "_x@alice:y")
        == "cram:" + hashlib.sha512(b"s3cret_x@alice:y").hexdigest()
    )


def test_from_with_client_config() -> None:
    assert commands.from_("alice") == "from:@alice"
    assert (
        commands.from_("@alice", {"version": "3.0.38"})
        == 'from:@alice:clientConfig:{"version":"3.0.38"}'
    )


def test_update_metadata_in_canonical_order() -> None:
    m = Metadata(
        iv_nonce="IV==",
        ttr=-1,
        ttl=10000,
        is_encrypted=True,
        shared_key_enc="S/+=",
        pub_key_cs="abc",
        ccd=True,
        ttb=5,
    )
    assert commands.update("@bob:k.ns@alice", "CT==", m) == (
        "update:ttl:10000:ttb:5:ttr:-1:ccd:true:isEncrypted:true:sharedKeyEnc:S/+=:pubKeyCS:abc"
        ":ivNonce:IV==:@bob:k.ns@alice CT=="
    )


@pytest.mark.parametrize(
    "bad",
    [
        Metadata(ttl=-1),
        Metadata(iv_nonce="a:b"),
        Metadata(enc_algo="x y"),
        Metadata(data_signature="a@b"),
    ],
)
def test_metadata_rejects_bad_values(bad: Metadata) -> None:
    with pytest.raises(CommandError):
        bad.wire()


def test_metadata_from_json_is_lenient() -> None:
    m = Metadata.from_json(
        {
            "ttl": "5",
            "ccd": "True",
            "isEncrypted": True,
            "ivNonce": "x",
            "unknown": 1,
            "ttr": None,
            "sharedkeyenc": "y",
        }
    )
    assert m == Metadata(ttl=5, ccd=True, is_encrypted=True, iv_nonce="x", shared_key_enc="y")
    assert Metadata(ttl=1).merged(Metadata(ttr=2)) == Metadata(ttl=1, ttr=2)


def test_lookup_family() -> None:
    assert commands.llookup("shared_key.bob@alice") == "llookup:shared_key.bob@alice"
    assert commands.llookup("@bob:phone@alice", "all") == "llookup:all:@bob:phone@alice"
    assert (
        commands.lookup("x@bob", "meta", bypass_cache=True) == "lookup:bypassCache:true:meta:x@bob"
    )
    assert commands.plookup("publickey@bob") == "plookup:publickey@bob"
    with pytest.raises(CommandError):
        commands.llookup("x@a", "everything")


def test_key_strings() -> None:
    assert commands.key_string("phone.ns", "alice") == "phone.ns@alice"
    assert commands.key_string("k", "@alice", public=True) == "public:k@alice"
    assert commands.key_string("k", "@alice", shared_with="Bob") == "@bob:k@alice"
    assert commands.key_string("shared_key", "@bob", shared_with="@alice", cached=True) == (
        "cached:@alice:shared_key@bob"
    )
    with pytest.raises(CommandError):
        commands.key_string("k", "@a", shared_with="@b", public=True)
    with pytest.raises(CommandError):
        commands.key_string("has space", "@a")


def test_notify_every_option_in_order() -> None:
    cmd = commands.notify(
        "@bob:ping.dev.sshnp@alice",
        "CT==",
        id="abc-1",
        operation="update",
        message_type="key",
        priority="high",
        strategy="latest",
        latest_n=3,
        notifier="me",
        ttln=60000,
        metadata=Metadata(ttl=10000, ttr=-1, is_encrypted=True, iv_nonce="IV=="),
    )
    assert cmd == (
        "notify:id:abc-1:update:messageType:key:priority:high:strategy:latest:latestN:3"
        ":notifier:me:ttln:60000:ttl:10000:ttr:-1:isEncrypted:true:ivNonce:IV=="
        ":@bob:ping.dev.sshnp@alice:CT=="
    )
    assert commands.notify("public:x@alice") == "notify:public:x@alice"
    with pytest.raises(CommandError):
        commands.notify("x@alice")
    with pytest.raises(CommandError):
        commands.notify("@bob:x@alice", id="bad id")


def test_other_verbs() -> None:
    assert commands.notify_status("id-1") == "notify:status:id-1"
    assert commands.notify_remove("id-1") == "notify:remove:id-1"
    assert commands.monitor() == "monitor"
    assert commands.monitor(".*", since=0) == "monitor:0 .*"
    assert commands.monitor("sshnp", since=17, self_notifications=True, strict=True) == (
        "monitor:strict:selfNotifications:17 sshnp"
    )
    assert commands.scan("x.*", show_hidden=True) == "scan:showHidden:true x.*"
    assert commands.scan() == "scan"
    assert commands.delete("@bob:k@alice") == "delete:@bob:k@alice"
    assert commands.noop() == "noop:0"
    with pytest.raises(CommandError):
        commands.noop(6000)
    assert commands.info() == "info" and commands.info(True) == "info:brief"
    assert commands.root_lookup("@Alice") == "alice"
    assert commands.enroll("approve", {"enrollmentId": "e", "x": "é"}) == (
        'enroll:approve:{"enrollmentId":"e","x":"é"}'
    )
    assert commands.enroll("revoke", {"enrollmentId": "e"}, force=True) == (
        'enroll:revoke:force:{"enrollmentId":"e"}'
    )
    assert commands.enroll("list") == "enroll:list"
    assert commands.otp_get() == "otp:get" and commands.otp_get(60000) == "otp:get:ttl:60000"
    assert commands.otp_put("ABC123") == "otp:put:ABC123"
    assert commands.keys_get("e.default_enc_private_key.__manage@alice") == (
        "keys:get:keyName:e.default_enc_private_key.__manage@alice"
    )
    assert commands.keys_verb("get", visibility="self", namespace="__manage", key_name="k") == (
        "keys:get:self:namespace:__manage:keyName:k"
    )


def test_newlines_are_refused() -> None:
    with pytest.raises(CommandError):
        commands.update("x@alice", "two\nlines")
    with pytest.raises(CommandError):
        commands.encode("noop:0\r\nscan")
    with pytest.raises(CommandError):
        commands.scan("a\nb")
    with pytest.raises(CommandError):
        commands.atsign("@a\nb")

"""permit-open parsing, the two-level check, DNS-rebind-safe resolution (T8, official #1375),
and the ping-response / feature-check contract that renders the list (spec 6.6, 3.1, 3.3)."""

from __future__ import annotations

import json
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noports.errors import AuthRefusedError, ConnectError
from noports.session.features import (
    FEATURE_CHECK_TIMEOUT_MESSAGE,
    DaemonFeature,
    UnsupportedFeatureError,
    check_features,
    npt_required_features,
    parse_ping_response,
    ping_response,
    ping_response_json,
    require_features,
    sshnp_required_features,
)
from noports.session.permitopen import (
    DEFAULT_PERMIT_OPEN,
    PermitEntry,
    PermitOpen,
    PermitOpenError,
    canonical_host,
    check_request,
    parse_entry,
    resolve_checked,
)

# entry text -> canonical rendering, or None if it must be rejected.
ENTRY_TABLE: list[tuple[str, str | None]] = [
    ("localhost:22", "localhost:22"),
    ("LOCALHOST:22", "localhost:22"),
    ("LocalHost:3389", "localhost:3389"),
    ("*:22", "*:22"),
    ("localhost:*", "localhost:*"),
    ("*:*", "*:*"),
    ("127.0.0.1:22", "127.0.0.1:22"),
    ("[::1]:22", "[::1]:22"),
    ("[0:0:0:0:0:0:0:1]:22", "[::1]:22"),
    ("[FE80::1]:80", "[fe80::1]:80"),
    ("[2001:DB8::1]:*", "[2001:db8::1]:*"),
    ("web-01.internal.example:8080", "web-01.internal.example:8080"),
    ("my_host:65535", "my_host:65535"),
    ("host:1", "host:1"),
    ("xn--bcher-kva.example:80", "xn--bcher-kva.example:80"),
    # --- rejected
    ("localhost:22\n", None),
    ("localhost:22\r", None),
    ("localhost:22 ", None),
    (" localhost:22", None),
    ("local host:22", None),
    ("localhost:\t22", None),
    ("local\x00host:22", None),
    ("localhost:22\x00", None),
    ("0x7f.1:22", None),
    ("0x7f000001:22", None),
    ("2130706433:22", None),
    ("127.1:22", None),
    ("127.0.1:22", None),
    ("0177.0.0.1:22", None),
    ("127.000.0.1:22", None),
    ("127.0.0.01:22", None),
    ("256.0.0.1:22", None),
    ("1.2.3.4.5:22", None),
    ("example.123:22", None),
    ("localhost.:22", None),
    (".localhost:22", None),
    ("a..b:22", None),
    ("-host:22", None),
    ("host-:22", None),
    (":22", None),
    (":65536", None),
    ("localhost:65536", None),
    ("localhost:0", None),
    ("localhost:-1", None),
    ("localhost:+22", None),
    ("localhost:022", None),
    ("localhost:22.0", None),
    ("localhost:0x16", None),
    ("localhost:", None),
    ("localhost", None),
    ("localhost:22:33", None),
    ("::1:22", None),
    ("[::1]22", None),
    ("[::1:22", None),
    ("[::1]:", None),
    ("[fe80::1%eth0]:22", None),
    ("[::ffff:127.0.0.1]:22", None),
    ("[127.0.0.1]:22", None),
    ("[*]:22", None),
    ("bücher.example:80", None),
    ("ｌｏｃａｌｈｏｓｔ:22", None),
    ("localhost:２２", None),
    ("xn--zz.example:80", None),
    ("a" * 64 + ".example:80", None),
    ("host/evil:22", None),
    ("host%0a:22", None),
    ("", None),
    ("*", None),
]


@pytest.mark.parametrize("text,canon", ENTRY_TABLE, ids=[repr(t)[:40] for t, _ in ENTRY_TABLE])
def test_entry_table(text: str, canon: str | None) -> None:
    if canon is None:
        with pytest.raises(PermitOpenError):
            parse_entry(text)
        with pytest.raises(PermitOpenError):
            PermitOpen.parse([text])
        assert PermitOpen.parse([text], strict=False).entries == ()
    else:
        assert str(parse_entry(text)) == canon
        # the canonical form is a fixed point
        assert str(parse_entry(canon)) == canon


def test_table_is_big_enough() -> None:
    assert len(ENTRY_TABLE) >= 40
    assert sum(c is None for _, c in ENTRY_TABLE) >= 40


def test_default_list_and_deny_by_default() -> None:
    po = PermitOpen.parse(DEFAULT_PERMIT_OPEN)
    assert po.allowed_services() == ["localhost:22", "localhost:3389"]
    assert po.check("localhost", 22)
    assert po.check("localhost", "3389")
    assert not po.check("localhost", 23)
    assert not po.check("127.0.0.1", 22)  # exact compare: localhost != 127.0.0.1
    empty = PermitOpen.parse("")
    assert not empty and not empty.check("localhost", 22)
    assert not PermitOpen.parse([]).check("localhost", 22)


# Requests checked against "localhost:22": (host, port, allowed?)
REQUEST_TABLE: list[tuple[object, object, bool]] = [
    ("localhost", 22, True),
    ("LOCALHOST", 22, True),
    ("localhost", "22", True),
    ("localhost\n", 22, False),
    ("localhost ", 22, False),
    ("localhost\x00", 22, False),
    ("127.0.0.1", 22, False),
    ("127.1", 22, False),
    ("::1", 22, False),
    ("0x7f.1", 22, False),
    ("2130706433", 22, False),
    ("localhost", "022", False),
    ("localhost", "+22", False),
    ("localhost", True, False),
    ("localhost", 22.0, False),
    ("localhost", -22, False),
    ("localhost", 65558, False),  # 65558 & 0xffff == 22
    ("localhost.", 22, False),
    ("", 22, False),
    (None, 22, False),
]


@pytest.mark.parametrize("host,port,ok", REQUEST_TABLE)
def test_request_table(host: object, port: object, ok: bool) -> None:
    assert PermitOpen.parse("localhost:22").check(host, port) is ok  # type: ignore[arg-type]


def test_wildcards() -> None:
    assert PermitOpen.parse("*:*").check("anything.example", 1)
    assert PermitOpen.parse("*:*").check("10.1.2.3", 65535)
    assert not PermitOpen.parse("*:*").check("10.1.2.3\n", 22)
    p = PermitOpen.parse("*:22,db:*")
    assert p.check("x", 22) and p.check("db", 5432) and not p.check("x", 5432)
    v6 = PermitOpen.parse("[::1]:22")
    assert v6.check("::1", 22) and v6.check("[::1]", 22) and v6.check("0::1", 22)
    assert not v6.check("localhost", 22)


def test_dedup_and_order() -> None:
    p = PermitOpen.parse("b:2,LOCALHOST:22,localhost:22,a:1")
    assert p.allowed_services() == ["b:2", "localhost:22", "a:1"]
    assert str(p) == "b:2,localhost:22,a:1"


def test_non_strict_records_rejected_entries() -> None:
    p = PermitOpen.parse(["localhost:22", "evil\n:22", 5, "x:0"], strict=False)  # type: ignore[list-item]
    assert p.allowed_services() == ["localhost:22"]
    assert len(p.rejected) == 3 and all("\n" not in r for r in p.rejected)


def test_two_level_check_and_official_messages() -> None:
    daemon = PermitOpen.parse("localhost:22,localhost:3389")
    client = PermitOpen.parse("localhost:3389")
    assert check_request(daemon, PermitOpen.allow_all(), "localhost", 22).allowed
    d = check_request(daemon, client, "localhost", 22)
    assert not d.allowed and d.message == "Client is not permitted connections to localhost:22"
    d = check_request(daemon, client, "127.0.0.1", 3389)
    assert d.message == "Daemon does not permit connections to 127.0.0.1:3389"
    assert check_request(daemon, client, "LocalHost", "3389").allowed
    d = check_request(daemon, client, "evil\nINFO ok", 22)
    assert not d.allowed and "\n" not in (d.message or "")


def test_regression_1375_list_is_enforced() -> None:
    """Official C daemon ignored --permit-open: every target outside the list must fail."""
    daemon = PermitOpen.parse("localhost:22")
    for host, port in [("localhost", 80), ("192.168.1.1", 22), ("example.com", 22), ("*", 22)]:
        assert not check_request(daemon, PermitOpen.allow_all(), host, port).allowed


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.integers(min_value=-5, max_value=70000))
def test_hypothesis_check_never_raises_and_only_canonical_matches(host: str, port: int) -> None:
    p = PermitOpen.parse("localhost:22,*:3389")
    ok = p.check(host, port)
    if ok:
        assert (host.lower() == "localhost" and port == 22) or port == 3389
        assert canonical_host(host) == canonical_host(canonical_host(host))
        assert all(0x21 <= ord(c) <= 0x7E for c in host)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_hypothesis_parse_entry_only_raises_permit_error(text: str) -> None:
    try:
        e = parse_entry(text)
    except PermitOpenError:
        return
    assert isinstance(e, PermitEntry)
    assert parse_entry(str(e)) == e


# ------------------------------------------------------------------------- resolve_checked
def _resolver(table: dict[str, list[str]]):
    calls: list[str] = []

    def resolve(host: str, port: int):
        calls.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out = []
        for a in table[host]:
            fam = socket.AF_INET6 if ":" in a else socket.AF_INET
            sa = (a, port, 0, 0) if fam == socket.AF_INET6 else (a, port)
            out.append((fam, socket.SOCK_STREAM, 6, "", sa))
        return out

    return resolve, calls


def test_resolve_checked_returns_the_checked_address_once() -> None:
    resolve, calls = _resolver({"db.internal": ["10.0.0.5", "10.0.0.6"]})
    daemon = PermitOpen.parse("db.internal:5432")
    assert resolve_checked(
        "DB.internal", 5432, daemon, PermitOpen.allow_all(), resolver=resolve
    ) == (
        "10.0.0.5",
        5432,
    )
    assert calls == ["db.internal"]  # resolved exactly once


def test_resolve_checked_rebind_cannot_redirect_localhost() -> None:
    resolve, _ = _resolver({"localhost": ["169.254.169.254"]})
    with pytest.raises(AuthRefusedError, match="non-loopback"):
        resolve_checked("localhost", 22, PermitOpen.parse("localhost:22"), resolver=resolve)
    resolve, _ = _resolver({"localhost": ["::1", "127.0.0.1"]})
    assert resolve_checked("localhost", 22, PermitOpen.parse("localhost:22"), resolver=resolve) == (
        "::1",
        22,
    )


def test_resolve_checked_numeric_ip_only_if_named() -> None:
    resolve, calls = _resolver({})
    named = PermitOpen.parse("127.0.0.1:22,[::1]:22")
    assert resolve_checked("127.0.0.1", 22, named, resolver=resolve) == ("127.0.0.1", 22)
    assert resolve_checked("[0::1]", "22", named, resolver=resolve) == ("::1", 22)
    assert calls == []  # no DNS for literals
    with pytest.raises(AuthRefusedError, match="Daemon does not permit"):
        resolve_checked("127.0.0.1", 22, PermitOpen.parse("localhost:22"), resolver=resolve)
    with pytest.raises(AuthRefusedError, match="Client is not permitted"):
        resolve_checked("127.0.0.1", 22, named, PermitOpen.parse("localhost:22"), resolver=resolve)
    with pytest.raises(AuthRefusedError):
        resolve_checked("2130706433", 22, PermitOpen.allow_all(), resolver=resolve)


def test_resolve_checked_denies_before_resolving() -> None:
    resolve, calls = _resolver({"evil.example": ["127.0.0.1"]})
    with pytest.raises(AuthRefusedError):
        resolve_checked("evil.example", 22, PermitOpen.parse("localhost:22"), resolver=resolve)
    assert calls == []
    with pytest.raises(AuthRefusedError):
        resolve_checked("localhost", 22, resolver=resolve)  # no lists: deny


def test_resolve_checked_unresolvable() -> None:
    resolve, _ = _resolver({})
    with pytest.raises(ConnectError):
        resolve_checked("nowhere.invalid", 80, PermitOpen.allow_all(), resolver=resolve)


def test_resolve_checked_real_localhost() -> None:
    host, port = resolve_checked("localhost", 22, PermitOpen.parse("localhost:22"))
    assert port == 22 and host in ("127.0.0.1", "::1")


# ---------------------------------------------------------------------- ping and features
def test_ping_response_key_order_and_names() -> None:
    po = PermitOpen.parse(DEFAULT_PERMIT_OPEN)
    text = ping_response_json(
        device="mypi",
        device_group="lab",
        accepts_public_keys=False,
        allowed_services=po.allowed_services(),
        version="5.6.3",
        core_version="6.2.0",
    )
    assert text == (
        '{"devicename":"mypi","deviceGroupName":"lab","version":"5.6.3",'
        '"corePackageVersion":"6.2.0","supportedFeatures":{"srAuth":true,"srE2ee":true,'
        '"acceptsPublicKeys":false,"supportsPortChoice":true,"adjustableTimeout":true,'
        '"controlChannelHeartbeats":true,"supportsRamEscr":false,"twinKeys":true,'
        '"noportsAead":true,"relayLatency":true,"noportsKex":true},"authModes":["payload"],'
        '"allowedServices":["localhost:22","localhost:3389"],"npCpVersion":"1.5.0"}'
    )
    d = ping_response("x1", accepts_public_keys=True, allowed_services=["*:*"])
    # spec-latest 8.1 order; no publicSigningKeyUri unless the signing key is published
    assert list(d) == [
        "devicename",
        "deviceGroupName",
        "version",
        "corePackageVersion",
        "supportedFeatures",
        "authModes",
        "allowedServices",
        "npCpVersion",
    ]
    assert d["deviceGroupName"] == "__none__" and d["supportedFeatures"]["acceptsPublicKeys"]
    uri = "public:_apsk.primary.a.__e@x1"
    e = ping_response(
        "x1", accepts_public_keys=True, allowed_services=[], escr=True, public_signing_key_uri=uri
    )
    assert e["authModes"] == ["payload", "escr"] and e["supportedFeatures"]["supportsRamEscr"]
    assert list(e)[-1] == "publicSigningKeyUri" and e["publicSigningKeyUri"] == uri


@pytest.mark.parametrize(
    ("reply", "answers"),
    [
        ('{"version":"c0.1.0","supportedFeatures":{"srAuth":true}}', False),  # the C daemon
        ('{"version":"5.14.13","supportedFeatures":{}}', False),
        ('{"version":"5.15.0","supportedFeatures":{}}', True),
        ('{"version":"5.15.1-rc1","supportedFeatures":{}}', True),
        ('{"version":"0.1","supportedFeatures":{"relayLatency":true}}', True),
        ('{"devicename":"old"}', False),
    ],
)
def test_who_answers_relay_latency(reply, answers) -> None:
    assert parse_ping_response(reply).answers_relay_latency() is answers


def test_parse_own_response_round_trip() -> None:
    text = ping_response_json(device="d1", accepts_public_keys=True, allowed_services=["a:1"])
    info = parse_ping_response(text)
    assert info.device == "d1" and info.allowed_services == ("a:1",) and not info.legacy
    assert all(
        info.supports(f) for f in DaemonFeature if f is not DaemonFeature.SUPPORTS_RAM_ESCR
    )


def test_v4_daemon_without_supported_features() -> None:
    info = parse_ping_response('{"devicename":"old","version":"4.0.0"}')
    assert info.legacy and info.supports("acceptsPublicKeys") and not info.supports("srAuth")
    reasons = check_features(info, sshnp_required_features())
    assert [r for _, _, r in reasons] == [
        "This device daemon does not authenticate to the socket rendezvous",
        "This device daemon does not encrypt traffic to the socket rendezvous",
    ]
    require_features(
        info,
        sshnp_required_features(
            authenticate_device_to_rvd=False, encrypt_rvd_traffic=False, send_ssh_public_key=True
        ),
    )


def test_c_daemon_response_and_tolerance() -> None:
    c = {
        "devicename": "d",
        "version": "0.2.0",
        "corePackageVersion": "c0.1.0",
        "supportedFeatures": {
            "srAuth": True,
            "srE2ee": True,
            "acceptsPublicKeys": False,
            "supportsPortChoice": True,
            "unknownThing": {"x": 1},
        },
        "allowedServices": ["localhost:22", 5, "*:0"],
        "extra": [1, 2],
    }
    info = parse_ping_response(json.dumps(c))
    assert info.allowed_services == ("localhost:22", "*:0")
    require_features(info, npt_required_features())
    with pytest.raises(UnsupportedFeatureError) as ei:
        require_features(info, npt_required_features(timeout_s=60))
    assert (
        str(ei.value)
        == "This device daemon does not support the 'timeout' value in npt session requests"
    )
    with pytest.raises(UnsupportedFeatureError, match="accept ssh public keys from the client"):
        require_features(info, sshnp_required_features(send_ssh_public_key=True))
    # a truthy non-boolean is not "supported" (official clients test == true)
    odd = parse_ping_response({"supportedFeatures": {"srAuth": 1, "srE2ee": "true"}})
    assert not odd.supports("srAuth") and not odd.supports("srE2ee")
    assert parse_ping_response({"supportedFeatures": []}).features == {}


def test_required_feature_sets() -> None:
    assert sshnp_required_features() == [DaemonFeature.SR_AUTH, DaemonFeature.SR_E2EE]
    assert DaemonFeature.ACCEPTS_PUBLIC_KEYS in sshnp_required_features(send_ssh_public_key=True)
    assert npt_required_features() == [
        DaemonFeature.SR_AUTH,
        DaemonFeature.SR_E2EE,
        DaemonFeature.SUPPORTS_PORT_CHOICE,
    ]
    assert DaemonFeature.NOPORTS_AEAD in npt_required_features(aead=True)
    assert FEATURE_CHECK_TIMEOUT_MESSAGE == "Daemon feature check timed out"


@pytest.mark.parametrize("bad", ["", "not json", "[1,2]", '"str"', "null", b"\xff\xfe"])
def test_parse_ping_response_rejects_non_objects(bad: str | bytes) -> None:
    from noports.errors import ProtocolError

    with pytest.raises(ProtocolError):
        parse_ping_response(bad)

"""The session wire contract: official field order, key wrapping round trips, relay replies."""

from __future__ import annotations

import json

import pytest

from noports.crypto import rsa
from noports.crypto.encoding import canonical_json
from noports.errors import ProtocolError
from noports.session import wire


@pytest.fixture(scope="module")
def eph():
    return rsa.generate()


def test_ssh_request_field_order_is_official(eph):
    p = wire.ssh_request(
        session_id="s",
        host="h",
        port=1,
        client_nonce="n",
        rvd_nonce="r",
        ephemeral_pk=eph.public_key(),
    )
    # the latest official order (spec-latest 3.1: notification_request_message.dart)
    assert list(p) == [
        "direct",
        "sessionId",
        "host",
        "port",
        "authenticateToRvd",
        "relayAuthMode",
        "relayAuthAesKey",
        "clientNonce",
        "rvdNonce",
        "encryptRvdTraffic",
        "clientEphemeralPK",
        "clientEphemeralPKType",
        "twinKeys",
        "relayAtsign",
    ]
    assert (p["relayAuthMode"], p["relayAuthAesKey"], p["twinKeys"]) == ("payload", None, False)
    q = wire.ssh_request(
        session_id="s",
        host="h",
        port=1,
        client_nonce="n",
        rvd_nonce="r",
        ephemeral_pk=eph.public_key(),
        twin_keys=True,
        aead=True,
    )
    assert list(q)[-3:] == ["twinKeys", "relayAtsign", "noportsAead"]
    got = wire.parse_request("ssh", json.loads(canonical_json(q)))
    assert (got.relay_auth_mode, got.relay_auth_aes_key, got.relay_atsign) == (
        "payload",
        None,
        None,
    )
    # what an official client sends for escr: mode and key carried, in place
    e = dict(q, relayAuthMode="escr", relayAuthAesKey="a2V5", relayAtsign="@rv")
    got = wire.parse_request("ssh", json.loads(canonical_json(e)))
    assert (got.relay_auth_mode, got.relay_auth_aes_key, got.relay_atsign) == (
        "escr",
        "a2V5",
        "@rv",
    )
    with pytest.raises(ProtocolError, match="relayAuthMode"):
        wire.parse_request("ssh", dict(q, relayAuthMode="magic"))


def test_npt_request_field_order_is_official(eph):
    p = wire.npt_request(
        session_id="s",
        rvd_host="h",
        rvd_port=443,
        requested_port=22,
        requested_host="localhost",
        client_nonce="n",
        rvd_nonce="r",
        ephemeral_pk=eph.public_key(),
        twin_keys=True,
        relay_atsign="@rv",
    )
    assert list(p) == [
        "sessionId",
        "rvdHost",
        "rvdPort",
        "requestedPort",
        "requestedHost",
        "authenticateToRvd",
        "relayAuthMode",
        "relayAuthAesKey",
        "clientNonce",
        "rvdNonce",
        "encryptRvdTraffic",
        "clientEphemeralPK",
        "clientEphemeralPKType",
        "timeout",
        "twinKeys",
        "relayAtsign",
    ]


def test_npt_request_round_trips_through_json(eph):
    p = wire.npt_request(
        session_id="s1",
        rvd_host="127.0.0.1",
        rvd_port=4000,
        requested_port=22,
        requested_host="localhost",
        client_nonce="n",
        rvd_nonce="r",
        ephemeral_pk=eph.public_key(),
        aead=True,
    )
    assert list(p)[:4] == ["sessionId", "rvdHost", "rvdPort", "requestedPort"]
    got = wire.parse_request("npt", json.loads(canonical_json(p)))
    assert (got.target_host, got.target_port, got.relay_port, got.aead, got.twin_keys) == (
        "localhost",
        22,
        4000,
        True,
        False,
    )


@pytest.mark.parametrize("twin,aead", [(False, False), (True, False), (False, True), (True, True)])
def test_keys_wrap_and_unwrap(eph, twin, aead):
    keys = wire.SessionKeys.generate(encrypt=True, twin=twin, aead=aead)
    resp = wire.success_response("sid", keys, eph.public_key(), ssh=False)
    c2d = ["aesKeyC2D", "ivC2D"] if twin else ["sessionAESKey", "sessionIV"]  # per twinKeys
    assert list(resp)[:7] == ["status", "sessionId", *c2d, "aesKeyD2C", "ivD2C"] + [
        "eventLoggingConfig"
    ]
    assert (resp["aesKeyD2C"] is None) == (not twin)
    back = wire.SessionKeys.from_response(json.loads(canonical_json(resp)), eph)
    assert back == keys


def test_official_response_without_additions_gives_legacy_keys(eph):
    keys = wire.SessionKeys.generate(encrypt=True, twin=False, aead=False)
    resp = {
        "status": "connected",
        "sessionId": "x",
        "ephemeralPrivateKey": None,
        "sessionAESKey": wire.wrap(eph.public_key(), keys.ctr.key_c2d),
        "sessionIV": wire.wrap(eph.public_key(), keys.ctr.iv_c2d),
    }
    back = wire.SessionKeys.from_response(resp, eph)
    assert back.ctr == keys.ctr and back.aead_secret is None and not back.ctr.twin


@pytest.mark.parametrize(
    "payload,msg",
    [
        ({"sessionId": "s", "host": "h", "port": 0}, "port"),
        (
            {"sessionId": "s", "host": "h", "port": 22, "encryptRvdTraffic": True},
            "clientEphemeralPK",
        ),
        ({"sessionId": "", "host": "h", "port": 22}, "sessionId"),
        ({"sessionId": "s", "host": "h", "port": "22"}, "port"),
        (
            {"sessionId": "s", "host": "h", "port": 22, "authenticateToRvd": "yes"},
            "authenticateToRvd",
        ),
    ],
)
def test_bad_requests_are_refused_with_the_field_named(payload, msg):
    with pytest.raises(ProtocolError, match=msg):
        wire.parse_request("ssh", payload)


def test_relay_request_and_replies():
    r = wire.relay_request(
        session_id="s", atsign_a="@a", atsign_b="@b", auth_a=True, auth_b=True, client_nonce="n"
    )
    assert list(r) == [
        "sessionId",
        "atSignA",
        "atSignB",
        "authenticateSocketA",
        "authenticateSocketB",
        "clientNonce",
        "relayAuthMode",
        "relayAuthAesKey",
        "only443",
        "multipleAcksOk",
        "preFetch",
        "sendJsonResponse",
    ]
    got = wire.parse_relay_request(canonical_json(r), sender="@a", legacy=False)
    assert (got.session_id, got.auth_a, got.json_response, got.multiple_acks_ok) == (
        "s",
        True,
        True,
        True,
    )
    # an old client's R1: the relay's defaults for every later field (spec-latest 2.1)
    old = {k: r[k] for k in list(r)[:6]}
    got = wire.parse_relay_request(canonical_json(old), sender="@a", legacy=False)
    assert (
        got.relay_auth_mode,
        got.relay_auth_aes_key,
        got.only443,
        got.multiple_acks_ok,
        got.pre_fetch,
        got.json_response,
    ) == ("payload", None, False, False, (), False)
    new = dict(
        r,
        relayAuthMode="ESCR",
        relayAuthAesKey="a2V5",
        only443=True,
        preFetch=["public:_apsk.primary.a.__e@a"],
    )
    got = wire.parse_relay_request(canonical_json(new), sender="@a", legacy=False)
    assert (got.relay_auth_mode, got.relay_auth_aes_key, got.only443, got.pre_fetch) == (
        "escr",
        "a2V5",
        True,
        ("public:_apsk.primary.a.__e@a",),
    )
    for bad in ({"relayAuthMode": "x"}, {"only443": "yes"}, {"preFetch": "k"}):
        with pytest.raises(ProtocolError):
            wire.parse_relay_request(canonical_json(dict(r, **bad)), sender="@a", legacy=False)
    legacy = wire.parse_relay_request("abc-123", sender="@a", legacy=True)
    assert legacy.legacy and not legacy.auth_a and legacy.atsign_a == "@a"
    reply = wire.RelayReply("10.0.0.1", 1000, 1001, "nonce")
    assert wire.relay_reply(reply) == "10.0.0.1,1000,1001,nonce"
    assert wire.parse_relay_reply(wire.relay_reply(reply)) == reply
    assert wire.parse_relay_reply(wire.relay_reply(reply, json_form=True)) == reply
    assert wire.parse_relay_reply("h,1,2,null").rvd_nonce is None
    assert wire.parse_relay_reply("h,1,2").rvd_nonce is None
    for bad in ("h,1", "h,x,2,n", "h,1,70000,n", ",1,2,n"):
        with pytest.raises(ProtocolError):
            wire.parse_relay_reply(bad)


def test_client_nonce_is_dart_iso_format():
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}", wire.client_nonce())

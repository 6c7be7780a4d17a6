"""Relay-auth request fields: the official order in R1 and in session requests, and the
defaults srvd and sshnpd read when a field is missing (spec noports-latest 2.1, 3.1)."""

from __future__ import annotations

import json

import pytest

from noports.errors import ProtocolError
from noports.session import relayauth, wire
from noports.srvd.relayauth import relay_auth_fields

KEY = "A" * 43 + "="


def test_r1_field_order() -> None:
    body = wire.relay_request(session_id="s", atsign_a="@a", atsign_b="@b", auth_a=True,
                              auth_b=True, client_nonce="n")
    out = relayauth.add_relay_request_fields(body, mode="escr", aes_key=KEY, only443=True,
                                             prefetch=["public:_apsk.primary.a.__e@a"])
    assert list(out) == ["sessionId", "atSignA", "atSignB", "authenticateSocketA",
                         "authenticateSocketB", "clientNonce", "relayAuthMode",
                         "relayAuthAesKey", "only443", "multipleAcksOk", "preFetch",
                         "sendJsonResponse"]
    assert out["relayAuthAesKey"] == KEY and out["only443"] is True
    pay = relayauth.add_relay_request_fields(body, mode="payload", aes_key=KEY, only443=False,
                                             prefetch=["x"])
    assert pay["relayAuthAesKey"] is None and pay["preFetch"] == []


@pytest.mark.parametrize("kind", ["ssh", "npt"])
def test_session_request_fields_follow_authenticate_to_rvd(kind: str) -> None:
    if kind == "ssh":
        p = wire.ssh_request(session_id="s", host="h", port=1, client_nonce="c", rvd_nonce="r",
                             ephemeral_pk=None, auth_to_rvd=True, encrypt=False)
    else:
        p = wire.npt_request(session_id="s", rvd_host="h", rvd_port=1, requested_port=22,
                             requested_host="localhost", client_nonce="c", rvd_nonce="r",
                             ephemeral_pk=None, encrypt=False)
    out = relayauth.add_request_fields(p, mode="escr", aes_key=KEY)
    keys = list(out)
    i = keys.index("authenticateToRvd")
    assert keys[i + 1 : i + 3] == ["relayAuthMode", "relayAuthAesKey"]
    ram = ("relayAuthMode", "relayAuthAesKey")
    assert [k for k in keys if k not in ram] == [k for k in p if k not in ram]
    again = relayauth.add_request_fields(out, mode="escr", aes_key=KEY)
    assert list(again) == keys  # already there: values set in place, order kept
    assert relayauth.request_mode(out) == ("escr", KEY)
    assert relayauth.request_mode(p) == ("payload", None)
    with pytest.raises(ProtocolError):
        relayauth.request_mode({"relayAuthMode": "escr"})
    with pytest.raises(ProtocolError):
        relayauth.request_mode({"relayAuthMode": "rot13"})


def test_srvd_defaults_and_refusals() -> None:
    base = {"sessionId": "s", "atSignA": "@a", "atSignB": "@b", "clientNonce": "n"}
    f = relay_auth_fields(json.dumps(base), legacy=False)
    assert (f.mode, f.aes_key, f.only443, f.prefetch, f.multiple_acks_ok) == (
        "payload", None, False, (), False)
    assert relay_auth_fields("sid", legacy=True).mode == "payload"
    full = {**base, "relayAuthMode": "ESCR", "relayAuthAesKey": KEY, "only443": True,
            "multipleAcksOk": True,
            "preFetch": ["public:_apsk.e.a.__e@a", "public:publickey@a", 7] + ["x"] * 9}
    f = relay_auth_fields(json.dumps(full), legacy=False)
    assert f.mode == "escr" and f.only443 and f.multiple_acks_ok
    assert f.prefetch == ("public:_apsk.e.a.__e@a",)  # only a.__e keys, at most 4 looked at
    for bad in ({"relayAuthMode": "rot13"}, {"relayAuthMode": "escr"},
                {"relayAuthMode": "escr", "relayAuthAesKey": "short"}):
        with pytest.raises(ProtocolError):
            relay_auth_fields(json.dumps({**base, **bad}), legacy=False)

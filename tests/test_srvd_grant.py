"""srvd's grant decisions in memory (:mod:`noports.srvd.grant`): admitted request -> plan ->
relay session fields -> reply. The admission checks themselves (managers, requester, quotas,
duplicates) are in test_srvd_requests; the control process with real workers and atServer
in test_srvd_app, test_srvd_escr and test_redundant_instances."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from noports.crypto import aes, escr
from noports.relay import SessionSpec
from noports.relay.relay import NOT_BOUND_443
from noports.session import wire
from noports.srvd import grant as grants
from noports.srvd import requests as rq

A, B = "@alice", "@dev"
POLICY = grants.Policy(ip="10.1.2.3")


def escr_fields(**kw: Any) -> dict[str, Any]:
    return {"relay_auth_mode": "escr", "relay_auth_aes_key": aes.new_key_b64(), **kw}


def plan(g: rq.Grant, value: str | None, policy: grants.Policy = POLICY) -> grants.Plan:
    return grants.plan(g, value, policy)


def r1(**kw: Any) -> tuple[rq.Grant, str]:
    sid = str(uuid.uuid4())
    body = wire.relay_request(session_id=sid, atsign_a=A, atsign_b=B, auth_a=kw.pop("auth_a", True),
                              auth_b=kw.pop("auth_b", True), client_nonce="cn", **kw)
    value = json.dumps(body)
    adm = rq.Admission(managers=None, require_auth=False, max_sessions=10, per_requester=10)
    return adm.check("json", value, A), value


def test_payload_mode_needs_both_public_keys_and_no_prefetch() -> None:
    g, value = r1(pre_fetch=[escr.apsk_uri(A)])
    p = plan(g, value)
    assert not p.escr and p.key_owners == (A, B) and p.prefetch == ()
    params = grants.session_params(p, (None, None), {"x": "y"})
    assert params["auth_mode"] == "payload" and params["prefetched"] is None
    assert params["relay_auth_aes_key"] is None and params["client_nonce"] == "cn"
    SessionSpec(**params)  # the relay's own type takes exactly these fields


def test_escr_needs_no_public_keys_and_prefetches_only_the_sessions_atsigns() -> None:
    mine, theirs, stranger = escr.apsk_uri(A), escr.apsk_uri(B, "e1"), escr.apsk_uri("@eve")
    g, value = r1(**escr_fields(pre_fetch=[mine, stranger, theirs]))
    p = plan(g, value)
    assert p.escr and p.key_owners == (None, None)
    assert p.prefetch == (mine, theirs)
    params = grants.session_params(p, (None, None), {mine: "k"})
    assert params["relay_auth_aes_key"] == p.auth.aes_key and params["prefetched"] == {mine: "k"}
    assert grants.session_params(p, (None, None), {})["prefetched"] is None
    SessionSpec(**params)


def test_half_authenticated_payload_request_asks_one_key() -> None:
    g, value = r1(auth_b=False)
    assert plan(g, value).key_owners == (A, None)


def test_refuse_payload_auth() -> None:
    strict = grants.Policy(ip="h", refuse_payload_auth=True)
    for kw in ({}, escr_fields()):
        g, value = r1(auth_b=False, **kw)
        with pytest.raises(rq.Refusal) as e:
            plan(g, value, strict)
        assert e.value.kind == rq.DENIED and "--refuse-payload-auth" in e.value.reason
    g, value = r1(**escr_fields())
    assert plan(g, value, strict).escr


def test_only443_rules_and_answer() -> None:
    g, value = r1(**escr_fields(only443=True))
    with pytest.raises(rq.Refusal) as e:
        plan(g, value)
    assert e.value.reason == NOT_BOUND_443 == grants.NOT_BOUND_443
    on443 = grants.Policy(ip="h", single_port=True, single_advertise=8443)
    g2, value2 = r1(only443=True)
    with pytest.raises(rq.Refusal, match="must use escr on both sides"):
        plan(g2, value2, on443)
    p = plan(g, value, on443)
    ans = grants.answer(p, {"port_a": 5000, "port_b": 5001, "rvd_nonce": "n" * 20}, on443)
    assert (ans.reply.port_a, ans.reply.port_b) == (8443, 8443)


def test_an_unknown_relay_auth_mode_is_invalid() -> None:
    g, value = r1()
    bad = json.dumps({**json.loads(value), "relayAuthMode": "magic"})
    with pytest.raises(rq.Refusal) as e:
        plan(g, bad)
    assert e.value.kind == rq.INVALID and e.value.session_id == g.request.session_id


def test_mutex_only_for_clients_that_take_one_answer() -> None:
    assert not grants.needs_mutex(r1()[0])  # multipleAcksOk
    assert grants.needs_mutex(r1(multiple_acks_ok=False)[0])
    adm = rq.Admission(managers=None, require_auth=False, max_sessions=10, per_requester=10)
    assert not grants.needs_mutex(adm.check("legacy", str(uuid.uuid4()), A))  # R1L: never


def test_answer_forms_and_redaction() -> None:
    made = {"port_a": 5000, "port_b": 5001, "rvd_nonce": "abcdefghijklmnop"}
    g, value = r1()  # sendJsonResponse
    ans = grants.answer(plan(g, value), made, POLICY)
    assert json.loads(ans.value) == {"address": "10.1.2.3", "portA": 5000, "portB": 5001,
                                     "rvdNonce": "abcdefghijklmnop"}
    assert ans.shown == "10.1.2.3,5000,5001,abcd..." and "efgh" not in ans.shown
    g, value = r1(send_json_response=False)
    csv = grants.answer(plan(g, value), made, POLICY).value
    assert csv == "10.1.2.3,5000,5001,abcdefghijklmnop"
    forced = grants.Policy(ip="10.1.2.3", json_response=True)
    assert grants.answer(plan(g, value), made, forced).value.startswith("{")
    adm = rq.Admission(managers=None, require_auth=False, max_sessions=10, per_requester=10)
    legacy = adm.check("legacy", str(uuid.uuid4()), A)
    ans = grants.answer(plan(legacy, None), made, forced)  # legacy: CSV, no nonce, ever
    assert ans.value == ans.shown == "10.1.2.3,5000,5001,null"


def test_refusals_when_a_look_up_or_the_worker_fails() -> None:
    g, value = r1()
    p = plan(g, value)
    r = grants.key_refused(p, B, OSError("down"))
    assert (r.kind, r.session_id) == (rq.ERROR, g.request.session_id) and "@dev: down" in r.reason
    assert grants.create_refused(p, OSError(), ports_exhausted=True).kind == rq.CAPACITY
    r = grants.create_refused(p, RuntimeError("worker gone"), ports_exhausted=False)
    assert r.kind == rq.ERROR and "(worker gone)" in r.reason


def test_redact() -> None:
    assert grants.redact(None) == "null"
    assert grants.redact("short") == "..."
    assert grants.redact("0123456789") == "0123..."

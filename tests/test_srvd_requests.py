"""srvd request decisions without I/O: classification, manager and sender checks, ledger."""

from __future__ import annotations

import json
import uuid

import pytest

from noports.session.wire import relay_request
from noports.srvd import requests as rq


def req(sid: str, a: str = "@alice", b: str = "@dev", auth: bool = True, **extra) -> str:
    p = relay_request(
        session_id=sid,
        atsign_a=a,
        atsign_b=b,
        auth_a=auth,
        auth_b=auth,
        client_nonce="2024-10-24T03:39:10.123456",
    )
    p.update(extra)
    return json.dumps(p)


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        ("mydev.request_ports.sshrvd", "json"),
        ("MyDev.Request_Ports.sshrvd", "json"),
        ("mydev.sshrvd", "legacy"),
        ("auth_modes.sshrvd", None),
        ("discover_request.sshrvd", "discover"),
        ("x.discover_request.sshrvd", None),
        ("logging.0b7c.sessions.sshrvd", "sessions"),
        ("x.logging.0b7c.sessions.sshrvd", None),
        ("x.y.sshrvd", None),
        ("sshrvd", None),
        ("mydev.sshnp", None),
        ("nack.123.sshrvd", None),
    ],
)
def test_classify(key, kind):
    assert rq.classify(key) == kind


def test_admission_order_of_checks_and_ledger():
    adm = rq.Admission(
        managers=frozenset({"@alice", "@bob"}), require_auth=False, max_sessions=3, per_requester=2
    )
    s1, s2, s3, s4 = (str(uuid.uuid4()) for _ in range(4))
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", req(s1, a="@alice"), "@mallory")  # manager = sender, not atSignA
    assert e.value.kind == rq.DENIED and e.value.session_id == s1
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", req(s1, a="@alice"), "@bob")  # atSignA spoofing
    assert e.value.kind == rq.DENIED and "not the requester" in e.value.reason
    g = adm.check("json", req(s1, extra_field=[1, 2]), "@alice")
    assert g.session_id == s1 and g.atsign_b == "@dev"
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", req(s1.upper()), "@alice")  # same id in another case
    assert e.value.kind == rq.DUPLICATE and e.value.session_id == s1.upper()  # nack as asked
    adm.check("legacy", s2, "@alice")
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", req(s3), "@alice")
    assert e.value.kind == rq.QUOTA
    adm.check("json", req(s3, a="@bob"), "@bob")
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", req(s4, a="@bob"), "@bob")
    assert e.value.kind == rq.CAPACITY
    assert adm.release(s1) and not adm.release(s1)
    adm.draining = True
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", req(s4, a="@bob"), "@bob")
    assert e.value.kind == rq.SHUTDOWN


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        "{}",
        req("not-a-uuid"),
        req(str(uuid.uuid4()), a="bad atsign"),
        json.dumps(
            {
                "sessionId": str(uuid.uuid4()),
                "atSignA": "@alice",
                "atSignB": "@dev",
                "authenticateSocketA": "yes",
                "clientNonce": "n",
            }
        ),
    ],
)
def test_invalid_requests_are_refused(value):
    adm = rq.Admission(managers=None, require_auth=False, max_sessions=10, per_requester=10)
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", value, "@alice")
    assert e.value.kind == rq.INVALID
    assert not adm.live


def test_require_auth_refuses_downgrades():
    adm = rq.Admission(managers=None, require_auth=True, max_sessions=10, per_requester=10)
    for kind, value in (
        ("legacy", str(uuid.uuid4())),
        ("json", req(str(uuid.uuid4()), auth=False)),
    ):
        with pytest.raises(rq.Refusal) as e:
            adm.check(kind, value, "@alice")
        assert e.value.kind == rq.DENIED
    assert adm.check("json", req(str(uuid.uuid4())), "@alice")


def test_discover_reply_official_form_plus_load():
    v = rq.discover_reply(
        '{"items":["ipaddr","port","colour"]}', ip="10.1.2.3", port=None, sessions=3, max_sessions=9
    )
    assert v == '{"ipaddr":"10.1.2.3","port":null,"sessions":3,"maxSessions":9}'
    v = rq.discover_reply('{"items":["port"]}', ip="h", port=443, sessions=0, max_sessions=1)
    assert json.loads(v)["port"] == 443 and "ipaddr" not in json.loads(v)
    for bad in (None, "", "x", "[]", '{"items":"ipaddr"}', '{"other":1}'):
        assert rq.discover_reply(bad, ip="h", port=None, sessions=0, max_sessions=1) is None


def test_nack_only_when_multiple_acks_ok():
    adm = rq.Admission(
        managers=frozenset({"@ok"}), require_auth=False, max_sessions=5, per_requester=5
    )
    sid = str(uuid.uuid4())
    new = req(sid, "@bad")
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", new, "@bad")
    assert e.value.nack and e.value.session_id == sid
    old = json.dumps({k: v for k, v in json.loads(new).items() if k != "multipleAcksOk"})
    with pytest.raises(rq.Refusal) as e:
        adm.check("json", old, "@bad")
    assert not e.value.nack  # an old client gets silence, as from the official relay

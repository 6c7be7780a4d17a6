"""The client's session set-up driven in memory (no sockets, no event loop, a hand-turned clock).

A small daemon and relay stand in for the peers, built from the same wire functions the real
ones use (``wire.parse_request``, ``wire.success_response``, the signed envelope), so a
request the handshake builds must parse as a daemon reads it, and the daemon's answer must
verify and unwrap on our side. The real peers over the network: test_npt_e2e,
test_sshnp_e2e, test_escr_e2e, test_redundant_instances.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from noports.crypto import escr, rsa
from noports.crypto.envelope import envelope_json
from noports.crypto.stream import CtrKeys
from noports.errors import LocalError, ProtocolError, SignatureError
from noports.session import wire
from noports.session.errors import (
    DaemonFailedError,
    DaemonRefusedError,
    DowngradeRefusedError,
    EscrUnsupportedError,
    FeatureRefusedError,
    NoAnswerError,
    RelayRefusedError,
)
from noports.session.features import DaemonFeature, ping_response_json
from noports.session.handshake import (
    NACK_GRACE,
    NEED_DATA,
    ClientHandshake,
    NeedKey,
    Notify,
    PingAnswered,
    RelayAnswered,
    SessionSpec,
    State,
    Verified,
)
from noports.tunnel.keys import AeadKeys

ME = "@alice"
DAEMON = "@dev"
RELAY = "@relay"
URI = "public:_apsk.primary.a.__e@alice"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def keys() -> dict[str, rsa.PrivateKey]:
    """RSA keys are slow to make: one set for the module."""
    return {n: rsa.generate() for n in ("daemon", "other", "eph", "me")}


def spec(**kw: Any) -> SessionSpec:
    kw.setdefault("required", [DaemonFeature.SR_AUTH])
    kw.setdefault("relay", RELAY)
    return SessionSpec(kind=kw.pop("kind", "npt"), daemon=DAEMON, device="box", **kw)


def start(s: SessionSpec, clock: Clock | None = None) -> tuple[ClientHandshake, list[Notify]]:
    hs = ClientHandshake(s, me=ME, my_uri=URI, clock=clock or Clock())
    out = hs.opening()
    hs.opening_sent()
    return hs, out


def ping(escr_ok: bool = True, aead: bool = True) -> str:
    return ping_response_json(
        device="box", accepts_public_keys=True, allowed_services=[], escr=escr_ok, aead=aead
    )


def relay_grant(hs: ClientHandshake, nonce: str | None = "rvd-nonce") -> None:
    reply = wire.RelayReply("127.0.0.1", 4001, 4002, nonce)
    hs.receive(RELAY, f"{hs.sid}.sshrvd", wire.relay_reply(reply, json_form=True))


def answer(hs: ClientHandshake, request: dict[str, Any], signer: rsa.PrivateKey, *,
           aead: bool = True, twin: bool = True, **over: Any) -> None:
    """The daemon's side: read the request as sshnpd does and answer it, signed."""
    req = wire.parse_request(hs.spec.kind, json.loads(json.dumps(request)))
    keys = wire.SessionKeys.generate(encrypt=req.encrypt, twin=twin and req.twin_keys,
                                     aead=aead and req.aead)
    body = wire.success_response(req.session_id, keys, req.ephemeral_pk,
                                 ssh=hs.spec.kind == "ssh", kex_pk=req.kex_pk if aead else None)
    body.update(over)
    hs.receive(DAEMON, f"{hs.sid}.box.sshnp", envelope_json(body, signer))


def to_request(hs: ClientHandshake, info_text: str | None = None, eph: Any = None) -> Any:
    """Relay grant and ping answered; returns the signed request the driver would send."""
    relay_grant(hs)
    if hs.check_features_needed:
        hs.receive(DAEMON, "heartbeat.box.sshnp", info_text or ping())
    assert isinstance(hs.next_event(), RelayAnswered)
    ev = hs.next_event()
    assert isinstance(ev, PingAnswered)
    hs.check_features(ev.info)
    return hs.request(eph.public_key() if eph is not None else None)


def verify(hs: ClientHandshake, key: rsa.PublicKey) -> dict[str, Any]:
    ev = hs.next_event()
    assert ev == NeedKey(DAEMON)
    done = hs.key_received(key)
    assert isinstance(done, Verified)
    return done.payload


def test_grant_rsa_escr_aead(keys) -> None:
    hs, out = start(spec())
    # the ping and R1 go out together; R1 carries the escr fields and our key URI to prefetch
    assert [(n.to, n.key, n.namespace) for n in out] == [
        (DAEMON, "ping.box", "sshnp"),
        (RELAY, "box.request_ports", "sshrvd"),
    ]
    r1 = json.loads(out[1].value)
    assert r1["sessionId"] == hs.sid and r1["atSignA"] == ME and r1["atSignB"] == DAEMON
    assert r1["relayAuthMode"] == "escr" and r1["relayAuthAesKey"] == hs.relay_aes
    assert r1["preFetch"] == [URI] and r1["multipleAcksOk"] is True
    assert hs.next_event() is NEED_DATA
    assert hs.wants_ephemeral_rsa and hs.kex is None
    req = to_request(hs, eph=keys["eph"])
    assert (req.to, req.key, req.namespace) == (DAEMON, "npt_request.box", "sshnp")
    assert req.payload["relayAuthMode"] == "escr" and req.payload["rvdPort"] == 4002
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"])
    payload = verify(hs, keys["daemon"].public_key())
    crypto = hs.crypto(payload, keys["eph"])
    assert isinstance(crypto, AeadKeys)
    auth = hs.relay_auth(keys["me"], keys["me"])
    assert isinstance(auth, escr.EscrAuth) and auth.session_id == hs.sid
    assert hs.state is State.DONE


def test_grant_payload_mode_ssh_twin_ctr(keys) -> None:
    """An official-era daemon: no AEAD in the answer, so twin CTR keys; payload relay auth."""
    hs, out = start(spec(kind="ssh", relay_auth_mode="payload"))
    assert hs.relay_aes is None and json.loads(out[1].value)["relayAuthMode"] == "payload"
    req = to_request(hs, ping(escr_ok=False, aead=False), eph=keys["eph"])
    assert req.key == "ssh_request.box" and req.payload["relayAuthMode"] == "payload"
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"], aead=False)
    crypto = hs.crypto(verify(hs, keys["daemon"].public_key()), keys["eph"])
    assert isinstance(crypto, CtrKeys) and crypto.key_d2c is not None
    auth = hs.relay_auth(keys["me"], keys["me"])
    assert isinstance(auth, str) and hs.sid in auth


def test_x25519_when_aead_is_required(keys) -> None:
    hs, _ = start(spec(require_aead=True))
    assert hs.kex is not None and not hs.wants_ephemeral_rsa
    req = to_request(hs)
    assert req.payload["noportsKex"] == "x25519" and req.payload["clientEphemeralPK"] is None
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"])
    crypto = hs.crypto(verify(hs, keys["daemon"].public_key()), None)
    assert isinstance(crypto, AeadKeys)


def test_required_aead_refuses_a_daemon_without_it(keys) -> None:
    hs, _ = start(spec(require_aead=True))
    with pytest.raises(FeatureRefusedError):
        to_request(hs, ping(aead=False))
    # a daemon that claims the feature but answers without the X25519 exchange
    hs, _ = start(spec(require_aead=True))
    req = to_request(hs)
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"], aead=False)
    payload = verify(hs, keys["daemon"].public_key())
    with pytest.raises(DowngradeRefusedError):
        hs.crypto(payload, None)


def test_escr_needs_the_daemon_feature() -> None:
    hs, _ = start(spec())
    with pytest.raises(EscrUnsupportedError):
        to_request(hs, ping(escr_ok=False))


def test_no_feature_needed_means_no_ping(keys) -> None:
    """sshnp --no-ad --no-ac --no-et: the legacy relay request R1L and no ping."""
    s = spec(required=[], auth_client=False, auth_device=False, encrypt=False)
    hs, out = start(s)
    assert [(n.to, n.key, n.value, n.namespace) for n in out] == [
        (RELAY, "box", hs.sid, "sshrvd")
    ]
    relay_grant(hs, nonce=None)
    assert isinstance(hs.next_event(), RelayAnswered)
    assert hs.next_event() == PingAnswered(None)
    req = hs.request(None)
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"])
    assert hs.crypto(verify(hs, keys["daemon"].public_key()), None) is None
    assert hs.relay_auth(keys["me"], keys["me"]) is None


def test_a_nack_stands_after_the_grace_period() -> None:
    clock = Clock()
    hs, _ = start(spec(), clock)
    hs.receive(RELAY, f"nack.{hs.sid}", "no  free\nports")
    assert hs.next_event() is NEED_DATA
    assert hs.deadline() == clock.now + NACK_GRACE
    clock.now += NACK_GRACE
    with pytest.raises(RelayRefusedError, match="refused the session: no free ports"):
        hs.next_event()
    relay_grant(hs)  # too late: the refusal stands
    with pytest.raises(RelayRefusedError):
        hs.next_event()


def test_a_grant_from_another_instance_within_the_grace_wins() -> None:
    clock = Clock()
    hs, _ = start(spec(), clock)
    hs.receive(RELAY, f"nack.{hs.sid}", "busy")
    clock.now += NACK_GRACE / 2
    relay_grant(hs)
    ev = hs.next_event()
    assert isinstance(ev, RelayAnswered) and ev.reply.port_a == 4001
    clock.now += 10 * NACK_GRACE
    hs.receive(DAEMON, "heartbeat.box.sshnp", ping())
    assert isinstance(hs.next_event(), PingAnswered)


def test_a_grant_that_arrives_after_the_grace_loses() -> None:
    """The driver may call next_event late: what arrived after the nack stood does not count."""
    clock = Clock()
    hs, _ = start(spec(), clock)
    hs.receive(RELAY, f"nack.{hs.sid}", "busy")
    clock.now += NACK_GRACE + 0.1
    relay_grant(hs)
    with pytest.raises(RelayRefusedError):
        hs.next_event()


def test_a_nack_from_someone_else_is_ignored() -> None:
    clock = Clock()
    hs, _ = start(spec(), clock)
    hs.receive("@mallory", f"nack.{hs.sid}", "no")
    hs.receive(RELAY, f"nack.{uuid.uuid4()}", "another session")
    clock.now += 5
    assert hs.next_event() is NEED_DATA


def test_timeouts_relay_then_ping_then_daemon(keys) -> None:
    clock = Clock()
    s = spec(relay_timeout=5, ping_timeout=3, daemon_timeout=7)
    hs, _ = start(s, clock)
    assert hs.deadline() == clock.now + 5
    clock.now += 6  # both passed: the relay's failure is the one reported, as before
    with pytest.raises(NoAnswerError, match="Connection timeout to srvd @relay"):
        hs.next_event()

    hs, _ = start(s, clock)
    relay_grant(hs)
    assert isinstance(hs.next_event(), RelayAnswered)
    clock.now += 3
    with pytest.raises(NoAnswerError, match="no answer from device 'box' of @dev within 3 s"):
        hs.next_event()

    hs, _ = start(s, clock)
    req = to_request(hs, eph=keys["eph"])
    hs.request_sent()
    assert hs.deadline() == clock.now + 7
    clock.now += 6.9
    assert hs.next_event() is NEED_DATA
    clock.now += 0.1
    with pytest.raises(NoAnswerError, match="No response from the device daemon within 7 s"):
        hs.next_event()
    answer(hs, req.payload, keys["daemon"])  # too late
    with pytest.raises(NoAnswerError):
        hs.next_event()


def test_the_monitor_ending_fails_what_is_awaited() -> None:
    hs, _ = start(spec())
    hs.monitor_ended(ConnectionResetError("gone"))
    with pytest.raises(ConnectionResetError):
        hs.next_event()


def test_answers_before_the_wait_count() -> None:
    """A reply that arrives while the opening is still being sent is kept."""
    hs = ClientHandshake(spec(), me=ME, my_uri=URI, clock=Clock())
    hs.opening()
    relay_grant(hs)
    hs.receive(DAEMON, "heartbeat.BOX.sshnp", ping())
    hs.opening_sent()
    assert isinstance(hs.next_event(), RelayAnswered)
    assert isinstance(hs.next_event(), PingAnswered)


def test_bad_signature_refetches_the_key_once(keys) -> None:
    hs, _ = start(spec())
    req = to_request(hs, eph=keys["eph"])
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"])
    assert hs.next_event() == NeedKey(DAEMON)
    stale = keys["other"].public_key()
    assert hs.key_received(stale) == NeedKey(DAEMON, refresh=True)
    # the daemon re-onboarded: the fresh key verifies
    assert isinstance(hs.key_received(keys["daemon"].public_key()), Verified)


def test_bad_signature_with_the_same_key_again_fails(keys) -> None:
    hs, _ = start(spec())
    req = to_request(hs, eph=keys["eph"])
    hs.request_sent()
    answer(hs, req.payload, keys["other"])  # signed by someone else
    assert hs.next_event() == NeedKey(DAEMON)
    key = keys["daemon"].public_key()
    assert hs.key_received(key) == NeedKey(DAEMON, refresh=True)
    with pytest.raises(SignatureError, match="response signature did not verify"):
        hs.key_received(rsa.public_from_b64(rsa.public_to_b64(key)))


def test_daemon_errors_and_foreign_answers(keys) -> None:
    for text, err in (
        ("Permission denied: not in permitOpen", DaemonRefusedError),
        ("failed to start the tunnel end", DaemonFailedError),
    ):
        hs, _ = start(spec())
        to_request(hs, eph=keys["eph"])
        hs.request_sent()
        hs.receive(DAEMON, f"{hs.sid}.box.sshnp", text)
        with pytest.raises(err):
            hs.next_event()
    hs, _ = start(spec())
    req = to_request(hs, eph=keys["eph"])
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"], sessionId=str(uuid.uuid4()))
    hs.next_event()
    with pytest.raises(ProtocolError, match="for another session"):
        hs.key_received(keys["daemon"].public_key())
    hs, _ = start(spec())
    req = to_request(hs, eph=keys["eph"])
    hs.request_sent()
    answer(hs, req.payload, keys["daemon"], status="refused: signature")
    hs.next_event()
    with pytest.raises(DaemonRefusedError):
        hs.key_received(keys["daemon"].public_key())
    hs, _ = start(spec())
    to_request(hs, eph=keys["eph"])
    hs.request_sent()
    hs.receive(DAEMON, f"{hs.sid}.box.sshnp", "{not json")
    hs.next_event()
    with pytest.raises(ProtocolError, match="malformed"):
        hs.key_received(keys["daemon"].public_key())


def test_steps_out_of_order_are_local_errors() -> None:
    hs = ClientHandshake(spec(), me=ME, my_uri=URI, clock=Clock())
    with pytest.raises(LocalError):
        hs.request(None)
    with pytest.raises(LocalError):
        hs.next_event()
    with pytest.raises(LocalError):
        ClientHandshake(spec(relay=""), me=ME, my_uri=URI, clock=Clock())


def test_public_key_share_and_username() -> None:
    hs, _ = start(spec(kind="ssh", public_key="ssh-ed25519 AAAA"))
    n = hs.share_public_key()
    assert n is not None and (n.to, n.key, n.value) == (DAEMON, "sshpublickey.box",
                                                        "ssh-ed25519 AAAA")
    assert ClientHandshake.check_username(" bob\n") == "bob"
    with pytest.raises(ProtocolError):
        ClientHandshake.check_username("bo b")

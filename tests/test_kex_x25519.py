"""X25519 in place of the RSA-2048 ephemeral key between our own programs (wire level).

The end-to-end path (npt/sshnp ``--require-aead`` against our sshnpd, and against a legacy
daemon that claims the feature) runs in test_npt_e2e, test_sshnp_e2e and
test_npt_legacy_daemon."""

from __future__ import annotations

import json
import uuid

import pytest

from noports.crypto import ephemeral as eph
from noports.errors import ProtocolError
from noports.session import wire


def _request(kex_pk: bytes | None, **kw: object) -> dict:
    return wire.npt_request(
        session_id=kw.pop("sid", str(uuid.uuid4())),  # type: ignore[arg-type]
        rvd_host="127.0.0.1",
        rvd_port=4000,
        requested_port=22,
        requested_host="localhost",
        client_nonce="n",
        rvd_nonce="r",
        ephemeral_pk=None,
        aead=True,
        twin_keys=True,
        kex_pk=kex_pk,
    )


@pytest.mark.parametrize("twin", [False, True])
def test_round_trip_without_rsa(twin: bool) -> None:
    priv = eph.x25519_private()
    sid = str(uuid.uuid4())
    p = json.loads(json.dumps(_request(eph.x25519_public_raw(priv), sid=sid)))
    assert p["clientEphemeralPK"] is None and p["noportsKex"] == "x25519"
    req = wire.parse_request("npt", p)
    assert req.encrypt and req.ephemeral_pk is None and req.kex_pk is not None
    keys = wire.SessionKeys.generate(encrypt=True, twin=twin, aead=True)
    resp = wire.success_response(sid, keys, None, ssh=False, kex_pk=req.kex_pk)
    resp = json.loads(json.dumps(resp))
    assert resp["noportsKexPK"] != p["noportsKexPK"]
    # nothing in clear: every key field is sealed
    raw = keys.raw_fields()
    for name, value in raw.items():
        assert wire.b64e(value) not in json.dumps(resp), name
    got = wire.kex_keys_from_response(resp, priv, sid)
    assert got == keys


def test_a_tampered_field_or_another_session_fails() -> None:
    priv = eph.x25519_private()
    sid = str(uuid.uuid4())
    req = wire.parse_request("npt", _request(eph.x25519_public_raw(priv), sid=sid))
    keys = wire.SessionKeys.generate(encrypt=True, twin=False, aead=True)
    resp = wire.success_response(sid, keys, None, ssh=False, kex_pk=req.kex_pk)
    with pytest.raises(ProtocolError, match="authenticate"):
        wire.kex_keys_from_response(resp, priv, str(uuid.uuid4()))
    swapped = dict(resp, sessionAESKey=resp["noportsAeadSecret"])  # sealed under another name
    with pytest.raises(ProtocolError, match="authenticate"):
        wire.kex_keys_from_response(swapped, priv, sid)
    other = eph.x25519_private()  # not the key the daemon answered
    with pytest.raises(ProtocolError):
        wire.kex_keys_from_response(resp, other, sid)
    with pytest.raises(ProtocolError, match="noportsKexPK"):
        wire.kex_keys_from_response(
            {k: v for k, v in resp.items() if k != "noportsKexPK"}, priv, sid
        )


def test_requests_need_a_key_and_a_valid_offer() -> None:
    p = _request(None)
    with pytest.raises(ProtocolError, match="clientEphemeralPK"):
        wire.parse_request("npt", p)
    p = _request(b"\x01" * 32)
    p["noportsKexPK"] = "not base64!"
    with pytest.raises(ProtocolError, match="noportsKexPK"):
        wire.parse_request("npt", p)
    p["noportsKexPK"] = wire.b64e(b"\x01" * 31)
    with pytest.raises(ProtocolError, match="noportsKexPK"):
        wire.parse_request("npt", p)
    # an unknown exchange name is ignored (as an official daemon ignores the offer)
    p = _request(b"\x01" * 32)
    p["noportsKex"] = "something-else"
    with pytest.raises(ProtocolError, match="clientEphemeralPK"):
        wire.parse_request("npt", p)


def test_low_order_point_is_refused() -> None:
    priv = eph.x25519_private()
    with pytest.raises(ValueError):
        eph.x25519_field_key(priv, bytes(32), "sid", client=False)

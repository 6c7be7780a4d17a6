"""Signed envelopes and the relay auth line (spec noports-protocol 1.2 and 4.4).

The signature covers ``canonical_json(payload)``. Verifiers never trust the received bytes:
they parse the envelope and re-encode the *whole received payload* (unknown fields, nulls
and key order kept), which is what the official Dart and C verifiers do.
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ..errors import ProtocolError, SignatureError
from . import rsa
from .encoding import b64d, canonical_bytes, canonical_json, loads_object

HASHING_ALGOS = ("sha256", "sha512", "md5")
SIGNING_ALGOS = ("ecc_secp256r1", "rsa2048", "rsa4096")


def sign_envelope(payload: dict[str, Any], key: rsa.PrivateKey) -> dict[str, Any]:
    """``{"payload","signature","hashingAlgo","signingAlgo"}`` in the official key order."""
    return {
        "payload": payload,
        "signature": rsa.sign(key, canonical_bytes(payload)),
        "hashingAlgo": "sha256",
        "signingAlgo": "rsa2048",
    }


def envelope_json(payload: dict[str, Any], key: rsa.PrivateKey) -> str:
    return canonical_json(sign_envelope(payload, key))


def parse_envelope(text: str | bytes | dict[str, Any]) -> dict[str, Any]:
    """Structural checks only (no signature): returns the envelope dict."""
    env = text if isinstance(text, dict) else loads_object(text, what="signed envelope")
    payload = env.get("payload")
    if not isinstance(payload, dict):
        raise ProtocolError("signed envelope has no payload object")
    for field in ("signature", "hashingAlgo", "signingAlgo"):
        if not isinstance(env.get(field), str):
            raise ProtocolError(f"signed envelope has no {field} string")
    if env["hashingAlgo"] not in HASHING_ALGOS:
        raise ProtocolError(f"unknown hashingAlgo {env['hashingAlgo']!r}")
    if env["signingAlgo"] not in SIGNING_ALGOS:
        raise ProtocolError(f"unknown signingAlgo {env['signingAlgo']!r}")
    return env


def verify_envelope(text: str | bytes | dict[str, Any], key: rsa.PublicKey) -> dict[str, Any]:
    """Verify and return the payload. Raises ProtocolError or SignatureError."""
    env = parse_envelope(text)
    if env["hashingAlgo"] != "sha256" or env["signingAlgo"] != "rsa2048":
        raise SignatureError("only sha256 with rsa2048 signatures are accepted")
    try:
        data = canonical_bytes(env["payload"])
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc
    rsa.verify(key, data, env["signature"])
    return env["payload"]


# ---------------------------------------------------------------------------------------
# Relay auth line ("payload" relayAuthMode)


def relay_auth_payload(session_id: str, client_nonce: str, rvd_nonce: str) -> dict[str, Any]:
    return {"sessionId": session_id, "clientNonce": client_nonce, "rvdNonce": rvd_nonce}


def relay_auth_line(session_id: str, client_nonce: str, rvd_nonce: str, key: rsa.PrivateKey) -> str:
    """The line (without its newline) a tunnel end sends first on every relay socket."""
    return envelope_json(relay_auth_payload(session_id, client_nonce, rvd_nonce), key)


def relay_expected_bytes(session_id: str, client_nonce: str, rvd_nonce: str) -> bytes:
    """What the relay verifies signatures against: its own encoding, not the peer's."""
    return canonical_bytes(relay_auth_payload(session_id, client_nonce, rvd_nonce))


_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def _loads_line(line: bytes) -> Any:
    """``json.loads(line)`` without its per-call encoding sniff for the usual UTF-8 line."""
    if line[:1] == b"{" and b"\x00" not in line[:4]:
        # What json.detect_encoding answers for such bytes: plain UTF-8 (no BOM, no NULs).
        return json.loads(line.decode("utf-8", "surrogatepass"))
    return json.loads(line)


def verify_relay_auth_line(
    line: bytes, expected: bytes, rvd_nonce: str, key: rsa.PublicKey
) -> None:
    """Check one auth line (no newline) as srvd does. Raises ProtocolError/SignatureError.

    The same checks, in the same order, as ``parse_envelope`` then ``rsa.verify``: one JSON
    parse, no re-encoding (``expected`` is the relay's own encoding), and the padding and
    hash objects made once per process instead of per line.
    """
    try:
        env = _loads_line(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("signed envelope is not valid JSON") from exc
    if not isinstance(env, dict):
        raise ProtocolError("signed envelope is not a JSON object")
    payload = env.get("payload")
    sig_b64 = env.get("signature")
    hashing = env.get("hashingAlgo")
    signing = env.get("signingAlgo")
    if (
        not isinstance(payload, dict)
        or not isinstance(sig_b64, str)
        or not isinstance(hashing, str)
        or not isinstance(signing, str)
        or hashing not in HASHING_ALGOS
        or signing not in SIGNING_ALGOS
    ):
        parse_envelope(env)  # raises the precise ProtocolError
        raise ProtocolError("malformed envelope")  # not reached: parse_envelope raised
    if payload.get("rvdNonce") != rvd_nonce:
        raise SignatureError("rvdNonce does not match this session")
    if hashing != "sha256" or signing != "rsa2048":
        raise SignatureError("only sha256 with rsa2048 signatures are accepted")
    try:
        sig = b64d(sig_b64, what="signature")
    except ProtocolError as exc:
        raise SignatureError(str(exc)) from exc
    try:
        key.verify(sig, expected, _PKCS1, _SHA256)
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc

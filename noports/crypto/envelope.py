"""Signed envelopes and the relay auth line (spec noports-protocol 1.2 and 4.4).

The signature covers ``canonical_json(payload)``. Verifiers never trust the received bytes:
they parse the envelope and re-encode the *whole received payload* (unknown fields, nulls
and key order kept), which is what the official Dart and C verifiers do.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from typing import Any

from cryptography.exceptions import InvalidSignature
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
# The DER DigestInfo header of a SHA-256 digest (RFC 8017 9.2 note 1): what an RSASSA-PKCS1-v1_5
# signature over SHA-256 holds after its padding, followed by the 32-byte digest.
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")


def sha256_digest_info(data: bytes) -> bytes:
    """The exact bytes a valid RSASSA-PKCS1-v1_5/SHA-256 signature over ``data`` recovers to."""
    return SHA256_DIGEST_INFO + hashlib.sha256(data).digest()


def check_pkcs1_sha256(key: rsa.PublicKey, sig: bytes, digest_info: bytes) -> None:
    """``key.verify(sig, data, PKCS1v15(), SHA256())`` for ``digest_info =
    sha256_digest_info(data)``, accepting and refusing exactly the same signatures.

    OpenSSL's PKCS#1 v1.5 verify (``ossl_rsa_verify``) checks the signature length, applies
    the public key, checks the type-1 padding, then compares the whole recovered DigestInfo
    with its own encoding. ``recover_data_from_signature`` with no algorithm does the same
    public operation and padding check, and the comparison happens here (the length check
    too: the recover path does not make it). Half the cost in OpenSSL 3: no digest fetch
    and no per-call hashing set-up (the digest is the caller's, often made once per session).
    Raises SignatureError.
    """
    if len(sig) != (key.key_size + 7) // 8:
        raise SignatureError("signature does not verify")
    try:
        recovered = key.recover_data_from_signature(sig, _PKCS1, None)
    except InvalidSignature:
        raise SignatureError("signature does not verify") from None
    if recovered != digest_info:
        raise SignatureError("signature does not verify")


def loads_utf8(line: bytes) -> Any:
    """``json.loads(line)`` without its per-call encoding sniff for the usual UTF-8 object."""
    if line[:1] == b"{" and b"\x00" not in line[:4]:
        # What json.detect_encoding answers for such bytes: plain UTF-8 (no BOM, no NULs).
        return json.loads(line.decode("utf-8", "surrogatepass"))
    return json.loads(line)


def verify_relay_auth_line(
    line: bytes, expected: bytes, rvd_nonce: str, key: rsa.PublicKey,
    digest_info: bytes | None = None,
) -> None:
    """Check one auth line (no newline) as srvd does. Raises ProtocolError/SignatureError.

    The same checks, in the same order, as ``parse_envelope`` then ``rsa.verify``: one JSON
    parse, no re-encoding (``expected`` is the relay's own encoding; ``digest_info``, when
    given, is ``sha256_digest_info(expected)``), and the signature checked by
    ``check_pkcs1_sha256``.
    """
    try:
        env = loads_utf8(line)
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
    check_pkcs1_sha256(key, sig, digest_info or sha256_digest_info(expected))


if sys.version_info >= (3, 11):

    def b64_exact(text: bytes) -> bytes | None:
        """Canonical base64 only (None otherwise): what ``b64d`` decodes to, when it is."""
        try:
            return binascii.a2b_base64(text, strict_mode=True)
        except binascii.Error:
            return None

else:  # pragma: no cover - Python 3.10 has no strict mode: b64d's own rule

    def b64_exact(text: bytes) -> bytes | None:
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return None


# What follows the signature in a line spelled as our tunnel ends and the official Dart and C
# clients spell it (``{"payload":...,"signature":...,"hashingAlgo":...,"signingAlgo":...}``).
_LINE_TAIL = b'","hashingAlgo":"sha256","signingAlgo":"rsa2048"}'


class RelayLineCheck:
    """One session's auth-line check, with everything per session computed once.

    ``verify(line, key)`` accepts and refuses exactly what ``verify_relay_auth_line`` does,
    raising the same exceptions. A line spelled exactly as the relay would spell it (its own
    compact encoding of the expected payload, then a canonical base64 signature, then the
    sha256/rsa2048 names) needs no JSON parse: such bytes can only parse to that payload,
    that signature and those names, so the checks before the signature all pass, and the
    signature is checked against the DigestInfo made once here. Any other spelling (spaces,
    another key order, escapes, extra fields, a non-canonical base64) takes the full parse.
    """

    __slots__ = ("expected", "rvd_nonce", "digest_info", "_head", "_min")

    def __init__(self, session_id: str, client_nonce: str, rvd_nonce: str) -> None:
        self.expected = relay_expected_bytes(session_id, client_nonce, rvd_nonce)
        self.rvd_nonce = rvd_nonce
        self.digest_info = sha256_digest_info(self.expected)
        self._head = b'{"payload":' + self.expected + b',"signature":"'
        self._min = len(self._head) + len(_LINE_TAIL)

    def verify(self, line: bytes, key: rsa.PublicKey) -> None:
        if len(line) >= self._min and line.startswith(self._head) and line.endswith(_LINE_TAIL):
            sig = b64_exact(line[len(self._head) : -len(_LINE_TAIL)])
            if sig is not None:
                check_pkcs1_sha256(key, sig, self.digest_info)
                return
        verify_relay_auth_line(line, self.expected, self.rvd_nonce, key, self.digest_info)

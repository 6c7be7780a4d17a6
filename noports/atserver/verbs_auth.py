"""Authentication and connection-level verbs: root lookup, from, pkam, cram, info, noop.

PKAM verifies an RSA (or ECDSA P-256) PKCS#1 v1.5 signature over the exact challenge text the
server issued for this connection (``_<uuid>@alice:<uuid>``), with the key at
``privatekey:at_pkam_publickey`` or, with ``enrollmentId``, the enrollment's APKAM key, whose
state is checked first (spec 1.2). CRAM compares SHA-512(secret + challenge) in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from ..crypto.encoding import b64d
from ..errors import AtError, ProtocolError
from .parse import Command
from .reply import Reply
from .verbs_notify import flush_queued

if TYPE_CHECKING:
    from .engine import Session


def _reply(text: str, *, delay: float = 0.0, close: bool = False) -> Reply:
    return Reply(text, delay=delay, close=close)


def root_lookup(s: Session, cmd: Command) -> Reply:
    """Root directory on the shared port: ``alice`` -> ``127.0.0.1:<port>\\r\\n@``."""
    name = cmd["name"]
    eng = s.engine
    known = 0 < len(name) <= 55 and eng.store.has_atsign("@" + name)
    if known:
        return _reply(f"{eng.address}\r\n@")
    s.root_unknown += 1
    if s.root_unknown >= 3:
        return _reply("null\r\n@", close=True)
    delay = eng.config.root_unknown_delay if s.root_unknown == 2 else 0.0
    return _reply("null\r\n@", delay=delay)


def from_verb(s: Session, cmd: Command) -> Reply:
    atsign = cmd["atsign"]
    s.set_client_config(cmd.get("client_config"))
    if not s.engine.store.has_atsign(atsign):
        raise AtError.for_code("AT0401", f"{atsign} is not served here")
    flush_queued(s.engine, atsign)  # sent before this atSign was added: deliver now
    s.atsign = atsign
    s.authed = False
    s.auth_kind = s.enrollment_id = None
    s.namespaces = None
    return s.data(s.new_challenge(atsign))


def _verify(pub_b64: str, challenge: str, sig_b64: str, algo: str, hashing: str) -> bool:
    try:
        key = serialization.load_der_public_key(b64d(pub_b64.strip(), what="public key"))
        sig = b64d(sig_b64, what="signature")
    except (ValueError, ProtocolError):
        return False
    h = hashes.SHA512() if hashing == "sha512" else hashes.SHA256()
    data = challenge.encode("utf-8")
    try:
        if isinstance(key, rsa.RSAPublicKey) and algo == "rsa2048":
            key.verify(sig, data, padding.PKCS1v15(), h)
        elif isinstance(key, ec.EllipticCurvePublicKey) and algo == "ecc_secp256r1":
            key.verify(sig, data, ec.ECDSA(h))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _auth_failed(s: Session, what: str) -> Reply:
    s.authed = False
    return s.error(AtError.for_code("AT0401", f"{what} authentication failed"))


def pkam(s: Session, cmd: Command) -> Reply:
    challenge = s.take_challenge()
    if s.atsign is None or challenge is None:
        return _auth_failed(s, "pkam")
    store, now = s.engine.store, s.engine.clock()
    eid = cmd.get("enrollment_id")
    namespaces: dict[str, str] | None = None
    if eid:
        got = store.get_enrollment(s.atsign, eid)
        if got is None:
            return s.response_error("AT0028", f"enrollment_id: {eid} is expired or invalid")
        record, status, expires = got
        if expires is not None and now >= expires:
            return s.response_error("AT0028", f"enrollment_id: {eid} is expired")
        if status == "pending":
            return s.response_error("AT0026", f"enrollment_id: {eid} is pending")
        if status == "denied":
            return s.response_error("AT0025", f"enrollment_id: {eid} is denied")
        if status == "revoked":
            return s.response_error("AT0027", f"enrollment_id: {eid} is revoked")
        if status != "approved":
            return s.response_error("AT0028", f"enrollment_id: {eid} is {status}")
        pub = str(record.get("apkamPublicKey") or "")
        namespaces = dict(record.get("namespaces") or {})
    else:
        rec = store.get(s.atsign, "privatekey:at_pkam_publickey")
        if rec is None or not rec.value:
            return _auth_failed(s, "pkam")
        pub = rec.value
    if not _verify(pub, challenge, cmd["signature"], cmd["signing_algo"], cmd["hashing_algo"]):
        return _auth_failed(s, "pkam")
    s.authed = True
    s.auth_kind = "apkam" if eid else "pkam"
    s.enrollment_id = eid
    s.namespaces = namespaces
    return s.data("success")


def cram(s: Session, cmd: Command) -> Reply:
    challenge = s.take_challenge()
    if s.atsign is None or challenge is None:
        return _auth_failed(s, "cram")
    rec = s.engine.store.get(s.atsign, "privatekey:at_secret")
    if rec is None or not rec.value:
        return _auth_failed(s, "cram")
    expected = hashlib.sha512((rec.value + challenge).encode("utf-8")).hexdigest()
    if not hmac.compare_digest(expected, cmd["digest"]):
        return _auth_failed(s, "cram")
    s.authed = True
    s.auth_kind = "cram"
    s.enrollment_id = None
    s.namespaces = None
    return s.data("success")


def _words(ms: int) -> str:
    secs = ms // 1000
    d, rem = divmod(secs, 86400)
    h, rem = divmod(rem, 3600)
    m, sec = divmod(rem, 60)
    return f"{d} days {h} hours {m} minutes {sec} seconds"


def info(s: Session, cmd: Command) -> Reply:
    eng = s.engine
    up = eng.clock() - eng.started_ms
    if cmd["brief"]:
        body: dict[str, object] = {"version": eng.config.version, "uptimeAsMillis": up}
    else:
        body = {
            "version": eng.config.version,
            "uptimeAsWords": _words(up),
            "features": [{"name": "noAuthEnrollment", "status": "Beta"}],
        }
        if s.authed and s.enrollment_id:
            body["apkam_metadata"] = s.info_meta()
    return s.data(json.dumps(body, separators=(",", ":")))


def noop(s: Session, cmd: Command) -> Reply:
    ms = cmd["ms"]
    if ms > s.engine.config.noop_max_ms:
        raise AtError.for_code(
            "AT0022", f"noop duration {ms} exceeds {s.engine.config.noop_max_ms} ms"
        )
    r = s.data("ok")
    r.delay = ms / 1000.0
    return r


HANDLERS: dict[str, Callable[[Session, Command], Reply]] = {
    "root": root_lookup,
    "from": from_verb,
    "pkam": pkam,
    "cram": cram,
    "info": info,
    "noop": noop,
}

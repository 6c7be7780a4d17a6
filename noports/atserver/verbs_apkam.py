"""APKAM: enroll:*, otp:*, keys:* (spec 1.11).

Enrollment states: pending (48 h), approved, denied, revoked, and "expired" (a pending request
past its TTL or an approval past ``apkamKeysExpiryInMillis``). ``pkam:enrollmentId:`` refuses
anything but approved (verbs_auth). A CRAM-authenticated ``enroll:request`` is the first
onboarding and is auto-approved with ``__manage:rw`` and ``*:rw``; an unauthenticated one
needs a valid OTP or semi-permanent passcode, is rate limited per connection, and lands as a
self notification on ``:selfNotifications`` monitors for an approver to see.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AtError
from . import verbs_notify
from .keys import Record, apply_times, parse_key
from .parse import Command
from .reply import Reply

if TYPE_CHECKING:
    from .engine import Session

OTP_ALPHABET = "ABCDEFGHIJKLMNPQRSTUVWXYZ123456789"  # no 0 and no O
OTP_LENGTH = 6
_HOUR_MS = 3600 * 1000


def can_manage(s: Session) -> bool:
    return s.authed and (s.namespaces is None or s.namespaces.get("__manage") == "rw")


def _need_manage(s: Session) -> str:
    owner = s.require_auth()
    if not can_manage(s):
        raise AtError.for_code("AT0009", "this operation needs an enrollment with __manage:rw")
    return owner


def _put_value(s: Session, owner: str, name: str, value: str, ttl: int | None = None) -> None:
    eng = s.engine
    now = eng.clock()
    meta: dict[str, Any] = {"ttl": ttl} if ttl else {}
    expires, available, refresh = apply_times(meta, now)
    eng.store.put(owner, Record(name, value, meta, now, now, expires, available, refresh, 0, owner))
    eng.store.next_commit(owner)


def _fib(n: int) -> int:
    a, b = 1, 1
    for _ in range(max(0, n - 1)):
        a, b = b, a + b
    return a


def _store_keys(s: Session, owner: str, eid: str, p: dict[str, Any]) -> None:
    for field, suffix in (
        ("encryptedDefaultEncryptionPrivateKey", "default_enc_private_key"),
        ("encryptedDefaultSelfEncryptionKey", "default_self_enc_key"),
    ):
        if p.get(field):
            body = json.dumps({"value": str(p[field])})
            _put_value(s, owner, f"{eid}.{suffix}.__manage{owner}", body)


def _publish_apkam_key(s: Session, owner: str, record: dict[str, Any]) -> None:
    app = str(record.get("appName") or "app").lower()
    dev = str(record.get("deviceName") or "device").lower()
    body = json.dumps({"apkamPublicKey": record.get("apkamPublicKey")})
    try:
        name = parse_key(f"public:{app}.{dev}.pkam.__pkams.__public_keys{owner}").full
    except AtError:
        return
    _put_value(s, owner, name, body)


def _namespaces(p: dict[str, Any], default: dict[str, str] | None) -> dict[str, str]:
    ns = p.get("namespaces")
    if not ns:
        if default is None:
            raise AtError.for_code("AT0022", "enroll:request needs namespaces")
        return default
    if not isinstance(ns, dict) or not all(v in ("r", "rw") for v in ns.values()):
        raise AtError.for_code("AT0022", "namespaces must map a namespace to r or rw")
    return {str(k).lower(): str(v) for k, v in ns.items()}


def _state(status: str, expires: int | None, now: int) -> str:
    if expires is not None and now >= expires and status in ("pending", "approved"):
        return "expired"
    return status


def _request(s: Session, p: dict[str, Any]) -> Reply:
    eng = s.engine
    store, now = eng.store, eng.clock()
    for f in ("appName", "deviceName", "apkamPublicKey"):
        if not p.get(f):
            raise AtError.for_code("AT0022", f"enroll:request needs {f}")
    eid = str(uuid.uuid4())
    record: dict[str, Any] = {
        "sessionId": f"_{uuid.uuid4()}",
        "appName": p["appName"],
        "deviceName": p["deviceName"],
        "apkamPublicKey": p["apkamPublicKey"],
        "requestType": "newEnrollment",
        "encryptedAPKAMSymmetricKey": p.get("encryptedAPKAMSymmetricKey"),
        "apkamKeysExpiryInMillis": p.get("apkamKeysExpiryInMillis"),
    }
    if s.authed:
        owner = _need_manage(s)
        default = {"__manage": "rw", "*": "rw"} if s.auth_kind == "cram" else None
        ns = {"__manage": "rw", "*": "rw"} if s.auth_kind == "cram" else _namespaces(p, default)
        record["namespaces"] = ns
        record["approval"] = {"state": "approved"}
        ttl = p.get("apkamKeysExpiryInMillis")
        expires = now + int(ttl) if isinstance(ttl, int) and ttl > 0 else None
        store.put_enrollment(owner, eid, record, "approved", now, expires)
        _store_keys(s, owner, eid, p)
        if s.auth_kind == "cram":
            _put_value(s, owner, "privatekey:at_pkam_publickey", str(p["apkamPublicKey"]))
        _publish_apkam_key(s, owner, record)
        return s.data(json.dumps({"enrollmentId": eid, "status": "approved"}))
    if s.atsign is None:
        raise AtError.for_code("AT0401", "send from:<atSign> before enroll:request")
    owner = s.atsign
    s.enroll_times = [t for t in s.enroll_times if now - t < _HOUR_MS]
    if len(s.enroll_times) >= eng.config.enroll_requests_per_hour:
        raise AtError.for_code("AT0028", "too many enrollment requests; try again later")
    s.enroll_times.append(now)
    if not _otp_ok(s, owner, str(p.get("otp") or "")):
        s.bad_otps += 1
        r = s.error(AtError.for_code("AT0011", "invalid otp. Cannot process enroll request"))
        r.delay = min(30.0, eng.config.bad_otp_delay * _fib(s.bad_otps))
        return r
    record["namespaces"] = _namespaces(p, None)
    record["approval"] = {"state": "pending"}
    store.put_enrollment(owner, eid, record, "pending", now, now + eng.config.enroll_pending_ttl_ms)
    value = json.dumps(
        {
            "encryptedApkamSymmetricKey": record["encryptedAPKAMSymmetricKey"],
            "encryptedAPKAMSymmetricKey": record["encryptedAPKAMSymmetricKey"],
            "appName": record["appName"],
            "deviceName": record["deviceName"],
            "namespace": record["namespaces"],
        }
    )
    verbs_notify.deliver(
        eng,
        sender=owner,
        to=owner,
        key=f"{eid}.new.enrollments.__manage",
        value=value,
        operation="update",
        message_type="key",
        meta={},
        is_encrypted=False,
        nid=eid,
        ttln=eng.config.enroll_pending_ttl_ms,
        kind="self",
    )
    return s.data(json.dumps({"enrollmentId": eid, "status": "pending"}))


def _otp_ok(s: Session, owner: str, otp: str) -> bool:
    if not otp or len(otp) > 64 or ":" in otp or "@" in otp or " " in otp:
        return False
    store, now = s.engine.store, s.engine.clock()
    # An OTP is exactly what ``otp:get`` makes; anything else never names a stored record
    # (``"otp":"spp"`` used to find, accept and delete the semi-permanent passcode).
    if len(otp) == OTP_LENGTH and all(c in OTP_ALPHABET for c in otp.upper()):
        name = f"private:{otp.lower()}.__otp{owner}"
        rec = store.get(owner, name)
        if rec is not None and rec.visible(now) and rec.value == otp.upper():
            store.delete(owner, name)  # one use
            return True
    spp = store.get(owner, f"private:spp.__otp{owner}")
    return bool(
        spp is not None
        and spp.visible(now)
        and spp.value
        and secrets.compare_digest(spp.value, otp)
    )


def _get(s: Session, owner: str, p: dict[str, Any]) -> tuple[str, dict[str, Any], str, int | None]:
    eid = str(p.get("enrollmentId") or "")
    got = s.engine.store.get_enrollment(owner, eid) if eid else None
    if got is None:
        raise AtError.for_code("AT0028", f"enrollment_id: {eid} is expired or invalid")
    return (eid, *got)


def _transition(s: Session, p: dict[str, Any], op: str, force: bool) -> Reply:
    owner = _need_manage(s)
    eng = s.engine
    store, now = eng.store, eng.clock()
    eid, record, status, expires = _get(s, owner, p)
    state = _state(status, expires, now)
    if op == "approve":
        if state == "expired":
            raise AtError.for_code("AT0029", f"enrollment_id: {eid} is expired")
        if state != "pending":
            raise AtError.for_code("AT0030", f"cannot approve a {state} enrollment")
        ttl = record.get("apkamKeysExpiryInMillis")
        new_exp = now + int(ttl) if isinstance(ttl, int) and ttl > 0 else None
        _store_keys(s, owner, eid, p)
        record["approval"] = {"state": "approved"}
        store.put_enrollment(owner, eid, record, "approved", now, new_exp)
        _publish_apkam_key(s, owner, record)
        new = "approved"
    elif op == "deny":
        if state != "pending":
            raise AtError.for_code("AT0030", f"cannot deny a {state} enrollment")
        new = "denied"
    elif op == "revoke":
        if state != "approved":
            raise AtError.for_code("AT0030", f"cannot revoke a {state} enrollment")
        if eid == s.enrollment_id and not force:
            raise AtError.for_code(
                "AT0031", "cannot revoke the enrollment of this connection without force"
            )
        new = "revoked"
    elif op == "unrevoke":
        if state != "revoked":
            raise AtError.for_code("AT0030", f"cannot unrevoke a {state} enrollment")
        new = "approved"
    else:  # delete
        if state not in ("denied", "revoked", "expired"):
            raise AtError.for_code("AT0030", f"cannot delete a {state} enrollment")
        store.delete_enrollment(owner, eid)
        return s.data(json.dumps({"status": "deleted", "enrollmentId": eid}))
    if op != "approve":
        record["approval"] = {"state": new}
        store.put_enrollment(owner, eid, record, new, now, expires if new != "denied" else None)
    if new == "revoked":
        for other in eng.sessions_for_enrollment(owner, eid):
            if other is not s:
                other.port.close()
    return s.data(json.dumps({"status": new, "enrollmentId": eid}))


def _summary(record: dict[str, Any], state: str) -> dict[str, Any]:
    return {
        "appName": record.get("appName"),
        "deviceName": record.get("deviceName"),
        "namespace": record.get("namespaces"),
        "encryptedAPKAMSymmetricKey": record.get("encryptedAPKAMSymmetricKey"),
        "status": state,
    }


def enroll(s: Session, cmd: Command) -> Reply:
    op, p, force = cmd["op"], cmd["params"], cmd["force"]
    if op == "request":
        return _request(s, p)
    if op in ("approve", "deny", "revoke", "unrevoke", "delete"):
        return _transition(s, p, op, force)
    owner = s.require_auth()
    now = s.engine.clock()
    if op == "fetch":
        eid, record, status, expires = _get(s, owner, p)
        if not can_manage(s) and eid != s.enrollment_id:
            raise AtError.for_code("AT0009", "enroll:fetch needs __manage or the enrollment itself")
        return s.data(json.dumps(_summary(record, _state(status, expires, now))))
    _need_manage(s)
    wanted = p.get("enrollmentStatusFilter") or None
    out = {}
    for eid, record, status, expires in s.engine.store.enrollments(owner):
        state = _state(status, expires, now)
        if wanted and state not in wanted:
            continue
        out[f"{eid}.new.enrollments.__manage{owner}"] = _summary(record, state)
    return s.data(json.dumps(out))


def otp(s: Session, cmd: Command) -> Reply:
    owner = _need_manage(s)
    eng = s.engine
    if cmd["op"] == "get":
        code = "".join(secrets.choice(OTP_ALPHABET) for _ in range(OTP_LENGTH))
        _put_value(
            s,
            owner,
            f"private:{code.lower()}.__otp{owner}",
            code,
            cmd["ttl"] or eng.config.otp_ttl_ms,
        )
        return s.data(code)
    spp = cmd["spp"]
    if len(spp) < 6 or len(spp) > 64 or "@" in spp or " " in spp:
        raise AtError.for_code("AT0022", "a passcode is 6-64 characters without '@' or spaces")
    _put_value(s, owner, f"private:spp.__otp{owner}", spp, cmd["ttl"])
    return s.data("ok")


def keys(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    eng = s.engine
    name = cmd.get("keyName")
    if not name:
        raise AtError.for_code("AT0022", "keys: needs keyName")
    key = parse_key(name, default_owner=owner)
    if key.shared_by != owner:
        raise AtError.for_code("AT0016", f"{key.full} does not belong to {owner}")
    own = bool(s.enrollment_id) and key.name.startswith(s.enrollment_id or "\0")
    if not (can_manage(s) or own):
        raise AtError.for_code("AT0009", f"no access to {key.full}")
    if cmd["op"] == "get":
        rec = eng.store.get(owner, key.full)
        if rec is None or not rec.visible(eng.clock()):
            raise AtError.for_code("AT0015", f"{key.full} does not exist in keystore")
        try:
            body = json.loads(rec.value or "{}")
        except ValueError:
            body = {"value": rec.value}
        if not isinstance(body, dict):
            body = {"value": rec.value}
        body.setdefault("keyType", cmd.get("keyType") or _key_type(key.name))
        body.setdefault("enrollmentId", key.name.split(".", 1)[0])
        return s.data(json.dumps(body))
    if cmd["op"] == "put":
        if cmd["value"] is None:
            raise AtError.for_code("AT0022", "keys:put needs a value")
        body = {
            "value": cmd["value"],
            "keyType": cmd.get("keyType"),
            "enrollmentId": s.enrollment_id,
        }
        _put_value(s, owner, key.full, json.dumps(body))
        return s.data(str(eng.store.commit_id(owner)))
    eng.store.delete(owner, key.full)
    return s.data("success")


def _key_type(name: str) -> str:
    if "default_enc_private_key" in name:
        return "encryptedDefaultEncryptionPrivateKey"
    if "default_self_enc_key" in name:
        return "encryptedDefaultSelfEncryptionKey"
    return "unknown"


HANDLERS: dict[str, Callable[[Session, Command], Reply]] = {
    "enroll": enroll,
    "otp": otp,
    "keys": keys,
}

"""Key verbs: llookup, lookup, plookup, update, delete, scan (spec 1.4-1.7).

All atSigns live in this process, so ``lookup:x@bob`` from @alice reads bob's store directly
(``@alice:x@bob``, then ``public:x@bob``) after alice's cache, where the official server would
open a server-to-server connection. An expired or not-yet-available key reads as ``data:null``;
a missing one is AT0015, which official clients rely on.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AtError
from . import verbs_notify
from .keys import AtKey, Record, apply_times, namespace_allows, parse_key
from .parse import Command
from .reply import Reply
from .userregex import Budget, compile_client

if TYPE_CHECKING:
    from .engine import Session


def check_ns(s: Session, key: AtKey, write: bool) -> None:
    """APKAM connections may only touch keys in their enrolled namespaces (spec 1.11)."""
    if s.namespaces is None:
        return
    if key.visibility == "system" and s.namespaces.get("__manage") != "rw":
        # the PKAM key and the CRAM secret decide who can log in: manager enrollments only
        raise AtError.for_code(
            "AT0009", f"enrollment {s.enrollment_id} has no access to {key.full}"
        )
    if not namespace_allows(s.namespaces, key, write):
        raise AtError.for_code(
            "AT0009",
            f"enrollment {s.enrollment_id} has no "
            f"{'write' if write else 'read'} access to {key.full}",
        )


def not_found(key: str) -> AtError:
    return AtError.for_code("AT0015", f"{key} does not exist in keystore")


def render(s: Session, rec: Record, op: str | None, now: int) -> Reply:
    if not rec.visible(now):
        return s.data("null")
    if op is None:
        return s.data("null" if rec.value is None else rec.value)
    meta = rec.render_meta()
    if op == "meta":
        return s.data(json.dumps(meta, separators=(",", ":")))
    body: dict[str, Any] = {"key": rec.key, "data": rec.value, "metaData": meta}
    return s.data(json.dumps(body, separators=(",", ":")))


def llookup(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    key = parse_key(cmd["key"], default_owner=owner)
    check_ns(s, key, write=False)
    rec = s.engine.store.get(owner, key.full)
    if rec is None:
        raise not_found(key.full)
    return render(s, rec, cmd["op"], s.engine.clock())


def lookup(s: Session, cmd: Command) -> Reply:
    store, now = s.engine.store, s.engine.clock()
    text = cmd["key"]
    if "@" not in text:
        raise AtError.for_code("AT0003", "lookup: expects <key>@<atSign>")
    key = parse_key(text)
    if key.visibility not in ("self", "public"):
        raise AtError.for_code("AT0016", f"lookup: invalid key {text}")
    owner = key.shared_by
    assert owner is not None
    pub = f"public:{key.name}{owner}"
    if not s.authed or s.atsign is None:
        candidates = [(owner, pub)]
    elif owner == s.atsign:
        check_ns(s, key, write=False)
        candidates = [(owner, pub), (owner, f"{key.name}{owner}")]
    else:
        check_ns(s, key, write=False)
        me = s.atsign
        candidates = [] if cmd["bypass_cache"] else [(me, f"cached:{me}:{key.name}{owner}")]
        candidates += [(owner, f"{me}:{key.name}{owner}"), (owner, pub)]
    for atsign, name in candidates:
        rec = store.get(atsign, name)
        if rec is not None and rec.visible(now):
            return render(s, rec, cmd["op"], now)
    for atsign, name in candidates:
        if store.get(atsign, name) is not None:
            return s.data("null")
    raise not_found(f"{key.name}{owner}")


def plookup(s: Session, cmd: Command) -> Reply:
    me = s.require_auth()
    store, now = s.engine.store, s.engine.clock()
    key = parse_key(cmd["key"])
    if key.visibility not in ("self", "public") or key.shared_by is None:
        raise AtError.for_code("AT0016", f"plookup: invalid key {cmd['key']}")
    owner = key.shared_by
    name = f"public:{key.name}{owner}"
    rec = store.get(owner, name)
    if rec is None and not cmd["bypass_cache"]:
        rec = store.get(me, f"cached:{name}")
    if rec is None:
        raise not_found(name)
    return render(s, rec, cmd["op"], now)


def _owned(s: Session, key: AtKey, owner: str, *, allow_cached: bool) -> None:
    if key.visibility == "system":
        return
    if key.cached:
        if allow_cached and key.shared_with in (owner, None):
            return
        raise AtError.for_code("AT0016", f"cannot write cached key {key.full}")
    if key.shared_by != owner:
        raise AtError.for_code("AT0016", f"sharedBy of {key.full} must be {owner}")


def update(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    eng = s.engine
    store, now = eng.store, eng.clock()
    key = parse_key(cmd["key"], default_owner=owner)
    _owned(s, key, owner, allow_cached=False)
    check_ns(s, key, write=True)
    old = store.get(owner, key.full)
    if old is not None and old.meta.get("immutable") and (
        old.expires_at is None or old.expires_at > now
    ):
        # first writer wins (session mutexes of redundant srvd/sshnpd instances)
        raise AtError.for_code("AT0001", f"{key.full} is immutable and already exists")
    meta: dict[str, Any] = dict(old.meta) if old else {}
    meta.update(cmd["meta"])
    expires, available, refresh = apply_times(meta, now)
    rec = Record(
        key.full,
        cmd["value"],
        meta,
        old.created_at if old else now,
        now,
        expires,
        available,
        refresh,
        (old.version + 1) if old else 0,
        owner,
    )
    store.put(owner, rec)
    commit = store.next_commit(owner)
    if key.visibility == "shared" and key.shared_with and not key.cached:
        verbs_notify.deliver(
            eng,
            sender=owner,
            to=key.shared_with,
            key=key.full,
            value=rec.value,
            operation="update",
            message_type="key",
            meta=meta,
            is_encrypted=bool(meta.get("isEncrypted", False)),
        )
    return s.data(str(commit))


def delete(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    eng = s.engine
    key = parse_key(cmd["key"], default_owner=owner)
    _owned(s, key, owner, allow_cached=True)
    check_ns(s, key, write=True)
    old = eng.store.get(owner, key.full)
    eng.store.delete(owner, key.full)
    commit = eng.store.next_commit(owner)
    if old is not None and key.visibility == "shared" and key.shared_with and not key.cached:
        verbs_notify.deliver(
            eng,
            sender=owner,
            to=key.shared_with,
            key=key.full,
            value=None,
            operation="delete",
            message_type="key",
            meta=dict(old.meta),
            is_encrypted=False,
        )
    return s.data(str(commit))


def _scan_visible(key: AtKey, show_hidden: bool) -> bool:
    if key.visibility in ("system", "private"):
        return False
    ns = key.namespace or ""
    if ns.endswith("__manage") or ns.endswith("__otp"):
        return False
    if not show_hidden and (key.hidden or "__" in ns):
        return False
    return True


def scan(s: Session, cmd: Command) -> Reply:
    store, now = s.engine.store, s.engine.clock()
    match = Budget(compile_client(cmd["regex"])).match
    out: list[str] = []
    if not s.authed:
        if s.atsign is None:
            return s.data("[]")
        for name in store.key_names(s.atsign, now):
            key = parse_key(name)
            if (
                key.visibility == "public"
                and not key.cached
                and not key.hidden
                and "__" not in name
            ):
                short = name[len("public:") :]
                if match(short):
                    out.append(short)
        return s.data(json.dumps(out, separators=(",", ":")))
    owner = s.atsign
    assert owner is not None
    other = cmd["for_atsign"]
    if other and other != owner:
        # ``scan:@bob`` runs on bob's store: the keys bob has shared with me (at_commons
        # ScanVerbBuilder: "Scans keys shared by @alice to self"). All atSigns are local here.
        for name in store.key_names(other, now):
            try:
                key = parse_key(name)
            except AtError:
                continue
            if key.cached or key.visibility != "shared" or key.shared_with != owner:
                continue
            if not _scan_visible(key, cmd["show_hidden"]):
                continue
            if s.namespaces is not None and not namespace_allows(s.namespaces, key, False):
                continue
            if match(name):
                out.append(name)
        return s.data(json.dumps(out, separators=(",", ":")))
    for name in store.key_names(owner, now):
        try:
            key = parse_key(name)
        except AtError:
            continue
        if not _scan_visible(key, cmd["show_hidden"]):
            continue
        if s.namespaces is not None and not namespace_allows(s.namespaces, key, False):
            continue
        if match(name):
            out.append(name)
    return s.data(json.dumps(out, separators=(",", ":")))


HANDLERS: dict[str, Callable[[Session, Command], Reply]] = {
    "llookup": llookup,
    "lookup": lookup,
    "plookup": plookup,
    "update": update,
    "delete": delete,
    "scan": scan,
}

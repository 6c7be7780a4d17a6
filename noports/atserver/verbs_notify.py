"""Notifications: notify, notify:status/remove/list/fetch, monitor, and in-process delivery.

Every notification is stored twice, as the sender's ``sent`` record and the recipient's
``received`` record, in SQLite before anything is pushed; live monitors then get it in call
order. A recipient that is offline catches up with ``monitor:<epochMillis>`` (replay of
unexpired received notifications, oldest first), so a restart loses nothing. Recipients not
hosted here stay ``queued`` until they are added or the notification expires.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import AtError
from .hub import Monitor, render
from .hub import body as hub_body
from .keys import Record, apply_times, dart_time, namespace_allows, normalise_atsign, parse_key
from .parse import Command
from .reply import Reply
from .store import Notification
from .userregex import Budget, compile_client

if TYPE_CHECKING:
    from .engine import Engine, Session

# Metadata kept on a cached copy created from a notification.
_CACHE_META = (
    "ttl",
    "ttb",
    "ttr",
    "ccd",
    "isBinary",
    "isEncrypted",
    "dataSignature",
    "sharedKeyEnc",
    "pubKeyCS",
    "encoding",
    "encKeyName",
    "encAlgo",
    "ivNonce",
    "skeEncKeyName",
    "skeEncAlgo",
)


def deliver(
    eng: Engine,
    *,
    sender: str,
    to: str,
    key: str,
    value: str | None,
    operation: str,
    message_type: str,
    meta: dict[str, Any],
    is_encrypted: bool,
    nid: str | None = None,
    ttln: int | None = None,
    strategy: str = "all",
    notifier: str = "SYSTEM",
    latest_n: int = 1,
    priority: str = "low",
    kind: str = "received",
) -> Notification:
    """Record a notification from ``sender`` to ``to`` and hand it to the recipient if hosted."""
    store, now = eng.store, eng.clock()
    expires = now + (ttln if ttln else eng.config.notification_expiry_ms)
    n = Notification(
        owner=sender,
        kind="sent",
        id=nid or str(uuid.uuid4()),
        from_atsign=sender,
        to_atsign=to,
        key=key,
        value=value,
        operation=operation,
        message_type=message_type,
        epoch_ms=now,
        expires_at=expires,
        status="queued",
        is_encrypted=is_encrypted,
        meta=meta,
        strategy=strategy,
        notifier=notifier,
        priority=priority,
    )
    hosted = to == sender or store.has_atsign(to)
    db = store.db
    # Inside the server's batch transaction the batch gives atomicity; the recipient's copy
    # is written first so a failure can only lose the sender's status row, never the message.
    savepoint = not db.in_transaction
    if savepoint:
        db.execute("SAVEPOINT deliver")
    try:
        if hosted:
            n.status = "delivered"
            recv = _received_copy(n, kind)
            store.add_notification(recv)
            if kind != "self":
                store.add_sent_status(sender, n.id, to, "delivered", expires)
            _apply_cache(eng, recv, now)
        else:
            store.add_notification(n)
            if strategy == "latest":
                store.trim_latest(sender, to, notifier, max(1, latest_n))
        if savepoint:
            db.execute("RELEASE deliver")
    except BaseException:
        if savepoint:
            db.execute("ROLLBACK TO deliver")
            db.execute("RELEASE deliver")
        raise
    if hosted:
        eng.hub.publish(recv, dart_time)
    return n


def _received_copy(n: Notification, kind: str) -> Notification:
    return Notification(
        owner=n.to_atsign,
        kind=kind,
        id=n.id,
        from_atsign=n.from_atsign,
        to_atsign=n.to_atsign,
        key=n.key,
        value=n.value,
        operation=n.operation,
        message_type=n.message_type,
        epoch_ms=n.epoch_ms,
        expires_at=n.expires_at,
        status="delivered",
        is_encrypted=n.is_encrypted,
        meta=n.meta,
        strategy=n.strategy,
        notifier=n.notifier,
        priority=n.priority,
    )


def _apply_cache(eng: Engine, n: Notification, now: int) -> None:
    """Receiver side: cache ``cached:<key>`` on update with ttr, drop it on delete with ccd."""
    if n.message_type != "key" or not n.key.startswith("@") or n.from_atsign == n.to_atsign:
        return
    cached = "cached:" + n.key
    if len(cached) > 255:
        return
    store = eng.store
    if n.operation == "update" and n.meta.get("ttr") and n.value is not None:
        meta = {k: n.meta[k] for k in _CACHE_META if n.meta.get(k) is not None}
        old = store.get(n.to_atsign, cached)
        expires, available, refresh = apply_times(meta, now)
        store.put(
            n.to_atsign,
            Record(
                cached,
                n.value,
                meta,
                old.created_at if old else now,
                now,
                expires,
                available,
                refresh,
                (old.version + 1) if old else 0,
                n.from_atsign,
            ),
        )
    elif n.operation == "delete":
        old = store.get(n.to_atsign, cached)
        if old is not None and (old.meta.get("ccd") or n.meta.get("ccd")):
            store.delete(n.to_atsign, cached)


def flush_queued(eng: Engine, to: str | None = None) -> int:
    """Deliver queued notifications whose recipient is now hosted here (e.g. added later)."""
    count = 0
    now = eng.clock()
    for n in eng.store.queued_for(to, now):
        if not eng.store.has_atsign(n.to_atsign):
            continue
        recv = _received_copy(n, "received")
        eng.store.add_notification(recv)
        eng.store.mark_delivered(n)
        _apply_cache(eng, recv, now)
        eng.hub.publish(recv, dart_time)
        count += 1
    return count


def notify(s: Session, cmd: Command) -> Reply:
    sender = s.require_auth()
    eng = s.engine
    target = cmd["target"]
    if target == "public":
        raise AtError.for_code("AT0022", "public notifications need a recipient (@forAtSign)")
    to = normalise_atsign(target)
    meta = dict(cmd["meta"])
    if cmd["message_type"] == "text":
        key_text = f"{to}:{cmd['key']}"
        value = None
    else:
        key = parse_key(f"{to}:{cmd['key']}", default_owner=sender)
        if key.shared_by != sender:
            raise AtError.for_code("AT0016", f"sharedBy of {key.full} must be {sender}")
        if s.namespaces is not None and not namespace_allows(s.namespaces, key, True):
            raise AtError.for_code("AT0009", f"no write access to {key.full}")
        key_text = key.full
        value = cmd["value"]
    if "isEncrypted" in meta:
        encrypted = bool(meta["isEncrypted"])
    else:
        encrypted = cmd["message_type"] == "key" and value is not None
    n = deliver(
        eng,
        sender=sender,
        to=to,
        key=key_text,
        value=value,
        operation=cmd["operation"],
        message_type=cmd["message_type"],
        meta=meta,
        is_encrypted=encrypted,
        nid=cmd["id"],
        ttln=cmd["ttln"],
        strategy=cmd["strategy"],
        notifier=cmd["notifier"],
        latest_n=cmd["latest_n"],
        priority=cmd["priority"],
    )
    return s.data(n.id)


def notify_status(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()  # only the sender's own notifications
    got = s.engine.store.sent_status(owner, cmd["id"])
    if got is None:
        return s.data("null")
    status, expires_at = got
    if status == "queued" and s.engine.clock() >= expires_at:
        status = "expired"
    return s.data(status)


def notify_remove(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    store = s.engine.store
    allowed = _ns_filter(s)
    for kind in ("received", "self"):
        if allowed is not None:  # APKAM: only notifications of the enrolled namespaces
            n = store.get_notification(owner, kind, cmd["id"])
            if n is None or not allowed(n):
                continue
        store.remove_notification(owner, kind, cmd["id"])
    return s.data("success")


def _as_dict(n: Notification) -> dict[str, Any]:
    return hub_body(n, replay=True, dart_time=dart_time)


def notify_list(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    rx = compile_client(cmd["regex"])
    mon = Monitor(s, owner, None, False, _ns_filter(s))
    match = Budget(rx).match
    out = [
        _as_dict(n)
        for n in s.engine.store.received_since(owner, 0, s.engine.clock(), ("received",))
        if mon.wants(n) and (match(n.key) or match(n.from_atsign.lstrip("@")))
    ]
    return s.data(json.dumps(out, separators=(",", ":"), ensure_ascii=False))


def notify_fetch(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    n = s.engine.store.get_notification(owner, "received", cmd["id"])
    allowed = _ns_filter(s)
    if n is None or (allowed is not None and not allowed(n)):  # APKAM: as if absent
        return s.data(
            json.dumps({"id": cmd["id"], "notificationStatus": "NotificationStatus.expired"})
        )
    return s.data(json.dumps(_as_dict(n), separators=(",", ":")))


def _ns_filter(s: Session) -> Callable[[Notification], bool] | None:
    ns = s.namespaces
    if ns is None:
        return None
    owner = s.atsign

    def allowed(n: Notification) -> bool:
        try:
            return namespace_allows(ns, parse_key(n.key, default_owner=owner), False)
        except AtError:
            return "*" in ns

    return allowed


def monitor(s: Session, cmd: Command) -> Reply:
    owner = s.require_auth()
    rx = compile_client(cmd["regex"] if cmd["regex"] != ".*" else None)
    s.monitoring = True
    eng = s.engine
    mon = Monitor(s, owner, rx, cmd["self"], _ns_filter(s))
    eng.hub.unregister(s)
    if cmd["since"] is not None:
        kinds = ("received", "self") if cmd["self"] else ("received",)
        for n in eng.store.received_since(owner, cmd["since"], eng.clock(), kinds):
            if mon.wants(n):
                s.push(render(n, replay=True, dart_time=dart_time))
    eng.hub.register(mon)
    return Reply("")


def stats_text(eng: Engine, atsign: str) -> str:
    body = {
        "id": "-1",
        "from": atsign,
        "to": atsign,
        "key": f"statsNotification.{atsign}",
        "value": str(eng.store.commit_id(atsign)),
        "operation": "update",
        "epochMillis": eng.clock(),
        "messageType": "MessageType.key",
        "isEncrypted": False,
        "metadata": None,
    }
    return "notification: " + json.dumps(body, separators=(",", ":")) + "\n"


HANDLERS: dict[str, Callable[[Session, Command], Reply]] = {
    "notify": notify,
    "notify:status": notify_status,
    "notify:remove": notify_remove,
    "notify:list": notify_list,
    "notify:fetch": notify_fetch,
    "monitor": monitor,
}

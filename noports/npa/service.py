"""The NPA service: answers daemons' auth checks (spec 8) from a :class:`PolicyStore`.

Wire contract (spec 2.2 P1-P3, D9)::

    P1 daemon -> us   @p:request.<reqId>.auth_checks.__rpcs.sshnp@d
                      {"reqId": <int>, "payload": {"daemonAtsign", "daemonDeviceName",
                                                   "daemonDeviceGroupName", "clientAtsign"}}
    P2 us -> daemon   @d:<ack|nack|success>.<reqId>.auth_checks.__rpcs.sshnp@p   (ttln 30 s)
                      {"reqId": <int>, "respType": "...", "payload": {...}}
    P3 us -> us       @p:<epochMillis>.logs.policy.sshnp@p                       (ttln 1 h)
                      {"daemon": "@d", "timestamp": <ms>, "payload": {"request", "response"}}
    D9 daemon -> us   @p:<dev>.devices.policy.sshnp@d  (heartbeat; kept in memory)

Handling a request (:func:`handle_request` is sans-IO; :class:`NpaService` does the I/O):

* the ``reqId`` in the key must equal the ``reqId`` in the value, the value must be a JSON
  object with an object ``payload``, and the payload must name the *sender* as
  ``daemonAtsign``: otherwise ``nack`` (the daemon denies). The last check is ours, not
  the official one: without it any atSign could ask what the policy grants another daemon's
  clients, and the answer would leak the policy.
* which daemons are served: with ``daemon_atsigns`` (``--daemon-atsigns``) only those; a
  request from anyone else is **dropped without a reply** (like sshnpd drops unauthorised
  notifications) and audited. Without it, any daemon may ask, as the official NPA does
  (``allowAll: true``): the policy file's own ``daemon_atsigns`` and the sender check above
  already mean an unknown daemon only ever learns "denied" about itself, and a fleet can add
  daemons by editing the policy file alone, without restarting the service.
* then ``ack``, the decision (``success`` with ``{"authorized","message","permitOpen"}``;
  an unexpected exception is a denial ``"Exception: ..."``, as official), and an audit record
  to the log, to the ``--audit-log`` JSON-lines file and as a P3 self notification.

Each daemon atSign gets at most ``max_rate`` requests/s answered (bursts of 5x; excess is
dropped and logged), and the D9 heartbeat table is bounded, so no sender can make us spend
without limit. The policy file is re-checked (one ``stat``) before every decision; a broken
edit keeps the last good policy (see :mod:`.policy`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..at import commands
from ..at.commands import Metadata
from ..at.protocol import Notification
from ..crypto import aes
from ..crypto.encoding import b64e
from ..errors import ConfigError, NoPortsError, ProtocolError
from ..log import escape
from ..names import InvalidNameError, validate_atsign
from .policy import PolicyStore

__all__ = [
    "MONITOR_REGEX",
    "Reply",
    "Outcome",
    "handle_request",
    "AuditLog",
    "RateLimiter",
    "NpaService",
    "NpaSettings",
]

log = logging.getLogger("noports.npa.service")

NAMESPACE = "sshnp"
RESPONSE_TTLN_MS = 30_000
AUDIT_TTLN_MS = 3_600_000
MAX_VALUE = 16 * 1024  # a real request is ~200 bytes
MONITOR_REGEX = r"(request\.\d+\.auth_checks\.__rpcs|[^.:@]+\.devices\.policy)\.sshnp@"
_REQUEST = re.compile(r"^request\.(\d{1,19})\.auth_checks\.__rpcs\.sshnp$")
_HEARTBEAT = re.compile(r"^([a-z0-9_][a-z0-9_\-]{1,35})\.devices\.policy\.sshnp$")


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True)
class Reply:
    """One P2 response."""

    resp_type: str
    req_id: int
    payload: dict[str, Any]

    @property
    def key(self) -> str:
        """The key name without the namespace (``ack.<reqId>.auth_checks.__rpcs``)."""
        return f"{self.resp_type}.{self.req_id}.auth_checks.__rpcs"

    def value(self) -> dict[str, Any]:
        return {"reqId": self.req_id, "respType": self.resp_type, "payload": self.payload}

    def text(self) -> str:
        return _compact(self.value())


@dataclass
class Outcome:
    """What to do about one request: replies to send (in order) and the audit record."""

    sender: str
    req_id: int
    replies: list[Reply] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)
    request: Any = None

    @property
    def dropped(self) -> bool:
        return not self.replies


def _nack(
    sender: str, req_id: int, reason: str, request: Any, clock: Callable[[], float]
) -> Outcome:
    audit = {
        "ts": round(clock(), 3),
        "event": "npa_nack",
        "sender": sender,
        "reqId": req_id,
        "reason": escape(reason, 200),
    }
    log.warning("nack to %s for request %d: %s", sender, req_id, escape(reason, 200))
    return Outcome(sender, req_id, [Reply("nack", req_id, {"message": reason})], audit, request)


def handle_request(
    store: PolicyStore,
    sender: str,
    short_key: str,
    value: str | None,
    *,
    daemon_atsigns: frozenset[str] = frozenset(),
) -> Outcome | None:
    """Decide one P1 notification; None if ``short_key`` is not an auth-check request."""
    m = _REQUEST.match(short_key)
    if m is None:
        return None
    req_id = int(m.group(1))
    clock = store.clock
    try:
        who = validate_atsign(sender)
    except InvalidNameError:
        who = escape(str(sender), 60)
    if daemon_atsigns and who not in daemon_atsigns:
        audit = {
            "ts": round(clock(), 3),
            "event": "npa_ignored",
            "sender": who,
            "reqId": req_id,
            "reason": "sender is not in --daemon-atsigns",
        }
        log.warning("ignoring auth check %d from %s: not in --daemon-atsigns", req_id, who)
        return Outcome(who, req_id, [], audit)
    if value is None or len(value) > MAX_VALUE:
        return _nack(who, req_id, "request has no value or is too large", None, clock)
    try:
        obj = json.loads(value)
    except ValueError:
        return _nack(who, req_id, "request is not JSON", None, clock)
    if not isinstance(obj, dict):
        return _nack(who, req_id, "request is not a JSON object", None, clock)
    vid = obj.get("reqId")
    if not isinstance(vid, int) or isinstance(vid, bool) or vid != req_id:
        return _nack(
            who, req_id, f"reqId in the value ({vid!r:.30}) does not match the key", obj, clock
        )
    payload = obj.get("payload")
    if not isinstance(payload, Mapping):
        return _nack(who, req_id, "request payload is not an object", obj, clock)
    claimed = payload.get("daemonAtsign")
    try:
        claimed_ok = isinstance(claimed, str) and validate_atsign(claimed) == who
    except InvalidNameError:
        claimed_ok = False
    if not claimed_ok:
        return _nack(who, req_id, "daemonAtsign in the payload is not the sender", obj, clock)
    try:
        decision, audit = store.decide(payload)
        result = decision.payload()
    except ProtocolError as exc:
        return _nack(who, req_id, str(exc), obj, clock)
    except Exception as exc:  # noqa: BLE001 - official NPA: an exception is a denial
        log.exception("policy decision failed for request %d from %s", req_id, who)
        result = {"authorized": False, "message": f"Exception: {exc}", "permitOpen": []}
        audit = {
            "ts": round(clock(), 3),
            "event": "npa_error",
            "clientAtsign": payload.get("clientAtsign"),
            "message": escape(str(exc), 200),
        }
    audit = {**audit, "sender": who, "reqId": req_id}
    replies = [Reply("ack", req_id, {}), Reply("success", req_id, result)]
    return Outcome(who, req_id, replies, audit, obj)


class AuditLog:
    """Append-only JSON-lines file (0600, created if missing; never through a symlink)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        self._fd = os.open(self.path, flags | getattr(os, "O_CLOEXEC", 0), 0o600)

    def write(self, record: Mapping[str, Any]) -> None:
        os.write(self._fd, (json.dumps(record, ensure_ascii=True, default=str) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class DeviceSeen:
    """The last D9 heartbeat of one device."""

    daemon: str
    device: str
    at: float
    info: dict[str, Any]


class RateLimiter:
    """A token bucket per sender: ``rate`` requests/s in bursts of up to ``burst``.

    Any atSign can send requests, and each costs us three notifications, so a flood from
    one sender is cut off here without starving the others. Memory is bounded: at most
    ``max_senders`` buckets, the least recently used forgotten first (a full bucket).
    """

    def __init__(
        self,
        rate: float,
        burst: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_senders: int = 10_000,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.max_senders = max_senders
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()
        self.dropped: collections.Counter[str] = collections.Counter()

    def allow(self, sender: str) -> bool:
        if self.rate <= 0:
            return True
        now = self.clock()
        tokens, last = self._buckets.pop(sender, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        ok = tokens >= 1.0
        self._buckets[sender] = (tokens - 1.0 if ok else tokens, now)
        if len(self._buckets) > self.max_senders:
            self._buckets.popitem(last=False)
        if not ok:
            self.dropped[sender] += 1
            if len(self.dropped) > self.max_senders:
                self.dropped.clear()
        return ok


@dataclass(frozen=True)
class NpaSettings:
    """What ``npa`` runs with; a SIGHUP reload swaps the live part (:meth:`NpaService.reload`)."""

    atsign: str
    policy: str
    daemon_atsigns: tuple[str, ...] = ()
    audit_log: str | None = None
    self_audit: bool = True
    max_rate: float = 20.0
    log_level: int = logging.WARNING
    key_file: str | None = None
    root: str | None = None
    ca_file: str | None = None

    #: a running service cannot change these (they name it, or were used to log in)
    RESTART_ONLY = ("atsign", "key_file", "root", "ca_file")

    def validate(self) -> None:
        """ConfigError for a broken policy file (parsed, not applied) or a bad rate."""
        from .policy import load_policy

        if not 0 <= self.max_rate <= 1_000_000:
            raise ConfigError(f"--max-rate must be 0-1000000, got {self.max_rate:g}")
        try:
            load_policy(self.policy)
        except OSError as exc:
            raise ConfigError(f"cannot read policy {self.policy}: {exc.strerror}") from None


class NpaService:
    """Monitor P1 requests and D9 heartbeats on ``client`` and answer from ``store``."""

    def __init__(
        self,
        client: Any,  # AtClient (duck-typed: notify, execute, monitor, keys, atsign)
        store: PolicyStore,
        *,
        daemon_atsigns: Iterable[str] = (),
        audit_log: AuditLog | None = None,
        self_audit: bool = True,
        max_inflight: int = 32,
        max_rate: float = 20.0,
        max_devices: int = 10_000,
    ) -> None:
        self.client = client
        self.store = store
        self.daemon_atsigns = frozenset(validate_atsign(a) for a in daemon_atsigns)
        self.audit_log = audit_log
        self.self_audit = self_audit
        self.devices: collections.OrderedDict[tuple[str, str], DeviceSeen] = (
            collections.OrderedDict()
        )
        self.max_devices = max_devices
        self.limiter = RateLimiter(max_rate, max(10.0, 5 * max_rate))
        self.handled = 0
        self._sem = asyncio.Semaphore(max_inflight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_ms = 0

    async def run(self, on_ready: Callable[[], object] | None = None) -> None:
        """Serve until cancelled (or the monitor stops on a fatal authentication error)."""
        mon = self.client.monitor(MONITOR_REGEX)
        try:
            await mon.started(timeout=30.0)
            if on_ready is not None:
                on_ready()
            async for n in mon:
                await self._sem.acquire()
                task = asyncio.get_running_loop().create_task(self._one(n))
                self._tasks.add(task)
                task.add_done_callback(self._done)
        finally:
            await mon.close()
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)

    def reload(self, old: NpaSettings, new: NpaSettings) -> tuple[list[str], list[str]]:
        """Apply a validated ``new`` configuration; returns (changed, needing a restart).

        The policy file is re-read even if unchanged on disk; a new audit log is opened
        before anything changes (an OSError leaves the service as it was). Requests being
        answered finish under the old settings."""
        changed = [
            n
            for n in ("policy", "daemon_atsigns", "audit_log", "self_audit", "max_rate",
                      "log_level")
            if getattr(new, n) != getattr(old, n)
        ]
        restart = [n for n in NpaSettings.RESTART_ONLY if getattr(new, n) != getattr(old, n)]
        if new.policy != old.policy:
            store = PolicyStore(new.policy, clock=self.store.clock)
        else:
            store = self.store
            store.refresh()
        audit = self.audit_log
        if new.audit_log != old.audit_log:
            audit = AuditLog(new.audit_log) if new.audit_log else None
        previous, self.audit_log = self.audit_log, audit
        if previous is not None and previous is not audit:
            previous.close()
        self.store = store
        self.daemon_atsigns = frozenset(validate_atsign(a) for a in new.daemon_atsigns)
        self.self_audit = new.self_audit
        if new.max_rate != old.max_rate:
            self.limiter = RateLimiter(new.max_rate, max(10.0, 5 * new.max_rate))
        logging.getLogger().setLevel(new.log_level)
        return changed, restart

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._sem.release()

    async def _one(self, n: Notification) -> None:
        try:
            await self.dispatch(n)
        except asyncio.CancelledError:
            raise
        except (NoPortsError, OSError) as exc:
            log.warning("handling %s from %s failed: %s", escape(n.key, 120), n.from_atsign, exc)
        except Exception:  # noqa: BLE001 - one bad notification must not stop the service
            log.exception("handling %s from %s failed", escape(n.key, 120), n.from_atsign)

    async def dispatch(self, n: Notification) -> Outcome | None:
        if n.operation != "update" or not n.from_atsign:
            return None
        short = n.short_key
        hb = _HEARTBEAT.match(short)
        if hb is not None:
            self._heartbeat(n.from_atsign, hb.group(1), n.value)
            return None
        if _REQUEST.match(short) and not self.limiter.allow(n.from_atsign):
            count = self.limiter.dropped[n.from_atsign]
            if count == 1 or count % 100 == 0:
                log.warning("rate limit: dropped %d request(s) from %s", count, n.from_atsign)
            return None
        outcome = handle_request(
            self.store, n.from_atsign, short, n.value, daemon_atsigns=self.daemon_atsigns
        )
        if outcome is None:
            return None
        self._record(outcome)  # audited before it is answered: an answered decision is on record
        for reply in outcome.replies:
            await self.client.notify(
                outcome.sender,
                reply.key,
                reply.text(),
                namespace=NAMESPACE,
                ttln_ms=RESPONSE_TTLN_MS,
            )
        self.handled += 1
        if self.self_audit and outcome.replies:
            await self._self_audit(outcome)
        return outcome

    def _heartbeat(self, daemon: str, device: str, value: str | None) -> None:
        if self.daemon_atsigns and daemon not in self.daemon_atsigns:
            return
        info: dict[str, Any] = {}
        with contextlib.suppress(ValueError, TypeError):
            got = json.loads(value or "")
            if isinstance(got, dict):
                info = got
        first = self.devices.pop((daemon, device), None) is None
        self.devices[(daemon, device)] = DeviceSeen(daemon, device, time.time(), info)
        if len(self.devices) > self.max_devices:
            self.devices.popitem(last=False)
        (log.info if first else log.debug)("heartbeat from device %s of %s", device, daemon)

    def _record(self, outcome: Outcome) -> None:
        if self.audit_log is not None:
            try:
                self.audit_log.write(outcome.audit)
            except OSError as exc:
                log.error("cannot write the audit log %s: %s", self.audit_log.path, exc)

    async def _self_audit(self, outcome: Outcome) -> None:
        """P3: the request and the final response, encrypted with our self-encryption key."""
        ms = max(int(self.store.clock() * 1000), self._last_ms + 1)
        self._last_ms = ms
        body = _compact(
            {
                "daemon": outcome.sender,
                "timestamp": ms,
                "payload": {"request": outcome.request, "response": outcome.replies[-1].value()},
            }
        )
        me = self.client.atsign
        iv = aes.new_iv()
        text = aes.encrypt_b64(self.client.keys.self_encryption_key, body, iv)
        wire = commands.key_string(f"{ms}.logs.policy.{NAMESPACE}", me, shared_with=me)
        meta = Metadata(is_encrypted=True, iv_nonce=b64e(iv))
        try:
            await self.client.execute(
                commands.notify(
                    wire,
                    text,
                    id=str(uuid.uuid4()),
                    operation="update",
                    ttln=AUDIT_TTLN_MS,
                    metadata=meta,
                )
            )
        except (NoPortsError, OSError) as exc:
            log.warning("audit notification for request %d failed: %s", outcome.req_id, exc)

"""What ``npa`` shows its operator: Prometheus metrics, readiness and the status page.

Same pattern as the other daemons' observers (the shared half is :class:`noports.metrics.
Observer`): plain integer counters bumped where the service already does the work, one
snapshot per scrape. Names are ``noports_npa_*``, with no atSign labels (cardinality).

Hooks are wrapped around the service's own methods, so the service itself knows nothing of
metrics: every notification the monitor hands over (in), every notification sent (out:
replies and the P3 self-audit), every decision (by result) and every policy (re)load.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from typing import Any

from .. import __version__, _compat, metrics
from ..metrics import Snapshot, client_ready, gauge, labelled

#: request results, always exported (0 until seen)
RESULTS = ("allowed", "denied", "error", "ignored", "rate_limited")


def result_of(outcome: Any) -> str:
    """allowed / denied / error (a nack, or an exception in the decision) / ignored."""
    if not outcome.replies:
        return "ignored"
    if outcome.audit.get("event") in ("npa_nack", "npa_error"):
        return "error"
    final = outcome.replies[-1]
    if final.resp_type != "success":
        return "error"
    return "allowed" if final.payload.get("authorized") else "denied"


class Observer(metrics.Observer):
    """Metrics state of one npa (a :class:`~.service.NpaService`)."""

    def __init__(self, service: Any) -> None:
        super().__init__("npa", "policy service")
        self.service = service
        self.requests: collections.Counter[str] = collections.Counter()
        self.reloads: collections.Counter[str] = collections.Counter()
        self.notifications: collections.Counter[str] = collections.Counter()
        self.monitor_running = False
        self._wrap()

    def _wrap(self) -> None:
        svc, client, store = self.service, self.service.client, self.service.store
        dispatch, record, audit = svc.dispatch, svc._record, svc._self_audit
        notify, allow, load = client.notify, svc.limiter.allow, store._load
        notes, requests = self.notifications, self.requests

        async def counted_dispatch(n: Any) -> Any:
            notes["in"] += 1
            return await dispatch(n)

        async def counted_notify(*args: Any, **kwargs: Any) -> Any:
            notes["out"] += 1
            return await notify(*args, **kwargs)

        async def counted_audit(outcome: Any) -> None:
            notes["out"] += 1
            await audit(outcome)

        def counted_record(outcome: Any) -> None:
            requests[result_of(outcome)] += 1
            record(outcome)

        def counted_allow(sender: str) -> bool:
            ok = bool(allow(sender))
            if not ok:
                requests["rate_limited"] += 1
            return ok

        def counted_load() -> Any:
            before = (store._sig, store.last_error)
            policy = load()
            if policy is not None:
                self.reloads["ok"] += 1
            elif store.last_error and (store._sig, store.last_error) != before:
                self.reloads["error"] += 1
            return policy

        svc.dispatch, svc._record, svc._self_audit = counted_dispatch, counted_record, counted_audit
        client.notify, svc.limiter.allow, store._load = counted_notify, counted_allow, counted_load

    # -- loop-side queries ----------------------------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        return client_ready(self.service.client, self.monitor_running)

    async def snapshot(self) -> Snapshot:
        svc = self.service
        store = svc.store
        now = time.time()
        devices = [
            {"daemon": d.daemon, "device": d.device, "seen_s_ago": int(now - d.at)}
            for d in list(svc.devices.values())[-50:]
        ]
        return {
            "atsign": svc.client.atsign,
            "version": __version__,
            "implementation": _compat.implementation(),
            "summary": {
                "monitor running": self.monitor_running,
                "policy version": store.policy.digest,
                "policy error": store.last_error or "none",
                **{f"requests {r}": self.requests[r] for r in RESULTS},
                "notifications in": self.notifications["in"],
                "notifications out": self.notifications["out"],
                "devices seen": len(svc.devices),
                "uptime s": self.uptime(),
            },
            "sessions": devices,
            "session_columns": ["daemon", "device", "seen_s_ago"],
            "requests": dict(self.requests),
            "reloads": dict(self.reloads),
            "notifications": dict(self.notifications),
            "devices": len(svc.devices),
            "monitor_running": self.monitor_running,
            "policy_ok": store.last_error is None,
        }

    def families(self, snap: Snapshot) -> Iterable[Any]:
        doc = "Auth-check requests by result (allowed, denied, error, ignored, rate_limited)"
        yield labelled("noports_npa_requests", doc, "result", snap.get("requests", {}), RESULTS)
        doc = "Policy file loads after the first, by result (ok, error: the last good kept)"
        yield labelled("noports_npa_policy_reloads", doc, "result", snap.get("reloads", {}),
                       ("ok", "error"))  # fmt: skip
        doc = "Notifications received (in) and sent (out)"
        notes = snap.get("notifications", {})
        yield labelled("noports_npa_notifications", doc, "direction", notes, ("in", "out"))
        running = 1 if snap.get("monitor_running") else 0
        yield gauge("noports_npa_monitor_running", "1 while the notification monitor runs", running)
        doc = "1 when the policy file in use is the file on disk (0: a broken edit, last good kept)"
        yield gauge("noports_npa_policy_ok", doc, 1 if snap.get("policy_ok") else 0)
        doc = "Devices (daemon atSign, device name) seen by heartbeat"
        yield gauge("noports_npa_devices", doc, int(snap.get("devices", 0)))

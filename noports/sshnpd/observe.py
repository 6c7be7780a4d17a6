"""What sshnpd shows its operator: Prometheus metrics, readiness, the status page, session records.

Same pattern as :mod:`noports.srvd.observe`: the daemon keeps plain integer counters (no
Prometheus object on any hot path) and one snapshot is taken on the event loop per scrape.
Names are ``noports_sshnpd_*``, with no atSign labels (cardinality).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from typing import Any

from .. import __version__, _compat, metrics
from ..metrics import Snapshot, client_ready, gauge, labelled

log = logging.getLogger("noports.sshnpd")

#: (substring of the lower-cased reply text, stable reason label), first match wins
_REASONS = (
    ("too many sessions", "busy"),
    ("replay refused", "replay"),
    ("not a signed envelope", "bad_request"),
    ("no valid sessionid", "bad_request"),
    ("signature not verified", "bad_signature"),
    ("requires the noports aead", "aead_required"),
    ("failed to start up the daemon side", "tunnel_failed"),
    ("not permitted", "not_permitted"),
    ("permit", "not_permitted"),
)


def refusal_reason(text: str) -> str:
    """The stable reason label of a :class:`~.sessions.Refusal` reply text."""
    t = text.lower()
    for part, reason in _REASONS:
        if part in t:
            return reason
    return "bad_request"


class Observer(metrics.Observer):
    """Metrics state of one sshnpd."""

    def __init__(self, daemon: Any) -> None:  # a daemon.Daemon (no import: no cycle)
        super().__init__("sshnpd", "daemon")
        self.daemon = daemon
        self.requests: collections.Counter[str] = collections.Counter()
        self.notifications: collections.Counter[str] = collections.Counter()
        #: session id -> (requester, kind, relay, monotonic start)
        self.live: dict[str, tuple[str, str, str, float]] = {}
        self.ended = 0
        self._wrap_notify()

    def _wrap_notify(self) -> None:
        """Count outgoing notifications (every reply, signed or not, goes through notify)."""
        client = self.daemon.client
        inner = client.notify
        counts = self.notifications

        async def notify(*args: Any, **kwargs: Any) -> Any:
            counts["out"] += 1
            return await inner(*args, **kwargs)

        client.notify = notify

    # -- events from the daemon ---------------------------------------------------------------

    def notification_in(self) -> None:
        self.notifications["in"] += 1

    def session_started(self, sid: str, sender: str, kind: str, relay: str) -> None:
        self.live[sid] = (sender, kind, relay, time.monotonic())

    def granted(self) -> None:
        self.requests["granted"] += 1

    def refused(self, sender: str, reason: str, sid: str | None) -> dict[str, Any]:
        if sid is not None:
            self.live.pop(sid, None)
        self.requests[reason] += 1
        self.note_refusal(sender, reason)
        return {
            "event": "session_refused",
            "role": "daemon",
            "session_id": sid,
            "requester": sender,
            "reason": reason,
        }

    def session_ended(self, sid: str, task: asyncio.Task[Any]) -> dict[str, Any] | None:
        """Fields of the one record per session end (None for a session never tracked)."""
        entry = self.live.pop(sid, None)
        if entry is None:
            return None
        self.ended += 1
        sender, kind, relay, t0 = entry
        outcome, stats = "closed", None
        if task.cancelled():
            outcome = "cancelled"
        elif task.exception() is not None:
            outcome = "error"
        else:
            stats = task.result()
        up = getattr(stats, "up", getattr(stats, "bytes_up", None))
        down = getattr(stats, "down", getattr(stats, "bytes_down", None))
        return {
            "event": "session_end",
            "role": "daemon",
            "session_id": sid,
            "requester": sender,
            "atsign_a": sender,
            "atsign_b": self.daemon.cfg.atsign,
            "relay": relay,
            "mode": kind,
            "outcome": outcome,
            "pairs": getattr(stats, "connections", 1 if stats is not None else None),
            # A is the client side, B this device: relay->local is A->B
            "bytes_a_to_b": down,
            "bytes_b_to_a": up,
            "auth_failed": None,
            "duration_s": round(time.monotonic() - t0, 3),
        }

    # -- loop-side queries ----------------------------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        d = self.daemon
        return client_ready(d.client, d.monitor_running, d._stop.is_set())

    async def snapshot(self) -> Snapshot:
        d = self.daemon
        now = time.monotonic()
        sessions = [
            {"session": sid, "requester": s, "mode": k, "relay": r, "age_s": int(now - t0)}
            for sid, (s, k, r, t0) in list(self.live.items())
        ]
        return {
            "atsign": f"{d.cfg.atsign} {d.cfg.device}",
            "version": __version__,
            "implementation": _compat.implementation(),
            "summary": {
                "live sessions": len(d.sessions.tunnels),
                "sessions ended": self.ended,
                "notifications in": self.notifications["in"],
                "notifications out": self.notifications["out"],
                "monitor running": d.monitor_running,
                "uptime s": self.uptime(),
            },
            "sessions": sessions,
            "session_columns": ["session", "requester", "mode", "relay", "age_s"],
            "refusals": list(self.refusals),
            "requests": dict(self.requests),
            "notifications": dict(self.notifications),
            "tunnels": len(d.sessions.tunnels),
            "monitor_running": bool(d.monitor_running),
        }


    def families(self, snap: Snapshot) -> Iterable[Any]:
        yield gauge(
            "noports_sshnpd_sessions_active",
            "Tunnels running on this device now",
            int(snap.get("tunnels", 0)),
        )
        yield gauge(
            "noports_sshnpd_monitor_running",
            "1 while the notification monitor runs",
            1 if snap.get("monitor_running") else 0,
        )
        doc = "Session requests by result (granted, or the refusal reason)"
        yield labelled("noports_sshnpd_session_requests", doc, "result", snap.get("requests", {}))
        doc = "Notifications received (in) and sent (out)"
        notes = snap.get("notifications", {})
        yield labelled("noports_sshnpd_notifications", doc, "direction", notes, ("in", "out"))

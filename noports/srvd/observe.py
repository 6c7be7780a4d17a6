"""What srvd shows its operator: Prometheus metrics, readiness, the status page, session records.

Counting never touches the data path: workers keep plain integer counters (the pumps count
bytes themselves) and report them when the control process asks, once per scrape. The names
follow ``operators.md``: ``noports_relay_*``, no atSign labels (cardinality).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Iterable
from typing import Any

from .. import __version__, _compat, metrics
from ..metrics import Snapshot, counter, gauge, labelled

log = logging.getLogger("noports.srvd")

# set-up: request seen -> reply sent (control process); buckets in seconds
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Observer(metrics.Observer):
    """Metrics state of one srvd control process."""

    def __init__(self, srvd: Any) -> None:  # a daemon.Srvd (no import: no cycle)
        from prometheus_client import Histogram

        super().__init__("srvd", "relay")
        self.srvd = srvd
        self.setup_seconds = Histogram(
            "noports_relay_session_setup_seconds",
            "Time from a session request to the relay's reply being sent",
            buckets=SETUP_BUCKETS,
            registry=self.registry,
        )

    # -- events from the daemon ---------------------------------------------------------------

    def refused(self, sender: str, kind: str, sid: str | None) -> None:
        self.note_refusal(sender, kind)

    # -- loop-side queries ----------------------------------------------------------------

    async def ready(self) -> tuple[bool, str]:
        s = self.srvd
        if s.admission.draining:
            return False, "draining"
        if s.pool is None or not s.pool.workers:
            return False, "workers not started"
        if s.client is None or not s.monitor_running:
            return False, "not logged in to the atServer / monitor not running"
        return True, "ready"

    async def snapshot(self) -> Snapshot:
        s = self.srvd
        workers: list[dict[str, Any]] = []
        if s.pool is not None:
            try:
                workers = await asyncio.wait_for(s.pool.stats(timeout=1.5), 1.8)
            except (asyncio.TimeoutError, TimeoutError, OSError):
                workers = []
        now = time.monotonic()
        sessions = [
            {
                "session": sid,
                "atsign_a": live.atsign_a,
                "atsign_b": live.atsign_b,
                "ports": f"{live.port_a},{live.port_b}",
                "worker": h.index,
                "age_s": int(now - t0),
            }
            for sid, (h, live, t0) in list(s.sessions.items())
        ]
        return {
            "atsign": s.s.atsign,
            "version": __version__,
            "implementation": _compat.implementation(),
            "summary": {
                "live sessions": len(sessions),
                "live pairs": _total(workers, "pairs"),
                "workers": len(workers),
                "pre-auth sockets": _total(workers, "preauth"),
                "bytes A->B": _total(workers, "bytes_ab"),
                "bytes B->A": _total(workers, "bytes_ba"),
                "uptime s": self.uptime(),
                "draining": s.admission.draining,
            },
            "sessions": sessions,
            "session_columns": ["session", "atsign_a", "atsign_b", "ports", "worker", "age_s"],
            "workers": workers,
            "worker_columns": [
                "index",
                "pid",
                "sessions",
                "pairs",
                "preauth",
                "bytes_ab",
                "bytes_ba",
            ],
            "refusals": list(self.refusals),
            "requests": dict(s.results),
        }

    def families(self, snap: Snapshot) -> Iterable[Any]:
        workers = snap.get("workers", [])
        yield gauge(
            "noports_relay_sessions_active",
            "Sessions granted and not yet ended",
            len(snap.get("sessions", [])),
        )
        yield gauge(
            "noports_relay_pairs_active", "Socket pairs being spliced now", _total(workers, "pairs")
        )
        yield gauge(
            "noports_relay_preauth_sockets",
            "Accepted sockets that have not authenticated yet",
            _total(workers, "preauth"),
        )
        doc = "Session requests by result"
        yield labelled("noports_relay_session_requests", doc, "result", snap.get("requests", {}))
        moved = {"a_to_b": _total(workers, "bytes_ab"), "b_to_a": _total(workers, "bytes_ba")}
        doc = "Bytes relayed, by direction (A->B is client to daemon)"
        yield labelled("noports_relay_bytes", doc, "direction", moved)
        reasons: collections.Counter[str] = collections.Counter()
        for w in workers:
            reasons.update({str(k): int(v) for k, v in (w.get("auth_failures") or {}).items()})
        doc = "Relay authentication failures by reason"
        yield labelled("noports_relay_auth_failures", doc, "reason", reasons)
        yield counter("noports_relay_pairs", "Socket pairs formed", _total(workers, "pairs_total"))
        for name, what in (
            ("noports_relay_worker_sessions", "sessions"),
            ("noports_relay_worker_pairs", "pairs"),
        ):
            per = {str(w.get("index")): int(w.get(what, 0)) for w in workers}
            yield labelled(name, f"Live {what} per data worker", "worker", per, kind="gauge")
        yield gauge("noports_relay_workers", "Data worker processes up", len(workers))


def _total(workers: list[dict[str, Any]], key: str) -> int:
    return sum(int(w.get(key, 0)) for w in workers)


def session_fields(sid: str, live: Any, msg: dict[str, Any], duration: float) -> dict[str, Any]:
    """Structured fields of the one record per session end (stable names; see README)."""
    return {
        "event": "session_end",
        "role": "relay",
        "session_id": sid,
        "atsign_a": live.atsign_a,
        "atsign_b": live.atsign_b,
        "mode": "ports",
        "outcome": msg.get("outcome"),
        "pairs": msg.get("pairs"),
        "bytes_a_to_b": msg.get("bytes_ab"),
        "bytes_b_to_a": msg.get("bytes_ba"),
        "auth_failed": msg.get("auth_failed"),
        "duration_s": round(duration, 3),
    }


def refusal_fields(sender: str, kind: str, sid: str | None) -> dict[str, Any]:
    """Structured fields of the record of a refused session request."""
    return {
        "event": "session_refused",
        "role": "relay",
        "session_id": sid,
        "requester": sender,
        "reason": kind,
    }

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
from typing import Any

from .. import __version__, _compat
from ..metrics import Endpoint, Snapshot

log = logging.getLogger("noports.srvd")

# set-up: request seen -> reply sent (control process); buckets in seconds
SETUP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
RECENT_REFUSALS = 20


class Observer:
    """Metrics state of one srvd control process."""

    def __init__(self, srvd: Any) -> None:  # a daemon.Srvd (no import: no cycle)
        from prometheus_client import CollectorRegistry, Histogram
        from prometheus_client.core import GaugeMetricFamily  # noqa: F401 - import check

        self.srvd = srvd
        self.registry = CollectorRegistry(auto_describe=False)
        self.setup_seconds = Histogram(
            "noports_relay_session_setup_seconds",
            "Time from a session request to the relay's reply being sent",
            buckets=SETUP_BUCKETS,
            registry=self.registry,
        )
        self.refusals: collections.deque[dict[str, str]] = collections.deque(maxlen=RECENT_REFUSALS)
        self.started = time.time()
        self.endpoint: Endpoint | None = None
        self._last: Snapshot = {}
        self.registry.register(_Collector(self))  # type: ignore[arg-type]  # duck-typed Collector

    def start(self, address: str) -> tuple[str, int]:
        self.endpoint = Endpoint(
            address,
            loop=asyncio.get_running_loop(),
            program="srvd",
            registry=self.registry,
            ready=self.ready,
            snapshot=self.snapshot,
        )
        return self.endpoint.start()

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()

    # -- events from the daemon ---------------------------------------------------------------

    def refused(self, sender: str, kind: str, sid: str | None) -> None:
        self.refusals.appendleft(
            {"time": time.strftime("%H:%M:%S"), "requester": sender, "reason": kind}
        )

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
        bytes_ab = sum(int(w.get("bytes_ab", 0)) for w in workers)
        bytes_ba = sum(int(w.get("bytes_ba", 0)) for w in workers)
        snap: Snapshot = {
            "atsign": s.s.atsign,
            "version": __version__,
            "implementation": _compat.implementation(),
            "summary": {
                "live sessions": len(sessions),
                "live pairs": sum(int(w.get("pairs", 0)) for w in workers),
                "workers": len(workers),
                "pre-auth sockets": sum(int(w.get("preauth", 0)) for w in workers),
                "bytes A->B": bytes_ab,
                "bytes B->A": bytes_ba,
                "uptime s": int(time.time() - self.started),
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
        self._last = snap
        return snap


class _Collector:
    """One snapshot per scrape, turned into metric families."""

    def __init__(self, obs: Observer) -> None:
        self.obs = obs

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        ep = self.obs.endpoint
        snap = ep.snapshot() if ep is not None else {}
        workers = snap.get("workers", [])
        info = InfoMetricFamily("noports_build", "Version and implementation of this relay")
        info.add_metric([], {"version": __version__, "implementation": _compat.implementation()})
        yield info
        yield GaugeMetricFamily(
            "noports_relay_sessions_active",
            "Sessions granted and not yet ended",
            value=len(snap.get("sessions", [])),
        )
        yield GaugeMetricFamily(
            "noports_relay_pairs_active",
            "Socket pairs being spliced now",
            value=sum(int(w.get("pairs", 0)) for w in workers),
        )
        yield GaugeMetricFamily(
            "noports_relay_preauth_sockets",
            "Accepted sockets that have not authenticated yet",
            value=sum(int(w.get("preauth", 0)) for w in workers),
        )
        req = CounterMetricFamily(
            "noports_relay_session_requests", "Session requests by result", labels=["result"]
        )
        for result, n in sorted(snap.get("requests", {}).items()):
            req.add_metric([result], n)
        yield req
        b = CounterMetricFamily(
            "noports_relay_bytes",
            "Bytes relayed, by direction (A->B is client to daemon)",
            labels=["direction"],
        )
        b.add_metric(["a_to_b"], sum(int(w.get("bytes_ab", 0)) for w in workers))
        b.add_metric(["b_to_a"], sum(int(w.get("bytes_ba", 0)) for w in workers))
        yield b
        fails = CounterMetricFamily(
            "noports_relay_auth_failures",
            "Relay authentication failures by reason",
            labels=["reason"],
        )
        reasons: collections.Counter[str] = collections.Counter()
        for w in workers:
            reasons.update({str(k): int(v) for k, v in (w.get("auth_failures") or {}).items()})
        for reason, n in sorted(reasons.items()):
            fails.add_metric([reason], n)
        yield fails
        pairs = CounterMetricFamily("noports_relay_pairs", "Socket pairs formed")
        pairs.add_metric([], sum(int(w.get("pairs_total", 0)) for w in workers))
        yield pairs
        ws = GaugeMetricFamily(
            "noports_relay_worker_sessions", "Live sessions per data worker", labels=["worker"]
        )
        wp = GaugeMetricFamily(
            "noports_relay_worker_pairs", "Live pairs per data worker", labels=["worker"]
        )
        for w in workers:
            ws.add_metric([str(w.get("index"))], int(w.get("sessions", 0)))
            wp.add_metric([str(w.get("index"))], int(w.get("pairs", 0)))
        yield ws
        yield wp
        yield GaugeMetricFamily(
            "noports_relay_workers", "Data worker processes up", value=len(workers)
        )


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

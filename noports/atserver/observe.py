"""What ``noports server`` shows its operator: metrics, readiness and a status page.

Same pattern as :mod:`noports.srvd.observe`: nothing is counted per request in Prometheus
objects; one snapshot of the server's own state (connection sets, the hub's delivery count,
the hosted atSigns) is taken on the event loop per scrape. Names are ``noports_atserver_*``,
with no atSign labels (cardinality).
"""

from __future__ import annotations

from typing import Any

from .. import __version__, _compat
from ..metrics import Endpoint, Snapshot


class Observer:
    """Metrics state of one embedded server (a :class:`~.net.AtServer`)."""

    def __init__(self, server: Any) -> None:
        from prometheus_client import CollectorRegistry

        self.server = server
        self.registry = CollectorRegistry(auto_describe=False)
        self.endpoint: Endpoint | None = None
        self.registry.register(_Collector(self))  # type: ignore[arg-type]  # duck-typed Collector

    def start(self, address: str, loop: Any) -> tuple[str, int]:
        """Serve on ``address``; ``loop`` is the server's running event loop (this module is
        sans-IO: the I/O lives in :mod:`noports.metrics`)."""
        self.endpoint = Endpoint(
            address,
            loop=loop,
            program="noports server",
            registry=self.registry,
            ready=self.ready,
            snapshot=self.snapshot,
        )
        return self.endpoint.start()

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    async def ready(self) -> tuple[bool, str]:
        srv = self.server._server
        if srv is None or not srv.is_serving():
            return False, "not listening"
        return True, "ready"

    async def snapshot(self) -> Snapshot:
        s = self.server
        conns = [c for c in list(s.conns) if not c.closed]
        unauth = len(s.unauth)
        authed = [
            c.session.atsign
            for c in conns
            if c.session is not None and c.session.authed and c.session.atsign
        ]
        hosted = s.store.atsigns()
        engine = s.engine
        return {
            "atsign": s.root,
            "version": __version__,
            "implementation": _compat.implementation(),
            "summary": {
                "listening": s.root,
                "connections authenticated": len(authed),
                "connections unauthenticated": unauth,
                "atSigns hosted": len(hosted),
                "atSigns connected": len(set(authed)),
                "live monitors": len(engine.hub.monitors()),
                "notifications delivered": engine.hub.delivered,
                "pre-auth evictions": s.evicted,
                # the engine's injected clock, as info's uptime (no second wall clock here)
                "uptime s": (engine.clock() - engine.started_ms) // 1000,
            },
            "sessions": [],
            "session_columns": [],
            "connections": {"authenticated": len(authed), "unauthenticated": unauth},
            "atsigns_hosted": len(hosted),
            "atsigns_connected": len(set(authed)),
            "monitors": len(engine.hub.monitors()),
            "delivered": engine.hub.delivered,
            "evicted": s.evicted,
        }


class _Collector:
    def __init__(self, obs: Observer) -> None:
        self.obs = obs

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        ep = self.obs.endpoint
        snap = ep.snapshot() if ep is not None else {}
        info = InfoMetricFamily("noports_build", "Version and implementation of this server")
        info.add_metric([], {"version": __version__, "implementation": _compat.implementation()})
        yield info
        conns = GaugeMetricFamily(
            "noports_atserver_connections", "Open client connections", labels=["state"]
        )
        for state in ("authenticated", "unauthenticated"):
            conns.add_metric([state], int(snap.get("connections", {}).get(state, 0)))
        yield conns
        yield GaugeMetricFamily(
            "noports_atserver_atsigns_hosted",
            "atSigns this server hosts",
            value=int(snap.get("atsigns_hosted", 0)),
        )
        yield GaugeMetricFamily(
            "noports_atserver_atsigns_connected",
            "Distinct atSigns with an authenticated connection now",
            value=int(snap.get("atsigns_connected", 0)),
        )
        yield GaugeMetricFamily(
            "noports_atserver_monitors",
            "Live monitor connections",
            value=int(snap.get("monitors", 0)),
        )
        delivered = CounterMetricFamily(
            "noports_atserver_notifications_delivered",
            "Notifications pushed to live monitors",
        )
        delivered.add_metric([], int(snap.get("delivered", 0)))
        yield delivered
        evicted = CounterMetricFamily(
            "noports_atserver_preauth_evictions",
            "Unauthenticated connections shed by the pre-auth limits",
        )
        evicted.add_metric([], int(snap.get("evicted", 0)))
        yield evicted

"""What ``noports server`` shows its operator: metrics, readiness and a status page.

Same pattern as :mod:`noports.srvd.observe`: nothing is counted per request in Prometheus
objects; one snapshot of the server's own state (connection sets, the hub's delivery count,
the hosted atSigns) is taken on the event loop per scrape. Names are ``noports_atserver_*``,
with no atSign labels (cardinality).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import __version__, _compat, metrics
from ..metrics import Snapshot, counter, gauge, labelled


class Observer(metrics.Observer):
    """Metrics state of one embedded server (a :class:`~.net.AtServer`).

    ``start(address, loop)`` is given the server's running loop: this module is sans-IO (the
    I/O lives in :mod:`noports.metrics`)."""

    def __init__(self, server: Any) -> None:
        super().__init__("noports server", "server")
        self.server = server

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

    def families(self, snap: Snapshot) -> Iterable[Any]:
        states = ("authenticated", "unauthenticated")
        conns = snap.get("connections", {})
        doc = "Open client connections"
        yield labelled("noports_atserver_connections", doc, "state", conns, states, kind="gauge")
        for name, doc, key in (
            ("noports_atserver_atsigns_hosted", "atSigns this server hosts", "atsigns_hosted"),
            (
                "noports_atserver_atsigns_connected",
                "Distinct atSigns with an authenticated connection now",
                "atsigns_connected",
            ),
            ("noports_atserver_monitors", "Live monitor connections", "monitors"),
        ):
            yield gauge(name, doc, int(snap.get(key, 0)))
        yield counter(
            "noports_atserver_notifications_delivered",
            "Notifications pushed to live monitors",
            int(snap.get("delivered", 0)),
        )
        yield counter(
            "noports_atserver_preauth_evictions",
            "Unauthenticated connections shed by the pre-auth limits",
            int(snap.get("evicted", 0)),
        )

"""The Grafana dashboards under packaging/grafana: well-formed, and every query names only
metrics our observers export (the live processes' scrapes are checked against the same
dashboards in test_{srvd,sshnpd,server,npa}_metrics.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.metrics_support import GRAFANA, dashboard_exprs, dashboard_families, family

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted(p.stem for p in GRAFANA.glob("*.json"))


def exported_in_source() -> set[str]:
    names = {"noports_build"}
    for path in (ROOT / "noports").rglob("observe.py"):
        names |= {family(n) for n in re.findall(r'"(noports_[a-z_]+)"', path.read_text())}
    return names


def test_every_daemon_has_a_dashboard() -> None:
    assert {"noports-srvd", "noports-sshnpd", "noports-atserver", "noports-npa"} <= set(
        DASHBOARDS
    )


@pytest.mark.parametrize("name", DASHBOARDS)
def test_dashboard_is_well_formed_and_queries_only_exported_metrics(name: str) -> None:
    dash = json.loads((GRAFANA / f"{name}.json").read_text())
    assert dash["uid"] == name and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), ids
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        xs, ys = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in xs for y in ys}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert p["targets"] and all(t["expr"] for t in p["targets"]), p["title"]
    for e in dashboard_exprs(name):
        assert e.count("(") == e.count(")") and e.count("{") == e.count("}"), e
    used = dashboard_families(name)
    missing = used - exported_in_source()
    assert used and not missing, missing

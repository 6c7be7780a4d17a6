"""Shared by the ``--metrics`` tests: scrape helpers and a real Prometheus (Debian's package).

``Prometheus`` starts ``/usr/bin/prometheus`` on loopback with a 1 s scrape interval for the
given targets and answers instant queries through its HTTP API; ``PROMETHEUS`` is None where
the package is missing (the tests skip with that reason).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.path.exists("/usr/bin/prometheus") else None
)
NO_PROMETHEUS = "Debian's prometheus package is not installed (/usr/bin/prometheus)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample in Prometheus text format (``labels`` as written, or empty)."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    raise AssertionError(f"{want} not in metrics:\n{text}")


def healthy_and_ready(base: str) -> str:
    """Assert ``/healthz`` and ``/readyz`` answer 200 at ``base``; return one ``/metrics``."""
    status, body = get(base + "/healthz")
    assert status == 200 and body.startswith("ok"), body
    status, body = get(base + "/readyz")
    assert status == 200 and body.strip() == "ready", body
    return get(base + "/metrics")[1]


class Prometheus:
    """A real Prometheus scraping ``targets`` (job name -> ``host:port``) every second."""

    def __init__(self, tmp: Path, targets: dict[str, str]) -> None:
        assert PROMETHEUS is not None, NO_PROMETHEUS
        self.port = free_port()
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{addr}']\n"
            for job, addr in targets.items()
        )
        cfg = tmp / "prometheus.yml"
        cfg.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n" + jobs
        )
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={cfg}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def __enter__(self) -> Prometheus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def query(self, q: str) -> list[Any]:
        """The instant vector of ``q`` ([] while Prometheus starts or has not scraped yet)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        try:
            status, body = get(url)
        except OSError:
            return []
        if status != 200:
            return []
        return list(json.loads(body)["data"]["result"])

    def wait_value(
        self, q: str, ok: Callable[[float], bool], timeout: float = 30.0
    ) -> float:
        """Poll ``q`` until its first sample's value satisfies ``ok``; assert on the deadline."""
        deadline = time.monotonic() + timeout
        got: list[Any] = []
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else ""
            got = self.query(q)
            if got and ok(float(got[0]["value"][1])):
                return float(got[0]["value"][1])
            time.sleep(0.3)
        raise AssertionError(f"prometheus: {q} never satisfied the test: {got}")


GRAFANA = Path(__file__).resolve().parents[1] / "packaging" / "grafana"
_SUFFIX = re.compile(r"_(bucket|count|sum|total|info|created)$")


def family(name: str) -> str:
    """``noports_x_total`` / ``_bucket`` / ``_info``... -> the family name ``noports_x``."""
    return _SUFFIX.sub("", name)


def dashboard_exprs(name: str) -> list[str]:
    """Every query of ``packaging/grafana/<name>.json`` (panels and template variables)."""
    dash = json.loads((GRAFANA / f"{name}.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return exprs


def dashboard_families(name: str) -> set[str]:
    return {family(m) for e in dashboard_exprs(name) for m in re.findall(r"\bnoports_\w+", e)}


def scraped_families(text: str) -> set[str]:
    """Families in one ``/metrics`` text: from HELP/TYPE lines and from sample names."""
    out = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            out.add(family(line.split()[2]))
        elif line and not line.startswith("#"):
            out.add(family(re.split(r"[{ ]", line, maxsplit=1)[0]))
    return out


def assert_dashboard_matches(name: str, text: str) -> None:
    """Every metric the dashboard queries is one the live process exported in ``text``."""
    used = dashboard_families(name)
    assert used, f"{name}: no noports_* metric in any query"
    missing = used - scraped_families(text)
    assert not missing, f"{name} queries metrics the process does not export: {missing}"

"""``bench/run.py --check``: which figures it judges and when it calls a regression (on
synthetic results; the benchmarks themselves run with ``python bench/run.py``)."""

from __future__ import annotations

import json
from pathlib import Path

from bench import run


def _data(rows: list[dict]) -> dict:
    first, *more = rows
    return {"benchmarks": [{"params": {"impl": "c"}, "extra_info": {**first, "more_rows": more}}]}


def _row(metric: str, value: float, unit: str, **kw: object) -> dict:
    return {"scenario": "s", "metric": metric, "value": value, "unit": unit, **kw}


ROWS = [
    _row("end CPU s/GB", 0.6, "s/GB", higher_is_better=False),
    _row("GB/s", 0.5, "GB/s", baseline="ssh", baseline_value=0.4, ratio=1.25, target=">= 1.25x"),
    _row(
        "p50 RTT",
        1000.0,
        "us",
        baseline="ssh",
        ratio=0.2,
        higher_is_better=False,
        target="<= ssh -L (<= 1x)",
    ),
    _row("p99 RTT", 9000.0, "us", baseline="ssh", ratio=0.5, higher_is_better=False),
    _row("median RTT, direct", 16.0, "us", higher_is_better=False),
]


def test_check_judges_cpu_and_ratios_only(tmp_path: Path) -> None:
    base = tmp_path / "b.json"
    assert run.update_baseline(_data(ROWS), base) == 3  # not the p99, not a bare wall time
    bad, report = run.check(_data(ROWS), base)
    assert bad == 0, report


def test_check_flags_a_regression_beyond_tolerance_and_target(tmp_path: Path) -> None:
    base = tmp_path / "b.json"
    run.update_baseline(_data(ROWS), base)
    worse = json.loads(json.dumps(ROWS))
    worse[0]["value"] = 0.6 * (1 + run.TOLERANCE["cpu"]) * 1.1  # CPU up beyond tolerance
    worse[2]["ratio"] = 1.2  # much worse than 0.2, but within tolerance of the target (<= 1x)
    worse[3]["ratio"] = 50.0  # tails are not judged
    bad, report = run.check(_data(worse), base)
    assert bad == 1 and "REGRESSED cpu" in report, report
    worse[2]["ratio"] = 1 + run.TOLERANCE["ratio"] + 0.1  # now beyond the target's tolerance
    bad, report = run.check(_data(worse), base)
    assert bad == 2, report


def test_check_without_baseline_fails(tmp_path: Path) -> None:
    bad, report = run.check(_data(ROWS), tmp_path / "missing.json")
    assert bad and "no baseline" in report


def test_memory_near_zero_has_an_absolute_slack(tmp_path: Path) -> None:
    """RSS moves in 4 KiB pages: an idle pair's share that went from 0.02 to 0.03 KiB is not
    a regression, while a KiB figure that grew beyond tolerance and slack is."""
    base = tmp_path / "b.json"
    rows = [_row("RSS per idle pair", 0.02, "KiB", higher_is_better=False),
            _row("RSS per pair", 5.0, "KiB", higher_is_better=False)]
    run.update_baseline(_data(rows), base)
    later = json.loads(json.dumps(rows))
    later[0]["value"] = 0.02 + run.KIB_SLACK * 0.9
    bad, report = run.check(_data(later), base)
    assert bad == 0, report
    later[1]["value"] = 5.0 * (1 + run.TOLERANCE["cpu"]) + 0.1
    bad, report = run.check(_data(later), base)
    assert bad == 1 and "RSS per pair:" in report, report

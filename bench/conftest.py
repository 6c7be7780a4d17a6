"""Benchmarks: not part of the default test run (testpaths = tests). Run with
``python bench/run.py`` which prints the ratio table.

Every benchmark measures its baseline side by side in the same run and stores the figures in
``benchmark.extra_info`` (see ``record``) so the table is ratios, not absolute timings.
"""

from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")

from tests.conftest import impl, keys, loop_kind, run  # noqa: E402,F401  (shared fixtures)


def record(
    benchmark,
    *,
    scenario: str,
    metric: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    target: str | None = None,
    higher_is_better: bool = True,
    **extra: object,
) -> None:
    """Attach one row of the results table to a benchmark.

    The first call fills the benchmark's own row; further calls on the same benchmark add
    rows to ``extra_info["more_rows"]`` (one scenario measured several ways side by side).
    """
    ratio = None
    if baseline_value:
        ratio = value / baseline_value
    row = {
        "scenario": scenario,
        "metric": metric,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": target,
        "higher_is_better": higher_is_better,
        **extra,
    }
    if "scenario" in benchmark.extra_info:
        benchmark.extra_info.setdefault("more_rows", []).append(row)
    else:
        benchmark.extra_info.update(row)

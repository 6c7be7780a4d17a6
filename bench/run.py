"""Run the benchmark suite once and print the table of figures and ratios.

    python bench/run.py            # everything (several minutes)
    python bench/run.py -k relay   # a subset (pytest -k expression)
    python bench/run.py --json out.json
    python bench/run.py --quick    # smaller transfers, fewer rounds (a smoke run)
    python bench/run.py -k "test_relay or test_tunnel" --quick --check   # the guard (CI)
    python bench/run.py ... --update-baseline    # store this run's figures as the baseline

``--check`` compares the CPU-time rows (s/GB, us of CPU, KiB per pair) and the side-by-side
ratios (never a bare wall time) with ``bench/baseline.json`` and exits non-zero when one
regressed beyond its tolerance; rows the baseline does not know are listed, not judged. The
targets are shown as met or missed.

Each row: scenario, implementation, measured value, the baseline measured side by side in
the same run, the ratio, and the DESIGN.md target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, {cpu}, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def revision() -> str:
    """The commit measured (``-dirty`` when the working tree has local changes)."""
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=HERE.parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def load_average() -> str:
    try:
        return ", ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def fmt(v: object, unit: str = "") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        s = f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    else:
        s = str(v)
    return f"{s} {unit}".strip()


def table(data: dict) -> str:
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if "scenario" not in info:
            continue
        params = b.get("params") or {}
        for x in [info, *info.get("more_rows", [])]:
            impl = params.get("impl") or x.get("impl") or "-"
            loop = params.get("loop_kind") or x.get("loop") or ""
            rows.append(
                [
                    x["scenario"],
                    f"{impl}{'/' + loop if loop else ''}",
                    x["metric"],
                    fmt(x["value"], x["unit"]),
                    x.get("baseline") or "-",
                    fmt(x.get("baseline_value"), x["unit"] if x.get("baseline_value") else ""),
                    fmt(x.get("ratio")) + ("x" if x.get("ratio") is not None else ""),
                    x.get("target") or "-",
                ]
            )
    head = ["scenario", "impl", "metric", "value", "baseline", "baseline value", "ratio", "target"]
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True))  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(r) for r in rows]
    return "\n".join(out)


BASELINE = HERE / "baseline.json"
# relative tolerance before a change counts as a regression: CPU figures held within ~15%
# between runs on a shared 2-core VM, ratios of wall times moved by up to 2x
TOLERANCE = {"cpu": 0.35, "ratio": 0.6}
# and an absolute one for memory (KiB per pair or session): RSS moves in 4 KiB pages, so a
# figure near zero (an idle pair's share of a session) has no meaningful relative tolerance
KIB_SLACK = 0.5


def rows_of(data: dict) -> list[dict]:
    out = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info") or {}
        if "scenario" not in info:
            continue
        params = b.get("params") or {}
        for x in [info, *info.get("more_rows", [])]:
            impl = params.get("impl") or x.get("impl") or "-"
            out.append({**x, "impl": impl})
    return out


def guarded(row: dict) -> tuple[str, float] | None:
    """(kind, figure) for a row the check judges: CPU time or memory per unit of work (its
    value), or a ratio against a baseline measured in the same run; None for wall times."""
    unit, metric = row.get("unit") or "", row.get("metric") or ""
    if "p99" in metric or "p95" in metric:
        return None  # tails follow the other tenants of the machine (10x between runs)
    if unit in ("s/GB", "KiB") or ("CPU" in metric and unit in ("us", "ms", "%")):
        if unit == "%":
            return None  # idle CPU: ~0, a relative tolerance means nothing
        return "cpu", float(row["value"])
    if row.get("ratio") is not None:
        return "ratio", float(row["ratio"])
    return None


def row_key(row: dict) -> str:
    vs = f" vs {row['baseline']}" if row.get("baseline") else ""
    return f"{row['scenario']} | {row['impl']} | {row['metric']}{vs}"


def target_bound(row: dict) -> tuple[str, float, bool] | None:
    """(op, bound, on the ratio) for a target of the form '<= N[x| unit]' or '>= N[x]'."""
    import re

    t = row.get("target") or ""
    m = re.search(r"(<=|>=)\s*([0-9.]+)\s*(x?)", t.split("(")[-1] if "(" in t else t)
    if not m:
        return None
    return m.group(1), float(m.group(2)), m.group(3) == "x"


def target_status(row: dict) -> str:
    """'met', 'missed' or '' (no target of a form we read)."""
    tb = target_bound(row)
    if tb is None:
        return ""
    op, bound, on_ratio = tb
    fig = row.get("ratio") if on_ratio else row.get("value")
    if fig is None:
        return ""
    ok = fig <= bound if op == "<=" else fig >= bound
    return "met" if ok else "missed"


def check(data: dict, baseline_path: Path = BASELINE) -> tuple[int, str]:
    """(number of regressions, report)."""
    try:
        base = json.loads(baseline_path.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return 1, f"no baseline at {baseline_path} (run with --update-baseline first)"
    lines, bad = [], 0
    for row in rows_of(data):
        g = guarded(row)
        ts = target_status(row)
        key = row_key(row)
        if g is None:
            if ts:
                lines.append(f"  target {ts:6}  {key}")
            continue
        kind, fig = g
        ref = base.get(key)
        if ref is None:
            lines.append(f"  new            {key}: {fmt(fig)} (not in the baseline)")
            continue
        tol = TOLERANCE[kind]
        hib = bool(row.get("higher_is_better", True))
        limit = ref["figure"] * (1 - tol) if hib else ref["figure"] * (1 + tol)
        tb = target_bound(row)
        if tb is not None and tb[2] == (kind == "ratio"):
            # a figure within the tolerance of its target is no regression, however far it
            # moved from the baseline (a loaded machine moves ratios of wall times by 2x)
            bound = tb[1] * (1 - tol) if tb[0] == ">=" else tb[1] * (1 + tol)
            limit = min(limit, bound) if tb[0] == ">=" else max(limit, bound)
        if row.get("unit") == "KiB" and not hib:
            limit = max(limit, ref["figure"] + KIB_SLACK)
        regressed = fig < limit if hib else fig > limit
        bad += regressed
        verdict = "REGRESSED" if regressed else "ok"
        lines.append(
            f"  {verdict:9} {kind:5}  {key}: {fmt(fig)} (baseline {fmt(ref['figure'])}, "
            f"limit {fmt(limit)}){'  target ' + ts if ts else ''}"
        )
    lines.append(f"{bad} regression(s) against {baseline_path.name}")
    return bad, "\n".join(lines)


def update_baseline(data: dict, baseline_path: Path = BASELINE) -> int:
    try:
        doc = json.loads(baseline_path.read_text())
    except (OSError, ValueError):
        doc = {}
    rows = doc.get("rows", {})
    n = 0
    for row in rows_of(data):
        g = guarded(row)
        if g is not None:
            rows[row_key(row)] = {"kind": g[0], "figure": g[1]}
            n += 1
    doc = {
        "machine": machine(),
        "revision": revision(),
        "load": load_average(),
        "rows": dict(sorted(rows.items())),
    }
    baseline_path.write_text(json.dumps(doc, indent=1) + "\n")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-k", default=None, help="pytest -k expression to select benchmarks")
    ap.add_argument("--json", default=None, help="also keep pytest-benchmark's JSON here")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller transfers and fewer rounds (NOPORTS_BENCH_QUICK=1): a smoke run",
    )
    ap.add_argument(
        "--check",
        action="store_true",
        help="fail (exit 1) when a CPU or ratio figure regressed against bench/baseline.json",
    )
    ap.add_argument(
        "--update-baseline",
        action="store_true",
        help="store this run's CPU and ratio figures in bench/baseline.json",
    )
    ap.add_argument(
        "--from-json",
        default=None,
        help="do not run: print (and --check) the results kept with --json",
    )
    args = ap.parse_args(argv)
    if args.quick:
        os.environ["NOPORTS_BENCH_QUICK"] = "1"
    if args.from_json:
        data = json.loads(Path(args.from_json).read_text())
        print(table(data))
        return _finish(args, data, 0)
    out = Path(args.json) if args.json else Path(tempfile.mkstemp(suffix=".json")[1])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-only",
        f"--benchmark-json={out}",
        "--benchmark-disable-gc",
        "--timeout=1800",
    ]
    if args.k:
        cmd += ["-k", args.k]
    rc = subprocess.call(cmd, cwd=HERE.parent)
    try:
        data = json.loads(out.read_text())
    except (OSError, ValueError):
        print("no benchmark results", file=sys.stderr)
        return rc or 1
    print()
    print(f"Machine: {machine()}")
    print(f"Load average at the end (1/5/15 min): {load_average()}")
    print(f"Revision: {revision()}")
    print(table(data))
    return _finish(args, data, rc)


def _finish(args: argparse.Namespace, data: dict, rc: int) -> int:
    if args.update_baseline:
        print(f"baseline: {update_baseline(data)} figures stored in {BASELINE}")
    if args.check:
        bad, report = check(data)
        print()
        print("Check against the stored baseline (CPU and ratio figures only):")
        print(report)
        if bad:
            return rc or 1
    return rc


if __name__ == "__main__":
    sys.exit(main())

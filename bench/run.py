"""Run the benchmark suite once and print the table of figures and ratios.

    python bench/run.py            # everything (several minutes)
    python bench/run.py -k relay   # a subset (pytest -k expression)
    python bench/run.py --json out.json
    python bench/run.py --quick    # smaller transfers, fewer rounds (a smoke run)

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
    args = ap.parse_args(argv)
    if args.quick:
        os.environ["NOPORTS_BENCH_QUICK"] = "1"
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
    return rc


if __name__ == "__main__":
    sys.exit(main())

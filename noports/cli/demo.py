"""``noports demo``: the whole data path on one machine, in one process, in seconds.

The command line and the report; the demo itself is :mod:`noports.quickstart.demo`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

from .. import _compat
from ..crypto.records import SUITE_LABELS, default_suite
from ..log import setup_logging
from ..quickstart.demo import Report, percentile, run_demo
from .common import add_common, fail


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units else (t, "")
    try:
        n = int(float(num) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 64M, 1G)") from None
    if n <= 0:
        raise argparse.ArgumentTypeError("size must be positive")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="noports demo", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mode",
        choices=("aead", "twin", "legacy"),
        default="aead",
        help="tunnel cipher: aead (strong mode, default), twin (AES-CTR per direction), "
        "legacy (official snapshot AES-CTR)",
    )
    p.add_argument(
        "--size", type=parse_size, default=parse_size("64M"), help="bulk bytes (default 64M)"
    )
    p.add_argument("--pings", type=int, default=2000, help="ping-pong round trips (default 2000)")
    p.add_argument(
        "--impl", choices=("c", "py"), default=None, help="transfer loop (default: compiled)"
    )
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default=None, help="event loop")
    add_common(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args)
    stray: list[str] = []

    async def guarded() -> Report:
        rep = await run_demo(args.mode, args.size, args.pings, args.impl)
        await asyncio.sleep(0)
        me = asyncio.current_task()
        stray.extend(repr(t) for t in asyncio.all_tasks() if t is not me and not t.done())
        return rep

    try:
        rep = _compat.run(guarded(), loop=args.loop)
    except Exception as exc:  # noqa: BLE001
        return fail("noports demo", exc)
    x = _compat.speedups("xfer", args.impl)
    impl = "compiled (Cython)" if x.__name__.endswith("_c") else "pure Python"
    mode = {
        "aead": f"AEAD records, {SUITE_LABELS[default_suite()]}, HKDF keys per direction",
        "twin": "AES-256-CTR, twin keys (one key and IV per direction)",
        "legacy": "AES-256-CTR, legacy (same key and IV both ways)",
    }[rep.mode]
    mib = rep.bulk_bytes / (1 << 20)
    print("noports demo: relay (auth on) + daemon end + client end + local service, one process")
    print(f"  mode            {mode}")
    print(f"  transfer loop   {impl}; event loop {_compat.loop_name(args.loop)}")
    rate = rep.bulk_bytes / rep.bulk_seconds / 1e6
    check = "OK" if rep.digest_ok else "MISMATCH"
    med, p99 = statistics.median(rep.rtt_us), percentile(rep.rtt_us, 0.99)
    direct = statistics.median(rep.direct_rtt_us)
    secs = rep.bulk_seconds
    print(f"  bulk            {mib:.0f} MiB in {secs:.2f} s = {rate:.0f} MB/s; sha256 {check}")
    print(
        f"  ping-pong 64 B  tunnel median {med:.0f} us, p99 {p99:.0f} us "
        f"({len(rep.rtt_us)} round trips); direct median {direct:.0f} us"
    )
    if stray:
        print(f"  stray tasks     {len(stray)}: {stray[:3]}", file=sys.stderr)
        return 1
    return 0 if rep.digest_ok else 6


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

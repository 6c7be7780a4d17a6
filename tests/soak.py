"""Soak: churn relay pairs and atServer connections for a set time; report fd, task and RSS
slopes (separate from the default test run).

    python -m tests.soak --minutes 10 [--pairs 200] [--conns 50]

Two real things run on loopback: a Relay (in this process, real sockets; each pair is the
data path of one tunnel: both sides authenticate, exchange 64 KiB each way, close) kept at
``--pairs`` live pairs, and the embedded atServer (a subprocess) with ``--conns`` clients
that connect, PKAM-authenticate, send a few requests and leave, over and over. Every
``--sample`` seconds it records this process's fds, asyncio tasks and RSS and the server's
fds and RSS; at the end it prints each series' least-squares slope per hour. Exit 1 when
the fd or task slope is above 0 by more than noise, or an RSS slope passes ``--max-rss-slope``
MiB/h (default 16; the nightly gate in reliability.md is 1 MiB/h over an hour).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def _rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def slope_per_hour(samples: list[tuple[float, float]]) -> float:
    n = len(samples)
    if n < 2:
        return 0.0
    mx = sum(t for t, _ in samples) / n
    my = sum(v for _, v in samples) / n
    den = sum((t - mx) ** 2 for t, _ in samples)
    if den == 0:
        return 0.0
    return sum((t - mx) * (v - my) for t, v in samples) / den * 3600


async def _relay_churn(pairs: int, stop: asyncio.Event, counts: dict[str, int]) -> Any:
    from noports.crypto.atkeys import AtKeys
    from noports.crypto.envelope import relay_auth_line
    from noports.relay import Relay, RelayLimits, SessionSpec

    ka, kb = AtKeys.generate("@soak_a"), AtKeys.generate("@soak_b")
    relay = Relay(bind_host="127.0.0.1", limits=RelayLimits())
    await relay.start()
    blob = os.urandom(64 * 1024)

    async def one(i: int) -> None:
        spec = SessionSpec(
            session_id=f"soak-{i}", atsign_a=ka.atsign, atsign_b=kb.atsign,
            client_nonce=f"cn-{i}", public_key_a=ka.encrypt_public,
            public_key_b=kb.encrypt_public,
        )
        sess = await relay.create_session(spec)
        ends = []
        for k, port in ((ka, sess.port_a), (kb, sess.port_b)):
            line = relay_auth_line(sess.session_id, spec.client_nonce, sess.rvd_nonce,
                                   k.encrypt_private).encode() + b"\n"
            r, w = await asyncio.open_connection(sess.host, port)
            w.write(line + blob)
            ends.append((r, w))
        for r, _ in ends:
            got = await asyncio.wait_for(r.readexactly(len(blob)), 30)
            assert got == blob
        for _, w in ends:
            w.close()
        await asyncio.wait_for(sess.wait_closed(), 30)
        counts["pairs"] += 1

    async def lane(j: int) -> None:
        i = j
        while not stop.is_set():
            try:
                await one(i)
            except Exception as exc:  # counted, the soak goes on
                counts["pair_errors"] += 1
                print(f"pair error: {type(exc).__name__}: {exc}", file=sys.stderr)
            i += pairs

    lanes = [asyncio.ensure_future(lane(j)) for j in range(pairs)]
    await stop.wait()
    await asyncio.gather(*lanes, return_exceptions=True)
    await relay.close()


def _server_churn(srv: Any, keys: Any, conns: int, stop: threading.Event,
                  counts: dict[str, int]) -> None:
    from tests.fixtures_at import Wire

    def worker() -> None:
        while not stop.is_set():
            try:
                w = Wire(srv.root, srv.ca_file, timeout=10.0)
                try:
                    assert w.pkam(keys) == "data:success"
                    w.data(f"update:soak{threading.get_ident()}{keys.atsign} v")
                    w.data("scan soak.*")
                    w.data("noop:0")
                finally:
                    w.close()
                counts["conns"] += 1
            except Exception:
                counts["conn_errors"] += 1
                time.sleep(0.1)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--pairs", type=int, default=200, help="live relay pairs (default 200)")
    p.add_argument("--conns", type=int, default=20, help="atServer client threads (default 20)")
    p.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    p.add_argument("--max-rss-slope", type=float, default=16.0, help="MiB/h (default 16)")
    a = p.parse_args(argv)

    from noports.crypto.atkeys import AtKeys
    from tests.fixtures_at import AtServerProcess

    tmp = Path(tempfile.mkdtemp(prefix="np-soak-"))
    srv = AtServerProcess(tmp / "server").start()
    keys = AtKeys.generate("@soak").replace(atsign="@soak")
    srv.add_fast("@soak", keys)
    counts = {"pairs": 0, "pair_errors": 0, "conns": 0, "conn_errors": 0}
    tstop = threading.Event()
    churn = threading.Thread(target=_server_churn, args=(srv, keys, a.conns, tstop, counts),
                             daemon=True)
    series: dict[str, list[tuple[float, float]]] = {  # order = the poll tuple's
        k: [] for k in ("fds", "tasks", "rss_mib", "server_fds", "server_rss_mib")
    }

    async def run() -> None:
        stop = asyncio.Event()
        relay_task = asyncio.ensure_future(_relay_churn(a.pairs, stop, counts))
        churn.start()
        t0 = time.monotonic()
        end = t0 + a.minutes * 60
        warm = min(30.0, a.minutes * 60 / 5)  # the first samples include start-up growth
        while time.monotonic() < end:
            # the churn runs in waves: each sample is the minimum of 10 polls over the period
            polls = []
            for _ in range(10):
                await asyncio.sleep(a.sample / 10)
                polls.append((_fds(), len(asyncio.all_tasks()), _rss_mib(), _fds(srv.pid),
                              _rss_mib(srv.pid)))
            t = time.monotonic() - t0
            if t < warm:
                continue
            for i, name in enumerate(series):
                series[name].append((t, min(p[i] for p in polls)))
            print(f"t={t:6.0f}s pairs={counts['pairs']} conns={counts['conns']} "
                  f"fds={series['fds'][-1][1]:.0f} tasks={series['tasks'][-1][1]:.0f} "
                  f"rss={series['rss_mib'][-1][1]:.1f}MiB server_fds="
                  f"{series['server_fds'][-1][1]:.0f} server_rss="
                  f"{series['server_rss_mib'][-1][1]:.1f}MiB", flush=True)
        stop.set()
        tstop.set()
        await relay_task

    try:
        asyncio.run(run())
    finally:
        tstop.set()
        churn.join(15)
        srv.stop()
    print(f"done: {counts}")
    bad = False
    for name, s in series.items():
        sl = slope_per_hour(s)
        first = s[0][1] if s else 0
        last = s[-1][1] if s else 0
        print(f"{name}: {first:.1f} -> {last:.1f}, slope {sl:+.2f}/h")
        if name.endswith("rss_mib") and sl > a.max_rss_slope:
            bad = True
        if name in ("fds", "tasks", "server_fds") and len(s) > 4 and last - first > 0.05 * max(
            first, 20
        ) and sl > 0:
            bad = True
    if counts["pair_errors"] or counts["conn_errors"]:
        print("errors during the soak", file=sys.stderr)
        bad = True
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

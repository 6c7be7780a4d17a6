"""What ``srvd --metrics`` costs: scrape time and srvd CPU per scrape at N live pairs, and the
data-path throughput with metrics on vs off, side by side. Not part of any test suite:

    python bench/metrics_cost.py [--pairs 1000] [--scrapes 200] [--mib 1024] [--rounds 5]

It starts the embedded atServer and two real srvd processes (one with ``--metrics``, one
without, one worker each), asks each for one session with relay auth off on both sides, and:

1. opens ``--pairs`` socket pairs through the metrics srvd in a loop (each pair proven by one
   byte A->B), then times ``--scrapes`` GETs of ``/metrics`` and reads the CPU time srvd's
   processes (control + worker) used from ``/proc/<pid>/stat``, minus the same idle interval
   without scrapes; also at 0 pairs, as the baseline;
2. moves ``--mib`` MiB A->B through one pair of each relay, alternating round by round, with
   a scrape every 100 ms on the metrics one, and prints the Gbps of both and their ratio.

Bounded: at most a few minutes; every socket and process is closed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from noports.session.wire import parse_relay_reply  # noqa: E402
from tests.fixtures_at import AtServerProcess  # noqa: E402
from tests.fixtures_np import NpEnv  # noqa: E402
from tests.test_srvd_app import arun, ask, children_of, connect, start_srvd  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
SCRAPE_EVERY = 0.1  # seconds between scrapes during the "metrics on" transfers
SCRAPER = """
import sys, time, urllib.request
url, every = sys.argv[1], float(sys.argv[2])
while True:
    try:
        urllib.request.urlopen(url, timeout=5).read()
    except OSError:
        pass
    time.sleep(every)
"""


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime + stime (ticks)
    return total / TICK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session(env: NpEnv, relay: str, client: str) -> tuple[int, int]:
    async def go() -> tuple[int, int]:
        c = await connect(env, client)
        try:
            kind, value, _sid = await ask(c, relay, atsign_b="@bench", auth=(False, False))
            assert kind == "ack", value
            r = parse_relay_reply(value)
            return r.port_a, r.port_b
        finally:
            await c.close()

    return arun(go(), 60)


def open_pair(port_a: int, port_b: int) -> tuple[socket.socket, socket.socket]:
    b = socket.create_connection(("127.0.0.1", port_b), timeout=10)
    a = socket.create_connection(("127.0.0.1", port_a), timeout=10)
    a.sendall(b"x")
    assert b.recv(1) == b"x"
    return a, b


def scrape(url: str) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
    return (time.perf_counter() - t0) * 1000


def scrape_cost(url: str, pids: list[int], n: int) -> dict[str, float]:
    scrape(url)  # warm
    t0 = time.perf_counter()
    ms: list[float] = []
    c0 = cpu_seconds(pids)
    for _ in range(n):
        ms.append(scrape(url))
    c1 = cpu_seconds(pids)
    busy = time.perf_counter() - t0
    # the same interval without scrapes: what srvd burns anyway
    i0 = cpu_seconds(pids)
    time.sleep(busy)
    idle = cpu_seconds(pids) - i0
    ms.sort()
    return {
        "scrape_ms_median": round(statistics.median(ms), 2),
        "scrape_ms_p90": round(ms[int(0.9 * (len(ms) - 1))], 2),
        "cpu_ms_per_scrape": round(max(0.0, (c1 - c0) - idle) * 1000 / n, 2),
        "tick_ms": round(1000 / TICK, 1),
    }


def throughput(port_a: int, port_b: int, mib: int, scrape_url: str | None) -> float:
    a, b = open_pair(port_a, port_b)
    chunk = memoryview(os.urandom(1 << 20))
    total = mib << 20

    def sender() -> None:
        sent = 0
        while sent < total:
            a.sendall(chunk)
            sent += len(chunk)

    # the scraper is its own process: a thread here would take the GIL from the transfer
    scraper = (
        subprocess.Popen(
            [sys.executable, "-c", SCRAPER, scrape_url, str(SCRAPE_EVERY)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if scrape_url
        else None
    )
    buf = bytearray(1 << 20)
    t = threading.Thread(target=sender, daemon=True)
    t0 = time.perf_counter()
    t.start()
    got = 0
    b.settimeout(30)
    while got < total:
        n = b.recv_into(buf)
        if not n:
            raise RuntimeError("relay closed the pair")
        got += n
    dt = time.perf_counter() - t0
    if scraper is not None:
        scraper.terminate()
        scraper.wait(10)
    t.join(10)
    a.close()
    b.close()
    return total * 8 / dt / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON line instead of a table")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * args.pairs + 256)), hard))
    with tempfile.TemporaryDirectory() as tmp:
        srv = AtServerProcess(Path(tmp) / "server").start()
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        env = NpEnv(srv, home, secrets.token_hex(3))
        sockets: list[socket.socket] = []
        try:
            r_on, r_off, client = env.atsign("relay_on"), env.atsign("relay_off"), env.atsign("c")
            mport = free_port()
            url = f"http://127.0.0.1:{mport}/metrics"
            on = start_srvd(env, r_on, "--workers", "1", "--metrics", str(mport))
            off = start_srvd(env, r_off, "--workers", "1")
            pids = [on.pid, *sorted(children_of(on.pid))]
            pa, pb = session(env, r_on, client)
            out: dict[str, object] = {"pairs": args.pairs, "scrapes": args.scrapes}
            out["at_0_pairs"] = scrape_cost(url, pids, args.scrapes)
            t0 = time.perf_counter()
            for _ in range(args.pairs):
                sockets.extend(open_pair(pa, pb))
            out["open_pairs_s"] = round(time.perf_counter() - t0, 2)
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            live = next(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("noports_relay_pairs_active ")
            )
            out["pairs_active_seen"] = live
            out[f"at_{args.pairs}_pairs"] = scrape_cost(url, pids, args.scrapes)
            for s in sockets:
                s.close()
            sockets.clear()
            # throughput: a fresh session per round and relay (a session ends with its last
            # pair), rounds alternate which relay goes first
            gb_on: list[float] = []
            gb_off: list[float] = []
            for i in range(args.rounds):
                order = [(True, r_on), (False, r_off)]
                if i % 2:
                    order.reverse()
                for metrics_on, relay in order:
                    x, y = session(env, relay, client)
                    g = throughput(x, y, args.mib, url if metrics_on else None)
                    (gb_on if metrics_on else gb_off).append(g)
            out["gbps_metrics_on"] = [round(g, 2) for g in gb_on]
            out["gbps_metrics_off"] = [round(g, 2) for g in gb_off]
            out["ratio_on_over_off"] = round(
                statistics.median(gb_on) / statistics.median(gb_off), 3
            )
            out["mib_per_round"] = args.mib
            out["loadavg"] = os.getloadavg()
            if args.json:
                print(json.dumps(out))
            else:
                for k, v in out.items():
                    print(f"{k:24} {v}")
            del off
        finally:
            for s in sockets:
                s.close()
            env.close()
            srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

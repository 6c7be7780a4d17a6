"""The 443 single-port relay against the two-port path, both with ESCR, side by side.

The relay runs in its own process (this file run as ``python -m bench.test_relay_443``); the
test process plays both tunnel ends (our ESCR prover on every socket). Per mode and round:
create N sessions (relay CPU per session), pair one socket per side of each (wall-clock
pairing rate and relay CPU per pairing), hold the N pairs idle (relay RSS and fds per pair),
close. Modes alternate round by round. The only difference between the two is where sockets
arrive: per-session listening ports, or the one port with demultiplexing by ``sid``/``side``.

    python bench/run.py -k 443        # or: pytest bench/test_relay_443.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._loads import QUICK, load_average, raise_nofile, rss_kib
from bench.conftest import record

N = 200 if QUICK else 400
ROUNDS = 2 if QUICK else 3
AES = base64.b64encode(bytes(range(32))).decode()


class RelayChild:
    def __init__(self, keys_b64: dict[str, str]) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bench.test_relay_443", "relay"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.p.stdin and self.p.stdout
        self.call({"op": "config", "keys": keys_b64})

    def call(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.p.stdin and self.p.stdout
        self.p.stdin.write(json.dumps(msg) + "\n")
        self.p.stdin.flush()
        out = json.loads(self.p.stdout.readline())
        if "error" in out:
            raise RuntimeError(out["error"])
        return out

    def close(self) -> None:
        if self.p.stdin:
            self.p.stdin.close()
        try:
            self.p.wait(10)
        except subprocess.TimeoutExpired:
            self.p.kill()


async def _pair_all(rows: list[list[Any]], ka: Any, kb: Any) -> tuple[float, list[Any]]:
    from noports.crypto import escr
    from noports.tunnel.net import connect_relay

    sem = asyncio.Semaphore(64)
    socks: list[Any] = []

    async def one(sid: str, pa: int, pb: int) -> None:
        async with sem:
            b = await connect_relay("127.0.0.1", pb, escr.EscrAuth(
                sid, AES, escr.apsk_uri("@bench_b"), kb.pkam_private, False))
            a = await connect_relay("127.0.0.1", pa, escr.EscrAuth(
                sid, AES, escr.apsk_uri("@bench_a"), ka.pkam_private, True))
            socks.append((a, b))

    t0 = time.perf_counter()
    await asyncio.gather(*(one(*r) for r in rows))
    return time.perf_counter() - t0, socks


def _round(relay: RelayChild, mode: str, ka: Any, kb: Any, tag: str) -> dict[str, float]:
    made = relay.call({"op": "sessions", "n": N, "mode": mode, "prefix": tag})
    s0 = relay.call({"op": "stats"})
    wall, socks = asyncio.run(_pair_all(made["rows"], ka, kb))
    try:
        for a, b in socks:  # every pair carries bytes both ways, then idles
            a.setblocking(True)
            b.setblocking(True)
            a.sendall(b"ping")
            b.sendall(b"pong")
        for a, b in socks:
            assert b.recv(4) == b"ping" and a.recv(4) == b"pong"
        s1 = relay.call({"op": "stats"})
    finally:
        for a, b in socks:
            a.close()
            b.close()
    relay.call({"op": "close_all"})
    return {
        "create_us": made["cpu"] / N * 1e6,
        "kib_per_session": (made["rss_after"] - made["rss_before"]) / N,
        "pair_us": (s1["cpu"] - s0["cpu"]) / N * 1e6,
        "pairs_per_s": N / wall,
        "kib_per_pair": (s1["rss_kib"] - made["rss_before"]) / N,
        "fds_per_session": (s1["fds"] - made["fds_before"]) / N,
    }


def test_relay_443_vs_two_port(benchmark, keys):
    raise_nofile()
    ka, kb = keys("@bench_a"), keys("@bench_b")
    from noports.crypto import escr, rsa

    relay = RelayChild({escr.apsk_uri("@bench_a"): rsa.public_to_b64(ka.pkam_public),
                        escr.apsk_uri("@bench_b"): rsa.public_to_b64(kb.pkam_public)})
    got: dict[str, list[dict[str, float]]] = {"two": [], "443": []}
    try:
        _round(relay, "two", ka, kb, "warm2")
        _round(relay, "443", ka, kb, "warm4")

        def run():
            for i in range(ROUNDS):
                got["two"].append(_round(relay, "two", ka, kb, f"t{i}"))
                got["443"].append(_round(relay, "443", ka, kb, f"s{i}"))

        benchmark.pedantic(run, rounds=1, iterations=1)
    finally:
        relay.close()

    def med(mode: str, k: str) -> float:
        return statistics.median(r[k] for r in got[mode])

    scen = f"ESCR pairing, {N} sessions"
    for metric, key, unit, better in (
        ("pairings per second (wall, both ends in one client process)", "pairs_per_s", "/s",
         True),
        ("relay CPU per pairing (accept, challenge, verify, pair)", "pair_us", "us", False),
        ("relay CPU per session created", "create_us", "us", False),
        ("relay RSS per session created (before any socket)", "kib_per_session", "KiB", False),
        ("relay RSS per idle pair", "kib_per_pair", "KiB", False),
        ("relay fds per session (idle pair)", "fds_per_session", "", False),
    ):
        record(benchmark, scenario=scen, metric=metric, value=med("443", key), unit=unit,
               baseline="two-port path (same relay, ESCR)", baseline_value=med("two", key) or None,
               higher_is_better=better, rounds=got, load=load_average())
    print(json.dumps({k: {m: round(med(k, m), 2) for m in got[k][0]} for k in got}))


# -- the relay process -----------------------------------------------------------------------


def _relay_main() -> None:
    from noports import _compat
    from noports.relay import Relay, SessionSpec, raise_nofile_limit

    raise_nofile_limit()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        keys: dict[str, str] = {}

        async def lookup(uri: str) -> str | None:
            return keys.get(uri)

        relay = Relay(bind_host="127.0.0.1", single_port=0, lookup=lookup)
        await relay.start()
        reader = asyncio.StreamReader(limit=1 << 20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

        def reply(obj: dict[str, Any]) -> None:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

        def fds() -> int:
            return len(os.listdir("/proc/self/fd"))

        while True:
            raw = await reader.readline()
            if not raw:
                break
            cmd = json.loads(raw)
            op = cmd["op"]
            try:
                if op == "config":
                    keys.update(cmd["keys"])
                    reply({"ok": 1})
                elif op == "sessions":
                    before, fd0 = rss_kib(), fds()
                    t0 = time.process_time()
                    rows = []
                    single = cmd["mode"] == "443"
                    for i in range(cmd["n"]):
                        sid = f"{cmd['prefix']}-{i}"
                        s = await relay.create_session(SessionSpec(
                            sid, "@bench_a", "@bench_b", "cn", auth_mode="escr",
                            relay_auth_aes_key=AES, only443=single))
                        rows.append([sid, s.port_a, s.port_b])
                    reply({"rows": rows, "cpu": time.process_time() - t0,
                           "rss_before": before, "fds_before": fd0, "rss_after": rss_kib()})
                elif op == "stats":
                    await asyncio.sleep(0.05)
                    reply({"cpu": time.process_time(), "rss_kib": rss_kib(), "fds": fds(),
                           "pairs": sum(s.live_pairs for s in relay.sessions)})
                elif op == "close_all":
                    for s in list(relay.sessions):
                        s.close("cancelled")
                    relay._signing.clear()  # each round looks its keys up again
                    await asyncio.sleep(0.05)
                    reply({"ok": 1})
                else:
                    reply({"error": f"unknown op {op}"})
            except Exception as exc:  # noqa: BLE001
                reply({"error": f"{op}: {type(exc).__name__}: {exc}"})
        await relay.close()

    _compat.run(main())


if __name__ == "__main__":
    if sys.argv[1:] == ["relay"]:
        _relay_main()

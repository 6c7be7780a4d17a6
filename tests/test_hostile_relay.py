"""Hostile load on the relay's pre-auth gate (issue 10, break 6): real loopback sockets.

A full gate used to reset every newcomer, so silent sockets churned from many addresses made
real peers fail; and the per-address cap locked out a client sharing its address with a few
attacker sockets. Now a full gate sheds older unauthenticated sockets instead.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from noports.crypto.atkeys import AtKeys
from tests.relay_support import A, B, authed, closed_by_peer, spec, started_relay, wait_for

Keys = Callable[[str], AtKeys]

ATTACK_IPS = [f"127.0.0.{i}" for i in range(2, 12)]  # ten attacker addresses (all loopback)


def _churn(host: str, ports: list[int], ips: list[str], hold: int, total: int,
           stop: threading.Event) -> list[int]:
    """Open silent sockets from ``ips`` round robin, keep ``hold`` open, ``total`` at most."""
    opened = [0]
    ring: list[socket.socket] = []
    i = 0
    while not stop.is_set() and opened[0] < total:
        ip = ips[i % len(ips)]
        port = ports[i % len(ports)]
        i += 1
        try:
            s = socket.create_connection((host, port), timeout=2.0, source_address=(ip, 0))
        except OSError:
            time.sleep(0.005)
            continue
        opened[0] += 1
        ring.append(s)
        if len(ring) > hold:
            ring.pop(0).close()
        if opened[0] % 50 == 0:
            time.sleep(0.01)
    for s in ring:
        s.close()
    return opened


async def _pair(sess: Any, keys: Keys, payload: bytes) -> bool:
    ra, wa = await authed(sess, A, keys, payload)
    rb, wb = await authed(sess, B, keys)
    try:
        return await asyncio.wait_for(rb.readexactly(len(payload)), 3) == payload
    except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        return False
    finally:
        wa.close()
        wb.close()


def test_full_gate_sheds_attackers_not_real_peers(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay(max_preauth=60, max_preauth_per_ip=20, auth_timeout=5.0)
        stop = threading.Event()
        try:
            bait = await relay.create_session(spec(keys, "bait"))
            ports = [bait.port_a, bait.port_b]
            loop = asyncio.get_running_loop()
            churn = loop.run_in_executor(
                None, _churn, bait.host, ports, ATTACK_IPS, 80, 3000, stop)
            await wait_for(lambda: relay.gate.total >= 55, timeout=10)
            ok, lat = 0, []
            for n in range(10):
                sess = await relay.create_session(spec(keys, f"real{n}"))
                t0 = time.monotonic()
                if await _pair(sess, keys, b"real-data-%d" % n):
                    ok += 1
                    lat.append(time.monotonic() - t0)
            stop.set()
            opened = (await churn)[0]
            lat.sort()
            p50 = lat[len(lat) // 2] * 1000 if lat else float("nan")
            print(f"\nrelay gate: {ok}/10 real pairs on the first try, p50 {p50:.1f} ms, "
                  f"{opened} attacker sockets, {getattr(relay.gate, 'shed', None)} shed")
            assert ok == 10
        finally:
            stop.set()
            await relay.close()

    run(main(), timeout=60)


def test_per_address_cap_does_not_lock_out_a_shared_address(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay(max_preauth=100, max_preauth_per_ip=4, auth_timeout=5.0)
        held: list[Any] = []
        try:
            sess = await relay.create_session(spec(keys))
            for _ in range(4):  # an attacker's few sockets fill 127.0.0.1's share
                held.append(await asyncio.open_connection(sess.host, sess.port_a))
            await wait_for(lambda: relay.gate.total == 4)
            assert await _pair(sess, keys, b"through")
            # the oldest attacker socket made room
            assert await closed_by_peer(held[0][0], 2.0)
            assert relay.gate.count("127.0.0.1") <= 4
        finally:
            for _, w in held:
                w.close()
            await relay.close()
        assert relay.gate.total == 0

    run(main(), timeout=30)

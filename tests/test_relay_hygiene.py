"""Relay hygiene: no fd or task leaks, replayed auth lines refused, rlimit raised."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import pytest

from noports.crypto.atkeys import AtKeys
from tests.relay_support import (
    A,
    B,
    authed,
    blob,
    closed_by_peer,
    connect,
    line_for,
    sha,
    spec,
    started_relay,
    wait_for,
)

Keys = Callable[[str], AtKeys]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_fd_or_task_leaks(impl: str, run: Any, keys: Keys) -> None:
    """Happy, failed, lonely and cancelled sessions all give back every descriptor.

    The scenario runs twice and the count is taken between the runs: the event loop opens
    a few fds of its own lazily (uvloop: /dev/null, resolver pipes), a leak grows per run.
    """

    async def scenario() -> None:
        relay = await started_relay(impl, auth_timeout=0.3, pair_timeout=0.5)
        clients: list[asyncio.StreamWriter] = []
        try:
            happy = await relay.create_session(spec(keys, "happy"))
            ra, wa = await authed(happy, A, keys)
            rb, wb = await authed(happy, B, keys)
            clients += [wa, wb]
            big = blob(4 << 20, 9)  # bulk both ways: the splice twin makes its pipes
            wa.write(big)
            wa.write_eof()
            wb.write(big)
            wb.write_eof()
            got_b, got_a = await asyncio.gather(rb.read(), ra.read())
            assert sha(got_a) == sha(got_b) == sha(big)
            # Created only now, so a slow run cannot time them out before they are used.
            lonely = await relay.create_session(spec(keys, "lonely"))
            cancelled = await relay.create_session(spec(keys, "cancelled"))
            for _ in range(2):
                clients.append((await authed(cancelled, A, keys))[1])
                clients.append((await authed(cancelled, B, keys))[1])
            _, wh = await connect(cancelled, A, b"garbage\n")
            _, ws = await connect(lonely, B)
            _, wl = await authed(lonely, A, keys)
            clients += [wh, ws, wl]
            await wait_for(lambda: cancelled.live_pairs == 2)
            await asyncio.wait_for(happy.wait_closed(), 3)
            assert (await asyncio.wait_for(lonely.wait_closed(), 3)).outcome == "lonely"
        finally:
            await relay.close()
            for w in clients:
                w.close()
            await asyncio.gather(*(w.wait_closed() for w in clients), return_exceptions=True)
        assert cancelled.stats.outcome == "cancelled"
        assert not relay.sessions and relay.gate.total == 0
        await asyncio.sleep(0.05)

    async def main() -> None:
        tasks_before = asyncio.all_tasks()
        await scenario()
        before = open_fds()
        await scenario()
        assert open_fds() == before
        assert asyncio.all_tasks() == tasks_before

    run(main(), timeout=20)


def test_replayed_lines_are_refused_where_the_protocol_allows(run: Any, keys: Keys) -> None:
    """T2: A's line on side B, on another session, and after the session closed."""

    async def main() -> None:
        relay = await started_relay()
        try:
            s1 = await relay.create_session(spec(keys, "r1"))
            s2 = await relay.create_session(spec(keys, "r2"))
            line_a = line_for(s1, keys("@relay_a"))
            ra, wa = await connect(s1, A, line_a + b"real")
            rb, wb = await authed(s1, B, keys)
            assert await asyncio.wait_for(rb.readexactly(4), 3) == b"real"
            r1, w1 = await connect(s1, B, line_a)  # A's line on B: B verifies with B's key
            r2, w2 = await connect(s2, A, line_a)  # another session: another rvdNonce
            assert await closed_by_peer(r1, 2) and await closed_by_peer(r2, 2)
            assert s1.stats.failures == {"bad_sig": 1} and s2.stats.failures == {"nonce": 1}
            wb.write(b"still-fine")
            assert await asyncio.wait_for(ra.readexactly(10), 3) == b"still-fine"
            port_a = s1.port_a
            for w in (wa, wb, w1, w2):
                w.close()
            await asyncio.wait_for(s1.wait_closed(), 3)
            with pytest.raises(OSError):  # after close the port no longer listens
                await asyncio.open_connection("127.0.0.1", port_a)
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_start_raises_the_fd_soft_limit(run: Any) -> None:
    resource = pytest.importorskip("resource")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 256:
        pytest.skip("hard limit unsuitable for this check")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:

        async def main() -> None:
            relay = await started_relay()
            await relay.close()

        run(main(), timeout=10)
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_pairs_cost_no_cpu(impl: str, run: Any, keys: Keys) -> None:
    """50 idle pairs: the process sleeps (no timers or polling per pair, T5/DESIGN 4)."""
    resource = pytest.importorskip("resource")

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    async def main() -> None:
        relay = await started_relay(impl)
        clients: list[asyncio.StreamWriter] = []
        try:
            sess = await relay.create_session(spec(keys))
            for _ in range(50):
                clients.append((await authed(sess, A, keys, b"x"))[1])
                clients.append((await authed(sess, B, keys, b"y"))[1])
            await wait_for(lambda: sess.live_pairs == 50)
            await asyncio.sleep(0.2)
            before = cpu()
            await asyncio.sleep(0.5)
            used = cpu() - before
            assert used < 0.04, f"{used:.3f} s CPU in 0.5 s with 50 idle pairs"
        finally:
            await relay.close()
            for w in clients:
                w.close()

    run(main(), timeout=20)

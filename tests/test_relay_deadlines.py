"""The relay's shared auth-deadline queue (one timer for every authenticating socket)."""

from __future__ import annotations

import asyncio
from typing import Any

from noports.relay.inbound import AuthDeadlines


class _Socket:
    """What the queue needs of an Inbound: a deadline and the call when it is due."""

    def __init__(self, deadline: float, log: list[tuple[str, float]], name: str,
                 clock: Any) -> None:
        self.deadline, self.log, self.name, self.clock = deadline, log, name, clock

    def deadline_passed(self) -> None:
        self.log.append((self.name, self.clock()))


def test_due_sockets_expire_in_order_and_left_ones_never(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        offset = [0.0]

        def clock() -> float:  # an injected clock that runs behind the loop's at first
            return loop.time() - offset[0]

        offset[0] = 0.05
        log: list[tuple[str, float]] = []
        q = AuthDeadlines(loop, clock)
        t0 = clock()
        socks = {n: _Socket(t0 + d, log, n, clock) for n, d in
                 (("a", 0.05), ("b", 0.06), ("c", 0.12), ("d", 0.30))}
        for s in socks.values():
            q.add(s)
        q.discard(socks["b"])  # authenticated in time: never expires
        early = _Socket(t0 + 0.02, log, "early", clock)
        assert not q.add(early)  # out of order: refused (that socket keeps its own timer)
        assert len(q) == 3
        await asyncio.sleep(0.25)
        names = [n for n, _ in log]
        assert names == ["a", "c"], log
        for name, at in log:  # never before its deadline, on the injected clock
            assert at >= socks[name].deadline
        q.close()  # the one left is dropped with the timer
        await asyncio.sleep(0.1)
        assert [n for n, _ in log] == ["a", "c"] and len(q) == 0

    run(main(), timeout=10)


def test_an_empty_queue_holds_no_timer(run: Any) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        log: list[tuple[str, float]] = []
        q = AuthDeadlines(loop, loop.time)
        s = _Socket(loop.time() + 0.01, log, "s", loop.time)
        q.add(s)
        q.discard(s)
        await asyncio.sleep(0.05)  # the timer fired on an empty queue and was not re-armed
        assert log == [] and q._timer is None
        q.add(_Socket(loop.time() + 0.01, log, "t", loop.time))
        await asyncio.sleep(0.05)
        assert [n for n, _ in log] == ["t"] and q._timer is None

    run(main(), timeout=10)


# -- accepting: one connection per wake-up, TCP_NODELAY from the listener -------------------


def test_a_burst_on_one_listener_is_all_accepted_with_nodelay(run: Any, keys: Any) -> None:
    """Twenty sockets queued on side A before the relay's loop runs: all are accepted (one per
    wake-up; the listener stays readable), authenticate, wait in order, carry TCP_NODELAY."""
    import socket

    from tests.relay_support import A, line_for, spec, started_relay, wait_for

    async def main() -> None:
        relay = await started_relay()
        try:
            sess = await relay.create_session(spec(keys))
            line = line_for(sess, keys("@relay_a"))
            socks = []
            for _ in range(20):  # blocking connects: the relay has not run in between
                s = socket.create_connection((sess.host, sess.port_a))
                s.sendall(line)
                socks.append(s)
            await wait_for(lambda: sess.pending_counts[1] == 20, 5)
            assert sess.stats.auth_ok == 20 and relay.gate.total == 0
            waiting = sess._pending[A]
            assert all(w.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                       for w in waiting)
            b = socket.create_connection((sess.host, sess.port_b))
            b.sendall(line_for(sess, keys("@relay_b")) + b"hello")
            await wait_for(lambda: sess.live_pairs == 1, 5)
            assert sess.pending_counts == (0, 19, 0)
            for s in [*socks, b]:
                s.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_a_session_that_cannot_be_made_leaves_no_listener(run: Any) -> None:
    """A session id with a lone surrogate cannot be encoded for the auth line: creation
    fails, as it always did, and the two ports bound for it are closed again."""
    import gc
    import os
    import warnings

    import pytest

    from noports.relay import SessionSpec
    from tests.relay_support import started_relay

    async def main() -> None:
        relay = await started_relay()
        try:
            before = len(os.listdir("/proc/self/fd"))
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                with pytest.raises(UnicodeEncodeError):
                    await relay.create_session(SessionSpec("bad\ud800", "@a", "@b", "cn",
                                                           auth_a=False, auth_b=False))
                gc.collect()
            # closed by the relay, not left to the garbage collector ("unclosed socket")
            assert not [w for w in seen if issubclass(w.category, ResourceWarning)], seen
            assert len(os.listdir("/proc/self/fd")) == before
            assert not relay.sessions
        finally:
            await relay.close()

    run(main(), timeout=10)

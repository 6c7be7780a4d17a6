"""Relay sessions end to end on loopback: auth, pairing, buffering, teardown, ports."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import pytest

from noports.crypto.atkeys import AtKeys
from noports.errors import ConfigError, PortsExhaustedError
from noports.relay import Relay, RelayLimits
from tests.relay_support import (
    A,
    B,
    authed,
    blob,
    closed_by_peer,
    connect,
    free_port_block,
    line_for,
    sha,
    spec,
    started_relay,
    wait_for,
)

Keys = Callable[[str], AtKeys]


def test_pair_forwards_data_after_the_newline_both_ways(impl: str, run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay(impl)
        try:
            sess = await relay.create_session(spec(keys))
            ra, wa = await authed(sess, A, keys, b"from-a")
            rb, wb = await authed(sess, B, keys, b"from-b")
            assert await ra.readexactly(6) == b"from-b"
            assert await rb.readexactly(6) == b"from-a"
            assert sess.stats.auth_ok == 2 and sess.stats.pairs == 1
            assert (sess.stats.bytes_a_to_b, sess.stats.bytes_b_to_a) == (6, 6)  # live counts
            wa.close()
            wb.close()
            stats = await asyncio.wait_for(sess.wait_closed(), 5)
            assert stats.outcome == "happy"
            assert stats.bytes_a_to_b == 6 and stats.bytes_b_to_a == 6
            assert not relay.sessions
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_waiting_sides_reader_passes_to_the_pump(impl: str, run: Any, keys: Keys) -> None:
    """A waits (reading, nothing buffered), B pairs with nothing after its line: the waiting
    socket's registration is handed to the pump (``Inbound.detach(keep_reader=True)``); both
    directions, several rounds and a half-close still go through, on uvloop and asyncio."""

    async def main() -> None:
        relay = await started_relay(impl)
        try:
            sess = await relay.create_session(spec(keys))
            ra, wa = await authed(sess, A, keys)
            await wait_for(lambda: sess.pending_counts == (0, 1, 0))
            rb, wb = await authed(sess, B, keys)
            await wait_for(lambda: sess.stats.pairs == 1)
            for i in range(3):
                wa.write(b"a%d" % i)
                wb.write(b"b%d" % i)
                assert await rb.readexactly(2) == b"a%d" % i
                assert await ra.readexactly(2) == b"b%d" % i
            wa.write_eof()
            assert await rb.read() == b""
            wb.write(b"late")
            wb.write_eof()
            assert await ra.read() == b"late"
            stats = await asyncio.wait_for(sess.wait_closed(), 5)
            assert stats.outcome == "happy" and stats.bytes_a_to_b == 6
            wa.close()
            wb.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_prepairing_buffer_is_delivered_and_bounded(impl: str, run: Any, keys: Keys) -> None:
    """B talks first (like sshd's banner); A arrives later and gets every byte, in order."""
    early = blob(12 << 20, 7)  # more than socket buffers hold, against a 64 KiB cap

    async def main() -> None:
        relay = await started_relay(impl, prepair_buffer=64 * 1024)
        try:
            sess = await relay.create_session(spec(keys))
            rb, wb = await authed(sess, B, keys)
            send = asyncio.ensure_future(_send_shut(wb, early))
            await wait_for(lambda: sess.pending_counts == (0, 0, 1))
            await asyncio.sleep(0.2)
            assert not send.done()  # the relay stopped reading at its buffer cap
            ra, wa = await authed(sess, A, keys, b"hello-b")
            got = await asyncio.wait_for(ra.read(), 10)  # until EOF: B's half-close passes
            assert sha(got) == sha(early)
            assert await rb.readexactly(7) == b"hello-b"
            wa.close()
            await send
            assert (await asyncio.wait_for(sess.wait_closed(), 5)).outcome == "happy"
        finally:
            await relay.close()

    run(main(), timeout=30)


async def _send_shut(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    writer.write_eof()


def test_fifo_multi_pair(impl: str, run: Any, keys: Keys) -> None:
    """20 sockets per side pair in authentication order; each pair carries its own bytes."""
    n = 20

    async def main() -> None:
        relay = await started_relay(impl)
        try:
            sess = await relay.create_session(spec(keys))
            side_a = []
            for i in range(n):  # A sockets wait in order
                side_a.append(await authed(sess, A, keys, blob(50_000, 100 + i)))
                await wait_for(lambda i=i: sess.pending_counts[1] == i + 1)
            side_b = []
            for i in range(n):
                side_b.append(await authed(sess, B, keys, blob(60_000, 200 + i)))
            for i, ((ra, _), (rb, _)) in enumerate(zip(side_a, side_b, strict=True)):
                got_b = await asyncio.wait_for(rb.readexactly(50_000), 5)
                got_a = await asyncio.wait_for(ra.readexactly(60_000), 5)
                assert sha(got_b) == sha(blob(50_000, 100 + i)), f"pair {i} A->B"
                assert sha(got_a) == sha(blob(60_000, 200 + i)), f"pair {i} B->A"
            assert sess.stats.pairs == n and sess.live_pairs == n
            for _, w in side_a + side_b:
                w.close()
            stats = await asyncio.wait_for(sess.wait_closed(), 5)
            assert stats.outcome == "happy" and stats.pairs == n
            assert stats.bytes_a_to_b == n * 50_000 and stats.bytes_b_to_a == n * 60_000
        finally:
            await relay.close()

    run(main(), timeout=30)


@pytest.mark.parametrize(
    "variant", ["wrong_sig", "wrong_rvd_nonce", "other_session", "garbage", "oversize", "eof"]
)
def test_auth_failures_close_only_that_socket(run: Any, keys: Keys, variant: str) -> None:
    async def main() -> None:
        relay = await started_relay(auth_timeout=3.0)
        try:
            sess = await relay.create_session(spec(keys, "s1"))
            other = await relay.create_session(spec(keys, "s2"))
            ka = keys("@relay_a")
            first = {
                "wrong_sig": line_for(sess, keys("@relay_b")),
                "wrong_rvd_nonce": line_for(sess, ka, rvd_nonce="not-the-nonce"),
                "other_session": line_for(other, ka),
                "garbage": b"GET / HTTP/1.1\r\n\r\n",
                "oversize": b"{" + b"a" * 8191,
                "eof": b'{"payload":',
            }[variant]
            reason = {"wrong_sig": "bad_sig", "wrong_rvd_nonce": "nonce",
                      "other_session": "nonce", "garbage": "malformed",
                      "oversize": "oversize", "eof": "eof"}[variant]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            rh, wh = await connect(sess, A, first)
            if variant == "eof":
                wh.write_eof()
            assert await closed_by_peer(rh, 2.0)
            assert loop.time() - t0 < 1.0  # refused at once, not at the deadline
            assert sess.stats.failures == {reason: 1}
            # The session is unharmed: the real pair still forms.
            ra, wa = await authed(sess, A, keys, b"ping")
            rb, wb = await authed(sess, B, keys)
            assert await asyncio.wait_for(rb.readexactly(4), 3) == b"ping"
            assert relay.gate.total == 0
            for w in (wa, wb, wh):
                w.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_trickle_is_cut_by_the_absolute_deadline(run: Any, keys: Keys) -> None:
    """One byte every 100 ms never extends the deadline (slowloris, T3)."""

    async def main() -> None:
        relay = await started_relay(auth_timeout=0.6)
        try:
            sess = await relay.create_session(spec(keys))
            line = line_for(sess, keys("@relay_a"))
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            rh, wh = await connect(sess, A)
            closed_at = None
            for byte in line:
                try:
                    wh.write(bytes([byte]))
                    await wh.drain()
                except (ConnectionResetError, BrokenPipeError):
                    break
                except RuntimeError:  # uvloop: the reset already closed our transport
                    break
                if await closed_by_peer(rh, 0.1):
                    break
            closed_at = loop.time() - t0
            assert 0.5 <= closed_at <= 1.2, closed_at
            assert sess.stats.failures == {"timeout": 1}
            wh.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_hostile_first_connectors_do_not_block_real_pairs(run: Any, keys: Keys,
                                                          impl: str) -> None:
    """T1 scaled down: 5 sessions x 10 hostile sockets per side, connected first."""
    deadline = 1.0

    async def main() -> None:
        relay = await started_relay(impl, auth_timeout=deadline, max_preauth_per_ip=1000)
        loop = asyncio.get_running_loop()
        try:
            sessions = [await relay.create_session(spec(keys, f"t1-{i}")) for i in range(5)]
            hostile = []
            t_hostile = loop.time()
            for i, sess in enumerate(sessions):
                other = sessions[(i + 1) % len(sessions)]
                for side in (A, B):
                    right = keys("@relay_a" if side == A else "@relay_b")
                    wrong = keys("@relay_b" if side == A else "@relay_a")
                    for first in (b"", b"", b"", b"\x16\x03\x01garbage\n", b"{{{{",
                                  line_for(sess, wrong), line_for(sess, wrong)[:100],
                                  line_for(other, right), line_for(other, right),
                                  b"z" * 6000):
                        hostile.append(await connect(sess, side, first))
            real = []
            for i, sess in enumerate(sessions):
                t0 = loop.time()
                ra, wa = await authed(sess, A, keys, b"a%d" % i)
                rb, wb = await authed(sess, B, keys, b"b%d" % i)
                assert await asyncio.wait_for(rb.readexactly(2), 1) == b"a%d" % i
                assert await asyncio.wait_for(ra.readexactly(2), 1) == b"b%d" % i
                assert loop.time() - t0 < 1.0
                big = blob(1 << 20, i)
                wa.write(big)
                wa.write_eof()
                assert sha(await asyncio.wait_for(rb.read(), 5)) == sha(big)
                real.append((wa, wb))  # B's direction stays open: the session lives on
            for rh, wh in hostile:
                left = t_hostile + deadline + 1.0 - loop.time()
                assert await closed_by_peer(rh, left), "a hostile socket outlived the deadline"
                wh.close()
            for (wa, wb), sess in zip(real, sessions, strict=True):
                assert not sess.closed
                wa.close()
                wb.close()
                await asyncio.wait_for(sess.wait_closed(), 3)
                assert sess.stats.pairs == 1
                # Refused at once, or (silent, unfinished) at the deadline.
                assert sess.stats.failures == {"malformed": 2, "bad_sig": 2, "nonce": 4,
                                               "oversize": 2, "timeout": 10}
            assert relay.gate.total == 0
        finally:
            await relay.close()

    run(main(), timeout=30)


def test_preauth_caps_global_and_per_ip(run: Any, keys: Keys) -> None:
    """Full caps shed older unauthenticated sockets: the source's oldest at the per-IP cap,
    a random one at the global cap; the newcomer is never the one turned away."""

    async def main() -> None:
        relay = await started_relay(max_preauth=5, max_preauth_per_ip=3, auth_timeout=5.0)
        try:
            s1 = await relay.create_session(spec(keys, "c1"))
            s2 = await relay.create_session(spec(keys, "c2"))
            silent = [await connect(s1, A) for _ in range(3)]
            await wait_for(lambda: relay.gate.total == 3)
            fourth = await connect(s1, B)  # 4th from 127.0.0.1: its oldest goes
            assert await closed_by_peer(silent[0][0], 2.0)
            await wait_for(lambda: relay.gate.total == 3 and relay.gate.shed == 1)
            # Another source address (127.0.0.2 is loopback too) is under its own cap.
            other_ip = []
            for _ in range(2):
                r, w = await asyncio.open_connection(s2.host, s2.port_a,
                                                     local_addr=("127.0.0.2", 0))
                other_ip.append((r, w))
            await wait_for(lambda: relay.gate.total == 5)
            r3, w3 = await asyncio.open_connection(s2.host, s2.port_b,
                                                   local_addr=("127.0.0.3", 0))
            await wait_for(lambda: relay.gate.shed == 2)  # global cap: one older socket went
            assert relay.gate.total == 5 and relay.gate.count("127.0.0.3") == 1
            # A real pair gets in while the gate is full.
            ra, wa = await authed(s1, A, keys, b"x")
            rb, wb = await authed(s1, B, keys)
            assert await asyncio.wait_for(rb.readexactly(1), 3) == b"x"
            for _, w in silent + other_ip + [fourth, (r3, w3), (ra, wa), (rb, wb)]:
                w.close()
        finally:
            await relay.close()
        assert relay.gate.total == 0

    run(main(), timeout=20)


async def refused(host: str, port: int, local_ip: str = "127.0.0.1") -> bool:
    """Connect and report whether the relay closed the socket without waiting for data."""
    try:
        r, w = await asyncio.open_connection(host, port, local_addr=(local_ip, 0))
    except ConnectionResetError:
        return True
    try:
        return await closed_by_peer(r, 1.0)
    finally:
        w.close()


def test_pending_cap_per_side(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay(max_pending_per_side=2)
        try:
            sess = await relay.create_session(spec(keys))
            first = await authed(sess, A, keys, b"first")
            second = await authed(sess, A, keys)
            await wait_for(lambda: sess.pending_counts == (0, 2, 0))
            r3, w3 = await authed(sess, A, keys)
            assert await closed_by_peer(r3, 2.0)
            assert sess.stats.refused == 1
            rb, wb = await authed(sess, B, keys)
            assert await asyncio.wait_for(rb.readexactly(5), 3) == b"first"
            for _, w in (first, second, (r3, w3), (rb, wb)):
                w.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_auth_off_sides_pair_on_connect(impl: str, run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay(impl)
        try:
            sess = await relay.create_session(
                spec(keys, auth_a=False, auth_b=False, public_key_a=None, public_key_b=None))
            ra, wa = await connect(sess, A, b"raw-a\n")
            rb, wb = await connect(sess, B, b"raw-b\n")
            assert await asyncio.wait_for(rb.readexactly(6), 3) == b"raw-a\n"
            assert await asyncio.wait_for(ra.readexactly(6), 3) == b"raw-b\n"
            wa.close()
            wb.close()
            with pytest.raises(ConfigError):
                await relay.create_session(spec(keys, public_key_a=None))
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_lonely_session_closes_and_frees_everything(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay(pair_timeout=0.4)
        loop = asyncio.get_running_loop()
        try:
            sess = await relay.create_session(spec(keys))
            t0 = loop.time()
            ra, wa = await authed(sess, A, keys, b"waiting")  # authenticated, never paired
            rs, ws = await connect(sess, B)  # silent, still authenticating
            stats = await asyncio.wait_for(sess.wait_closed(), 3)
            assert stats.outcome == "lonely"
            assert 0.35 <= loop.time() - t0 < 1.5
            assert await closed_by_peer(ra, 1.0) and await closed_by_peer(rs, 1.0)
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", sess.port_a)
            assert relay.gate.total == 0 and not relay.sessions
            wa.close()
            ws.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_session_closes_after_last_pair_and_relay_close_cancels(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay = await started_relay()
        try:
            sess = await relay.create_session(spec(keys, "one"))
            pairs = []
            for _ in range(2):
                pairs.append((await authed(sess, A, keys), await authed(sess, B, keys)))
            await wait_for(lambda: sess.live_pairs == 2)
            for (_, wa), (_, wb) in pairs[:1]:
                wa.close()
                wb.close()
            await wait_for(lambda: sess.live_pairs == 1)
            assert not sess.closed  # one pair left
            for (_, wa), (_, wb) in pairs[1:]:
                wa.close()
                wb.close()
            assert (await asyncio.wait_for(sess.wait_closed(), 3)).outcome == "happy"
            with pytest.raises(OSError):
                await asyncio.open_connection("127.0.0.1", sess.port_b)
            # relay.close() ends live sessions with their pairs.
            live = await relay.create_session(spec(keys, "two"))
            ra, wa = await authed(live, A, keys)
            rb, wb = await authed(live, B, keys)
            await wait_for(lambda: live.live_pairs == 1)
            await relay.close()
            assert (await asyncio.wait_for(live.wait_closed(), 1)).outcome == "cancelled"
            assert await closed_by_peer(ra, 1.0) and await closed_by_peer(rb, 1.0)
            wa.close()
            wb.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_ipv6_loopback(run: Any, keys: Keys) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")

    async def main() -> None:
        relay = Relay(bind_host="::1")
        await relay.start()
        try:
            sess = await relay.create_session(spec(keys))
            assert sess.host == "::1"
            ra, wa = await authed(sess, A, keys, b"v6")
            rb, wb = await authed(sess, B, keys)
            assert await asyncio.wait_for(rb.readexactly(2), 3) == b"v6"
            wa.close()
            wb.close()
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_port_range_respected_and_exhausted(run: Any, keys: Keys) -> None:
    async def main() -> None:
        base = free_port_block(5)
        relay = Relay(bind_host="127.0.0.1", port_range=(base, base + 4))
        await relay.start()
        try:
            s1 = await relay.create_session(spec(keys, "p1"))
            s2 = await relay.create_session(spec(keys, "p2"))
            ports = {s1.port_a, s1.port_b, s2.port_a, s2.port_b}
            assert len(ports) == 4 and all(base <= p <= base + 4 for p in ports)
            with pytest.raises(PortsExhaustedError):
                await relay.create_session(spec(keys, "p3"))  # one port left, two needed
            s1.close()
            s3 = await relay.create_session(spec(keys, "p4"))  # freed ports are reusable
            assert base <= s3.port_a <= base + 4 and base <= s3.port_b <= base + 4
        finally:
            await relay.close()
        with pytest.raises(ConfigError):
            Relay(port_range=(5000, 5000))

    run(main(), timeout=20)


def test_injected_clock_drives_deadlines(run: Any, keys: Keys) -> None:
    """The auth deadline follows the injected clock, not the loop's (no wall-clock reads)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        now = [1000.0]
        relay = Relay(limits=RelayLimits(auth_timeout=0.2), clock=lambda: now[0])
        await relay.start()
        try:
            sess = await relay.create_session(spec(keys))
            rh, wh = await connect(sess, A)
            await wait_for(lambda: sess.pending_counts[0] == 1)
            assert not await closed_by_peer(rh, 0.5)  # loop time ran on, the clock did not
            now[0] += 0.3  # the injected clock passes the deadline
            t0 = loop.time()
            assert await closed_by_peer(rh, 1.0)
            assert loop.time() - t0 < 0.5
            assert sess.stats.failures == {"timeout": 1}
            wh.close()
        finally:
            await relay.close()

    run(main(), timeout=20)

"""ESCR in the relay engine on loopback: two-port and single-port (443) sessions, the T2
replay matrix, wrong signers, key look-ups. Real sockets, our tunnel-end prover."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Callable
from typing import Any

import pytest

from noports.crypto import escr, rsa
from noports.crypto.atkeys import AtKeys
from noports.errors import AuthRefusedError, ConfigError
from noports.relay import Relay, RelayLimits, Session, SessionSpec
from noports.relay.relay import NOT_BOUND_443, NotBound443Error
from noports.tunnel.net import connect_relay

Keys = Callable[[str], AtKeys]
AES = base64.b64encode(bytes(range(32))).decode()


class Directory:
    """The public signing keys a relay may look up (stands in for the atServer plookup)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.calls = 0

    def publish(self, k: AtKeys) -> str:
        uri = escr.apsk_uri(k.atsign)
        self.values[uri] = rsa.public_to_b64(k.pkam_public)
        return uri

    async def lookup(self, uri: str) -> str | None:
        self.calls += 1
        await asyncio.sleep(0.01)  # an answer that is not immediate: the PENDING path
        return self.values.get(uri)


def escr_spec(keys: Keys, sid: str, **kw: Any) -> SessionSpec:
    ka, kb = keys("@escr_a"), keys("@escr_b")
    args: dict[str, Any] = dict(session_id=sid, atsign_a=ka.atsign, atsign_b=kb.atsign,
                                client_nonce="cn", auth_mode="escr", relay_auth_aes_key=AES)
    args.update(kw)
    return SessionSpec(**args)


def auth(k: AtKeys, sid: str, side_a: bool, aes: str = AES) -> escr.EscrAuth:
    return escr.EscrAuth(sid, aes, escr.apsk_uri(k.atsign), k.pkam_private, side_a)


async def started(single: bool = False, **limits: Any) -> tuple[Relay, Directory]:
    d = Directory()
    relay = Relay(bind_host="127.0.0.1", limits=RelayLimits(**limits),
                  single_port=0 if single else None, lookup=d.lookup)
    await relay.start()
    return relay, d


def ports(relay: Relay, sess: Session, single: bool) -> tuple[int, int]:
    if single:
        assert relay.single is not None
        return relay.single.port, relay.single.port
    return sess.port_a, sess.port_b


async def exchange(sa: socket.socket, sb: socket.socket, payload: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sa, payload)
    got = b""
    while len(got) < len(payload):
        chunk = await asyncio.wait_for(loop.sock_recv(sb, 65536), 5)
        assert chunk
        got += chunk
    assert got == payload


async def capture(port: int, a: escr.EscrAuth) -> tuple[asyncio.StreamWriter, bytes]:
    """Authenticate by hand as a tunnel end would, returning (the open socket, its line)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    challenge = await r.readline()
    ev = a.prover().feed(challenge)
    assert ev.step is escr.Step.SEND
    w.write(ev.data)
    assert await r.readline() == b"ok\n"
    return w, ev.data


async def refused_with(port: int, line: bytes) -> bytes:
    """Send ``line`` after reading a fresh challenge; what the relay says before closing."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        await r.readline()
        w.write(line)
        await w.drain()
        said = await asyncio.wait_for(r.readline(), 5)
        rest = await asyncio.wait_for(r.read(), 5)
        assert rest == b""
        return said
    finally:
        w.close()


@pytest.mark.parametrize("single", [False, True], ids=["two-port", "443"])
def test_escr_pairs_both_sides_and_relays(run: Any, keys: Keys, single: bool) -> None:
    async def main() -> None:
        relay, d = await started(single)
        ka, kb = keys("@escr_a"), keys("@escr_b")
        d.publish(ka)
        d.publish(kb)
        try:
            sess = await relay.create_session(escr_spec(keys, "s1", only443=single))
            pa, pb = ports(relay, sess, single)
            sb = await connect_relay("127.0.0.1", pb, auth(kb, "s1", False))
            sa = await connect_relay("127.0.0.1", pa, auth(ka, "s1", True))
            await exchange(sa, sb, os.urandom(100_000))
            await exchange(sb, sa, b"back")
            assert sess.stats.auth_ok == 2 and sess.stats.pairs == 1
            assert d.calls == 2  # one look-up per signing key, not per socket
            # a second pair in the same session: fresh challenges, cached keys
            sb2 = await connect_relay("127.0.0.1", pb, auth(kb, "s1", False))
            sa2 = await connect_relay("127.0.0.1", pa, auth(ka, "s1", True))
            await exchange(sa2, sb2, b"second pair")
            assert d.calls == 2 and sess.stats.pairs == 2
            for s in (sa, sb, sa2, sb2):
                s.close()
            stats = await asyncio.wait_for(sess.wait_closed(), 5)
            assert stats.outcome == "happy"
        finally:
            await relay.close()

    run(main(), timeout=30)


@pytest.mark.parametrize("single", [False, True], ids=["two-port", "443"])
def test_t2_replay_matrix_and_wrong_signer_refused(run: Any, keys: Keys, single: bool) -> None:
    """T2: S1/A's response replayed to S1/A after pairing, to S1/B, to S2/A and after S1
    closed is refused each time, as are a signer not of its side and a wrong AES key; S1
    still finishes byte-exact."""

    async def main() -> None:
        relay, d = await started(single)
        ka, kb, kx = keys("@escr_a"), keys("@escr_b"), keys("@escr_x")
        for k in (ka, kb, kx):
            d.publish(k)
        try:
            s1 = await relay.create_session(escr_spec(keys, "s1", only443=single))
            s2 = await relay.create_session(escr_spec(keys, "s2", only443=single))
            pa, pb = ports(relay, s1, single)
            pa2, _ = ports(relay, s2, single)
            first, line = await capture(pa, auth(ka, "s1", True))  # the attacker's copy
            sb0 = await connect_relay("127.0.0.1", pb, auth(kb, "s1", False))
            await asyncio.sleep(0.05)
            assert s1.stats.pairs == 1  # the captured socket paired with the daemon's
            sb = await connect_relay("127.0.0.1", pb, auth(kb, "s1", False))
            sa = await connect_relay("127.0.0.1", pa, auth(ka, "s1", True))
            # replays: same session and side after pairing, the other side, another session
            fail = b"Socket auth failed\n"
            assert await refused_with(pa, line) == fail
            assert await refused_with(pb, line) == fail
            assert await refused_with(pa2, line) == fail
            # a payload-mode line is no answer either
            assert await refused_with(pa, b'{"payload":{},"signature":"x"}\n') == fail
            # a signer that is not the side's atSign, and the right signer with a wrong key
            with pytest.raises(AuthRefusedError, match="Socket auth failed"):
                await connect_relay("127.0.0.1", pa, auth(kx, "s1", True))
            with pytest.raises(AuthRefusedError):
                await connect_relay("127.0.0.1", pa, auth(kb, "s1", True))
            with pytest.raises(AuthRefusedError):
                bad = base64.b64encode(bytes(32)).decode()
                await connect_relay("127.0.0.1", pa, auth(ka, "s1", True, aes=bad))
            if not single:  # a side-b answer on port A
                with pytest.raises(AuthRefusedError):
                    await connect_relay("127.0.0.1", pa, auth(kb, "s1", False))
            payload = os.urandom(200_000)
            await exchange(sa, sb, payload)
            await exchange(sb, sa, payload[:1000])
            failures = s1.stats.failures if not single else relay.single.failures  # type: ignore[union-attr]
            assert failures.get("challenge", 0) >= 2, failures
            assert failures.get("signer", 0) >= 2, failures
            for s in (sa, sb, sb0):
                s.close()
            first.close()
            await asyncio.wait_for(s1.wait_closed(), 5)
            if single:
                assert await refused_with(pa, line) == fail  # after S1 closed
            assert s1.stats.pairs == 2
        finally:
            await relay.close()

    run(main(), timeout=30)


def test_unpublished_key_and_unknown_session_refused(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay, d = await started(True)
        ka = keys("@escr_a")
        try:
            await relay.create_session(escr_spec(keys, "s1", only443=True))
            assert relay.single is not None
            with pytest.raises(AuthRefusedError):  # nothing published at the uri
                await connect_relay("127.0.0.1", relay.single.port, auth(ka, "s1", True))
            d.publish(ka)
            with pytest.raises(AuthRefusedError):  # no such session
                await connect_relay("127.0.0.1", relay.single.port, auth(ka, "nope", True))
            assert relay.single.failures == {"no_key": 1, "session": 1}
            assert relay.gate.total == 0
        finally:
            await relay.close()

    run(main(), timeout=20)


def test_prefetched_key_needs_no_lookup_and_443_rules(run: Any, keys: Keys) -> None:
    async def main() -> None:
        relay, d = await started(False)
        ka, kb = keys("@escr_a"), keys("@escr_b")
        pre = {escr.apsk_uri(k.atsign): rsa.public_to_b64(k.pkam_public) for k in (ka, kb)}
        try:
            with pytest.raises(NotBound443Error, match=NOT_BOUND_443):
                await relay.create_session(escr_spec(keys, "x", only443=True))
            with pytest.raises(ConfigError):
                await relay.create_session(escr_spec(keys, "y", relay_auth_aes_key=None))
            sess = await relay.create_session(escr_spec(keys, "s1", prefetched=pre))
            sb = await connect_relay("127.0.0.1", sess.port_b, auth(kb, "s1", False))
            sa = await connect_relay("127.0.0.1", sess.port_a, auth(ka, "s1", True))
            await exchange(sa, sb, b"hello")
            assert d.calls == 0
            sa.close()
            sb.close()
        finally:
            await relay.close()
        relay2, _ = await started(True)
        try:
            with pytest.raises(ConfigError):  # 443 needs escr on both sides
                await relay2.create_session(escr_spec(keys, "z", only443=True, auth_b=False))
        finally:
            await relay2.close()

    run(main(), timeout=20)

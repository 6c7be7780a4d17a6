"""Helpers for the relay tests: real loopback sockets driving a real Relay (no tests here)."""

from __future__ import annotations

import asyncio
import hashlib
import random
import socket
from collections.abc import Callable

from noports.crypto.atkeys import AtKeys
from noports.crypto.envelope import relay_auth_line
from noports.relay import Relay, RelayLimits, Session, SessionSpec

A, B = 0, 1


def line_for(session: Session, signer: AtKeys, session_id: str | None = None,
             client_nonce: str | None = None, rvd_nonce: str | None = None) -> bytes:
    """The auth line (with newline) ``signer`` would send to ``session``."""
    return relay_auth_line(
        session_id or session.session_id,
        client_nonce or session.spec.client_nonce,
        rvd_nonce or session.rvd_nonce,
        signer.encrypt_private,
    ).encode() + b"\n"


def spec(keys: Callable[[str], AtKeys], sid: str = "s1", **kw: object) -> SessionSpec:
    ka, kb = keys("@relay_a"), keys("@relay_b")
    args: dict[str, object] = dict(
        session_id=sid, atsign_a=ka.atsign, atsign_b=kb.atsign, client_nonce="cn-" + sid,
        public_key_a=ka.encrypt_public, public_key_b=kb.encrypt_public,
    )
    args.update(kw)
    return SessionSpec(**args)  # type: ignore[arg-type]


async def started_relay(impl: str | None = None, **limits: object) -> Relay:
    relay = Relay(bind_host="127.0.0.1", limits=RelayLimits(**limits), impl=impl)  # type: ignore[arg-type]
    await relay.start()
    return relay


async def connect(session: Session, side: int, first: bytes = b""
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = session.port_a if side == A else session.port_b
    reader, writer = await asyncio.open_connection(session.host, port)
    if first:
        writer.write(first)
        await writer.drain()
    return reader, writer


async def authed(session: Session, side: int, keys: Callable[[str], AtKeys], data: bytes = b""
                 ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    signer = keys("@relay_a" if side == A else "@relay_b")
    return await connect(session, side, line_for(session, signer) + data)


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the relay closed (EOF or reset) within ``timeout``; data is discarded."""

    async def drain() -> None:
        while True:
            try:
                if not await reader.read(65536):
                    return
            except (ConnectionResetError, BrokenPipeError):
                return

    try:
        await asyncio.wait_for(drain(), max(timeout, 0.001))
    except asyncio.TimeoutError:
        return False
    return True


async def wait_for(cond: Callable[[], bool], timeout: float = 3.0, step: float = 0.005) -> None:
    """Poll ``cond`` (a relay-side observation) until true; fail the test on timeout."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"condition not reached within {timeout} s")
        await asyncio.sleep(step)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(n: int, seed: int = 0) -> bytes:
    """Deterministic random bytes: a repeated pattern would hide reordering."""
    return random.Random(seed).randbytes(n)


def free_port_block(n: int) -> int:
    """A base port with ``n`` consecutive ports free right now (best effort)."""
    for _ in range(200):
        base = random.randrange(20000, 60000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise RuntimeError("no free port block")

"""``srv -a escr``: the official ``REMOTE_AUTH_ESCR_*`` environment contract, real srv
subprocesses (both ends, single and multi) through the relay engine's ESCR sessions."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import pytest

from noports.crypto import escr, rsa
from noports.relay import Relay, SessionSpec

from .test_srv_cli import READY, crypto_env, run, srv_env, start_srv  # noqa: F401
from .test_tunnel_helpers import EchoServer, free_port, pattern, roundtrip, sha

AES = base64.b64encode(os.urandom(32)).decode()


def escr_env(keys: Any, atsign: str, sid: str, side_a: bool) -> dict[str, str]:
    k = keys(atsign)
    return escr.EscrAuth(sid, AES, escr.apsk_uri(atsign), k.pkam_private, side_a).env()


async def escr_relay(keys: Any, sid: str, single: bool) -> tuple[Relay, int, int]:
    values = {escr.apsk_uri(a): rsa.public_to_b64(keys(a).pkam_public)
              for a in ("@sclient", "@sdaemon")}

    async def lookup(uri: str) -> str | None:
        return values.get(uri)

    relay = Relay(bind_host="127.0.0.1", single_port=0 if single else None, lookup=lookup)
    await relay.start()
    sess = await relay.create_session(SessionSpec(
        sid, "@sclient", "@sdaemon", "cn", auth_mode="escr", relay_auth_aes_key=AES,
        only443=single))
    if single:
        assert relay.single is not None
        return relay, relay.single.port, relay.single.port
    return relay, sess.port_a, sess.port_b


@pytest.mark.parametrize(("multi", "single"), [(False, False), (True, False), (True, True)],
                         ids=["single-two-port", "multi-two-port", "multi-443"])
def test_srv_escr_both_ends(keys: Any, run: Any, multi: bool, single: bool) -> None:  # noqa: F811
    async def go() -> None:
        sid = "11111111-2222-4333-8444-555555555555"
        relay, pa, pb = await escr_relay(keys, sid, single)
        flags, cenv = crypto_env("twin")
        extra = ["--multi", "--timeout", "3"] if multi else []
        echo = await EchoServer().start()
        lport = free_port()
        daemon = client = None
        try:
            daemon = await start_srv(
                ["-h", "127.0.0.1", "-p", str(pb), "--local-port", str(echo.port),
                 "--local-host", "127.0.0.1", "-a", "escr", *flags, *extra],
                srv_env({**escr_env(keys, "@sdaemon", sid, False), **cenv}))
            client = await start_srv(
                ["-h", "127.0.0.1", "-p", str(pa), "--local-port", str(lport),
                 "--bind-local-port", "--relay-auth-mode", "escr", *flags, *extra],
                srv_env({**escr_env(keys, "@sclient", sid, True), **cenv}))
            n = 5 if multi else 1
            datas = [pattern(200_000 + i, seed=i) for i in range(n)]
            got = await asyncio.gather(*(roundtrip(lport, d) for d in datas))
            assert [sha(g) for g in got] == [sha(d) for d in datas]
            assert await client.wait(30) == 0, client.stderr
            assert await daemon.wait(30) == 0, daemon.stderr
        finally:
            for s in (client, daemon):
                if s is not None:
                    await s.kill()
            await echo.close()
            await relay.close()

    run(go(), timeout=60)


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["-a", "escr"], {}, "No REMOTE_AUTH_ESCR_SESSION_ID in env"),
        (["-a", "escr"], {"REMOTE_AUTH_ESCR_SESSION_ID": "s"},
         "No REMOTE_AUTH_ESCR_AES_KEY in env"),
        (["-a", "escr", "--rv-auth"], {"RV_AUTH": "x"}, "cannot be used together"),
        (["-a", "payload"], {}, "RV_AUTH is not in environment"),
    ],
)
def test_srv_escr_environment_contract(args: list[str], env: dict[str, str], message: str,
                                       run: Any) -> None:  # noqa: F811
    async def go() -> None:
        s = await start_srv(["-h", "127.0.0.1", "-p", "1", *args], srv_env(env),
                            wait_ready=False)
        assert await s.wait() == 1
        assert message in s.stderr and READY not in s.stderr

    run(go(), timeout=30)


def test_srv_escr_refused_exits_200(keys: Any, run: Any) -> None:  # noqa: F811
    async def go() -> None:
        sid = "11111111-2222-4333-8444-555555555556"
        relay, pa, pb = await escr_relay(keys, sid, False)
        echo = await EchoServer().start()
        try:  # the client's key claiming side B: the relay refuses, srv reports it
            s = await start_srv(
                ["-h", "127.0.0.1", "-p", str(pb), "--local-port", str(echo.port),
                 "--local-host", "127.0.0.1", "-a", "escr"],
                srv_env(escr_env(keys, "@sclient", sid, False)), wait_ready=False)
            assert await s.wait(20) == 200
            assert "Socket auth failed" in s.stderr
        finally:
            await echo.close()
            await relay.close()

    run(go(), timeout=30)

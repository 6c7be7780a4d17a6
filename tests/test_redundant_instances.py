"""Redundant instances on one atSign (latest spec 2.2, 8.2), with real processes: two srvd for
one relay atSign (old clients get exactly one answer through the session mutex, current ones
take the first of several; one instance killed mid-way), two sshnpd for one device (exactly
one serves each session)."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid

import pytest

from noports.session.wire import client_nonce, parse_relay_reply, relay_request
from tests.test_npt_e2e import EchoServer
from tests.test_relay_selection import _echo_through, _npt, start_daemon
from tests.test_srvd_app import arun, connect, start_srvd

pytestmark = pytest.mark.timeout(150)


async def _answers(client, relay: str, dev_b: str, *, multiple: bool, settle: float = 3.0):
    """Send one R1 and collect every answer that arrives within ``settle`` s of the first."""
    sid = str(uuid.uuid4())
    got: list[str] = []
    async with client.monitor(re.escape(sid)) as mon:
        await mon.started(10)
        body = relay_request(
            session_id=sid,
            atsign_a=client.atsign,
            atsign_b=dev_b,
            auth_a=True,
            auth_b=True,
            client_nonce=client_nonce(),
            multiple_acks_ok=multiple,
        )
        if not multiple:  # exactly what an old (5.6.3) client sends: the first six fields
            body = {k: body[k] for k in list(body)[:6]}
        await client.notify(
            relay, "dev1.request_ports", json.dumps(body), namespace="sshrvd", ttl_ms=10_000
        )
        timeout = 20.0
        while True:
            try:
                n = await mon.next(timeout=timeout)
            except (TimeoutError, asyncio.TimeoutError):
                return got
            if n.from_atsign == relay and n.short_key == f"{sid}.sshrvd" and n.value:
                got.append(n.value)
                timeout = settle


def test_two_srvd_one_relay_atsign(np_env) -> None:
    client_at = np_env.atsign("client")
    dev_at = np_env.atsign("device")
    relay = np_env.atsign("relay")
    first = start_srvd(np_env, relay)
    second = start_srvd(np_env, relay)
    start_daemon(np_env, dev_at, client_at, "red1")
    echo = EchoServer()

    async def ask_both():
        c = await connect(np_env, client_at)
        try:
            old = await _answers(c, relay, dev_at, multiple=False)
            new = await _answers(c, relay, dev_at, multiple=True)
        finally:
            await c.close()
        return old, new

    try:
        old, new = arun(ask_both(), timeout=80)
        # an old client: one instance won the session mutex, the other stayed silent (CSV reply)
        assert len(old) == 1 and not old[0].startswith("{"), old
        assert "is served by another srvd instance" in first.stderr + second.stderr
        # a current client (multipleAcksOk): both instances answer, in JSON; it takes the first
        assert len(new) == 2 and all(v.startswith("{") for v in new), new
        assert {parse_relay_reply(v).host for v in new} == {"127.0.0.1"}
        r = _npt(np_env, client_at, dev_at, relay, "red1", echo.port)
        assert r.returncode == 0, r.stderr
        _echo_through(json.loads(r.stdout)["port"])
        # one instance dies mid-way: the other keeps serving the relay atSign
        first.stop()
        r = _npt(np_env, client_at, dev_at, relay, "red1", echo.port)
        assert r.returncode == 0, r.stderr
        _echo_through(json.loads(r.stdout)["port"])
    finally:
        echo.close()


def test_two_sshnpd_one_device_exactly_one_answers(np_env) -> None:
    client_at = np_env.atsign("client")
    dev_at = np_env.atsign("device")
    relay = np_env.atsign("relay")
    start_srvd(np_env, relay)
    d1 = start_daemon(np_env, dev_at, client_at, "twin1")
    d2 = start_daemon(np_env, dev_at, client_at, "twin1")
    echo = EchoServer()
    try:
        for _ in range(2):
            r = _npt(np_env, client_at, dev_at, relay, "twin1", echo.port)
            assert r.returncode == 0, r.stderr
            ev = json.loads(r.stdout)
            _echo_through(ev["port"])
            sid = ev["sessionId"]
            for _wait in range(50):  # the loser's log line may trail the winner's answer
                served = [d for d in (d1, d2) if re.search(rf"session {sid} for .* npt", d.stderr)]
                skipped = [d for d in (d1, d2) if f"session {sid} is served by another" in d.stderr]
                if len(served) + len(skipped) >= 2:
                    break
                time.sleep(0.1)
            assert len(served) == 1 and len(skipped) == 1, (d1.stderr[-2000:], d2.stderr[-2000:])
    finally:
        echo.close()

"""srvd with ESCR relay auth and the 443 single-port listener: the real program, the
embedded atServer, signing keys published at ``public:_apsk.primary.a.__e@<atSign>``.

Covers issue 8 points 2-3 and issue 10 break 7 (the T2 replay test of reliability.md):
a copied auth line, replayed after pairing, is refused.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import uuid
from typing import Any

import pytest

from noports.at.client import AtClient
from noports.crypto import escr, rsa
from noports.crypto.envelope import relay_auth_line
from noports.errors import AuthRefusedError
from noports.session.wire import client_nonce, parse_relay_reply, relay_request
from noports.tunnel.net import connect_relay
from tests.test_srvd_app import arun, connect, exchange, start_srvd

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def publish(client: AtClient) -> str:
    """Put our PKAM public key where ESCR verifiers look (as the official ApkamSigning)."""
    await client.put("_apsk.primary.a.__e", rsa.public_to_b64(client.keys.pkam_public),
                     public=True)
    return escr.apsk_uri(client.atsign)


async def ask(client: AtClient, relay: str, atsign_b: str, *, mode: str | None = "escr",
              aes: str | None = None, only443: bool = False, prefetch: list[str] | None = None,
              auth: tuple[bool, bool] = (True, True)) -> tuple[str, str, str]:
    sid = str(uuid.uuid4())
    req: dict[str, Any] = relay_request(session_id=sid, atsign_a=client.atsign,
                                        atsign_b=atsign_b, auth_a=auth[0], auth_b=auth[1],
                                        client_nonce=client_nonce(), send_json_response=True)
    if mode is not None:
        req["relayAuthMode"] = mode
        req["relayAuthAesKey"] = aes
        req["only443"] = only443
        req["multipleAcksOk"] = True
        req["preFetch"] = prefetch or []
    async with client.monitor(re.escape(sid)) as mon:
        await mon.started(10)
        await client.notify(relay, "dev1.request_ports", json.dumps(req), namespace="sshrvd",
                            ttl_ms=10_000)
        while True:
            n = await mon.next(timeout=15)
            if n.from_atsign != relay or n.value is None:
                continue
            if n.short_key == f"{sid}.sshrvd":
                return "ack", n.value, sid
            if n.short_key == f"nack.{sid}.sshrvd":
                return "nack", n.value, sid


def aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


async def streams(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(sock=sock)


async def refused_after_challenge(port: int, line: bytes) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        challenge = await asyncio.wait_for(r.readline(), 5)
        assert len(challenge) == 45 and challenge.endswith(b"\n")
        w.write(line)
        await w.drain()
        said = await asyncio.wait_for(r.readline(), 5)
        assert await asyncio.wait_for(r.read(), 5) == b""
        return said
    finally:
        w.close()


def test_escr_two_port_and_443_end_to_end(np_env: Any) -> None:
    relay, c, d = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("device")
    port443 = free_port()
    p = start_srvd(np_env, relay, "--workers", "2", "--443", "--443-bind-port", str(port443),
                   "--443-advertise-port", str(port443))

    async def main() -> None:
        client, device = await connect(np_env, c), await connect(np_env, d)
        try:
            uri_c, uri_d = await publish(client), await publish(device)
            for only443 in (False, True):
                key = aes_key()
                kind, value, sid = await ask(client, relay, d, aes=key, only443=only443,
                                             prefetch=[uri_c, uri_d])
                assert kind == "ack", value
                reply = parse_relay_reply(value)
                if only443:
                    assert reply.port_a == reply.port_b == port443
                else:
                    assert port443 not in (reply.port_a, reply.port_b)
                b = await connect_relay("127.0.0.1", reply.port_b, escr.EscrAuth(
                    sid, key, uri_d, device.keys.pkam_private, False))
                a = await connect_relay("127.0.0.1", reply.port_a, escr.EscrAuth(
                    sid, key, uri_c, client.keys.pkam_private, True))
                sa, sb = await streams(a), await streams(b)
                await exchange(sa, sb, 256 * 1024)
                # a second pair (npt multi): its own challenges
                b2 = await connect_relay("127.0.0.1", reply.port_b, escr.EscrAuth(
                    sid, key, uri_d, device.keys.pkam_private, False))
                a2 = await connect_relay("127.0.0.1", reply.port_a, escr.EscrAuth(
                    sid, key, uri_c, client.keys.pkam_private, True))
                sa2, sb2 = await streams(a2), await streams(b2)
                await exchange(sa2, sb2, 1000)
                for _, w in (sa, sb, sa2, sb2):
                    w.close()
                assert await asyncio.to_thread(
                    p.wait_for, rf"Finished session {sid} .*\(happy: 2 pairs", 15)
            # no preFetch: the worker asks the control process to look the keys up
            key = aes_key()
            kind, value, sid = await ask(client, relay, d, aes=key, only443=True)
            assert kind == "ack", value
            b = await connect_relay("127.0.0.1", port443, escr.EscrAuth(
                sid, key, uri_d, device.keys.pkam_private, False))
            a = await connect_relay("127.0.0.1", port443, escr.EscrAuth(
                sid, key, uri_c, client.keys.pkam_private, True))
            sa, sb = await streams(a), await streams(b)
            await exchange(sa, sb, 1000)
            sa[1].close()
            sb[1].close()
        finally:
            await client.close()
            await device.close()

    arun(main(), timeout=90)


def test_refuse_payload_auth_and_t2_replay_after_pairing(np_env: Any) -> None:
    """Break 7: with --refuse-payload-auth a payload request gets a nack; in the escr
    session a copied response (and a copied payload line) replayed after pairing, to the
    other side and to another session is refused, and a signer of the wrong side is too."""
    relay, c, d = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("device")
    p = start_srvd(np_env, relay, "--workers", "1", "--refuse-payload-auth")

    async def main() -> None:
        client, device = await connect(np_env, c), await connect(np_env, d)
        try:
            uri_c, uri_d = await publish(client), await publish(device)
            kind, value, _ = await ask(client, relay, d, mode=None)
            assert kind == "nack" and "--refuse-payload-auth" in value
            kind, value, _ = await ask(client, relay, d, mode="payload")
            assert kind == "nack"
            kind, value, _ = await ask(client, relay, d, aes=aes_key(), auth=(True, False))
            assert kind == "nack"
            key = aes_key()
            kind, value, sid = await ask(client, relay, d, aes=key)
            assert kind == "ack", value
            reply = parse_relay_reply(value)
            _, value2, sid2 = await ask(client, relay, d, aes=key)  # another session
            reply2 = parse_relay_reply(value2)
            # side A by hand, as a sniffer on the relay hop would see it
            r, w = await asyncio.open_connection("127.0.0.1", reply.port_a)
            challenge = await r.readline()
            ev = escr.EscrAuth(sid, key, uri_c, client.keys.pkam_private, True).prover()
            copied = ev.feed(challenge).data
            w.write(copied)
            assert await r.readline() == b"ok\n"
            b = await connect_relay("127.0.0.1", reply.port_b, escr.EscrAuth(
                sid, key, uri_d, device.keys.pkam_private, False))
            sb = await streams(b)
            await exchange((r, w), sb, 64 * 1024)  # paired
            fail = b"Socket auth failed\n"
            assert await refused_after_challenge(reply.port_a, copied) == fail
            assert await refused_after_challenge(reply.port_b, copied) == fail
            assert await refused_after_challenge(reply2.port_a, copied) == fail
            # a payload-mode line, validly signed by the client, is no answer either
            payload_line = relay_auth_line(sid, client_nonce(), reply.rvd_nonce or "",
                                           client.keys.encrypt_private) + "\n"
            assert await refused_after_challenge(reply.port_a, payload_line.encode()) == fail
            with pytest.raises(AuthRefusedError):  # the device's key claiming side A
                await connect_relay("127.0.0.1", reply.port_a, escr.EscrAuth(
                    sid, key, uri_d, device.keys.pkam_private, True))
            # the daemon's next socket must not meet attacker data: nothing is waiting
            b2 = await connect_relay("127.0.0.1", reply.port_b, escr.EscrAuth(
                sid, key, uri_d, device.keys.pkam_private, False))
            r2, w2 = await streams(b2)
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(r2.read(1), 0.5)
            for x in (w, sb[1], w2):
                x.close()
            return sid
        finally:
            await client.close()
            await device.close()

    sid = arun(main(), timeout=90)
    m = p.wait_for(rf"Finished session {sid} .*auth failures\)", 15)
    assert m
    assert "refuse-payload-auth" in p.stderr


def test_only443_without_443_gets_the_official_nack(np_env: Any) -> None:
    relay, c, d = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("device")
    p = start_srvd(np_env, relay, "--workers", "1")

    async def main() -> None:
        client = await connect(np_env, c)
        try:
            kind, value, _ = await ask(client, relay, d, aes=aes_key(), only443=True)
            assert kind == "nack"
            assert value == "Client requested port 443 but this relay is not bound to port 443"
            # an unknown relayAuthMode is dropped as the official srvd does (no answer at all);
            # the relay's log says why
            req = relay_request(session_id=str(uuid.uuid4()), atsign_a=c, atsign_b=d,
                                auth_a=True, auth_b=True, client_nonce=client_nonce(),
                                send_json_response=True)
            req.update(relayAuthMode="rot13", relayAuthAesKey=aes_key(), multipleAcksOk=True)
            await client.notify(relay, "dev1.request_ports", json.dumps(req),
                                namespace="sshrvd", ttl_ms=10_000)
            await asyncio.to_thread(p.wait_for, "relayAuthMode", 15)
        finally:
            await client.close()

    arun(main(), timeout=60)

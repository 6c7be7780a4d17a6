"""srvd end to end: the real program, the embedded atServer, real sockets, real auth lines.

The test process plays the requesting client (our AtClient sending R1/R1L notifications as
spec 4.2 describes) and holds a second atSign's keys to play the device on side B.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from noports import _compat
from noports.at.client import AtClient
from noports.crypto.envelope import relay_auth_line
from noports.session.wire import RelayReply, client_nonce, parse_relay_reply, relay_request

READY = r"ready: monitor started"
pytestmark = pytest.mark.timeout(90)


def arun(coro, timeout: float = 45.0):
    async def guarded():
        return await asyncio.wait_for(coro, timeout)

    return _compat.run(guarded())


def start_srvd(np_env, relay: str, *args: str, env: dict[str, str] | None = None):
    return np_env.spawn(
        "srvd",
        "-a",
        relay,
        "-i",
        "127.0.0.1",
        "--bind",
        "127.0.0.1",
        "-v",
        "--drain-seconds",
        "1",
        *args,
        ready=READY,
        timeout=30,
        env=env,
    )


async def connect(np_env, atsign: str) -> AtClient:
    return await AtClient.connect(
        atsign, keys=np_env.keys(atsign), root=np_env.server.root, ca_file=np_env.server.ca_file
    )


async def ask(
    client: AtClient,
    relay: str,
    *,
    sid: str | None = None,
    dev: str = "dev1",
    legacy: bool = False,
    atsign_a: str | None = None,
    atsign_b: str = "@nobody",
    auth: tuple[bool, bool] = (True, True),
    cnonce: str | None = None,
    json_response: bool = False,
    timeout: float = 15.0,
) -> tuple[str, str, str]:
    """Send R1 (or R1L) and wait for the answer: (``"ack"`` or ``"nack"``, value, sid)."""
    sid = sid or str(uuid.uuid4())
    async with client.monitor(re.escape(sid)) as mon:
        await mon.started(10)
        if legacy:
            await client.notify(relay, dev, sid, namespace="sshrvd", ttl_ms=10_000)
        else:
            req = relay_request(
                session_id=sid,
                atsign_a=atsign_a or client.atsign,
                atsign_b=atsign_b,
                auth_a=auth[0],
                auth_b=auth[1],
                client_nonce=cnonce or client_nonce(),
                send_json_response=json_response,
            )
            req["futureField"] = {"tolerated": True}  # newer clients add fields
            await client.notify(
                relay, f"{dev}.request_ports", json.dumps(req), namespace="sshrvd", ttl_ms=10_000
            )
        while True:
            n = await mon.next(timeout=timeout)
            if n.from_atsign != relay or n.value is None:
                continue
            if n.short_key == f"{sid}.sshrvd":
                return "ack", n.value, sid
            if n.short_key == f"nack.{sid}.sshrvd":
                return "nack", n.value, sid


async def open_side(port: int, line: str | None):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if line is not None:
        writer.write(line.encode() + b"\n")
    return reader, writer


async def exchange(a, b, size: int = 512 * 1024) -> None:
    """Move checksummed random data A->B and B->A at the same time."""
    (ra, wa), (rb, wb) = a, b
    data_ab, data_ba = os.urandom(size), os.urandom(size // 2 + 7)

    async def send(w, data):
        w.write(data)
        await w.drain()

    async def recv(r, n):
        return await r.readexactly(n)

    got = await asyncio.gather(
        send(wa, data_ab), send(wb, data_ba), recv(rb, len(data_ab)), recv(ra, len(data_ba))
    )
    assert hashlib.sha256(got[2]).digest() == hashlib.sha256(data_ab).digest()
    assert hashlib.sha256(got[3]).digest() == hashlib.sha256(data_ba).digest()


async def authed_pair(np_env, reply: RelayReply, sid: str, cn: str, a_sign: str, b_sign: str):
    b = await open_side(
        reply.port_b, relay_auth_line(sid, cn, reply.rvd_nonce, np_env.keys(b_sign).encrypt_private)
    )
    a = await open_side(
        reply.port_a, relay_auth_line(sid, cn, reply.rvd_nonce, np_env.keys(a_sign).encrypt_private)
    )
    return a, b


async def closed_by_relay(reader: asyncio.StreamReader, within: float) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(100), within)
    except ConnectionResetError:
        return True
    except asyncio.TimeoutError:
        return False
    return data == b""


def children_of(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out.update(int(x) for x in (task / "children").read_text().split())
        except OSError:
            continue
    return out


# ------------------------------------------------------------------------------------------


def test_json_request_both_sides_authenticated_end_to_end(np_env):
    relay, c, d = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("device")
    p = start_srvd(np_env, relay, "--workers", "1", "--auth-timeout", "2")

    async def main():
        client = await connect(np_env, c)
        try:
            cn = client_nonce()
            t0 = time.perf_counter()
            kind, value, sid = await ask(client, relay, atsign_b=d, cnonce=cn)
            latency = time.perf_counter() - t0
            assert kind == "ack", value
            reply = parse_relay_reply(value)
            assert value.startswith("127.0.0.1,") and value.count(",") == 3
            assert reply.rvd_nonce and len(reply.rvd_nonce) >= 22  # CSPRNG, not a timestamp
            # hostile sockets first on side A: silence-then-garbage, and the device's
            # (valid, but wrong side) signature; neither may take the real client's place
            junk = await open_side(reply.port_a, '{"payload":{}}')
            wrong = await open_side(
                reply.port_a,
                relay_auth_line(sid, cn, reply.rvd_nonce, np_env.keys(d).encrypt_private),
            )
            a, b = await authed_pair(np_env, reply, sid, cn, c, d)
            await exchange(a, b)
            assert await closed_by_relay(junk[0], 3.5)
            assert await closed_by_relay(wrong[0], 3.5)
            # the JSON reply form when the request asks for it
            kind2, value2, _ = await ask(client, relay, atsign_b=d, json_response=True)
            assert kind2 == "ack"
            j = json.loads(value2)
            assert j["address"] == "127.0.0.1" and isinstance(j["portA"], int) and j["rvdNonce"]
            for _, w in (a, b):
                w.close()
            return sid, latency
        finally:
            await client.close()

    sid, latency = arun(main())
    print(f"session request -> reply latency: {latency * 1000:.1f} ms")
    m = p.wait_for(rf"Finished session {sid} .*\(happy: 1 pairs, 524288 bytes A->B", 15)
    assert m
    err = p.stderr
    assert f"Starting session {sid} for {c} to {d} using ports" in err
    # the nonce is never logged in full at INFO
    assert "Sending response data for requested session" in err
    line = next(x for x in err.splitlines() if "Sending response data" in x and sid in x)
    assert line.rstrip().endswith("...]")


def test_legacy_request_null_nonce_no_auth_over_ipv6_with_snoop(np_env):
    relay, c = np_env.atsign("relay"), np_env.atsign("client")
    p = start_srvd(
        np_env,
        relay,
        "--workers",
        "1",
        "--bind",
        "::1",
        "-i",
        "::1",
        "-s",
        env={"ENABLE_SNOOP": "true"},
    )

    async def main():
        client = await connect(np_env, c)
        try:
            kind, value, sid = await ask(client, relay, legacy=True, dev="mydev")
            assert kind == "ack", value
            assert value.startswith("::1,") and value.endswith(",null")
            reply = parse_relay_reply(value)
            assert reply.rvd_nonce is None
            b = await asyncio.open_connection("::1", reply.port_b)
            a = await asyncio.open_connection("::1", reply.port_a)
            a[1].write(b"hello\x01\n")
            assert await b[0].readexactly(7) == b"hello\x01\n"
            await exchange(a, b, 64 * 1024)
        finally:
            await client.close()

    arun(main())
    p.wait_for(r"A -> B : hello\*\*", 5)  # snoop: non-printables as '*'
    assert "snoop is ON" in p.stderr


def test_manager_checks_the_sender_and_atsigna_spoofing_is_refused(np_env):
    relay, c, e, x = (
        np_env.atsign("relay"),
        np_env.atsign("client"),
        np_env.atsign("eve"),
        np_env.atsign("mallory"),
    )
    p = start_srvd(np_env, relay, "--workers", "1", "-m", f"{c},{e}")

    async def main():
        cx, ce, cc = await connect(np_env, x), await connect(np_env, e), await connect(np_env, c)
        try:
            # not a manager, even though the JSON names a manager as atSignA (official bug)
            kind, value, _ = await ask(cx, relay, atsign_a=c, auth=(False, False))
            assert kind == "nack" and "not allowed" in value
            # a manager, but claiming to be another atSign
            kind, value, _ = await ask(ce, relay, atsign_a=c, auth=(False, False))
            assert kind == "nack" and "is not the requester" in value
            kind, value, _ = await ask(cc, relay, auth=(False, False))
            assert kind == "ack", value
        finally:
            for cl in (cx, ce, cc):
                await cl.close()

    arun(main())
    assert "is denied" in p.stderr


def _free_port_range(n: int) -> int:
    """First port of n consecutive ports that are free now, below the kernel's ephemeral
    range (so outgoing connections of this or other tests cannot take them meanwhile)."""
    import random
    import socket

    try:
        eph_lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        eph_lo = 32768
    rng = random.Random(os.getpid())
    for _ in range(200):
        lo = rng.randrange(10000, eph_lo - n)
        socks = []
        try:
            for port in range(lo, lo + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", port))
            return lo
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise AssertionError(f"no {n} consecutive free ports below {eph_lo}")


def test_duplicate_session_id_quota_port_range_and_reclaim(np_env):
    relay, c, e = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("eve")
    lo = _free_port_range(6)
    hi = lo + 5  # six ports: three sessions at most
    p = start_srvd(
        np_env,
        relay,
        "--workers",
        "2",
        "--max-sessions-per-requester",
        "2",
        "--port-range",
        f"{lo}-{hi}",
        "--pair-timeout",
        "3",
    )

    async def main():
        cc, ce = await connect(np_env, c), await connect(np_env, e)
        try:
            k1, v1, sid1 = await ask(cc, relay, auth=(False, False))
            assert k1 == "ack", v1
            k, v, _ = await ask(cc, relay, sid=sid1, auth=(False, False))
            assert k == "nack" and "already in use" in v
            k2, v2, _ = await ask(cc, relay, auth=(False, False))
            assert k2 == "ack", v2
            k, v, _ = await ask(cc, relay, auth=(False, False))
            assert k == "nack" and "quota 2" in v
            k3, v3, _ = await ask(ce, relay, auth=(False, False))  # another requester
            assert k3 == "ack", v3
            k, v, _ = await ask(ce, relay, auth=(False, False))
            assert k == "nack" and "capacity (3 sessions)" in v  # the port range is full
            ports = []
            for v in (v1, v2, v3):
                r = parse_relay_reply(v)
                assert lo <= r.port_a <= hi and lo <= r.port_b <= hi
                ports += [r.port_a, r.port_b]
            assert len(set(ports)) == 6
            # unused pairs end "lonely" after the pair timeout: ports and quota come back
            await asyncio.sleep(3.5)
            for port in ports:
                with pytest.raises(ConnectionRefusedError):
                    await asyncio.open_connection("127.0.0.1", port)
            k4, v4, _ = await ask(cc, relay, auth=(False, False))
            assert k4 == "ack", v4
        finally:
            await cc.close()
            await ce.close()

    arun(main())
    assert "(quota)" in p.stderr and "(duplicate)" in p.stderr and "(capacity)" in p.stderr
    assert f"Finished session {sid_of(p, 0)}" in p.stderr and "(lonely:" in p.stderr


def sid_of(p, n: int) -> str:
    return re.findall(r"Starting session (\S+) ", p.stderr)[n]


def test_two_workers_share_sessions_and_both_relay(np_env):
    relay, c, d = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("device")
    p = start_srvd(np_env, relay, "--workers", "2")

    async def main():
        client = await connect(np_env, c)
        try:
            cn = client_nonce()
            got = []
            for _ in range(2):
                kind, value, sid = await ask(client, relay, atsign_b=d, cnonce=cn)
                assert kind == "ack", value
                got.append((parse_relay_reply(value), sid))
            pairs = [await authed_pair(np_env, r, sid, cn, c, d) for r, sid in got]
            await asyncio.gather(*(exchange(a, b) for a, b in pairs))
            os.killpg(p.pid, signal.SIGUSR1)  # the whole group: workers must not die of it
            for w in (1, 2):
                p.wait_for(rf"stats worker {w} \(pid \d+\): 1 sessions, 1 pairs", 5)
            p.wait_for(r"stats: 2 live sessions, 1 requesters", 5)
            return [sid for _, sid in got]
        finally:
            await client.close()

    sids = arun(main())
    workers = {
        int(p.wait_for(rf"Starting session {sid} .* on worker (\d)", 5).group(1)) for sid in sids
    }
    assert workers == {1, 2}


def test_sigterm_drains_live_pair_refuses_new_requests_and_leaves_no_children(np_env):
    relay, c, d = np_env.atsign("relay"), np_env.atsign("client"), np_env.atsign("device")
    p = start_srvd(np_env, relay, "--workers", "2", "--drain-seconds", "4")
    kids = children_of(p.pid)
    assert len(kids) == 2, kids

    async def main():
        client = await connect(np_env, c)
        try:
            cn = client_nonce()
            kind, value, sid = await ask(client, relay, atsign_b=d, cnonce=cn)
            assert kind == "ack", value
            a, b = await authed_pair(np_env, parse_relay_reply(value), sid, cn, c, d)
            await exchange(a, b, 64 * 1024)
            os.kill(p.pid, signal.SIGTERM)  # the control process only, as systemd would first
            t0 = time.monotonic()
            kind, value, _ = await ask(client, relay, atsign_b=d, cnonce=cn)
            assert kind == "nack" and "shutting down" in value
            await exchange(a, b, 64 * 1024)  # the live pair keeps flowing while draining
            assert time.monotonic() - t0 < 4
            # the drain bound: the relay closes the still-open pair when the time is up
            assert await closed_by_relay(a[0], 10)
            return time.monotonic() - t0
        finally:
            await client.close()

    elapsed = arun(main())
    assert p.wait(15) == 0
    assert elapsed < 4 + 3
    assert "drain time is up" in p.stderr
    for pid in kids:  # the workers were joined: gone, not reparented
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert b"noports.srvd.worker" not in cmdline, f"worker {pid} outlived srvd"


def test_bad_flags_version_and_missing_keys(np_env):
    r = np_env.run("srvd", "-a", "@relay", "-i", "127.0.0.1", "--workers", "0")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and "--workers" in r.stderr
    r = np_env.run("srvd", "-a", "@relay")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    r = np_env.run("srvd", "--version")
    assert r.returncode == 0 and r.stdout.startswith("srvd (noports)")
    r = np_env.run("srvd", "-a", "@nokeys", "-i", "127.0.0.1")
    assert r.returncode == 4 and "nokeys" in r.stderr
    relay = np_env.atsign("relay")
    r = np_env.run("srvd", "-a", relay, "-i", "127.0.0.1", "--bind", "192.0.2.1", "--workers", "1")
    assert r.returncode == 2 and "cannot listen on --bind 192.0.2.1" in r.stderr
    r = np_env.run("srvd", "--help")
    assert "--snoop" not in r.stdout
    r = np_env.run("srvd", "--help", env={"ENABLE_SNOOP": "true"})
    assert "--snoop" in r.stdout and "PRIVACY" in r.stdout


def test_worker_death_is_reported_and_new_sessions_still_work(np_env):
    relay, c = np_env.atsign("relay"), np_env.atsign("client")
    p = start_srvd(np_env, relay, "--workers", "2")

    async def main():
        client = await connect(np_env, c)
        try:
            kind, value, sid = await ask(client, relay, auth=(False, False))
            assert kind == "ack", value
            w = int(p.wait_for(rf"Starting session {sid} .* on worker (\d)", 5).group(1))
            pid = int(p.wait_for(rf"worker {w} ready \(pid (\d+)", 5).group(1))
            os.kill(pid, signal.SIGKILL)
            p.wait_for(rf"worker {w} \(pid {pid}\) died .*1 live session\(s\) lost", 10)
            p.wait_for(rf"worker {w} restarted", 15)
            # the lost session's id is free again; new sessions go to running workers
            for _ in range(2):
                kind, value, sid2 = await ask(client, relay, auth=(False, False))
                assert kind == "ack", value
                r = parse_relay_reply(value)
                b = await open_side(r.port_b, None)
                a = await open_side(r.port_a, None)
                await exchange(a, b, 32 * 1024)
        finally:
            await client.close()

    arun(main())
    # and if the control process itself is killed, its workers leave on their own
    kids = children_of(p.pid)
    assert len(kids) == 2
    os.kill(p.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(Path(f"/proc/{k}").exists() for k in kids):
        time.sleep(0.05)
    left = [
        k
        for k in kids
        if Path(f"/proc/{k}/cmdline").exists()
        and b"noports.srvd.worker" in Path(f"/proc/{k}/cmdline").read_bytes()
    ]
    assert not left, f"orphaned workers {left}"


def test_config_file_and_environment(np_env, tmp_path):
    relay, c = np_env.atsign("relay"), np_env.atsign("client")
    bad = tmp_path / "bad.toml"
    bad.write_text('atsign = "@x"\nip = "127.0.0.1"\nworkerz = 3\n')
    r = np_env.run("srvd", "--config", str(bad))
    assert r.returncode == 2 and "workerz" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    cfg = tmp_path / "srvd.toml"
    cfg.write_text(
        f'atsign = "{relay}"\nip = "127.0.0.1"\nbind = "127.0.0.1"\nworkers = 1\n'
        f'manager = "{c}"\ndrain-seconds = 1\n'
    )
    # the environment overrides the file: only @nobody may use the relay now
    p = np_env.spawn(
        "srvd",
        "--config",
        str(cfg),
        ready=READY,
        timeout=30,
        env={"NOPORTS_SRVD_MANAGER": "@nobody", "NOPORTS_SRVD_JSON_RESPONSE": "true"},
    )

    async def main():
        client = await connect(np_env, c)
        try:
            kind, value, _ = await ask(client, relay, auth=(False, False))
            assert kind == "nack" and "not allowed" in value
        finally:
            await client.close()

    arun(main())
    assert "1 worker(s), bind 127.0.0.1" in p.stderr

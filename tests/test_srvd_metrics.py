"""srvd for operators: /metrics, /healthz, /readyz, the status page, session records, systemd.

Real srvd processes, the embedded atServer, real relayed bytes; the Prometheus test runs
Debian's real ``prometheus`` against srvd and asks its HTTP API what it scraped.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from noports.session.wire import parse_relay_reply

from .metrics_support import (
    NO_PROMETHEUS,
    PROMETHEUS,
    Prometheus,
    assert_dashboard_matches,
    free_port,
    get,
    metric,
)
from .test_srvd_app import arun, ask, authed_pair, connect, exchange, start_srvd

pytestmark = pytest.mark.timeout(120)


def relay_a_session(np_env, relay, client_sign, device_sign, size, during):
    """Ask ``relay`` for a session, pair both sides, move ``size`` bytes each way, then run
    ``during(sid)`` (blocking, in a thread) while the pair is still live; then close it."""

    async def go():
        c = await connect(np_env, client_sign)
        try:
            kind, value, sid = await ask(c, relay, atsign_b=device_sign, cnonce="cn-metrics")
            assert kind == "ack", value
            reply = parse_relay_reply(value)
            a, b = await authed_pair(np_env, reply, sid, "cn-metrics", client_sign, device_sign)
            await exchange(a, b, size)
            try:
                await asyncio.to_thread(during, sid)
            finally:
                for _, w in (a, b):
                    w.close()
            return sid
        finally:
            await c.close()

    return arun(go(), timeout=90)


def test_metrics_health_ready_status_and_session_record(np_env):
    relay, alice, dev = np_env.atsign("relay"), np_env.atsign("alice"), np_env.atsign("dev")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    p = start_srvd(np_env, relay, "--metrics", str(port), "--log-format", "json", "--require-auth")
    status, body = get(base + "/healthz")
    assert status == 200 and body.startswith("ok"), body
    status, body = get(base + "/readyz")
    assert status == 200, body
    # the container image's HEALTHCHECK command against this relay
    health = Path(__file__).resolve().parents[1] / "packaging" / "container" / "healthcheck.py"
    r = subprocess.run(
        [sys.executable, str(health)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "NOPORTS_HEALTH_URL": base + "/healthz"},
    )
    assert r.returncode == 0 and r.stdout.startswith("healthy"), r.stderr

    def during(sid: str) -> None:
        text = get(base + "/metrics")[1]
        assert metric(text, "noports_relay_sessions_active") == 1
        assert metric(text, "noports_relay_pairs_active") == 1
        assert metric(text, "noports_relay_bytes_total", 'direction="a_to_b"') >= 256 * 1024
        assert metric(text, "noports_relay_bytes_total", 'direction="b_to_a"') >= 128 * 1024
        assert metric(text, "noports_relay_session_requests_total", 'result="granted"') == 1
        assert metric(text, "noports_relay_workers") >= 1
        assert "noports_relay_session_setup_seconds_bucket" in text
        assert 'noports_build_info{implementation="' in text
        page = get(base + "/")[1]
        assert sid in page and "<script" not in page.lower()
        assert "PRIVATE" not in page and "-----BEGIN" not in page

    sid = relay_a_session(np_env, relay, alice, dev, 256 * 1024, during)
    # the session ends once its last pair has ended: a structured record is logged
    p.wait_for(r'"event": "session_end"', timeout=40)
    rec = next(
        json.loads(line) for line in p.stderr.splitlines() if '"event": "session_end"' in line
    )
    for field in (
        "session_id",
        "atsign_a",
        "atsign_b",
        "role",
        "mode",
        "outcome",
        "bytes_a_to_b",
        "bytes_b_to_a",
        "duration_s",
        "pairs",
    ):
        assert field in rec, (field, rec)
    assert rec["session_id"] == sid and rec["bytes_a_to_b"] >= 256 * 1024
    text = get(base + "/metrics")[1]
    assert_dashboard_matches("noports-srvd", text)
    assert metric(text, "noports_relay_sessions_active") == 0
    assert metric(text, "noports_relay_bytes_total", 'direction="a_to_b"') >= 256 * 1024

    # refusals are counted, shown and recorded with fields
    async def refused():
        c = await connect(np_env, alice)
        try:
            return await ask(c, relay, atsign_b=dev, auth=(False, False), timeout=15)
        finally:
            await c.close()

    kind, _, _ = arun(refused())
    assert kind == "nack"
    text = get(base + "/metrics")[1]
    denied = [
        line
        for line in text.splitlines()
        if line.startswith("noports_relay_session_requests_total") and "granted" not in line
    ]
    assert denied, text
    assert '"event": "session_refused"' in p.stderr
    assert "session_refused" not in get(base + "/")[1]  # page shows the reason kind only
    assert "recent refusals" in get(base + "/")[1].lower()

    # draining: /readyz turns 503 while live sessions drain; the endpoint stays up
    p.signal(15)
    assert p.wait(30) == 0


def test_bad_metrics_address_is_a_usage_error(np_env):
    relay = np_env.atsign("relay")
    r = np_env.run("srvd", "-a", relay, "-i", "127.0.0.1", "--metrics", "127.0.0.1:notaport")
    assert r.returncode == 2 and "--metrics" in r.stderr


def test_systemd_ready_and_watchdog_notifications(np_env, tmp_path):
    relay = np_env.atsign("relay")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    try:
        p = start_srvd(np_env, relay, env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"})
        got: list[str] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (
            not any("READY=1" in m for m in got) or sum("WATCHDOG=1" in m for m in got) < 3
        ):
            got.append(sock.recv(4096).decode())
        assert any("READY=1" in m for m in got), got
        assert sum("WATCHDOG=1" in m for m in got) >= 3, got
        p.signal(15)
        assert p.wait(30) == 0
        sock.settimeout(2)
        rest = []
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert any("STOPPING=1" in m for m in got + rest), got + rest
    finally:
        sock.close()


@pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)
def test_a_real_prometheus_scrapes_srvd(np_env, tmp_path: Path):
    relay, alice, dev = np_env.atsign("relay"), np_env.atsign("alice"), np_env.atsign("dev")
    mport = free_port()
    start_srvd(np_env, relay, "--metrics", f"127.0.0.1:{mport}")
    with Prometheus(tmp_path, {"srvd": f"127.0.0.1:{mport}"}) as prom:

        def during(sid: str) -> None:
            prom.wait_value("noports_relay_sessions_active", lambda v: v >= 1, 40)
            q = 'noports_relay_bytes_total{direction="a_to_b"}'
            prom.wait_value(q, lambda v: v >= 200_000, 40)
            prom.wait_value('up{job="srvd"}', lambda v: v == 1, 5)

        relay_a_session(np_env, relay, alice, dev, 200_000, during)


def test_fatal_errors_honour_log_format_json(np_env):
    r = np_env.run("srvd", "-a", "@nokeys", "-i", "127.0.0.1", "--log-format", "json")
    assert r.returncode == 4
    lines = [json.loads(line) for line in r.stderr.strip().splitlines()]
    fatal = lines[-1]
    assert fatal["event"] == "fatal" and fatal["exit_code"] == 4 and "nokeys" in fatal["msg"]
    assert fatal["level"] == "critical" and fatal["logger"] == "srvd"
    r = np_env.run("srvd", "-a", "@nokeys", "-i", "127.0.0.1")  # text stays one plain line
    assert r.returncode == 4 and r.stderr.splitlines()[-1].startswith("srvd: error:")


def test_check_config_and_sighup_reload_keep_live_sessions(np_env, tmp_path):
    relay, alice, bob = np_env.atsign("relay"), np_env.atsign("alice"), np_env.atsign("bob")
    dev = np_env.atsign("dev")
    cfg = tmp_path / "srvd.toml"

    def write(manager: str, extra: str = "") -> None:
        cfg.write_text(
            f'atsign = "{relay}"\nip = "127.0.0.1"\nbind = "127.0.0.1"\nworkers = 1\n'
            f'manager = "{manager}"\ndrain-seconds = 1\n{extra}'
        )

    write(alice)
    r = np_env.run("srvd", "--config", str(cfg), "--check-config")
    assert r.returncode == 0 and "valid" in r.stdout, r.stderr
    write(alice, "workerz = 2\n")
    r = np_env.run("srvd", "--config", str(cfg), "--check-config")
    assert r.returncode == 2 and "workerz" in r.stderr
    write(alice)
    p = np_env.spawn("srvd", "--config", str(cfg), "-v", ready="ready: monitor started", timeout=30)

    async def request(who: str) -> str:
        c = await connect(np_env, who)
        try:
            return (await ask(c, relay, atsign_b=dev, timeout=15))[0]
        finally:
            await c.close()

    async def live_then_reload():
        c = await connect(np_env, alice)
        try:
            kind, value, sid = await ask(c, relay, atsign_b=dev, cnonce="cn-reload")
            assert kind == "ack", value
            reply = parse_relay_reply(value)
            a, b = await authed_pair(np_env, reply, sid, "cn-reload", alice, dev)
            await exchange(a, b, 64 * 1024)
            write(bob, "auth-timeout = 3\n")
            p.signal(signal.SIGHUP)
            await asyncio.to_thread(p.wait_for, "configuration reloaded", 20)
            await exchange(a, b, 64 * 1024)  # the live pair is untouched
            for _, w in (a, b):
                w.close()
        finally:
            await c.close()

    arun(live_then_reload(), timeout=60)
    assert "configuration reloaded: limits, managers" in p.stderr
    p.wait_for("limits reloaded", 10)  # the worker took the new limits
    assert arun(request(alice)) == "nack"
    assert arun(request(bob)) == "ack"
    # a bad file is reported and the running configuration kept
    write(alice, "workerz = 2\n")
    p.signal(signal.SIGHUP)
    p.wait_for("configuration reload failed", 20)
    assert "workerz" in p.stderr
    assert arun(request(bob)) == "ack"
    p.signal(signal.SIGTERM)
    assert p.wait(30) == 0

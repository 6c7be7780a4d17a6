"""npa for operators: ``--metrics`` (/metrics, /healthz, /readyz, status page) and systemd.

A real npa process on the embedded atServer; the test is a daemon asking it (over a real
AtClient), edits the policy file (a broken edit, then a good one) and scrapes what npa counted.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from tests.metrics_support import (
    assert_dashboard_matches,
    free_port,
    get,
    healthy_and_ready,
    metric,
)
from tests.test_npa_service import Daemon, connect, policy_text, write_policy

pytestmark = pytest.mark.timeout(120)


def _recv_until(sock: socket.socket, done, seconds: float) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not done(got):
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
    return got


def test_npa_metrics_readiness_and_systemd(np_env, tmp_path: Path) -> None:
    npa, dev = np_env.atsign("npa"), np_env.atsign("dev")
    alice, bob = "@alice_" + np_env.tag, "@bob_" + np_env.tag
    pol = tmp_path / "policy.toml"
    write_policy(pol, policy_text(alice, '"localhost:22"'))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        proc = np_env.spawn(
            "npa", "-a", npa, "--policy", str(pol), "--metrics", str(port),
            ready=r"npa: @\S+ monitor started",
            env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
        )  # fmt: skip
        got = _recv_until(
            sock, lambda g: any("READY=1" in m for m in g) and "WATCHDOG=1" in g, 20
        )
        assert any(m.startswith("READY=1") for m in got), got
        assert "WATCHDOG=1" in got, got

        text = healthy_and_ready(base)
        assert metric(text, "noports_npa_monitor_running") == 1
        assert metric(text, "noports_npa_requests_total", 'result="allowed"') == 0
        assert metric(text, "noports_npa_policy_ok") == 1

        async def scenario() -> None:
            async with await connect(np_env, dev) as dc:
                d = Daemon(dc, npa)
                await d.start()
                rid = int(time.time() * 1_000_000)
                got = await d.ask(rid, d.request(rid, alice))
                assert got[-1]["payload"]["authorized"] is True, got
                got = await d.ask(rid + 1, d.request(rid + 1, bob))
                assert got[-1]["payload"]["authorized"] is False, got
                got = await d.ask(rid + 2, "{not json")
                assert [r["respType"] for r in got] == ["nack"], got
                # a broken edit: the last good policy stays, the reload counts as an error
                write_policy(pol, "[groups.x]\nmembers = []\n")
                got = await d.ask(rid + 3, d.request(rid + 3, alice))
                assert got[-1]["payload"]["authorized"] is True, got
                text = (await asyncio.to_thread(get, base + "/metrics"))[1]
                assert metric(text, "noports_npa_policy_ok") == 0
                # a good edit: bob may now, alice no longer
                write_policy(pol, policy_text(bob, '"localhost:22"'))
                got = await d.ask(rid + 4, d.request(rid + 4, bob))
                assert got[-1]["payload"]["authorized"] is True, got
                page = (await asyncio.to_thread(get, base + "/"))[1]
                assert "<script" not in page.lower() and npa in page

        asyncio.run(asyncio.wait_for(scenario(), 60))
        text = get(base + "/metrics")[1]
        assert_dashboard_matches("noports-npa", text)
        assert metric(text, "noports_npa_requests_total", 'result="allowed"') == 3
        assert metric(text, "noports_npa_requests_total", 'result="denied"') == 1
        assert metric(text, "noports_npa_requests_total", 'result="error"') == 1
        assert metric(text, "noports_npa_policy_reloads_total", 'result="error"') == 1
        assert metric(text, "noports_npa_policy_reloads_total", 'result="ok"') == 1
        assert metric(text, "noports_npa_policy_ok") == 1
        assert metric(text, "noports_npa_notifications_total", 'direction="in"') == 5
        # each answer is ack + success (a nack alone), plus one P3 self-audit per answer
        assert metric(text, "noports_npa_notifications_total", 'direction="out"') == 4 * 3 + 2
        assert 'noports_build_info{implementation="' in text

        proc.signal(15)
        assert proc.wait(30) == 0
        rest = _recv_until(sock, lambda g: any("STOPPING=1" in m for m in g), 5)
        assert any("STOPPING=1" in m for m in got + rest), got + rest
    finally:
        sock.close()


def test_npa_bad_metrics_address_is_a_usage_error(np_env, tmp_path: Path) -> None:
    npa = np_env.atsign("npa")
    pol = tmp_path / "policy.toml"
    write_policy(pol, policy_text("@alice", '"localhost:22"'))
    r = np_env.run("npa", "-a", npa, "--policy", str(pol), "--metrics", "127.0.0.1:x")
    assert r.returncode == 2 and "--metrics" in r.stderr

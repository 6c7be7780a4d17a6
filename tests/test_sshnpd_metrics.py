"""sshnpd for operators: ``--metrics`` (/metrics, /healthz, /readyz, status page), systemd
readiness and the structured session records.

The real sshnpd process, the embedded atServer, the relay engine and a real OpenSSH sshd:
the test is the client (ping, relay session, signed request, tunnel, ssh through it), then
scrapes the daemon and checks what it counted.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
from pathlib import Path
from typing import Any

import pytest

from noports.tunnel import open_client_single
from tests import metrics_support as ms
from tests.metrics_support import free_port, get, metric
from tests.test_sshnpd_support import NpClient, arun, run_ssh

pytestmark = pytest.mark.timeout(120)

READY = r"Monitor .*monitor started"


async def ssh_tunnel(c: NpClient) -> tuple[Any, Any]:
    """A granted, signed ssh_request and the client end of its tunnel: (grant, tunnel)."""
    g = await c.grant()
    reply = await c.send("ssh_request", c.ssh_payload(g), g.sid)
    assert reply is not None and reply.startswith("{"), reply
    payload = await c.verify_reply(reply)
    crypto = c.tunnel_crypto(payload, g.sid)
    auth = c.auth_line(g)
    return g, await open_client_single("127.0.0.1", g.port_a, auth_line=auth, crypto=crypto,
                                       timeout=15)  # fmt: skip


def test_sshnpd_metrics_ready_records_and_refusals(np_env):
    daemon, client = np_env.atsign("device"), np_env.atsign("client")
    stranger = np_env.atsign("stranger")
    sshd = np_env.sshd()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        notify_path = str(Path(tmp) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify_path)
        sock.settimeout(20)
        try:
            proc = np_env.spawn(
                "sshnpd",
                "-a", daemon, "-m", client, "-d", "mdev",
                "--local-sshd-port", str(sshd.port),
                "--po", f"localhost:{sshd.port}",
                "--metrics", str(port),
                "--log-format", "json",
                ready=READY,
                env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "2000000"},
            )  # fmt: skip
            msgs = {sock.recv(4096).decode() for _ in range(2)}
        finally:
            sock.close()
    # READY=1 once the monitor runs, then watchdog pings from the loop
    assert any(m.startswith("READY=1") for m in msgs), msgs
    assert "WATCHDOG=1" in msgs, msgs
    text = ms.healthy_and_ready(base)
    assert metric(text, "noports_sshnpd_sessions_active") == 0
    assert metric(text, "noports_sshnpd_monitor_running") == 1
    sid_box: list[str] = []

    async def main() -> None:
        async with NpClient(np_env, client, daemon, "mdev") as c:
            assert await c.ping() is not None
            g, tun = await ssh_tunnel(c)
            sid_box.append(g.sid)
            try:
                live = (await asyncio.to_thread(get, base + "/metrics"))[1]
                assert metric(live, "noports_sshnpd_sessions_active") == 1
                page = (await asyncio.to_thread(get, base + "/"))[1]
                assert g.sid in page and "<script" not in page.lower()
                rc, out, err = await run_ssh(sshd, tun.port, "echo", "TEST", "PASSED")
                assert rc == 0 and out.strip() == "TEST PASSED", err
            finally:
                await tun.close()
            # refused: a target outside the daemon's permit-open list
            g2 = await c.grant()
            reply = await c.send("npt_request", c.npt_payload(g2, "localhost", 1), g2.sid)
            assert reply is not None and "not permit" in reply, reply
        # refused without a reply: a sender who is not a manager
        async with NpClient(np_env, stranger, daemon, "mdev") as s:
            g3 = await s.grant()
            assert await s.send("ssh_request", s.ssh_payload(g3), g3.sid, timeout=3) is None

    arun(main(), 90)
    sid = sid_box[0]
    proc.wait_for(r'"event": "session_end"', timeout=30)
    rec = next(
        json.loads(line) for line in proc.stderr.splitlines() if '"event": "session_end"' in line
    )
    fields = rec.get("fields", rec)
    assert fields["session_id"] == sid and fields["role"] == "daemon"
    assert fields["mode"] == "ssh" and fields["requester"] == client
    assert fields["atsign_b"] == daemon
    assert fields["bytes_a_to_b"] > 0 and fields["bytes_b_to_a"] > 0
    assert fields["duration_s"] >= 0
    refusal = next(
        json.loads(line)
        for line in proc.stderr.splitlines()
        if '"event": "session_refused"' in line
    )
    assert refusal.get("fields", refusal)["reason"] == "not_permitted"
    text = get(base + "/metrics")[1]
    ms.assert_dashboard_matches("noports-sshnpd", text)
    assert metric(text, "noports_sshnpd_sessions_active") == 0
    assert metric(text, "noports_sshnpd_session_requests_total", 'result="granted"') == 1
    assert metric(text, "noports_sshnpd_session_requests_total", 'result="not_permitted"') == 1
    assert metric(text, "noports_sshnpd_session_requests_total", 'result="unauthorised"') == 1
    # ping + three requests in; heartbeat + two replies (+ records shared at start-up) out
    assert metric(text, "noports_sshnpd_notifications_total", 'direction="in"') >= 4
    assert metric(text, "noports_sshnpd_notifications_total", 'direction="out"') >= 3
    page = get(base + "/")[1]
    assert "not_permitted" in page and "PRIVATE" not in page


def test_sshnpd_metrics_bad_address_is_usage_error(np_env):
    daemon, client = np_env.atsign("device"), np_env.atsign("client")
    r = np_env.run("sshnpd", "-a", daemon, "-m", client, "--metrics", "127.0.0.1:notaport")
    assert r.returncode == 2, r.stderr
    assert "--metrics" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(ms.PROMETHEUS is None, reason=ms.NO_PROMETHEUS)
def test_a_real_prometheus_scrapes_sshnpd(np_env, tmp_path: Path):
    """Prometheus scrapes sshnpd while a real ssh session runs through a tunnel, then after."""
    daemon, client = np_env.atsign("device"), np_env.atsign("client")
    sshd = np_env.sshd()
    port = free_port()
    np_env.spawn(
        "sshnpd",
        "-a", daemon, "-m", client, "-d", "pdev",
        "--local-sshd-port", str(sshd.port),
        "--po", f"localhost:{sshd.port}",
        "--metrics", str(port),
        ready=READY,
    )  # fmt: skip
    with ms.Prometheus(tmp_path, {"sshnpd": f"127.0.0.1:{port}"}) as prom:

        async def main() -> None:
            async with NpClient(np_env, client, daemon, "pdev") as c:
                _, tun = await ssh_tunnel(c)
                try:
                    q = "noports_sshnpd_sessions_active"
                    await asyncio.to_thread(prom.wait_value, q, lambda v: v == 1, 30)
                    rc, out, err = await run_ssh(sshd, tun.port, "echo", "TEST", "PASSED")
                    assert rc == 0 and out.strip() == "TEST PASSED", err
                finally:
                    await tun.close()

        arun(main(), 90)
        prom.wait_value("noports_sshnpd_sessions_active", lambda v: v == 0, 30)
        q = 'noports_sshnpd_session_requests_total{result="granted"}'
        prom.wait_value(q, lambda v: v == 1, 10)
        q = 'noports_sshnpd_notifications_total{direction="in"}'
        prom.wait_value(q, lambda v: v >= 1, 10)
        prom.wait_value("noports_sshnpd_monitor_running", lambda v: v == 1, 10)
        prom.wait_value('up{job="sshnpd"}', lambda v: v == 1, 10)

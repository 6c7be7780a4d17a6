"""``noports server --metrics``: connections (authenticated / not), notifications delivered,
atSigns hosted, readiness = listening; scraped from a real server with real TLS clients."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from noports.crypto.atkeys import AtKeys
from tests.fixtures_at import AtServerProcess, Wire
from tests.metrics_support import (
    NO_PROMETHEUS,
    PROMETHEUS,
    Prometheus,
    assert_dashboard_matches,
    free_port,
    get,
    healthy_and_ready,
    metric,
)

pytestmark = pytest.mark.timeout(90)


def test_server_metrics_connections_notifications_atsigns(
    make_at_server: Callable[..., AtServerProcess], keys: Callable[[str], AtKeys]
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    srv = make_at_server("--metrics", str(port))
    text = healthy_and_ready(base)
    assert metric(text, "noports_atserver_atsigns_hosted") == 0
    assert metric(text, "noports_atserver_notifications_delivered_total") == 0

    alice = keys("@alice").replace(atsign="@malice")
    bob = keys("@bob").replace(atsign="@mbob")
    srv.add_fast(alice.atsign, alice)
    srv.add_fast(bob.atsign, bob)
    opened: list[Wire] = []
    try:
        wa, wb, anon = (Wire(srv.root, srv.ca_file) for _ in range(3))
        opened += [wa, wb, anon]
        assert wa.pkam(alice) == "data:success" and wb.pkam(bob) == "data:success"
        wb.send("monitor:0 sshnp")
        wb.monitoring = True
        for i in range(3):
            wa.data(f"notify:update:{bob.atsign}:cmd{i}.dev.sshnp{alice.atsign}:v{i}")
        got = [wb.notification() for _ in range(3)]
        assert [g["value"] for g in got] == ["v0", "v1", "v2"]
        text = get(base + "/metrics")[1]
        assert_dashboard_matches("noports-atserver", text)
        assert metric(text, "noports_atserver_connections", 'state="authenticated"') == 2
        assert metric(text, "noports_atserver_connections", 'state="unauthenticated"') == 1
        assert metric(text, "noports_atserver_atsigns_hosted") == 2
        assert metric(text, "noports_atserver_atsigns_connected") == 2
        assert metric(text, "noports_atserver_monitors") == 1
        assert metric(text, "noports_atserver_notifications_delivered_total") == 3
        page = get(base + "/")[1]
        assert "notifications delivered" in page and "<script" not in page.lower()
        assert "PRIVATE" not in page and "-----BEGIN" not in page
    finally:
        for w in opened:
            w.close()
    srv.stop()
    # not listening any more: the endpoint is gone with the process
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(base + "/readyz", timeout=3)


def test_server_metrics_bad_address_is_usage_error(tmp_path) -> None:
    import subprocess
    import sys

    from tests.fixtures_at import REPO, _env

    r = subprocess.run(
        [sys.executable, "-m", "noports.cli.noports", "server", "--data-dir",
         str(tmp_path / "d"), "--metrics", "localhost:99999"],
        cwd=str(REPO), env=_env(), capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "--metrics" in r.stderr and "Traceback" not in r.stderr


def test_server_systemd_ready_watchdog_stopping(tmp_path) -> None:
    """Type=notify: READY=1 once listening, WATCHDOG=1 from the loop, STOPPING=1 on SIGTERM."""
    import json
    import signal
    import socket
    import subprocess
    import sys

    from tests.fixtures_at import REPO, _env

    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    p = subprocess.Popen(
        [sys.executable, "-m", "noports.cli.noports", "server", "--data-dir",
         str(tmp_path / "d"), "--port", "0", "--output", "json"],
        cwd=str(REPO), env={**_env(), "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert p.stdout is not None
        info = json.loads(p.stdout.readline())
        got = [sock.recv(4096).decode() for _ in range(2)]
        assert got[0].startswith("READY=1") and info["root"] in got[0], got
        assert got[1] == "WATCHDOG=1", got
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0
        rest = []
        sock.settimeout(0.5)
        try:
            while True:
                rest.append(sock.recv(4096).decode())
        except TimeoutError:
            pass
        assert "STOPPING=1" in rest, rest
    finally:
        sock.close()
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.skipif(PROMETHEUS is None, reason=NO_PROMETHEUS)
def test_a_real_prometheus_scrapes_noports_server(
    make_at_server: Callable[..., AtServerProcess],
    keys: Callable[[str], AtKeys],
    tmp_path: Path,
) -> None:
    """Prometheus scrapes ``noports server`` while clients are connected and notify."""
    port = free_port()
    srv = make_at_server("--metrics", str(port))
    alice = keys("@alice").replace(atsign="@palice")
    bob = keys("@bob").replace(atsign="@pbob")
    srv.add_fast(alice.atsign, alice)
    srv.add_fast(bob.atsign, bob)
    opened: list[Wire] = []
    with Prometheus(tmp_path, {"atserver": f"127.0.0.1:{port}"}) as prom:
        try:
            wa, wb = (Wire(srv.root, srv.ca_file) for _ in range(2))
            opened += [wa, wb]
            assert wa.pkam(alice) == "data:success" and wb.pkam(bob) == "data:success"
            wb.send("monitor:0 sshnp")
            wb.monitoring = True
            for i in range(4):
                wa.data(f"notify:update:{bob.atsign}:p{i}.dev.sshnp{alice.atsign}:v{i}")
            assert [wb.notification()["value"] for _ in range(4)] == ["v0", "v1", "v2", "v3"]
            q = 'noports_atserver_connections{state="authenticated"}'
            prom.wait_value(q, lambda v: v == 2, 30)
            prom.wait_value("noports_atserver_notifications_delivered_total", lambda v: v == 4, 10)
            prom.wait_value("noports_atserver_monitors", lambda v: v == 1, 10)
            prom.wait_value("noports_atserver_atsigns_connected", lambda v: v == 2, 10)
        finally:
            for w in opened:
                w.close()
        # the connections' end is seen by the next scrapes
        q = 'noports_atserver_connections{state="authenticated"}'
        prom.wait_value(q, lambda v: v == 0, 15)
        prom.wait_value('up{job="atserver"}', lambda v: v == 1, 5)
    srv.stop()

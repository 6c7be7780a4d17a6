"""Relay auto-selection (latest spec 1) with real programs: srvd answers ``discover_request``,
sshnpd answers ``relay_latency_request`` (authorised senders only), npt/sshnp ``-r`` as a comma
list or empty, a dead relay skipped, a full relay avoided."""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import socket
import threading

import pytest

from noports.at.client import AtClient
from noports.session import relays
from tests.test_npt_e2e import EchoServer
from tests.test_srvd_app import arun, connect, start_srvd

pytestmark = pytest.mark.timeout(150)
DAEMON_READY = r"Monitor .*monitor started"


def start_daemon(np_env, device_atsign: str, manager: str, device: str, po: str = "*:*"):
    return np_env.spawn(
        "sshnpd",
        "-a",
        device_atsign,
        "-m",
        manager,
        "-d",
        device,
        "--po",
        po,
        "-v",
        ready=DAEMON_READY,
        timeout=30,
    )


async def _first(client: AtClient, regex: str, send, frm: str, timeout: float = 15.0):
    """Open a monitor on ``regex``, run ``send()``, return the first value from ``frm``."""
    async with client.monitor(regex) as mon:
        await mon.started(10)
        await send()
        while True:
            n = await mon.next(timeout=timeout)
            if n.from_atsign == frm and n.value is not None:
                return n.short_key, n.value


def test_srvd_answers_discover_and_sshnpd_answers_latency(np_env) -> None:
    client_at = np_env.atsign("client")
    stranger = np_env.atsign("stranger")
    dev_at = np_env.atsign("device")
    r1 = np_env.atsign("relay1")
    start_srvd(np_env, r1, "--max-sessions", "7")
    start_daemon(np_env, dev_at, client_at, "lat1")
    listener = socket.create_server(("127.0.0.1", 0))
    closed = socket.create_server(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()

    async def go():
        c = await connect(np_env, client_at)
        s = await connect(np_env, stranger)
        try:
            # official request form: key discover_request.sshrvd, value {"items":[...]}
            key, value = await _first(
                c,
                r"discover_response\.sshrvd",
                lambda: c.notify(
                    r1,
                    "discover_request",
                    '{"items":["ipaddr","port"]}',
                    namespace="sshrvd",
                    ttln_ms=10_000,
                ),
                r1,
            )
            assert key == "discover_response.sshrvd"
            assert json.loads(value) == {
                "ipaddr": "127.0.0.1",
                "port": None,  # no single-port listener: official clients cannot probe it
                "sessions": 0,
                "maxSessions": 7,
            }
            rv = {
                "@rv_up": {"ipaddr": "127.0.0.1", "port": listener.getsockname()[1]},
                "@rv_down": {"ipaddr": "127.0.0.1", "port": closed_port},
                "@rv_noport": {"ipaddr": "127.0.0.1", "port": None},
            }
            regex = r"relay_latency_response\.lat1\.sshnp"

            def ask(who: AtClient, value: str):
                return lambda: who.notify(
                    dev_at, "relay_latency_request.lat1", value, namespace="sshnp", ttln_ms=60_000
                )

            # a stranger and a malformed request first: neither may be answered
            async with c.monitor(regex) as mon_c, s.monitor(regex) as mon_s:
                await mon_c.started(10)
                await mon_s.started(10)
                await ask(s, json.dumps(rv))()
                await ask(c, "not json")()
                await ask(c, json.dumps(rv))()
                n = await mon_c.next(timeout=20)
                got = json.loads(n.value)
                assert list(got) == ["@rv_up", "@rv_down", "@rv_noport"]
                assert got["@rv_up"] >= 0 and got["@rv_down"] == -1 and got["@rv_noport"] == -1
                with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                    await mon_c.next(timeout=2)  # the malformed one got no second answer
                with pytest.raises((TimeoutError, asyncio.TimeoutError)):
                    await mon_s.next(timeout=1)  # the stranger got nothing
            _key, value = await _first(c, regex, ask(c, "{}"), dev_at)
            assert json.loads(value) == {}
        finally:
            await c.close()
            await s.close()

    try:
        arun(go(), timeout=90)
    finally:
        listener.close()


def _npt(np_env, client_at, dev_at, relay_opt, device, echo_port, extra_env=None):
    return np_env.run(
        "npt",
        "-f",
        client_at,
        "-t",
        dev_at,
        "-r",
        relay_opt,
        "-d",
        device,
        "--remote-port",
        str(echo_port),
        "-x",
        "--output",
        "json",
        timeout=60,
        env=extra_env,
    )


def _echo_through(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.settimeout(20)
        s.sendall(b"selected relay works")
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    assert got == b"selected relay works"


def test_npt_comma_list_skips_a_dead_relay(np_env) -> None:
    client_at = np_env.atsign("client")
    dev_at = np_env.atsign("device")
    alive = np_env.atsign("relayup")
    dead = np_env.atsign("relaydead")
    start_srvd(np_env, alive)
    gone = start_srvd(np_env, dead)
    gone.stop()  # registered, reachable atServer, but no relay process answers any more
    start_daemon(np_env, dev_at, client_at, "sel1")
    echo = EchoServer()
    try:
        r = _npt(np_env, client_at, dev_at, f"{dead}, {alive}", "sel1", echo.port)
        assert r.returncode == 0, r.stderr
        ev = json.loads(r.stdout)
        assert ev["relay"] == alive and "relaySelect" in ev["timingsMs"]
        assert "lowest-latency relay" in r.stderr
        _echo_through(ev["port"])
    finally:
        echo.close()


def test_npt_empty_relay_uses_the_standard_list_and_avoids_a_full_relay(np_env) -> None:
    client_at = np_env.atsign("client")
    dev_at = np_env.atsign("device")
    full = np_env.atsign("relayfull")
    roomy = np_env.atsign("relayroomy")
    # a relay with no room left: its discover answer says sessions == maxSessions
    start_srvd(np_env, full, "--max-sessions", "1")
    start_srvd(np_env, roomy)
    start_daemon(np_env, dev_at, client_at, "sel2")
    body = json.dumps({"standard_relays": {full: {}, roomy: {}}}).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            ok = self.path == "/standard_relays.json"
            self.send_response(200 if ok else 404)
            self.end_headers()
            if ok:
                self.wfile.write(body)

        def log_message(self, *a) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/standard_relays.json"
    echo = EchoServer()

    async def occupy():
        c = await connect(np_env, client_at)
        try:
            import uuid

            from tests.test_srvd_app import ask

            kind, v, _sid = await ask(c, full, sid=str(uuid.uuid4()), atsign_b=dev_at)
            assert kind == "ack", v
        finally:
            await c.close()

    try:
        arun(occupy())
        r = _npt(np_env, client_at, dev_at, "", "sel2", echo.port, {relays.URL_ENV: url})
        assert r.returncode == 0, r.stderr
        ev = json.loads(r.stdout)
        assert ev["relay"] == roomy
        _echo_through(ev["port"])
        # the list cannot be fetched: one line, not a hang
        bad = url.replace("standard_relays", "missing")
        r = _npt(np_env, client_at, dev_at, "", "sel2", echo.port, {relays.URL_ENV: bad})
        assert r.returncode != 0 and re.search(r"relay list|RV list", r.stderr), r.stderr
    finally:
        httpd.shutdown()
        echo.close()


def test_choice_rule() -> None:
    """The official rule, then ours: the daemon's map order, averages, client-only fallback,
    full relays avoided, and the least loaded when nothing can be probed."""
    a = {"ipaddr": "h", "port": 443}
    ans = {"@a": a, "@b": a, "@c": a}
    assert relays.choose(ans, {"@a": 10, "@b": 30, "@c": 1}, {"@a": 10, "@b": 0, "@c": -1})[0] == (
        "@a"
    )
    assert relays.choose(ans, {"@a": 10, "@b": 10}, {"@b": 10, "@a": 10})[0] == "@b"  # tie: first
    assert relays.choose(ans, {"@a": 10, "@b": 3, "@c": -1}, None)[0] == "@b"
    loaded = {
        "@a": {"ipaddr": "h", "port": None, "sessions": 5, "maxSessions": 10},
        "@b": {"ipaddr": "h", "port": None, "sessions": 1, "maxSessions": 10},
        "@c": {"ipaddr": "h", "port": 443, "sessions": 10, "maxSessions": 10},
    }
    assert relays.choose(loaded, {"@c": 1}, {"@c": 1})[0] == "@b"  # @c is full
    assert relays.choose({"@c": loaded["@c"]}, {"@c": 1}, None)[0] == "@c"  # all full: still one
    with pytest.raises(relays.NoRelayError):
        relays.choose({}, {}, None)
    assert relays.parse_relay_option(" @a , b,@a ") == ("", ["@a", "@b"])
    assert relays.parse_relay_option("") == ("", None)
    assert relays.parse_relay_option(None) == ("", None)
    assert relays.parse_relay_option("r") == ("@r", None)
    assert relays.standard_relays_url("proxy:root.example.org:64").endswith(
        "/noports/root.example.org/standard_relays.json"
    )


def test_selection_does_not_wait_for_a_daemon_that_cannot_answer(np_env, caplog) -> None:
    """A daemon whose ping reply shows it never answers relay_latency_request (the official C
    daemon reports version c0.1.0) is not waited for; ours answers and its figures count."""
    client_at = np_env.atsign("client")
    c_dev = np_env.atsign("cdevice")
    our_dev = np_env.atsign("device")
    relay = np_env.atsign("relay")
    start_srvd(np_env, relay)
    start_daemon(np_env, our_dev, client_at, "ours")
    c_ping = json.dumps(
        {"devicename": "cdev", "version": "c0.1.0", "supportedFeatures": {"srAuth": True}}
    )

    async def go():
        c = await connect(np_env, client_at)
        d = await connect(np_env, c_dev)
        try:

            async def c_daemon():  # answers pings as the C daemon does, nothing else
                async with d.monitor(r"ping\.cdev\.sshnp") as mon:
                    await mon.started(10)
                    started.set()
                    while True:
                        n = await mon.next()
                        await d.notify(
                            n.from_atsign, "heartbeat.cdev", c_ping, namespace="sshnp",
                            ttln_ms=60_000,
                        )

            started = asyncio.Event()
            task = asyncio.ensure_future(c_daemon())
            await started.wait()
            with caplog.at_level("INFO", logger="noports.session.relays"):
                choice = await relays.select_relay(
                    c, daemon=c_dev, device="cdev", candidates=[relay], root=None
                )
            task.cancel()
            assert choice.relay == relay and choice.device_ms is None
            assert "does not answer latency requests" in caplog.text
            ours = await relays.select_relay(
                c, daemon=our_dev, device="ours", candidates=[relay], root=None
            )
            assert ours.device_ms == {relay: -1}  # answered (no single-port listener: -1)
            with pytest.raises(relays.NoRelayError, match="No RV servers could be resolved"):
                await relays.select_relay(
                    c,
                    daemon=our_dev,
                    device="ours",
                    candidates=[c_dev],  # an atSign no relay answers for
                    root=None,
                    discover_timeout=1.0,
                )
        finally:
            await c.close()
            await d.close()

    arun(go(), timeout=90)


def test_relay_option_in_sshnp_and_npt() -> None:
    """``-r`` absent, empty or a comma list means selection in both clients (latest spec 1.1);
    a bad name in the list is a usage error."""
    from noports.cli import npt as npt_run
    from noports.cli import sshnp as sshnp_cli

    base = ["-f", "@me", "-t", "@dev", "-d", "d1"]
    for argv, cands in (
        ([], None),
        (["-r", ""], None),
        (["-r", "@r1, r2"], ["@r1", "@r2"]),
    ):
        a = npt_run.parse([*base, "-p", "22", *argv])
        assert (a.spec.relay, a.spec.relay_candidates) == ("", cands)
        s = sshnp_cli.parse([*base, *argv])
        assert (s.srvd, s.relay_candidates) == ("", cands)
    a = npt_run.parse([*base, "-p", "22", "-r", "@r1"])
    assert (a.spec.relay, a.spec.relay_candidates) == ("@r1", None)
    with pytest.raises(SystemExit) as e:
        npt_run.parse([*base, "-p", "22", "-r", "@ok,b@d"])
    assert e.value.code == 2


def test_sshnp_comma_list_selects_a_relay(np_env) -> None:
    """sshnp with ``-r @dead,@alive``: the live relay is selected and ssh runs through it."""
    from tests.test_sshnp_rig import Rig

    rig = Rig(np_env)
    dead = np_env.atsign("relaydead")
    rig.daemon("dev1")
    r = np_env.run(
        "sshnp",
        "-f",
        rig.client,
        "-t",
        rig.device_atsign,
        "-r",
        f"{dead},{rig.relay}",
        "-d",
        "dev1",
        "-u",
        rig.user,
        "-i",
        str(rig.sshd.client_key),
        "-o",
        "BatchMode=yes",
        "--",
        "echo SELECTED RELAY OK",
        timeout=60,
    )
    assert r.returncode == 0 and "SELECTED RELAY OK" in r.stdout, r.stderr
    assert f"Using relay {rig.relay}" in r.stderr


@pytest.mark.interop
def test_official_atsdk_discovers_our_relay(np_env, atsdk_python) -> None:
    """The official Python atSDK sends ``@relay:discover_request.sshrvd@me`` as the official
    client does and decrypts our srvd's ``discover_response``."""
    from tests.test_at_interop_atsdk import PRELUDE, result

    me = np_env.atsign("official")
    relay = np_env.atsign("relay")
    start_srvd(np_env, relay)
    script = (
        PRELUDE
        + f"""
q = queue.Queue()
c = AtClient(AtSign({me!r}), root_address=ROOT, queue=q)
threading.Thread(target=c.start_monitor, args=("discover_response",), daemon=True).start()
k = SharedKey("discover_request", AtSign({me!r}), AtSign({relay!r})).set_namespace("sshrvd")
deadline, got, next_send = time.time() + 40, None, 0.0
while time.time() < deadline and got is None:
    if time.time() >= next_send:  # resend until the monitor is up and the answer arrives
        c.notify(k, json.dumps({{"items": ["ipaddr", "port"]}}))
        next_send = time.time() + 3
    try:
        ev = q.get(timeout=0.5)
    except queue.Empty:
        continue
    if ev.event_type in (AtEventType.UPDATE_NOTIFICATION, AtEventType.SHARED_KEY_NOTIFICATION):
        c.handle_event(q, ev)
    elif ev.event_type == AtEventType.DECRYPTED_UPDATE_NOTIFICATION:
        d = ev.event_data
        if "discover_response.sshrvd" in d["key"]:
            got = [d["key"], d["decryptedValue"]]
out(got=got)
os._exit(0)
"""
    )
    env = {
        "HOME": str(np_env.home),
        "SSL_CERT_FILE": np_env.server.ca_file,
        "AT_ROOT": np_env.server.root,
    }
    got = result(atsdk_python.run(script, env=env, timeout=90).stdout)["got"]
    assert got is not None
    assert got[0] == f"{me}:discover_response.sshrvd{relay}"
    assert json.loads(got[1])["ipaddr"] == "127.0.0.1" and json.loads(got[1])["port"] is None

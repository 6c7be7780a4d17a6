"""The in-process profile runner against real srvd, sshnpd and an HTTP server (issue 13)."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request

import pytest

from noports.profiles import Profile
from noports.profiles.runner import PortBusyError, Runner, check_local_port
from noports.session.client import connect_client
from tests.ui_rig import PAGE, TunnelRig, free_port

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def trig(np_env):
    r = TunnelRig(np_env)
    yield r
    r.close()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def test_check_local_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PortBusyError, match=f"local port 127.0.0.1:{port} is in use"):
            check_local_port("localhost", port)
    check_local_port("localhost", port)  # free again
    check_local_port("localhost", 0)  # 0 = any port: never busy


def test_runner_connect_fetch_stats_disconnect(trig: TunnelRig, at_server) -> None:
    async def factory(atsign: str):
        return await connect_client(
            atsign, keys_file=str(trig.keys_file(atsign)), root=at_server.root,
            ca_file=at_server.ca_file,
        )  # fmt: skip

    async def go() -> None:
        runner = Runner(factory, tick=0.2, retry_delay=0.5)
        q = runner.subscribe()
        port = free_port()
        p = Profile.from_json(trig.profile_json(local_port=port))
        run = runner.start(p, trig.client, trig.relay)
        r = await runner.wait_state(p.uuid, ("connected", "failed"), 45)
        assert r.state == "connected", (r.error, list(r.progress))
        snap = r.snapshot()
        assert snap["port"] == port and snap["url"] == f"http://localhost:{port}/"
        assert any("listening on" in line for line in snap["progress"])
        # a second profile on the same local port is refused before anything is sent
        p2 = Profile.from_json(trig.profile_json("other", local_port=port))
        with pytest.raises(PortBusyError):
            runner.start(p2, trig.client, trig.relay)
        assert runner.start(p, trig.client, trig.relay) is run  # already running: same run
        for _ in range(3):
            assert await asyncio.to_thread(_get, snap["url"]) == PAGE
        # bytes counted once the connections ended; three connections, none open
        for _ in range(100):
            s = run.snapshot()
            if s["bytes"] > 3 * len(PAGE) and s["connections"] == 3 and s["active"] == 0:
                break
            await asyncio.sleep(0.1)
        assert s["bytes"] > 3 * len(PAGE) and s["connections"] == 3, s
        assert max(s["rate"]) > 0 and s["uptime"] >= 0
        frames = []
        while not q.empty():
            frames.append(q.get_nowait())
        assert {f["state"] for f in frames} >= {"starting", "connected"}
        await runner.stop(p.uuid)
        assert run.state == "stopped" and not runner.running(p.uuid)
        check_local_port("localhost", port)  # the listener is gone
        with pytest.raises(OSError):
            await asyncio.to_thread(_get, snap["url"])
        # a daemon atSign that does not exist: fails with the reason, no keep-alive
        t0 = time.monotonic()
        bad = Profile.from_json(trig.profile_json("nobody", sshnpdAtsign="@nobody_ui_x"))
        runner.start(bad, trig.client, trig.relay)
        r = await runner.wait_state(bad.uuid, ("failed",), 60)
        assert r.error and r.snapshot()["url"] == ""
        print(f"failed after {time.monotonic() - t0:.1f} s: {r.error}")
        # with keep-alive it retries, and says when
        ka = Profile.from_json(trig.profile_json("again", sshnpdAtsign="@nobody_ui_x",
                                                 keepAlive=True))  # fmt: skip
        runner.start(ka, trig.client, trig.relay)
        r = await runner.wait_state(ka.uuid, ("retrying",), 60)
        snap = r.snapshot()
        assert snap["next_retry"] is not None and 0 <= snap["next_retry"] <= 1
        assert any("will retry" in x or "session failed" in x for x in snap["progress"])
        r = await runner.wait_state(ka.uuid, ("starting",), 10)  # the retry happened
        await runner.stop_all()
        assert not any(runner.running(u) for u in runner.runs)

    asyncio.run(asyncio.wait_for(go(), 110))


def test_runner_only443_uses_the_single_port_relay(np_env, at_server) -> None:
    """The desktop app's only443 is npt --443: escr on the relay's single port."""
    trig = TunnelRig(np_env, relay443=True)

    async def factory(atsign: str):
        return await connect_client(
            atsign, keys_file=str(trig.keys_file(atsign)), root=at_server.root,
            ca_file=at_server.ca_file,
        )  # fmt: skip

    async def go() -> None:
        runner = Runner(factory, tick=0.2)
        p = Profile.from_json(trig.profile_json("443", only443=True))
        runner.start(p, trig.client, trig.relay)
        r = await runner.wait_state(p.uuid, ("connected", "failed"), 45)
        assert r.state == "connected", (r.error, list(r.progress))
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{r.port}/") == PAGE
        await runner.stop_all()

    try:
        asyncio.run(asyncio.wait_for(go(), 60))
        assert trig.srvd.wait_for(r"relayAuthMode escr only443 True", 10)
    finally:
        trig.close()

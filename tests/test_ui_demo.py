"""The one-click local demo of ``noports ui`` (issue 13): from the onboarding screen, with no
account, the real embedded server, relay and device daemon start as children, the demo
client atSign becomes active with a demo profile, Connect opens a real tunnel and a page is
fetched through it; stopping the demo removes its atSign and its data."""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from pathlib import Path
from urllib.parse import unquote_plus

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("jinja2")

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from noports.profiles.store import ProfileStore  # noqa: E402
from noports.ui.app import UiState, create_app  # noqa: E402
from noports.ui.demo import DEMO_NAME, PAGE_BYTES  # noqa: E402
from noports.ui.security import Guard  # noqa: E402
from tests.test_ui_app import Ui  # noqa: E402
from tests.ui_rig import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(180)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=20) as r:
        return r.read()


def test_local_demo_one_click_connect(tmp_path) -> None:
    home = tmp_path / "home"

    async def go() -> None:
        state = UiState(home=home)
        port = free_port()
        guard = Guard("127.0.0.1", port)
        async with TestClient(TestServer(create_app(state, guard), host="127.0.0.1",
                                         port=port)) as client:  # fmt: skip
            ui = Ui(client, state, guard)
            await ui.login()
            page = await ui.page("/onboard")
            assert "Start local demo" in page and "local-only demo data" in page
            r = await ui.post("/onboard/demo/start")
            assert "Starting the local demo" in unquote_plus(r.headers["Location"])
            r = await ui.post("/onboard/demo/start")  # a second click does not start another
            assert "already" in unquote_plus(r.headers["Location"])
            assert 'hx-trigger="every 2s"' in await ui.page("/onboard")  # progress refreshes
            await asyncio.wait_for(asyncio.shield(state.demo_task), 150)
            assert state.demo.state == "running", (state.demo.error, state.demo.lines)
            a = state.active
            assert a == "@qs_client" and state.atsigns() == [a]
            assert not (home / ".atsign").exists()  # demo keys stay in the demo directory
            html = await ui.page("/")
            assert DEMO_NAME in html and "Local demo." in html and "(local demo)" in html
            (p,) = await ProfileStore(await state.client()).list()
            assert p.displayName == DEMO_NAME
            # Connect: a real tunnel through the demo relay to the demo web page
            r = await ui.post(f"/profiles/{p.uuid}/connect")
            assert r.status == 303 and "err=" not in r.headers["Location"]
            run = await state.runner.wait_state(p.uuid, ("connected", "failed"), 90)
            snap = run.snapshot()
            assert run.state == "connected", (snap["error"], snap["progress"])
            assert snap["url"].startswith("http://localhost:")
            assert await asyncio.to_thread(_get, snap["url"]) == PAGE_BYTES
            # stop: tunnels of the demo atSign end, the atSign and the data go
            data_dir = state.demo.info.keys_file.parents[3]
            assert data_dir.is_dir()
            r = await ui.post("/onboard/demo/stop")
            assert "stopped" in unquote_plus(r.headers["Location"])
            assert state.active is None and state.atsigns() == [] and not state.runner.runs
            assert not data_dir.exists()
            assert "Start local demo" in await ui.page("/onboard")

    asyncio.run(asyncio.wait_for(go(), 170))


def _children() -> set[int]:
    out: set[int] = set()
    for t in Path(f"/proc/{os.getpid()}/task").iterdir():
        with contextlib.suppress(OSError):
            out.update(int(x) for x in (t / "children").read_text().split())
    return out


def test_local_demo_stop_while_starting_leaves_nothing(tmp_path) -> None:
    """Stop pressed during the start (and a refused request without the CSRF token)."""

    async def go() -> None:
        state = UiState(home=tmp_path / "home")
        port = free_port()
        guard = Guard("127.0.0.1", port)
        before = _children()
        async with TestClient(TestServer(create_app(state, guard), host="127.0.0.1",
                                         port=port)) as client:  # fmt: skip
            ui = Ui(client, state, guard)
            await ui.login()
            r = await ui.post("/onboard/demo/start", {"csrf": "wrong"})
            assert r.status == 403 and state.demo.state == "off"
            r = await ui.post("/onboard/demo/start")
            assert r.status == 303 and state.demo.state == "starting"
            await asyncio.sleep(1)
            r = await ui.post("/onboard/demo/stop")
            assert "stopped" in unquote_plus(r.headers["Location"])
            assert state.demo.state == "off" and state.demo.info is None
            assert state.atsigns() == [] and state.active is None
            assert _children() <= before  # every child of the demo is gone
            assert "Start local demo" in await ui.page("/onboard")

    asyncio.run(asyncio.wait_for(go(), 170))

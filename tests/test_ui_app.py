"""``noports ui`` without a browser: the aiohttp test client against the real app and the real
embedded atServer (issue 13). Security checks, pages, actions, fragments and event frames."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
from importlib import resources

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("jinja2")
yaml = pytest.importorskip("yaml")

from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from noports.crypto import rsa  # noqa: E402
from noports.profiles.store import FAVORITES_KEY, ProfileStore  # noqa: E402
from noports.ui import HTMX_FILE, HTMX_SHA256  # noqa: E402
from noports.ui.app import UiState, create_app  # noqa: E402
from noports.ui.security import Guard  # noqa: E402
from tests.ui_rig import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(90)

PROFILE_FORM = {
    "displayName": "web one",
    "sshnpdAtsign": "@ui_dev",
    "deviceName": "web01",
    "relayAtsign": "",
    "remoteHost": "localhost",
    "remotePort": "80",
    "localHost": "localhost",
    "localPort": "0",
    "connectUriProtocol": "http",
}


class Ui:
    def __init__(self, client: TestClient, state: UiState, guard: Guard) -> None:
        self.c, self.state, self.guard = client, state, guard
        self.origin = f"http://127.0.0.1:{guard.port}"
        self.csrf = ""

    async def login(self) -> None:
        r = await self.c.get(f"/login?token={self.guard.new_login_token()}", allow_redirects=False)
        assert r.status == 303
        page = await (await self.c.get("/onboard")).text()
        self.csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)

    async def post(self, path: str, data: dict | None = None, **kw):
        d = dict(data or {})
        d.setdefault("csrf", self.csrf)
        headers = {"Origin": self.origin, **kw.pop("headers", {})}
        return await self.c.post(path, data=d, headers=headers, allow_redirects=False, **kw)

    async def page(self, path: str) -> str:
        r = await self.c.get(path)
        assert r.status == 200, (path, r.status, await r.text())
        return await r.text()


async def next_event(resp, event: str, timeout: float = 10) -> dict:
    """The data of the next ``event`` frame on an open event stream (other events skipped)."""
    buf = resp.__dict__.setdefault("_sse_buf", bytearray())
    while True:
        while b"\n\n" not in buf:
            buf += await asyncio.wait_for(resp.content.readany(), timeout)
        frame, _, rest = bytes(buf).partition(b"\n\n")
        buf[:] = rest
        lines = frame.decode().split("\n")
        if lines[0] == f"event: {event}":
            return json.loads(lines[1].removeprefix("data: "))


def _ui_test(at_server, keys, tmp_path, body, *, atsign: str = "@ui_app_alice") -> None:
    k = keys(atsign)
    at_server.add(k.atsign, k)
    home = tmp_path / "home"
    k.save(home / ".atsign" / "keys" / f"{k.atsign}_key.atKeys")

    async def go() -> None:
        state = UiState(home=home, root=at_server.root, ca_file=at_server.ca_file)
        port = free_port()
        guard = Guard("127.0.0.1", port)
        app = create_app(state, guard)
        async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as client:
            ui = Ui(client, state, guard)
            store = ProfileStore(await state.client())
            for u in await store.uuids():  # the session server is shared
                await store.delete(u)
            await body(ui, k)

    asyncio.run(asyncio.wait_for(go(), 80))


def test_security_checks(at_server, keys, tmp_path) -> None:
    async def body(ui: Ui, k) -> None:
        c = ui.c
        # no session: refused; the login token works once
        assert (await c.get("/")).status == 401
        tok = ui.guard.new_login_token()
        r = await c.get(f"/login?token={tok}", allow_redirects=False)
        assert r.status == 303 and r.headers["Location"] == "/"
        cookie = r.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        sid = re.search(r"noports_ui=([^;]+)", cookie).group(1)
        r = await c.get(f"/login?token={tok}", allow_redirects=False)
        assert r.status == 403  # used
        await ui.login()
        # DNS rebinding: a foreign Host is refused even with a valid session
        r = await c.get("/", headers={"Host": f"evil.example:{ui.guard.port}"})
        assert r.status == 403 and "Host check error" in await r.text()
        r = await c.get("/", headers={"Host": "127.0.0.1:1"})
        assert r.status == 403
        for path in (f"/login?token={ui.guard.new_login_token()}", f"/static/{HTMX_FILE}",
                     "/events"):  # fmt: skip
            r = await c.get(path, headers={"Host": f"rebind.example:{ui.guard.port}"})
            assert r.status == 403, path
        r = await c.get("/", headers={"Host": f"localhost:{ui.guard.port}"})
        assert r.status == 200  # the loopback names are all fine
        # changes: Origin and CSRF both required
        r = await c.post("/settings", data={"csrf": ui.csrf, "relay": "@rv_eu"},
                         allow_redirects=False)  # fmt: skip
        assert r.status == 403 and "Origin" in await r.text()
        r = await ui.post(
            "/settings", {"relay": "@rv_eu"}, headers={"Origin": "http://evil.example"}
        )
        assert r.status == 403
        r = await ui.post("/settings", {"relay": "@rv_eu", "csrf": "wrong"})
        assert r.status == 403 and "CSRF" in await r.text()
        r = await c.post("/settings", data={"relay": "@rv_eu"}, headers={"Origin": ui.origin},
                         allow_redirects=False)  # fmt: skip
        assert r.status == 403
        r = await c.post("/settings", json={"relay": "@rv_eu"},
                         headers={"Origin": ui.origin}, allow_redirects=False)  # fmt: skip
        assert r.status == 403  # no JSON side door
        r = await ui.post("/settings", {"relay": "@rv_eu"})
        assert r.status == 303
        r = await c.post("/settings", data={"relay": "@rv_ap"}, allow_redirects=False,
                         headers={"Origin": ui.origin, "X-CSRF-Token": ui.csrf})  # fmt: skip
        assert r.status == 303  # the htmx header form of the token
        # the script API: bearer secret, and never from a browser (any Origin)
        assert (await c.post("/api/login-url")).status == 401
        auth = {"Authorization": f"Bearer {ui.guard.api_secret}"}
        r = await c.post("/api/login-url", headers={**auth, "Origin": ui.origin})
        assert r.status == 403
        r = await c.post("/api/login-url", headers=auth)
        assert r.status == 200 and "/login?token=" in (await r.json())["url"]
        # headers on every answer, pages without inline script or external assets
        pages = ["/", "/profiles/new", "/import", "/onboard", "/keys/backup", "/approvals",
                 "/settings", "/logs"]  # fmt: skip
        for path in pages:
            r = await c.get(path)
            assert r.status == 200, path
            assert r.headers["Content-Security-Policy"].startswith("default-src 'none'")
            assert "unsafe" not in r.headers["Content-Security-Policy"]
            assert r.headers["X-Frame-Options"] == "DENY"
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-store"
            assert "Access-Control-Allow-Origin" not in r.headers
            html = await r.text()
            assert not re.search(r"<script(?![^>]*\bsrc=\"/static/)", html), path
            assert not re.search(r"\son[a-z]+=", html), path  # no inline handlers
            assert not re.search(r"(src|href)=\"(https?:)?//", html), path  # nothing external
            # nothing secret: no key material, no session id
            for secret in (rsa.private_to_b64(k.pkam_private), rsa.private_to_b64(
                    k.encrypt_private), k.self_encryption_key, sid):  # fmt: skip
                assert secret not in html, path
        # static: only the vendored files; htmx is the pinned build
        r = await c.get(f"/static/{HTMX_FILE}")
        assert hashlib.sha256(await r.read()).hexdigest() == HTMX_SHA256
        assert (await c.get("/static/..%2fapp.py")).status == 404
        assert (await c.get("/static/nope.js")).status == 404
        # actions are logged (never the tokens)
        lines = [m for _, _, _, m in ui.state.logbuf.lines]
        assert any(m == "action: POST /settings" for m in lines)
        assert not any(ui.csrf in m or sid in m for m in lines)

    _ui_test(at_server, keys, tmp_path, body)


def test_vendored_htmx_is_pinned() -> None:
    data = (resources.files("noports.ui") / "static" / HTMX_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == HTMX_SHA256
    assert b'version:"2.0.4"' in data


def test_profiles_pages_and_actions(at_server, keys, tmp_path) -> None:
    async def body(ui: Ui, k) -> None:
        await ui.login()
        c = ui.c
        assert "No profiles found" in await ui.page("/")
        # add: a bad port is refused with the reason, the typed values kept
        r = await ui.post("/profiles", {**PROFILE_FORM, "remotePort": "99999"})
        assert r.status == 400
        html = await r.text()
        assert "remotePort must be 1..65535" in html and 'value="web one"' in html
        r = await ui.post("/profiles", PROFILE_FORM)
        assert r.status == 303
        store = ProfileStore(await ui.state.client())
        (p,) = await store.list()
        assert (p.displayName, p.sshnpdAtsign, p.remotePort) == ("web one", "@ui_dev", 80)
        assert "22" in await ui.page("/profiles/new")  # common ports offered
        # edit
        r = await ui.post(f"/profiles/{p.uuid}", {**PROFILE_FORM, "displayName": "web two",
                                                   "keepAlive": "on"})  # fmt: skip
        assert r.status == 303
        p = await store.get(p.uuid)
        assert p.displayName == "web two" and p.keepAlive
        edit = await ui.page(f"/profiles/{p.uuid}/edit")
        assert 'value="web two"' in edit
        # duplicate, favourite (the desktop app's favorites.noports map)
        assert (await ui.post(f"/profiles/{p.uuid}/duplicate")).status == 303
        assert (await ui.post(f"/profiles/{p.uuid}/favourite")).status == 303
        fav = json.loads(await store.client.get(FAVORITES_KEY))
        assert fav == {p.uuid: {"uuid": p.uuid, "type": "profile"}}
        html = await ui.page("/")
        assert "web two (copy)" in html and 'aria-pressed="true"' in html
        # import: paste JSON, and a YAML file (multipart)
        one = {"sshnpdAtsign": "@ui_dev", "deviceName": "desk", "localPort": 0}
        doc = {"profiles": [{**one, "displayName": "rdp box", "remotePort": 3389}]}
        r = await ui.post("/import", {"paste": json.dumps(doc)})
        assert r.status == 303 and "Imported+1" in r.headers["Location"]
        ydoc = {"profiles": [{**one, "displayName": "vnc box", "remotePort": 5900}]}
        from aiohttp import FormData

        fd = FormData()
        fd.add_field("csrf", ui.csrf)
        fd.add_field("file", yaml.safe_dump(ydoc).encode(), filename="export.yaml",
                     content_type="application/yaml")  # fmt: skip
        r = await c.post("/import", data=fd, headers={"Origin": ui.origin}, allow_redirects=False)
        assert r.status == 303
        r = await ui.post("/import", {"paste": "profiles: nope"})
        assert r.status == 400
        assert "The profiles section is missing or incorrectly formatted." in await r.text()
        # search (what the htmx box asks for) and favourites first
        html = await ui.page("/?q=vnc")
        assert "vnc box" in html and "rdp box" not in html
        html = await ui.page("/?fav=1")
        assert "web two" in html and "vnc box" not in html
        # export: the official document, no uuids; selection honoured
        r = await c.get("/export?fmt=json")
        assert r.headers["Content-Disposition"] == 'attachment; filename="export.json"'
        exp = json.loads(await r.text())
        assert sorted(x["displayName"] for x in exp["profiles"]) == [
            "rdp box", "vnc box", "web two", "web two (copy)"]  # fmt: skip
        assert all("uuid" not in x for x in exp["profiles"])
        r = await c.get(f"/export?fmt=yaml&uuid={p.uuid}")
        assert [x["displayName"] for x in yaml.safe_load(await r.text())["profiles"]] == ["web two"]
        # bulk delete
        uuids = [q.uuid for q in await store.list() if q.displayName != "web two"]
        r = await ui.post("/bulk", {"action": "delete", "uuid": uuids[0]})
        assert r.status == 303 and "Deleted+1" in r.headers["Location"]
        assert (await ui.post(f"/profiles/{p.uuid}/delete")).status == 303
        assert await store.favourites() == set()
        # settings, logs pages
        assert (await ui.post("/settings", {"relay": "custom", "custom": "@my_relay",
                                            "overrideRelay": "on"})).status == 303  # fmt: skip
        s = await store.settings()
        assert s["relayAtsign"] == "@my_relay" and s["overrideRelay"] is True
        assert 'value="@my_relay"' in await ui.page("/settings")
        assert "profile saved" in await ui.page("/logs?q=saved")
        # an unknown profile, and an atServer that is not there: one line on a page
        r = await c.get("/profiles/no-such-uuid/edit")
        assert r.status == 404 and "does not exist" in await r.text()
        ui.state.root = "127.0.0.1:1"  # nothing listens there
        await ui.state.drop_client(ui.state.active)
        r = await c.get("/")
        assert r.status == 502 and 'role="alert"' in await r.text()

    _ui_test(at_server, keys, tmp_path, body, atsign="@ui_app_bob")


def test_busy_port_and_event_stream(at_server, keys, tmp_path) -> None:
    async def body(ui: Ui, k) -> None:
        await ui.login()
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            r = await ui.post("/profiles", {**PROFILE_FORM, "localPort": str(port)})
            assert r.status == 303
            store = ProfileStore(await ui.state.client())
            (p,) = await store.list()
            r = await ui.post(f"/profiles/{p.uuid}/connect")
            assert r.status == 303 and "is+in+use" in r.headers["Location"]
            assert not ui.state.runner.running(p.uuid)
        # the event stream: a frame per state change of a run
        r = await ui.c.get("/events")
        assert r.headers["Content-Type"] == "text/event-stream"
        r2 = await ui.post("/bulk", {"action": "connect", "uuid": p.uuid})
        assert r2.status == 303
        snap = await next_event(r, "tunnel")
        assert snap["uuid"] == p.uuid and snap["state"] == "starting"
        html = await ui.page("/")
        assert f'data-run="{p.uuid}"' in html and "Disconnect" in html
        # a running profile cannot be edited or deleted
        r4 = await ui.post(f"/profiles/{p.uuid}", PROFILE_FORM)
        assert "while+profile+is+running" in r4.headers["Location"]
        r4 = await ui.post(f"/profiles/{p.uuid}/delete")
        assert "while+profile+is+running" in r4.headers["Location"]
        r.close()
        r3 = await ui.post("/bulk", {"action": "stop-all"})
        assert r3.status == 303 and "Stopped+1" in r3.headers["Location"]
        assert not ui.state.runner.running(p.uuid)
        # start all favourites starts exactly the favourites
        r = await ui.post("/profiles", {**PROFILE_FORM, "displayName": "not a favourite"})
        assert (await ui.post(f"/profiles/{p.uuid}/favourite")).status == 303
        r = await ui.post("/bulk", {"action": "start-favourites"})
        assert r.status == 303
        running = [u for u in ui.state.runner.runs if ui.state.runner.running(u)]
        assert running == [p.uuid]
        await ui.post("/bulk", {"action": "stop-all"})

    _ui_test(at_server, keys, tmp_path, body, atsign="@ui_app_carol")


def test_badge_falls_back_to_polling(at_server, keys, tmp_path, monkeypatch) -> None:
    """When the enrollment monitor cannot start (here: a regex the command line refuses),
    the pages poll the badge fragment as before, and the reason is logged once."""
    import noports.ui.app as ui_app

    monkeypatch.setattr(ui_app, "ENROLL_RX", "new\nline")

    async def body(ui: Ui, k) -> None:
        await ui.login()  # renders a page: the monitor is started for the active atSign
        task = ui.state.badge.task
        assert task is not None
        await asyncio.wait_for(asyncio.shield(task), 10)
        assert not ui.state.badge.live
        html = await ui.page("/")
        assert 'hx-get="/approvals/badge" hx-trigger="load, every 10s"' in html
        assert "data-live-badge" not in html
        assert ui.state.badge.task is task  # not restarted on every page
        assert (await ui.c.get("/approvals/badge")).status == 200
        lines = [m for _, _, _, m in ui.state.logbuf.lines]
        assert sum("pages poll instead" in m for m in lines) == 1

    _ui_test(at_server, keys, tmp_path, body, atsign="@ui_app_dave")

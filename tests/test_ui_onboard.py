"""``noports ui`` onboarding, keys and approvals through the test client, against the real
embedded atServer (issue 13): activation errors and success, .atKeys upload validation,
enrolling this device and approving/denying it from a second app (two devices), backup."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote_plus

import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("jinja2")

from aiohttp import FormData  # noqa: E402
from aiohttp.test_utils import TestClient, TestServer  # noqa: E402

from noports.ui.app import UiState, create_app  # noqa: E402
from noports.ui.security import Guard  # noqa: E402
from tests.test_ui_app import Ui, next_event  # noqa: E402
from tests.ui_rig import free_port  # noqa: E402

pytestmark = pytest.mark.timeout(120)


async def open_ui(stack, home, at_server) -> Ui:
    state = UiState(home=home, root=at_server.root, ca_file=at_server.ca_file)
    port = free_port()
    guard = Guard("127.0.0.1", port)
    client = TestClient(TestServer(create_app(state, guard), host="127.0.0.1", port=port))
    await stack.enter_async_context(client)
    ui = Ui(client, state, guard)
    await ui.login()
    return ui


def where(r) -> str:
    return unquote_plus(r.headers["Location"])


async def upload(ui: Ui, name: str, data: bytes, atsign: str = ""):
    fd = FormData()
    fd.add_field("csrf", ui.csrf)
    fd.add_field("atsign", atsign)
    fd.add_field("file", data, filename=name, content_type="application/octet-stream")
    return await ui.c.post("/onboard/upload", data=fd, headers={"Origin": ui.origin},
                           allow_redirects=False)  # fmt: skip


def test_activate_upload_enrol_approve_deny_backup(at_server, keys, tmp_path) -> None:
    a = "@ui_onb_alice"
    secret = at_server.add(a)

    async def go() -> None:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            ui = await open_ui(stack, tmp_path / "h1", at_server)
            assert (await ui.c.get("/", allow_redirects=False)).headers["Location"] == "/onboard"
            # activation: a wrong secret is one line on the same page; then the right one
            r = await ui.post("/onboard/activate", {"atsign": a, "secret": "wrong"})
            assert where(r).startswith("/onboard?err=") and "refused" in where(r)
            r = await ui.post("/onboard/activate", {"atsign": "bad atsign", "secret": "x"})
            assert "atSign" in where(r)
            r = await ui.post("/onboard/activate", {"atsign": a.lstrip("@"), "secret": secret})
            assert where(r) == f"/?msg={a} is activated. Back up its keys."
            kf = ui.state.keys_file(a)
            assert kf.stat().st_mode & 0o777 == 0o600 and ui.state.active == a
            assert a in await ui.page("/")
            # backup: only with the confirmation, then the file itself
            r = await ui.post("/keys/backup", {})
            assert "confirm" in where(r)
            r = await ui.post("/keys/backup", {"confirm": "yes"})
            assert r.headers["Content-Disposition"] == f'attachment; filename="{a}_key.atKeys"'
            assert json.loads(await r.read()) == json.loads(kf.read_bytes())

            # a second device: upload checks, then enrol with an OTP from the first
            ui2 = await open_ui(stack, tmp_path / "h2", at_server)
            r = await upload(ui2, f"{a}_key.atKeys", b"not json")
            assert "Not a usable .atKeys file" in where(r)
            r = await upload(ui2, f"{a}_key.atKeys", b"{" + b" " * (70 << 10) + b"}")
            assert "too large" in where(r)
            stranger = keys("@ui_onb_stranger")  # keys the server has never seen
            r = await upload(ui2, "x.atKeys", json.dumps(stranger.to_dict()).encode(),
                             atsign=stranger.atsign)  # fmt: skip
            assert "did not work" in where(r)
            assert ui2.state.atsigns() == []
            page = await (await ui.post("/approvals/otp")).text()
            otp = page.split('id="otp"')[1].split(">")[1].split("<")[0].strip()
            r = await ui2.post("/onboard/enroll", {"atsign": a, "otp": otp})
            assert "Enrollment requested" in where(r)
            e = ui2.state.enrolling[a]
            for _ in range(100):
                if e.state != "requesting":
                    break
                await asyncio.sleep(0.1)
            assert e.state == "pending", e.error
            assert "Waiting for approval" in await ui2.page("/onboard")
            html = await ui.page("/approvals")
            assert e.enrollment_id in html and "pending" in html
            badge = await ui.page("/approvals/badge")
            assert '<span class="badge" aria-label="1 pending">1</span>' in badge
            r = await ui.post(f"/approvals/{e.enrollment_id}/approve")
            assert where(r) == f"/approvals?msg=Enrollment {e.enrollment_id} approved."
            for _ in range(150):
                if e.state != "pending":
                    break
                await asyncio.sleep(0.1)
            assert e.state == "approved", e.error
            assert ui2.state.atsigns() == [a] and ui2.state.active == a
            assert ui2.state.keys_file(a).stat().st_mode & 0o777 == 0o600
            assert "No profiles found" in await ui2.page("/")  # the new keys work
            # approving twice is refused with the reason; revoke works
            r = await ui.post(f"/approvals/{e.enrollment_id}/approve")
            assert "not pending" in where(r)
            r = await ui.post(f"/approvals/{e.enrollment_id}/revoke")
            assert where(r).endswith("revoked.")
            # a third request, denied: the requester learns it
            ui3 = await open_ui(stack, tmp_path / "h3", at_server)
            page = await (await ui.post("/approvals/otp")).text()
            otp = page.split('id="otp"')[1].split(">")[1].split("<")[0].strip()
            await ui3.post("/onboard/enroll", {"atsign": a, "otp": otp})
            e3 = ui3.state.enrolling[a]
            for _ in range(100):
                if e3.state != "requesting":
                    break
                await asyncio.sleep(0.1)
            r = await ui.post(f"/approvals/{e3.enrollment_id}/deny")
            assert where(r).endswith("denied.")
            for _ in range(150):
                if e3.state != "pending":
                    break
                await asyncio.sleep(0.1)
            assert e3.state == "failed" and e3.error and ui3.state.atsigns() == []
            # atSign switcher: only known atSigns
            r = await ui.post("/atsign", {"atsign": "@nobody"})
            assert "unknown atSign" in where(r)
            r = await ui.post("/atsign", {"atsign": a})
            assert where(r).startswith("/?msg=Now using")

    asyncio.run(asyncio.wait_for(go(), 110))


def test_semi_permanent_passcode(at_server, keys, tmp_path) -> None:
    """The SPP is made here, shown once, never logged, and lets several devices request
    enrollment (each still approved one by one); a bad expiry is refused."""
    import re

    a = "@ui_spp_alice"
    secret = at_server.add(a)

    async def go() -> None:
        from contextlib import AsyncExitStack

        async with AsyncExitStack() as stack:
            ui = await open_ui(stack, tmp_path / "h1", at_server)
            r = await ui.post("/onboard/activate", {"atsign": a, "secret": secret})
            assert r.status == 303 and ui.state.active == a
            r = await ui.post("/approvals/spp", {"expiry": "forever"})
            assert "expiry must be one of" in where(r)
            r = await ui.post("/approvals/spp", {"expiry": "1d"})
            assert r.status == 200 and r.headers["Cache-Control"] == "no-store"
            page = await r.text()
            spp = re.search(r'<output id="spp"[^>]*>([^<]+)</output>', page).group(1)
            assert re.fullmatch(r"[A-Za-z0-9]{12}", spp)
            again = await (await ui.post("/approvals/spp", {"expiry": "1d"})).text()
            assert spp not in again  # a new one each time (the new one replaces it)
            spp = re.search(r'<output id="spp"[^>]*>([^<]+)</output>', again).group(1)
            assert spp not in await ui.page("/approvals")  # shown once
            lines = [m for _, _, _, m in ui.state.logbuf.lines]
            assert any(m == f"semi-permanent passcode set for {a} (valid 1d)" for m in lines)
            assert not any(spp in m for m in lines)
            # the badge is live: the server's monitor pushes counts over /events, no polling
            for _ in range(100):
                if ui.state.badge.live:
                    break
                await asyncio.sleep(0.1)
            assert ui.state.badge.live
            html = await ui.page("/")
            assert 'id="badge" data-live-badge="1"' in html and "every 10s" not in html
            stream = await ui.c.get("/events")
            assert await next_event(stream, "badge") == {
                "event": "badge",
                "atsign": a,
                "pending": 0,
                "live": True,
            }
            # two devices enrol with the same passcode; both wait for approval
            found = []
            for n in (2, 3):
                other = await open_ui(stack, tmp_path / f"h{n}", at_server)
                r = await other.post("/onboard/enroll", {"atsign": a, "otp": spp})
                assert "Enrollment requested" in where(r)
                e = other.state.enrolling[a]
                for _ in range(100):
                    if e.state != "requesting":
                        break
                    await asyncio.sleep(0.1)
                assert e.state == "pending", e.error
                found.append(e.enrollment_id)
                # the monitor saw the request: the count arrives without asking
                while (b := await next_event(stream, "badge"))["pending"] < n - 1:
                    pass
                assert b["pending"] == n - 1
            html = await ui.page("/approvals")
            assert all(eid in html for eid in found)
            assert '<span class="badge" aria-label="2 pending">2</span>' in html
            for eid in found:
                await ui.post(f"/approvals/{eid}/deny")
            while (b := await next_event(stream, "badge"))["pending"] > 0:
                pass
            assert ui.state.badge.pending == 0
            stream.close()

    asyncio.run(asyncio.wait_for(go(), 110))

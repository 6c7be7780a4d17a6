"""``noports ui`` in a real headless browser (Debian's chromium driven by Playwright), against
the real embedded atServer, srvd, sshnpd and an HTTP server (issue 13).

Journeys: activate an atSign -> back up its keys -> import a profile -> connect -> fetch a page
through the tunnel (live bytes in the page) -> disconnect; and an approval: sign in with an
.atKeys upload -> generate an OTP -> a new device enrols with it -> approve in the page.
Screenshots of each step go to $NOPORTS_UI_SHOTS (default: a folder under the test's tmp dir);
the path is printed."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures_np import NpEnv, Proc
from tests.ui_rig import PAGE, TunnelRig, free_port

pytest.importorskip("aiohttp")
yaml = pytest.importorskip("yaml")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)  # fmt: skip

pytestmark = pytest.mark.timeout(150)
LOGIN = re.compile(r"noports ui: open (http://127\.0\.0\.1:\d+/login\?token=\S+)")


def shots_dir(tmp_path: Path, name: str) -> Path:
    base = Path(os.environ.get("NOPORTS_UI_SHOTS") or tmp_path / "ui-shots")
    d = base / name
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {d}")
    return d


def start_ui(env: NpEnv, home: Path) -> tuple[Proc, str]:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    p = env.spawn("noports", "ui", "--no-browser", "--port", "0", env={"HOME": str(home)},
                  ready=LOGIN.pattern, timeout=30)  # fmt: skip
    return p, LOGIN.search(p.stdout).group(1)


class Steps:
    """Prints how long each journey step took (seen with -s)."""

    def __init__(self) -> None:
        import time

        self.clock = time.monotonic
        self.t = self.clock()

    def __call__(self, name: str) -> None:
        now = self.clock()
        print(f"  {name}: {now - self.t:.1f} s")
        self.t = now


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read()


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield b
        finally:
            b.close()


def test_journey_activate_import_connect_fetch_disconnect(np_env, at_server, browser, tmp_path):
    shots = shots_dir(tmp_path, "journey-tunnel")
    step = Steps()
    client = f"@uiclient_{np_env.tag}"
    secret = at_server.add(client)  # not activated yet: the page does it
    rig = TunnelRig(np_env, client=client)
    ui_home = tmp_path / "ui-home"
    proc, url = start_ui(np_env, ui_home)
    expect = sync_api.expect
    page = browser.new_page(accept_downloads=True)
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url)
        expect(page).to_have_url(re.compile(r"/onboard$"))  # no atSign yet
        page.screenshot(path=shots / "01-onboard.png", full_page=True)
        step("start")
        page.get_by_label("atSign", exact=True).first.fill(client.lstrip("@"))
        page.get_by_label("Activation code (OTP or secret)").fill(secret)
        page.get_by_role("button", name="Activate", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text(f"{client} is activated")
        keys_file = ui_home / ".atsign" / "keys" / f"{client}_key.atKeys"
        assert keys_file.stat().st_mode & 0o777 == 0o600
        page.screenshot(path=shots / "02-activated.png", full_page=True)
        step("activate")
        # key backup: behind a confirmation
        page.goto(url.split("/login")[0] + "/keys/backup")
        page.get_by_label("I understand; download the keys").check()
        with page.expect_download() as dl:
            page.get_by_role("button", name="Save atKeys").click()
        saved = Path(dl.value.path())
        assert json.loads(saved.read_text()) == json.loads(keys_file.read_text())
        page.screenshot(path=shots / "03-backup.png", full_page=True)
        step("backup")
        # import the desktop app's YAML by paste
        local_port = free_port()
        doc = {"profiles": [rig.profile_json("web page", local_port=local_port)]}
        page.goto(url.split("/login")[0] + "/import")
        page.get_by_label("Or paste the JSON/YAML content here").fill(yaml.safe_dump(doc))
        page.screenshot(path=shots / "04-import.png", full_page=True)
        step("import form")
        page.get_by_role("button", name="Import", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text("Imported 1 profile")
        row = page.locator("tr", has=page.get_by_role("rowheader", name="web page"))
        expect(row).to_be_visible()
        # connect: the state arrives over server-sent events
        row.get_by_role("button", name="connect web page", exact=True).click()
        state = row.locator('[data-f="state"]')
        expect(state).to_have_text("connected", timeout=45_000)
        link = row.locator('[data-f="url"]')
        expect(link).to_have_attribute("href", f"http://localhost:{local_port}/")
        page.screenshot(path=shots / "05-connected.png", full_page=True)
        step("connect")
        # a page through the tunnel, from the test and in the browser
        for _ in range(3):
            assert fetch(f"http://127.0.0.1:{local_port}/") == PAGE
        remote = browser.new_page()
        remote.goto(f"http://localhost:{local_port}/")
        expect(remote.locator("h1")).to_have_text("hello through the tunnel")
        remote.screenshot(path=shots / "06-through-the-tunnel.png")
        step("fetch")
        remote.close()
        # the live stats: connections and bytes moved, without a reload
        stats = row.locator('[data-f="stats"]')
        expect(stats).to_contain_text(re.compile(r"^[4-9] conn"), timeout=15_000)
        assert not re.search(r"· 0 B ·", stats.inner_text()), stats.inner_text()
        page.screenshot(path=shots / "07-bytes-moved.png", full_page=True)
        step("live bytes")
        # a copy on the same local port: refused before anything is sent, with the reason
        row.get_by_role("button", name="duplicate web page", exact=True).click()
        copy = page.locator("tr", has=page.get_by_role("rowheader", name="web page (copy)"))
        copy.get_by_role("button", name="connect web page (copy)", exact=True).click()
        expect(page.get_by_role("alert")).to_contain_text(
            f"local port 127.0.0.1:{local_port} is in use"
        )
        page.screenshot(path=shots / "07b-port-in-use.png", full_page=True)
        row = page.locator("tr", has=page.get_by_role("rowheader", name="web page", exact=True))
        state = row.locator('[data-f="state"]')
        # disconnect
        row.get_by_role("button", name="disconnect web page", exact=True).click()
        expect(state).to_have_text("stopped", timeout=15_000)
        page.screenshot(path=shots / "08-disconnected.png", full_page=True)
        step("disconnect")
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", local_port), 2):
            pass
        base = url.split("/login")[0]
        for path, shot in (("/profiles/new", "09-profile-form"), ("/settings", "10-settings"),
                           ("/logs", "11-logs")):  # fmt: skip
            page.goto(base + path)
            page.screenshot(path=shots / f"{shot}.png", full_page=True)
        expect(page.locator("#log")).to_contain_text("connect: web page")
        assert not errors, errors  # no CSP violations or script errors in the console
    finally:
        page.close()
        proc.stop()
        rig.close()
    assert "action: POST /onboard/activate" in proc.stderr
    assert secret not in proc.stdout + proc.stderr


def test_journey_approve_a_new_device(np_env, at_server, browser, tmp_path):
    shots = shots_dir(tmp_path, "journey-approval")
    a = f"@uimanager_{np_env.tag}"
    secret = at_server.add(a)
    # activate on "another machine" (the CLI), then sign in here by uploading its .atKeys
    other = tmp_path / "other"
    keys_path = other / f"{a}_key.atKeys"
    r = np_env.run("at_activate", "onboard", "-a", a, "-k", str(keys_path),
                   env={"AT_ACTIVATE_SECRET": secret})  # fmt: skip
    assert r.returncode == 0, r.stderr
    proc, url = start_ui(np_env, tmp_path / "ui-home")
    expect = sync_api.expect
    page = browser.new_page()
    try:
        page.goto(url)
        page.locator("#up-file").set_input_files(str(keys_path))
        page.get_by_role("button", name="Upload", exact=True).click()
        expect(page.get_by_role("status")).to_contain_text(f"Signed in as {a}")
        page.goto(url.split("/login")[0] + "/approvals")
        page.get_by_role("button", name="Generate OTP").click()
        otp = page.locator("#otp").inner_text().strip()
        assert otp
        expect(page.locator("#badge[data-live-badge]")).to_have_count(1, timeout=15_000)
        page.screenshot(path=shots / "01-otp.png", full_page=True)
        new_keys = tmp_path / "new-device" / f"{a}_key.atKeys"
        enrol = np_env.spawn(
            "at_activate", "enroll", "-a", a, "-k", str(new_keys), "-p", "laptop_app",
            "-d", "laptop", "-n", "sshnp:rw", "--poll-interval", "0.5",
            env={"AT_ACTIVATE_OTP": otp}, ready=r"(?i)pending|waiting|enrollment", timeout=30,
        )  # fmt: skip
        # the badge is pushed by the server's monitor (no polling once it is live)
        expect(page.locator("#badge .badge")).to_have_text("1", timeout=15_000)
        assert page.locator("#badge[hx-get]").count() == 0
        page.reload()
        pending = page.locator("tr", has=page.get_by_text("laptop_app"))
        expect(pending.locator(".state")).to_have_text("pending", timeout=20_000)
        expect(page.locator("#badge .badge")).to_have_text("1", timeout=15_000)
        page.screenshot(path=shots / "02-pending.png", full_page=True)
        pending.get_by_role("button", name=re.compile(r"^approve ")).click()
        expect(page.get_by_role("status")).to_contain_text("approved")
        approved = page.locator("tr", has=page.get_by_text("laptop_app"))
        expect(approved.locator(".state")).to_have_text("approved")
        page.screenshot(path=shots / "03-approved.png", full_page=True)
        assert enrol.wait(60) == 0, enrol.stderr
        assert new_keys.exists() and new_keys.stat().st_mode & 0o777 == 0o600
        # a semi-permanent passcode, shown once
        page.get_by_label("Semi-permanent passcode, valid for").select_option("1d")
        page.get_by_role("button", name="Generate SPP").click()
        spp = page.locator("#spp").inner_text().strip()
        assert re.fullmatch(r"[A-Za-z0-9]{12}", spp), spp
        page.screenshot(path=shots / "04-spp.png", full_page=True)
        page.goto(url.split("/login")[0] + "/approvals")
        expect(page.locator("#spp")).to_have_count(0)
    finally:
        page.close()
        proc.stop()
    assert "semi-permanent passcode set" in proc.stderr and spp not in proc.stderr + proc.stdout


def test_journey_local_demo(np_env, browser, tmp_path):
    """No account: one click starts the local demo, Connect opens a tunnel to its web page."""
    from noports.ui.demo import PAGE_BYTES

    shots = shots_dir(tmp_path, "journey-demo")
    ui_home = tmp_path / "ui-home"
    proc, url = start_ui(np_env, ui_home)
    expect = sync_api.expect
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(url)
        expect(page).to_have_url(re.compile(r"/onboard$"))
        page.get_by_role("button", name="Start local demo").click()
        expect(page.get_by_role("status")).to_contain_text("Starting the local demo")
        page.screenshot(path=shots / "01-demo-starting.png", full_page=True)
        link = page.get_by_role("link", name="Go to the demo profile")
        expect(link).to_be_visible(timeout=90_000)  # the page refreshes its progress itself
        page.screenshot(path=shots / "02-demo-running.png", full_page=True)
        link.click()
        expect(page.get_by_role("note")).to_contain_text("local-only demo data")
        row = page.locator("tr", has=page.get_by_role("rowheader", name=re.compile("^Demo web")))
        row.get_by_role("button", name=re.compile("^connect Demo web")).click()
        expect(row.locator('[data-f="state"]')).to_have_text("connected", timeout=45_000)
        href = row.locator('[data-f="url"]').get_attribute("href")
        assert href and href.startswith("http://localhost:")
        assert fetch(href) == PAGE_BYTES
        page.screenshot(path=shots / "03-demo-connected.png", full_page=True)
        assert not (ui_home / ".atsign").exists()
        page.goto(url.split("/login")[0] + "/onboard")
        page.get_by_role("button", name="Stop the demo and delete its data").click()
        expect(page.get_by_role("status")).to_contain_text("stopped")
        expect(page.get_by_role("button", name="Start local demo")).to_be_visible()
        page.screenshot(path=shots / "04-demo-stopped.png", full_page=True)
        assert not errors, errors
    finally:
        page.close()
        proc.stop()

"""srvd's status page (``--metrics``, at ``/``) in a real headless browser: Debian's chromium
driven by Playwright loads the page while a relayed session is live, finds the session id,
and the console stays free of errors (CSP violations, script errors, failed loads)."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.test_srvd_app import start_srvd
from tests.test_srvd_metrics import free_port, relay_a_session

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)",
                allow_module_level=True)  # fmt: skip

pytestmark = pytest.mark.timeout(150)


def test_status_page_shows_the_live_session_without_console_errors(np_env, tmp_path):
    relay, alice, dev = np_env.atsign("relay"), np_env.atsign("alice"), np_env.atsign("dev")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    start_srvd(np_env, relay, "--metrics", str(port), "--require-auth")
    seen: dict[str, object] = {}

    def during(sid: str) -> None:
        # Playwright's sync API is bound to its thread: the browser lives in this one
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = browser.new_page()
                errors: list[str] = []
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on(
                    "requestfailed", lambda r: errors.append(f"request failed: {r.url}")
                )
                resp = page.goto(base + "/", wait_until="load")
                assert resp is not None and resp.status == 200
                sync_api.expect(page.locator("body")).to_contain_text(sid)
                sync_api.expect(page.locator("h1")).to_contain_text(relay)
                page.screenshot(path=tmp_path / "status.png", full_page=True)
                seen["text"] = page.locator("body").inner_text()
                seen["scripts"] = page.locator("script").count()
                seen["external"] = page.evaluate(
                    "() => performance.getEntriesByType('resource').map(e => e.name)"
                )
                page.wait_for_timeout(300)  # late console messages
                seen["errors"] = list(errors)
            finally:
                browser.close()

    sid = relay_a_session(np_env, relay, alice, dev, 64 * 1024, during)
    text = str(seen["text"])
    assert sid in text and "Live sessions" in text
    assert "live pairs" in text and "Workers" in text
    assert seen["scripts"] == 0
    assert seen["external"] == [], seen["external"]  # no external asset, not even a favicon
    assert seen["errors"] == [], seen["errors"]
    assert "PRIVATE" not in text and "BEGIN" not in text

"""Run the web app: bind, state file, second-instance discovery, browser launch.

The state file (``$XDG_CONFIG_HOME/noports/ui.json``, else ``~/.config/noports/ui.json``,
0600) holds the pid, the address and the script-API secret. A second ``noports ui`` reads it,
asks the running one for a fresh one-time login URL over ``/api/login-url`` (bearer secret, no
Origin) and opens that instead of starting again. The browser gets the login URL through a
0600 redirect file, so the token is never in a process's argv (Jupyter's ``use_redirect_file``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import signal
import urllib.error
import urllib.request
import webbrowser
from pathlib import Path
from typing import Any

from aiohttp import web

from ..errors import ConfigError, NoPortsError
from ..fsutil import read_secret, write_secret
from .app import UiState, create_app
from .security import Guard, url_host

log = logging.getLogger("noports.ui")


def config_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "noports"


def state_path() -> Path:
    return config_dir() / "ui.json"


def check_bind(bind: str) -> None:
    if bind == "localhost":
        return
    try:
        ok = ipaddress.ip_address(bind).is_loopback
    except ValueError:
        ok = False
    if not ok:
        raise ConfigError(f"--bind {bind!r} is not a loopback address; the UI serves loopback only")


def running_instance() -> dict[str, Any] | None:
    """The state of a live ``noports ui`` of this user, or None."""
    p = state_path()
    try:
        st = json.loads(read_secret(p, strict_mode=True))
        pid = int(st["pid"])
        os.kill(pid, 0)
    except (OSError, ValueError, KeyError, TypeError, NoPortsError):
        return None
    return st if isinstance(st, dict) else None


def fresh_login_url(st: dict[str, Any], timeout: float = 5.0) -> str:
    hostport = f"{url_host(str(st.get('bind') or '127.0.0.1'))}:{int(st['port'])}"
    req = urllib.request.Request(
        f"http://{hostport}/api/login-url",
        method="POST",
        data=b"",
        headers={"Authorization": f"Bearer {st['api_secret']}", "Host": hostport},
    )
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return str(json.loads(resp.read())["url"])


def open_browser(url: str) -> bool:
    """Open ``url`` through a 0600 redirect file; False when no browser could be started."""
    path = config_dir() / "ui-open.html"
    html = (
        '<!doctype html><meta charset="utf-8">'
        f'<meta http-equiv="refresh" content="0;url={url}">'
        f'<title>NoPorts</title><a href="{url}">Open NoPorts</a>'
    )
    write_secret(path, html.encode(), overwrite=True)
    with contextlib.suppress(Exception):
        return bool(webbrowser.open(path.as_uri()))
    return False


async def serve(
    *,
    bind: str = "127.0.0.1",
    port: int = 0,
    browser: bool = True,
    home: str | None = None,
    root: str | None = None,
    ca_file: str | None = None,
    say: Any = print,
) -> int:
    check_bind(bind)
    state = UiState(home=home, root=root, ca_file=ca_file)
    guard = Guard(bind, port)  # the port is fixed below once bound
    app = create_app(state, guard)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, bind, port, reuse_address=False)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {bind}:{port}: {exc.strerror}") from None
    real_port = int(runner.addresses[0][1])  # the bound port (0 = chosen by the system)
    new_guard = Guard(bind, real_port, guard.api_secret)
    guard.__dict__.update(new_guard.__dict__)
    write_secret(
        state_path(),
        json.dumps(
            {"pid": os.getpid(), "port": real_port, "bind": bind, "api_secret": guard.api_secret}
        ).encode(),
        overwrite=True,
    )
    url = guard.login_url()
    say(f"noports ui: serving {guard.base}/ (Ctrl-C stops it and its tunnels)")
    if not browser or not open_browser(url):
        say(f"noports ui: open {url}")
    log.info("serving on %s:%d", bind, real_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stopping: closing tunnels")
        await runner.cleanup()
        with contextlib.suppress(OSError):
            st = json.loads(state_path().read_text())
            if st.get("pid") == os.getpid():
                state_path().unlink()
    return 0


def find_running(browser: bool, say: Any = print) -> bool:
    """True when a running instance took over (its fresh login URL opened or printed)."""
    st = running_instance()
    if st is None:
        return False
    try:
        url = fresh_login_url(st)
    except (OSError, urllib.error.URLError, ValueError, KeyError):
        return False
    base = f"http://{url_host(str(st.get('bind') or '127.0.0.1'))}:{st['port']}"
    say(f"noports ui: already running (pid {st['pid']}) on {base}/")
    if not browser or not open_browser(url):
        say(f"noports ui: open {url}")
    return True

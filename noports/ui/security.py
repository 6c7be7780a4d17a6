"""The web app's guards (``shared/desktop-app.md`` section 2, lessons 1-6).

* **Host allowlist** (DNS rebinding): only ``127.0.0.1:PORT``, ``localhost:PORT``, ``[::1]:PORT``
  (and the bind address) are served; anything else gets 403 "Host check error".
* **A secret per launch**: a one-time login token (in the URL the browser opens) is traded for a
  random session id in an ``HttpOnly; SameSite=Strict`` cookie; the token then no longer works.
* **Changes**: POST only, ``Origin`` equal to our own origin and the session's CSRF token
  (form field ``csrf`` or header ``X-CSRF-Token``). No CORS headers, ever.
* **Script API** (``/api/*``): a bearer secret from the 0600 state file, and any request with an
  ``Origin`` header is refused (a browser cannot be made to send it).
* **Headers** on every answer: a strict CSP (no inline script, nothing external),
  ``X-Frame-Options: DENY``, ``nosniff``, ``Referrer-Policy: same-origin``, ``no-store``.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

log = logging.getLogger("noports.ui")
COOKIE = "noports_ui"
TOKEN_TTL = 600.0
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chrome send "Origin: null" on POST
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
SAFE_METHODS = ("GET", "HEAD")
OPEN_PATHS = ("/login", "/static/")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_RequestKey: Any = getattr(web, "RequestKey", None)  # aiohttp >= 3.13; plain strings before
SID: Any = _RequestKey("sid", str) if _RequestKey else "sid"
CSRF: Any = _RequestKey("csrf", str) if _RequestKey else "csrf"
FORM: Any = _RequestKey("form", object) if _RequestKey else "form"


def url_host(bind: str) -> str:
    """How a URL names the bind address (``[::1]`` for IPv6; 127.0.0.1 for any/empty)."""
    if bind in ("", "0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{bind}]" if ":" in bind else bind


class Guard:
    """Tokens, sessions and the allowed Host/Origin values for one running app."""

    def __init__(self, bind: str, port: int, api_secret: str | None = None) -> None:
        self.port = port
        hosts = {"127.0.0.1", "localhost", "[::1]"}
        if bind not in ("0.0.0.0", "::", ""):
            hosts.add(f"[{bind}]" if ":" in bind else bind)
        self.hosts = {f"{h}:{port}" for h in hosts}
        self.base = f"http://{url_host(bind)}:{port}"
        self.origins = {f"http://{h}" for h in self.hosts}
        self.api_secret = api_secret or secrets.token_urlsafe(32)
        self._tokens: dict[str, float] = {}
        self._sessions: dict[str, str] = {}  # session id -> CSRF token

    def new_login_token(self) -> str:
        now = time.monotonic()
        self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
        tok = secrets.token_urlsafe(32)
        self._tokens[tok] = now + TOKEN_TTL
        return tok

    def login_url(self) -> str:
        return f"{self.base}/login?token={self.new_login_token()}"

    def redeem(self, token: str) -> str | None:
        """Trade a one-time token for a new session id (None when unknown, used or expired)."""
        exp = self._tokens.pop(token, None)
        if exp is None or exp < time.monotonic():
            return None
        sid = secrets.token_urlsafe(32)
        self._sessions[sid] = secrets.token_urlsafe(32)
        return sid

    def session(self, request: web.Request) -> str | None:
        sid = request.cookies.get(COOKIE, "")
        return sid if sid in self._sessions else None

    def csrf(self, sid: str) -> str:
        return self._sessions[sid]

    def host_ok(self, request: web.Request) -> bool:
        return request.headers.get("Host", "") in self.hosts

    def origin_ok(self, request: web.Request) -> bool:
        return request.headers.get("Origin", "") in self.origins


def refuse(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text + "\n", headers=HEADERS)


def middleware(guard: Guard) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    @web.middleware
    async def guard_mw(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not guard.host_ok(request):
            log.warning("refused %s %s: Host %r", request.method, path, request.headers.get("Host"))
            return refuse(403, "Host check error")
        if path.startswith("/api/"):
            if "Origin" in request.headers:
                log.warning("refused %s %s: Origin on the script API", request.method, path)
                return refuse(403, "the script API does not accept browser requests")
            auth = request.headers.get("Authorization", "")
            if not hmac.compare_digest(auth.encode(), f"Bearer {guard.api_secret}".encode()):
                return refuse(401, "bearer token required")
            return await _with_headers(handler, request)
        if not path.startswith(OPEN_PATHS):
            sid = guard.session(request)
            if sid is None:
                return refuse(
                    401, "Not signed in: open the login link that `noports ui` printed or opened."
                )
            request[SID] = sid
            request[CSRF] = guard.csrf(sid)
            if request.method not in SAFE_METHODS:
                if not guard.origin_ok(request):
                    log.warning(
                        "refused %s %s: Origin %r", request.method, path,
                        request.headers.get("Origin"),
                    )  # fmt: skip
                    return refuse(403, "Origin check error")
                sent = request.headers.get("X-CSRF-Token", "")
                if not sent and request.content_type in (
                    "application/x-www-form-urlencoded",
                    "multipart/form-data",
                ):
                    form = await request.post()
                    request[FORM] = form
                    sent = str(form.get("csrf", ""))
                if not hmac.compare_digest(sent.encode(), request[CSRF].encode()):
                    log.warning("refused %s %s: CSRF token", request.method, path)
                    return refuse(403, "CSRF token missing or wrong")
                log.info("action: %s %s", request.method, path)
        elif request.method not in SAFE_METHODS:
            return refuse(405, "method not allowed")
        return await _with_headers(handler, request)

    return guard_mw


async def _with_headers(handler: Handler, request: web.Request) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        for k, v in HEADERS.items():
            exc.headers.setdefault(k, v)
        raise
    if not resp.prepared:  # a stream (SSE) set its headers before it started
        for k, v in HEADERS.items():
            resp.headers.setdefault(k, v)
    return resp

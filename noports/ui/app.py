"""The web app: pages, actions and the event stream. Build with :func:`create_app`.

Screens: ``/`` profiles (search, select, connect/disconnect many, favourites, live state),
``/profiles/new`` and ``/profiles/{uuid}/edit`` (the form), ``/import``, ``/export``,
``/onboard`` (atSigns: activate, upload .atKeys, enrol and wait, switch), ``/keys/backup``,
``/approvals`` (enrollments: approve, deny, revoke; OTP and SPP), ``/settings`` (relay), ``/logs``.
Every change is a POST guarded by :mod:`.security`; every page is plain HTML that works
without JavaScript (the script only adds live updates).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import secrets
import string
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web

from ..at import onboard as ob
from ..at.client import AtClient
from ..crypto.atkeys import AtKeys, default_keys_path
from ..errors import KeyNotFoundError, NoPortsError
from ..names import InvalidNameError, validate_atsign
from ..profiles.model import COMMON_PORTS, DocumentError, Profile, dump_document, parse_document
from ..profiles.runner import PortBusyError, Runner
from ..profiles.store import DEFAULT_SETTINGS, ProfileStore
from ..session.client import connect_client
from . import HTMX_FILE
from .demo import DEMO_NAME, Demo
from .security import COOKIE, CSRF, FORM, HEADERS, Guard, middleware

log = logging.getLogger("noports.ui")
STATE_KEY: web.AppKey[UiState] = web.AppKey("state")
GUARD_KEY = web.AppKey("guard", Guard)
JINJA_KEY = web.AppKey("jinja", jinja2.Environment)
STATIC_NAMES_KEY: web.AppKey[set[str]] = web.AppKey("static_names")
MAX_UPLOAD = 1 << 20
MAX_KEYS_FILE = 64 << 10
RELAYS = (("@rv_am", "Americas"), ("@rv_eu", "Europe"), ("@rv_ap", "Asia-Pacific"))
APP_NAME = "noports_ui"


class LogBuffer(logging.Handler):
    """The last lines of the ``noports`` loggers, for the log pane."""

    def __init__(self, size: int = 500) -> None:
        super().__init__(logging.INFO)
        self.lines: collections.deque[tuple[float, str, str, str]] = collections.deque(maxlen=size)
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.lines.append((record.created, record.levelname, record.name, self.format(record)))


@dataclass
class Enrolling:
    """An enrollment this app requested for a new device, waiting for approval."""

    atsign: str
    enrollment_id: str = ""
    state: str = "requesting"  # requesting, pending, approved, failed
    error: str = ""
    task: asyncio.Task[None] | None = field(default=None, repr=False)


ENROLL_RX = r".*\.new\.enrollments\.__manage"
BADGE_RECHECK = 60.0  # approvals made on other devices send no notification: recount now and then


class BadgeMonitor:
    """The live pending-enrollments badge: a monitor on the active atSign's new-enrollment
    notifications (``<id>.new.enrollments.__manage``, as ``at_activate auto`` listens for);
    on each one it recounts the pending enrollments and pushes a ``badge`` frame to the
    pages' event stream. While it is not running (not started yet, or it failed) ``live`` is
    false and the pages poll ``/approvals/badge`` instead."""

    def __init__(self, state: UiState) -> None:
        self.state = state
        self.atsign: str | None = None
        self.pending = 0
        self.live = False
        self.task: asyncio.Task[None] | None = None

    def follow(self, atsign: str | None) -> None:
        """Watch ``atsign`` (the active one); a change restarts the monitor."""
        if atsign == self.atsign and (self.task is not None or atsign is None):
            return
        self.stop()
        self.atsign = atsign
        if atsign:
            self.task = asyncio.get_running_loop().create_task(self._run(atsign))

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.task, self.live, self.pending = None, False, 0

    async def refresh(self) -> None:
        """Recount (after a notification, or after this app approved or denied one)."""
        a = self.atsign
        if not a or a != self.state.active:
            return
        got, err = await _enrollments(self.state)
        if err or a != self.atsign:
            return
        self.pending = sum(1 for e in got if e.status == "pending")
        self.state.runner.announce(self.frame())

    def frame(self) -> dict[str, Any]:
        return {"event": "badge", "atsign": self.atsign, "pending": self.pending, "live": self.live}

    async def _run(self, atsign: str) -> None:
        from ..at.notifications import MonitorClosed

        mon = None
        try:
            client = await self.state.client(atsign)
            mon = client.monitor(ENROLL_RX, self_notifications=True, decrypt=False)
            await mon.started(timeout=15)
            self.live = True
            log.info("approvals badge: monitoring new enrollment requests of %s", atsign)
            await self.refresh()
            while True:
                try:
                    await mon.next(timeout=BADGE_RECHECK)
                except TimeoutError:
                    pass
                await self.refresh()
        except asyncio.CancelledError:
            raise
        except (NoPortsError, OSError, MonitorClosed, web.HTTPException) as exc:
            log.warning("approvals badge: monitor for %s stopped (%s); pages poll instead",
                        atsign, _one_line(exc))  # fmt: skip
        finally:
            self.live = False
            if mon is not None:
                with contextlib.suppress(Exception):
                    await mon.close()
            if self.atsign == atsign:
                self.state.runner.announce(self.frame())


class UiState:
    """Everything the pages show: atSigns on disk, the active one, its store, the runner."""

    def __init__(
        self,
        *,
        home: str | os.PathLike[str] | None = None,
        root: str | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.home = Path(home) if home is not None else Path.home()
        self.root = root
        self.ca_file = ca_file
        self.active: str | None = None
        self._clients: dict[str, AtClient] = {}
        self._lock = asyncio.Lock()
        self.runner = Runner(self._tunnel_client)
        self.logbuf = LogBuffer()
        self.enrolling: dict[str, Enrolling] = {}
        self.backed_up: set[str] = set()
        self.badge = BadgeMonitor(self)
        self.demo = Demo()
        self.demo_task: asyncio.Task[None] | None = None
        # atSigns whose keys are not in ~/.atsign/keys (the local demo's): keys, root, CA
        self.extra: dict[str, tuple[Path, str | None, str | None]] = {}
        atsigns = self.atsigns()
        if atsigns:
            self.active = atsigns[0]

    # -- atSigns and clients ---------------------------------------------------------------

    def keys_dir(self) -> Path:
        return self.home / ".atsign" / "keys"

    def keys_file(self, atsign: str) -> Path:
        if atsign in self.extra:
            return self.extra[atsign][0]
        return default_keys_path(atsign, self.home)

    def net(self, atsign: str) -> tuple[str | None, str | None]:
        """The root directory and CA file for ``atsign`` (the demo's own, or the app's)."""
        if atsign in self.extra:
            return self.extra[atsign][1], self.extra[atsign][2]
        return self.root, self.ca_file

    def atsigns(self) -> list[str]:
        d = self.keys_dir()
        found = set(self.extra)
        if d.is_dir():
            found.update(p.name[: -len("_key.atKeys")] for p in d.glob("@*_key.atKeys"))
        return sorted(found)

    async def client(self, atsign: str | None = None) -> AtClient:
        a = atsign or self.active
        if not a:
            raise web.HTTPSeeOther("/onboard")
        async with self._lock:
            c = self._clients.get(a)
            if c is None:
                root, ca = self.net(a)
                c = await connect_client(a, keys_file=str(self.keys_file(a)), root=root, ca_file=ca)
                self._clients[a] = c
            return c

    async def _tunnel_client(self, atsign: str) -> AtClient:
        # each tunnel has its own atClient, as each npt does (its own monitor and reconnects)
        root, ca = self.net(atsign)
        return await connect_client(
            atsign, keys_file=str(self.keys_file(atsign)), root=root, ca_file=ca
        )

    async def store(self) -> ProfileStore:
        return ProfileStore(await self.client())

    async def drop_client(self, atsign: str) -> None:
        c = self._clients.pop(atsign, None)
        if c is not None:
            with contextlib.suppress(Exception):
                await c.close()

    async def close(self) -> None:
        self.badge.stop()
        if self.demo_task is not None:
            self.demo_task.cancel()
        await self.runner.stop_all()
        for e in self.enrolling.values():
            if e.task is not None:
                e.task.cancel()
        for a in list(self._clients):
            await self.drop_client(a)
        await self.demo.stop()


# -- rendering ---------------------------------------------------------------------------


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("noports.ui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["tojson_attr"] = lambda v: json.dumps(v)
    env.filters["hms"] = _hms
    env.filters["ts"] = lambda t: time.strftime("%H:%M:%S", time.localtime(t))
    return env


def _hms(seconds: int | float | None) -> str:
    s = int(seconds or 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def render(request: web.Request, name: str, status: int = 200, **ctx: Any) -> web.Response:
    app = request.app
    st: UiState = app[STATE_KEY]
    st.badge.follow(st.active)
    base = {
        "badge_live": st.badge.live,
        "demo_atsigns": set(st.extra),
        "pending": st.badge.pending,
        "csrf": request.get(CSRF, ""),
        "atsigns": st.atsigns(),
        "active": st.active,
        "htmx": HTMX_FILE,
        "flash": request.query.get("msg", ""),
        "error": request.query.get("err", ""),
        "path": request.path,
    }
    html = app[JINJA_KEY].get_template(name).render(**{**base, **ctx})
    return web.Response(text=html, status=status, content_type="text/html", headers=HEADERS)


def back(path: str, *, msg: str = "", err: str = "") -> web.HTTPSeeOther:
    from urllib.parse import urlencode

    q = {k: v for k, v in (("msg", msg), ("err", err)) if v}
    return web.HTTPSeeOther(path + ("?" + urlencode(q) if q else ""))


async def form(request: web.Request) -> Any:
    f = request.get(FORM)
    if f is None:
        f = await request.post()
        request[FORM] = f
    return f


def _one_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


# -- profiles ----------------------------------------------------------------------------


async def dashboard(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    if not st.active:
        raise web.HTTPSeeOther("/onboard")
    store = await st.store()
    profiles = await store.list()
    favs = await store.favourites()
    q = request.query.get("q", "")
    shown = [p for p in profiles if p.matches(q)]
    if request.query.get("fav") == "1":
        shown = [p for p in shown if p.uuid in favs]
    shown.sort(key=lambda p: (p.uuid not in favs, p.displayName.lower()))
    runs = {u: r.snapshot() for u, r in st.runner.runs.items()}
    return render(
        request,
        "dashboard.html",
        profiles=shown,
        total=len(profiles),
        favs=favs,
        runs=runs,
        q=q,
        fav_only=request.query.get("fav") == "1",
        read_errors=store.errors,
        backup_nag=request.query.get("backup") == "1" and st.active not in st.backed_up,
    )


def _profile_from_form(f: Any, uuid: str | None) -> Profile:
    obj: dict[str, Any] = {
        k: str(f.get(k, "")).strip()
        for k in (
            "displayName", "sshnpdAtsign", "deviceName", "relayAtsign", "remoteHost",
            "remotePort", "localHost", "localPort", "connectUriProtocol",
        )
    }  # fmt: skip
    obj["localPort"] = obj["localPort"] or 0
    obj["only443"] = f.get("only443") == "on"
    obj["keepAlive"] = f.get("keepAlive") == "on"
    return Profile.from_json(obj, uuid=uuid)


async def profile_form(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    uuid = request.match_info.get("uuid")
    p = None
    if uuid:
        p = await (await st.store()).get(uuid)
    return render(
        request, "profile_form.html", p=p, ports=COMMON_PORTS, running=bool(
            uuid and st.runner.running(uuid)
        ), values=None,
    )  # fmt: skip


async def profile_save(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    uuid = request.match_info.get("uuid")
    f = await form(request)
    if uuid and st.runner.running(uuid):
        raise back("/", err="Cannot perform this action while profile is running.")
    try:
        p = _profile_from_form(f, uuid)
    except DocumentError as exc:
        return render(
            request, "profile_form.html", status=400, p=None, ports=COMMON_PORTS,
            running=False, values=dict(f), form_error=str(exc), uuid=uuid,
        )  # fmt: skip
    await (await st.store()).put(p)
    log.info("profile saved: %s (%s)", p.displayName, p.uuid)
    raise back("/", msg=f"Saved {p.displayName} to the atServer.")


async def profile_action(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    uuid, action = request.match_info["uuid"], request.match_info["action"]
    store = await st.store()
    if action == "connect":
        err = await _connect(st, store, [uuid])
        raise back("/", err=err) if err else back("/")
    if action == "disconnect":
        await st.runner.stop(uuid)
        raise back("/")
    if action == "favourite":
        on = uuid not in await store.favourites()
        await store.set_favourite(uuid, on)
        raise back("/")
    if action == "delete":
        if st.runner.running(uuid):
            raise back("/", err="Cannot perform this action while profile is running.")
        p = await store.get(uuid)
        await store.delete(uuid)
        st.runner.runs.pop(uuid, None)
        log.info("profile deleted: %s (%s)", p.displayName, uuid)
        raise back("/", msg=f"Deleted {p.displayName}.")
    if action == "duplicate":
        d = (await store.get(uuid)).duplicate()
        await store.put(d)
        raise back("/", msg=f"Added {d.displayName}.")
    raise web.HTTPNotFound()


def relay_for(p: Profile, settings: dict[str, Any]) -> str:
    """The desktop app's ``toNptParams``: the profile's relay unless it has none or the
    Settings say to override every profile with the default relay."""
    if settings.get("overrideRelay") or not p.relayAtsign:
        return str(settings.get("relayAtsign") or DEFAULT_SETTINGS["relayAtsign"])
    return p.relayAtsign


async def _connect(st: UiState, store: ProfileStore, uuids: list[str]) -> str:
    """Start each profile; returns the problems as one line (empty when all started)."""
    settings = await store.settings()
    errs = []
    for u in uuids:
        try:
            p = await store.get(u)
            st.runner.start(p, store.atsign, relay_for(p, settings))
            log.info("connect: %s (%s)", p.displayName, u)
        except PortBusyError as exc:
            errs.append(f"{p.displayName}: {exc}")
        except (NoPortsError, ValueError) as exc:
            errs.append(f"{u}: {_one_line(exc)}")
    return "; ".join(errs)


async def bulk(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    action = str(f.get("action", ""))
    uuids = [str(u) for u in f.getall("uuid", [])]
    store = await st.store()
    if action == "start-favourites":
        uuids = sorted(await store.favourites())
        action = "connect"
    if action == "stop-all":
        n = await st.runner.stop_all()
        log.info("stop all: %d tunnels", n)
        raise back("/", msg=f"Stopped {n} tunnel(s).")
    if not uuids:
        raise back("/", err="Select at least one profile.")
    if action == "connect":
        err = await _connect(st, store, uuids)
        raise back("/", err=err) if err else back("/", msg=f"Starting {len(uuids)} tunnel(s).")
    if action == "disconnect":
        for u in uuids:
            await st.runner.stop(u)
        raise back("/", msg=f"Stopped {len(uuids)} tunnel(s).")
    if action == "delete":
        running = [u for u in uuids if st.runner.running(u)]
        for u in uuids:
            if u not in running:
                await store.delete(u)
        msg = f"Deleted {len(uuids) - len(running)} profile(s)."
        if running:
            msg += " Some profiles are running and won't be deleted."
        raise back("/", msg=msg)
    raise back("/", err=f"unknown action {action!r}")


async def export(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    fmt = request.query.get("fmt", "yaml")
    if fmt not in ("json", "yaml"):
        raise web.HTTPBadRequest(text="fmt must be json or yaml")
    store = await st.store()
    want = set(request.query.getall("uuid", []))
    ps = [p for p in await store.list() if not want or p.uuid in want]
    body = dump_document(ps, fmt)
    log.info("export: %d profile(s) as %s", len(ps), fmt)
    return web.Response(
        text=body,
        content_type="application/json" if fmt == "json" else "application/yaml",
        headers={**HEADERS, "Content-Disposition": f'attachment; filename="export.{fmt}"'},
    )


async def import_page(request: web.Request) -> web.Response:
    return render(request, "import.html")


async def import_post(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    upload: Any = f.get("file")
    text: str | bytes = str(f.get("paste", ""))
    filename: str | None = getattr(upload, "filename", None) or None
    if filename:
        text = upload.file.read(MAX_UPLOAD + 1)
    if not text.strip():
        return render(request, "import.html", status=400, form_error="Choose a file or paste.")
    try:
        ps = parse_document(text, filename=filename)
    except DocumentError as exc:
        return render(request, "import.html", status=400, form_error=str(exc))
    store = await st.store()
    for p in ps:
        await store.put(p)
    log.info("import: %d profile(s)", len(ps))
    raise back("/", msg=f"Imported {len(ps)} profile(s).")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: one ``tunnel`` event per state change, a ``badge`` event when the
    number of pending enrollments changes (or its monitor stops), a comment every 15 s."""
    st: UiState = request.app[STATE_KEY]
    resp = web.StreamResponse(
        headers={**HEADERS, "Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
    )
    await resp.prepare(request)
    q = st.runner.subscribe()
    try:
        for r in list(st.runner.runs.values()):
            await resp.write(_sse("tunnel", r.snapshot()))
        if st.badge.live:
            await resp.write(_sse("badge", st.badge.frame()))
        while True:
            try:
                snap = await asyncio.wait_for(q.get(), 15)
            except asyncio.TimeoutError:
                await resp.write(b": keep-alive\n\n")
                continue
            if snap is None:  # shutting down: end the stream so the server can stop
                break
            await resp.write(_sse(str(snap.get("event", "tunnel")), snap))
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    finally:
        st.runner.unsubscribe(q)
    return resp


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


async def state_json(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    return web.json_response(
        {"active": st.active, "runs": [r.snapshot() for r in st.runner.runs.values()]},
        headers=HEADERS,
    )


# -- atSigns, onboarding, keys -------------------------------------------------------------


async def onboard_page(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    root = st.root or os.environ.get("NOPORTS_ROOT") or "root.atsign.org"
    return render(
        request, "onboard.html", root=root, enrolling=list(st.enrolling.values()),
        keys_dir=str(st.keys_dir()), demo=st.demo,
    )  # fmt: skip


def _atsign_field(f: Any) -> str:
    try:
        return validate_atsign(str(f.get("atsign", "")).strip(), add_at=True)
    except InvalidNameError as exc:
        raise back("/onboard", err=str(exc)) from None


async def activate(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    a = _atsign_field(f)
    secret = str(f.get("secret", "")).strip()
    try:
        await ob.onboard(
            a, secret, root=st.root, ca_file=st.ca_file, app_name=APP_NAME,
            device_name="noports_ui", keys_path=st.keys_file(a),
        )  # fmt: skip
    except (NoPortsError, OSError) as exc:
        log.warning("activate %s failed: %s", a, _one_line(exc))
        raise back("/onboard", err=f"{a}: {_one_line(exc)}") from None
    log.info("activated %s; keys in %s", a, st.keys_file(a))
    st.active = a
    raise back("/", msg=f"{a} is activated. Back up its keys.")


async def upload_keys(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    upload: Any = f.get("file")
    if upload is None or not getattr(upload, "filename", ""):
        raise back("/onboard", err="Choose an .atKeys file.")
    raw = upload.file.read(MAX_KEYS_FILE + 1)
    if len(raw) > MAX_KEYS_FILE:
        raise back("/onboard", err="That file is too large to be an .atKeys file.")
    try:
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        name = str(upload.filename)
        guess = name[: -len("_key.atKeys")] if name.endswith("_key.atKeys") else None
        a = _atsign_field(f) if f.get("atsign") else guess
        if not a:
            raise ValueError("type the atSign (the file name does not say)")
        keys = AtKeys.from_dict(d, validate_atsign(a, add_at=True))
    except (ValueError, NoPortsError, KeyError) as exc:
        raise back("/onboard", err=f"Not a usable .atKeys file: {_one_line(exc)}") from None
    try:  # the keys must authenticate before they are kept
        c = await AtClient.connect(keys.atsign, keys=keys, root=st.root, ca_file=st.ca_file)
        await c.close()
    except (NoPortsError, OSError) as exc:
        raise back(
            "/onboard", err=f"The atKeys file you uploaded did not work for {keys.atsign}: "
            f"{_one_line(exc)}",
        ) from None  # fmt: skip
    try:
        ob.save_keys(keys, st.keys_file(keys.atsign), overwrite=False)
    except NoPortsError as exc:
        raise back("/onboard", err=_one_line(exc)) from None
    log.info("keys uploaded for %s", keys.atsign)
    st.active = keys.atsign
    raise back("/", msg=f"Signed in as {keys.atsign}.")


async def enroll(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    a = _atsign_field(f)
    otp = str(f.get("otp", "")).strip()
    e = Enrolling(a)
    st.enrolling[a] = e

    async def work() -> None:
        try:
            pending = await ob.request_enrollment(
                a, otp, app_name=APP_NAME, device_name="noports_ui",
                namespaces={"noports": "rw", "sshnp": "rw", "sshrvd": "rw", "__manage": "rw"},
                root=st.root, ca_file=st.ca_file,
            )  # fmt: skip
            e.enrollment_id, e.state = pending.enrollment_id, "pending"
            log.info("enrollment %s for %s pending approval", e.enrollment_id, a)
            keys = await pending.wait(timeout=600, interval=1.0)
            ob.save_keys(keys, st.keys_file(a), overwrite=False)
            e.state = "approved"
            st.active = st.active or a
            log.info("enrollment %s approved; keys saved", e.enrollment_id)
        except (NoPortsError, OSError, asyncio.TimeoutError) as exc:
            e.state, e.error = "failed", _one_line(exc)
            log.warning("enrollment for %s failed: %s", a, e.error)

    e.task = asyncio.get_running_loop().create_task(work())
    raise back("/onboard", msg=f"Enrollment requested for {a}; approve it on a manager device.")


async def start_demo(st: UiState) -> None:
    """Start the local demo and make its client atSign active, with one demo profile."""
    info = await st.demo.start()
    a = info.client
    st.extra[a] = (info.keys_file, info.root, info.ca_file)
    await st.drop_client(a)
    store = ProfileStore(await st.client(a))
    if not any(p.displayName == DEMO_NAME for p in await store.list()):
        await store.put(Profile.from_json({
            "displayName": DEMO_NAME, "sshnpdAtsign": info.device,
            "deviceName": info.device_name, "relayAtsign": info.relay,
            "remoteHost": "localhost", "remotePort": info.web_port, "localHost": "localhost",
            "localPort": 0, "connectUriProtocol": "http",
        }))  # fmt: skip
    st.active = a
    log.info("demo: running; %s is active with the profile %r", a, DEMO_NAME)


async def _forget_demo(st: UiState) -> None:
    """Stop the demo atSign's tunnels and drop it from the app (its data goes with the demo)."""
    for a in list(st.extra):
        for u, r in list(st.runner.runs.items()):
            if r.client_atsign == a:
                await st.runner.stop(u)
                st.runner.runs.pop(u, None)
        await st.drop_client(a)
        del st.extra[a]
        if st.active == a:
            real = st.atsigns()
            st.active = real[0] if real else None


async def demo_action(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    action = request.match_info["action"]
    if action == "start":
        if st.demo.state in ("starting", "running"):
            raise back("/onboard", msg="The local demo is already " + st.demo.state + ".")

        async def work() -> None:
            try:
                await start_demo(st)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # shown on the page; the demo stops itself
                await _forget_demo(st)
                st.demo.state, st.demo.error = "failed", _one_line(exc)
                await st.demo.stop()
                log.warning("demo: failed: %s", st.demo.error)

        st.demo_task = asyncio.get_running_loop().create_task(work())
        raise back("/onboard", msg="Starting the local demo (about 10 to 30 seconds)…")
    if action == "stop":
        if st.demo_task is not None:
            st.demo_task.cancel()
            with contextlib.suppress(BaseException):
                await st.demo_task
            st.demo_task = None
        await _forget_demo(st)
        await st.demo.stop()
        log.info("demo: stopped")
        raise back("/onboard", msg="The local demo is stopped and its data deleted.")
    raise web.HTTPNotFound()


async def switch(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    a = str(f.get("atsign", ""))
    if a not in st.atsigns():
        raise back("/", err="unknown atSign")
    st.active = a
    log.info("active atSign: %s", a)
    raise back("/", msg=f"Now using {a}. Tunnels of other atSigns keep running.")


async def backup_page(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    if not st.active:
        raise web.HTTPSeeOther("/onboard")
    return render(request, "backup.html", keys_path=str(st.keys_file(st.active)))


async def backup_download(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    if not st.active:
        raise web.HTTPSeeOther("/onboard")
    if f.get("confirm") != "yes":
        raise back("/keys/backup", err="Tick the box to confirm.")
    a = st.active
    data = st.keys_file(a).read_bytes()
    st.backed_up.add(a)
    log.info("keys backup downloaded for %s", a)
    return web.Response(
        body=data,
        content_type="application/octet-stream",
        headers={**HEADERS, "Content-Disposition": f'attachment; filename="{a}_key.atKeys"'},
    )


# -- approvals ------------------------------------------------------------------------------


async def _manager(st: UiState) -> ob.EnrollmentManager:
    if not st.active:
        raise web.HTTPSeeOther("/onboard")
    keys = AtKeys.load(st.keys_file(st.active))
    root, ca = st.net(st.active)
    return await ob.EnrollmentManager.connect(keys, root=root, ca_file=ca)


async def _enrollments(st: UiState) -> tuple[list[ob.Enrollment], str]:
    try:
        async with await _manager(st) as m:
            got = await m.list()
    except NoPortsError as exc:
        return [], _one_line(exc)
    order = {"pending": 0, "approved": 1, "denied": 2, "revoked": 3}
    got.sort(key=lambda e: (order.get(e.status, 9), e.enrollment_id))
    return got, ""


async def approvals(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    got, err = await _enrollments(st)
    tpl = "approvals_list.html" if request.headers.get("HX-Request") else "approvals.html"
    return render(request, tpl, enrollments=got, list_error=err, otp="", spp="")


async def pending_badge(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    got, _ = await _enrollments(st) if st.active else ([], "")
    n = sum(1 for e in got if e.status == "pending")
    return render(request, "badge.html", pending=n)


async def approval_action(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    eid, action = request.match_info["eid"], request.match_info["action"]
    try:
        async with await _manager(st) as m:
            if action == "approve":
                await m.approve(eid)
            elif action == "deny":
                await m.deny(eid)
            elif action == "revoke":
                await m.revoke(eid)
            else:
                raise web.HTTPNotFound()
    except NoPortsError as exc:
        raise back("/approvals", err=f"{action} {eid}: {_one_line(exc)}") from None
    log.info("enrollment %s: %s", eid, action)
    await st.badge.refresh()
    done = {"approve": "approved", "deny": "denied", "revoke": "revoked"}[action]
    raise back("/approvals", msg=f"Enrollment {eid} {done}.")


async def make_otp(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    try:
        async with await _manager(st) as m:
            code = await m.otp()
    except NoPortsError as exc:
        raise back("/approvals", err=_one_line(exc)) from None
    log.info("OTP generated for %s", st.active)
    return render(request, "approvals.html", enrollments=(await _enrollments(st))[0],
                  list_error="", otp=code, spp="")  # fmt: skip


SPP_ALPHABET = string.ascii_letters + string.digits
SPP_LENGTH = 12  # the official at_activate takes 6 to 16 letters and digits
SPP_EXPIRY = {"1h": 3_600_000, "1d": 86_400_000, "7d": 7 * 86_400_000, "30d": 30 * 86_400_000}


def new_spp() -> str:
    """A fresh semi-permanent passcode: 12 letters and digits from :mod:`secrets`."""
    return "".join(secrets.choice(SPP_ALPHABET) for _ in range(SPP_LENGTH))


async def make_spp(request: web.Request) -> web.StreamResponse:
    """Set a new semi-permanent passcode (``otp:put``) and show it once. It is neither logged
    nor kept: the page that shows it is ``no-store`` and a reload does not repeat it."""
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    expiry = str(f.get("expiry", "7d"))
    if expiry not in SPP_EXPIRY:
        raise back("/approvals", err=f"expiry must be one of {', '.join(SPP_EXPIRY)}")
    code = new_spp()
    try:
        async with await _manager(st) as m:
            await m.spp(code, SPP_EXPIRY[expiry])
    except NoPortsError as exc:
        raise back("/approvals", err=_one_line(exc)) from None
    log.info("semi-permanent passcode set for %s (valid %s)", st.active, expiry)
    return render(request, "approvals.html", enrollments=(await _enrollments(st))[0],
                  list_error="", otp="", spp=code, spp_expiry=expiry)  # fmt: skip


# -- settings and logs -------------------------------------------------------------------


async def settings_page(request: web.Request) -> web.Response:
    st: UiState = request.app[STATE_KEY]
    s = await (await st.store()).settings()
    return render(request, "settings.html", s=s, relays=RELAYS)


async def settings_save(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    f = await form(request)
    store = await st.store()
    s = await store.settings()
    relay = str(f.get("relay", "")).strip()
    if relay == "custom":
        relay = str(f.get("custom", "")).strip()
    try:
        s["relayAtsign"] = validate_atsign(relay, add_at=True)
    except InvalidNameError as exc:
        raise back("/settings", err=str(exc)) from None
    s["overrideRelay"] = f.get("overrideRelay") == "on"
    await store.put_settings(s)
    log.info("settings saved: relay %s override %s", s["relayAtsign"], s["overrideRelay"])
    raise back("/settings", msg="Settings saved to the atServer.")


async def logs_page(request: web.Request) -> web.StreamResponse:
    st: UiState = request.app[STATE_KEY]
    level = request.query.get("level", "")
    text = request.query.get("q", "")
    lines = [
        ln for ln in st.logbuf.lines
        if (not level or ln[1] == level) and (not text or text.lower() in ln[3].lower())
    ]  # fmt: skip
    if request.query.get("download") == "1":
        body = "".join(f"{time.strftime('%F %T', time.localtime(t))} {lv} {n}: {m}\n"
                       for t, lv, n, m in lines)  # fmt: skip
        return web.Response(
            text=body, content_type="text/plain",
            headers={**HEADERS, "Content-Disposition": 'attachment; filename="noports-ui.log"'},
        )  # fmt: skip
    return render(request, "logs.html", lines=lines[-300:], level=level, q=text)


# -- login and assets --------------------------------------------------------------------


async def login(request: web.Request) -> web.StreamResponse:
    guard: Guard = request.app[GUARD_KEY]
    sid = guard.redeem(request.query.get("token", ""))
    if sid is None:
        log.warning("login refused: unknown or used token")
        return web.Response(
            status=403,
            text="This login link is used or expired. Run `noports ui` again for a new one.\n",
            headers=HEADERS,
        )
    log.info("login: new browser session")
    resp = web.HTTPSeeOther("/")
    resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", path="/")
    raise resp


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in request.app[STATIC_NAMES_KEY]:
        raise web.HTTPNotFound()
    data = (resources.files("noports.ui") / "static" / name).read_bytes()
    ctype = {"js": "text/javascript", "css": "text/css"}.get(name.rsplit(".", 1)[-1], "text/plain")
    return web.Response(body=data, content_type=ctype, headers=HEADERS)


async def api_login_url(request: web.Request) -> web.Response:
    """For a second ``noports ui``: a fresh one-time login URL (bearer secret, no Origin)."""
    guard: Guard = request.app[GUARD_KEY]
    return web.json_response({"url": guard.login_url()}, headers=HEADERS)


@web.middleware
async def errors_mw(request: web.Request, handler: Any) -> web.StreamResponse:
    """A failure of the atServer or the network is one line on a page, never a 500 trace."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except KeyNotFoundError as exc:
        log.warning("%s %s: %s", request.method, request.path, _one_line(exc))
        return render(request, "error.html", status=404, message=_one_line(exc))
    except (NoPortsError, OSError) as exc:
        log.warning("%s %s failed: %s", request.method, request.path, _one_line(exc))
        return render(request, "error.html", status=502, message=_one_line(exc))


def create_app(state: UiState, guard: Guard) -> web.Application:
    mws: list[Any] = [middleware(guard), errors_mw]
    app = web.Application(middlewares=mws, client_max_size=2 * MAX_UPLOAD)
    app[STATE_KEY] = state
    app[GUARD_KEY] = guard
    app[JINJA_KEY] = _env()
    app[STATIC_NAMES_KEY] = {
        p.name for p in (resources.files("noports.ui") / "static").iterdir() if p.is_file()
    }
    r = app.router
    r.add_get("/login", login)
    r.add_get("/static/{name}", static)
    r.add_get("/", dashboard)
    r.add_get("/events", events)
    r.add_get("/state", state_json)
    r.add_get("/profiles/new", profile_form)
    r.add_post("/profiles", profile_save)
    r.add_get("/profiles/{uuid}/edit", profile_form)
    r.add_post("/profiles/{uuid}", profile_save)
    r.add_post("/profiles/{uuid}/{action}", profile_action)
    r.add_post("/bulk", bulk)
    r.add_get("/export", export)
    r.add_get("/import", import_page)
    r.add_post("/import", import_post)
    r.add_get("/onboard", onboard_page)
    r.add_post("/onboard/activate", activate)
    r.add_post("/onboard/upload", upload_keys)
    r.add_post("/onboard/enroll", enroll)
    r.add_post("/onboard/demo/{action}", demo_action)
    r.add_post("/atsign", switch)
    r.add_get("/keys/backup", backup_page)
    r.add_post("/keys/backup", backup_download)
    r.add_get("/approvals", approvals)
    r.add_get("/approvals/badge", pending_badge)
    r.add_post("/approvals/otp", make_otp)
    r.add_post("/approvals/spp", make_spp)
    r.add_post("/approvals/{eid}/{action}", approval_action)
    r.add_get("/settings", settings_page)
    r.add_post("/settings", settings_save)
    r.add_get("/logs", logs_page)
    r.add_post("/api/login-url", api_login_url)

    async def on_shutdown(app: web.Application) -> None:
        state.runner.end_streams()

    async def on_cleanup(app: web.Application) -> None:
        await state.close()

    app.on_shutdown.append(on_shutdown)

    app.on_cleanup.append(on_cleanup)
    nplog = logging.getLogger("noports")
    nplog.addHandler(state.logbuf)
    if nplog.getEffectiveLevel() > logging.INFO:
        nplog.setLevel(logging.INFO)

    async def detach(app: web.Application) -> None:
        nplog.removeHandler(state.logbuf)

    app.on_cleanup.append(detach)
    return app

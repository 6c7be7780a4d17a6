"""Run npt tunnels for profiles inside this process (the desktop app's ``runInline()``).

A :class:`Runner` owns any number of :class:`TunnelRun` objects, one per profile uuid. Each run
does what ``npt`` does (:func:`noports.session.client.establish` then
:class:`noports.tunnel.ClientMulti`), and publishes its state to subscribers (the web app's
server-sent events): progress lines, the local address, connections, bytes and bytes/s, uptime,
and with keep-alive the time of the next retry. Set-ups go one or two at a time, as the desktop
app's start queue does ("started together, several of them can time out").

Bytes are counted when a data connection ends (that is what the tunnel keeps), so bytes/s moves
in steps as connections close; the open-connection count is live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from ..at.client import AtClient
from ..errors import ConfigError, NoPortsError
from ..session.client import SessionSpec, establish_any
from ..session.features import npt_required_features
from ..tunnel import ClientMulti
from ..tunnel.net import client_bind_host
from .model import Profile

log = logging.getLogger("noports.profiles.runner")
RETRY_DELAY = 5.0  # npt -K waits 5 s; so did the desktop app's first keep-alive
TUNNEL_TIMEOUT = 24 * 3600.0  # the desktop app's toNptParams(): timeout = 1 day
TICK = 1.0
PARALLEL_SETUPS = 2
CLOSE_TIMEOUT = 5.0  # closing a tunnel's atClient (Stop waits for it)

ClientFactory = Callable[[str], Awaitable[AtClient]]


class PortBusyError(ConfigError):
    """The profile's local port is already taken on this machine."""


def check_local_port(host: str, port: int) -> None:
    """Raise :class:`PortBusyError` when ``host:port`` cannot be bound (0 = any: never busy)."""
    if port == 0:
        return
    bind = client_bind_host(host)
    fam = socket.AF_INET6 if ":" in bind else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((bind, port))
    except OSError as exc:
        raise PortBusyError(f"local port {bind}:{port} is in use ({exc.strerror})") from None
    finally:
        s.close()


class TunnelRun:
    """One profile's tunnel; ``state`` is one of STATES."""

    STATES = ("starting", "connected", "retrying", "stopping", "stopped", "failed")

    def __init__(self, runner: Runner, profile: Profile, client_atsign: str, relay: str) -> None:
        self.runner = runner
        self.profile = profile
        self.client_atsign = client_atsign
        self.relay = relay
        self.state = "starting"
        self.error = ""
        self.progress: deque[str] = deque(maxlen=30)
        self.host = ""
        self.port = 0
        self.mode = ""
        self.connected_at: float | None = None
        self.next_retry: float | None = None
        self.sessions = 0
        self.connections = 0
        self.active = 0
        self.bytes_total = 0
        self.rate: deque[float] = deque(maxlen=60)  # bytes/s, one sample per tick
        self._base = 0  # bytes of earlier sessions
        self._conn_base = 0  # connections of earlier sessions
        self._cm: ClientMulti | None = None
        self._task: asyncio.Task[None] | None = None

    # -- state out -------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        self.progress.append(f"{time.strftime('%H:%M:%S')} {msg}")
        log.info("%s: %s", self.profile.displayName, msg)
        self.runner.publish(self)

    def snapshot(self) -> dict[str, Any]:
        now = time.time()
        url = ""
        if self.state == "connected" and self.port:
            host = "localhost" if self.host in ("127.0.0.1", "localhost") else self.host
            proto = self.profile.connectUriProtocol or (
                "http" if self.profile.remotePort in (80, 8080, 8000) else ""
            )
            if proto in ("http", "https"):
                url = f"{proto}://{host}:{self.port}/"
        hint = ""
        if self.state == "connected" and self.port and self.profile.connectUriProtocol == "ssh":
            user = self.profile.connectUriUsername
            hint = f"ssh -p {self.port} {user + '@' if user else ''}localhost"
        return {
            "uuid": self.profile.uuid,
            "name": self.profile.displayName,
            "state": self.state,
            "error": self.error,
            "progress": list(self.progress)[-5:],
            "host": self.host,
            "port": self.port,
            "address": f"{self.host}:{self.port}" if self.port else "",
            "url": url,
            "hint": hint,
            "mode": self.mode,
            "uptime": int(now - self.connected_at) if self.connected_at else 0,
            "next_retry": int(self.next_retry - now) if self.next_retry else None,
            "sessions": self.sessions,
            "connections": self.connections,
            "active": self.active,
            "bytes": self.bytes_total,
            "rate": list(self.rate),
        }

    # -- the loop --------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._main())

    async def _main(self) -> None:
        p = self.profile
        client: AtClient | None = None
        try:
            self.say(f"connecting {self.client_atsign} to its atServer")
            client = await self.runner.client_factory(self.client_atsign)
            while True:
                try:
                    await self._session(client)
                except (NoPortsError, OSError) as exc:
                    self.error = str(exc)
                    if not p.keepAlive:
                        raise
                    self.say(f"session failed: {exc}")
                else:
                    if not p.keepAlive:
                        self.say("session ended")
                        break
                    self.say("connection closed, will retry")
                self.state, self.connected_at = "retrying", None
                self.next_retry = time.time() + self.runner.retry_delay
                self.runner.publish(self)
                await asyncio.sleep(self.runner.retry_delay)
                self.next_retry = None
                self.say("retrying connection (keep-alive)")
            self.state = "stopped"
        except asyncio.CancelledError:
            self.state = "stopped"
            self.say("stopped")
            raise
        except (NoPortsError, OSError) as exc:
            self.state, self.error = "failed", str(exc)
            self.say(f"failed: {exc}")
        except Exception as exc:  # noqa: BLE001 - shown to the user; the app keeps running
            log.exception("tunnel %s crashed", p.displayName)
            self.state, self.error = "failed", f"internal error: {exc}"
            self.say(self.error)
        finally:
            self.connected_at = self.next_retry = None
            self.active = 0
            if client is not None:  # bounded: Stop must never hang on a stuck atServer
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), CLOSE_TIMEOUT)
            self.runner.publish(self)

    async def _session(self, client: AtClient) -> None:
        p = self.profile
        self.state = "starting"
        self.runner.publish(self)
        spec = SessionSpec(
            kind="npt",
            daemon=p.sshnpdAtsign,
            device=p.deviceName,
            relay=self.relay,
            required=npt_required_features(timeout_s=TUNNEL_TIMEOUT),
            remote_host=p.remoteHost,
            remote_port=p.remotePort,
            timeout_ms=int(TUNNEL_TIMEOUT * 1000),
            # as npt without --ram: escr, payload for a daemon without it; the desktop app's
            # only443 is npt --443 (escr only, the relay's single port)
            relay_auth_mode="escr",
            ram_fallback=not p.only443,
            only443=p.only443,
        )
        async with self.runner.setup_slots:
            est = await establish_any(client, spec, progress=self.say)
            cm = await ClientMulti.open(
                est.relay_host,
                est.relay_port,
                auth_line=est.auth_line,
                crypto=est.crypto,
                local_host=p.localHost,
                local_port=self.port or p.localPort,  # keep-alive reuses the port it had
                timeout=TUNNEL_TIMEOUT,
            )
        self._cm = cm
        self.host, self.port, self.mode = cm.host, cm.port, est.mode
        self.sessions += 1
        self.state, self.error, self.connected_at = "connected", "", time.time()
        self.say(f"listening on {self.host}:{self.port} ({est.mode})")
        ticker = asyncio.get_running_loop().create_task(self._tick(cm))
        try:
            stats = await cm.wait()
        finally:
            ticker.cancel()
            await cm.close()
            self._cm = None
            self._sample(cm)
            self._base += cm.stats.bytes_up + cm.stats.bytes_down
            self._conn_base += cm.stats.connections
        log.info("%s: session ended, %d connections", p.displayName, stats.connections)

    def _sample(self, cm: ClientMulti) -> None:
        total = self._base + cm.stats.bytes_up + cm.stats.bytes_down
        self.rate.append(float(total - self.bytes_total))
        self.bytes_total = total
        self.connections = self._conn_base + cm.stats.connections
        self.active = len(getattr(cm, "_bridges", ()))  # open data connections right now

    async def _tick(self, cm: ClientMulti) -> None:
        while True:
            await asyncio.sleep(self.runner.tick)
            self._sample(cm)
            self.runner.publish(self)

    async def stop(self) -> None:
        t = self._task
        if t is None or t.done():
            return
        self.state = "stopping"
        self.runner.publish(self)
        t.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await t

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()


class Runner:
    """All tunnels of this process; subscribers get a snapshot dict on every change."""

    def __init__(
        self,
        client_factory: ClientFactory,
        *,
        retry_delay: float = RETRY_DELAY,
        tick: float = TICK,
    ) -> None:
        self.client_factory = client_factory
        self.retry_delay = retry_delay
        self.tick = tick
        self.runs: dict[str, TunnelRun] = {}
        self.setup_slots = asyncio.Semaphore(PARALLEL_SETUPS)
        self._subs: set[asyncio.Queue[dict[str, Any]]] = set()

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        q: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=1000)
        self._subs.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[dict[str, Any]]) -> None:
        self._subs.discard(q)

    def publish(self, run: TunnelRun) -> None:
        snap = run.snapshot()
        for q in list(self._subs):
            if q.full():  # a stalled browser tab loses old frames, never blocks a tunnel
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(snap)

    def announce(self, frame: dict[str, Any]) -> None:
        """Push a frame that is not a tunnel snapshot (it carries ``"event"``, e.g. the web
        app's ``badge``) to every subscriber, with the same drop-oldest rule."""
        for q in list(self._subs):
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(frame)

    def end_streams(self) -> None:
        """Tell every subscriber the stream is over (a ``None`` item): used at shutdown."""
        for q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)  # type: ignore[arg-type]

    def get(self, uuid: str) -> TunnelRun | None:
        return self.runs.get(uuid)

    def running(self, uuid: str) -> bool:
        r = self.runs.get(uuid)
        return r is not None and r.running

    def start(self, profile: Profile, client_atsign: str, relay: str) -> TunnelRun:
        """Start a tunnel (checks the local port first); a running one is returned as is."""
        r = self.runs.get(profile.uuid)
        if r is not None and r.running:
            return r
        check_local_port(profile.localHost, profile.localPort)
        r = TunnelRun(self, profile, client_atsign, relay)
        self.runs[profile.uuid] = r
        r.start()
        self.publish(r)
        return r

    async def stop(self, uuid: str) -> None:
        r = self.runs.get(uuid)
        if r is not None:
            await r.stop()

    async def stop_all(self) -> int:
        live = [r for r in self.runs.values() if r.running]
        await asyncio.gather(*(r.stop() for r in live), return_exceptions=True)
        return len(live)

    async def wait_state(self, uuid: str, states: tuple[str, ...], timeout: float) -> TunnelRun:
        """Wait until the run for ``uuid`` is in one of ``states`` (for callers and tests)."""
        q = self.subscribe()

        async def until() -> TunnelRun:
            while True:
                r = self.runs.get(uuid)
                if r is not None and r.state in states:
                    return r
                await q.get()

        try:
            return await asyncio.wait_for(until(), timeout)
        finally:
            self.unsubscribe(q)

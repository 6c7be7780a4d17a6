"""Operator endpoint: ``/metrics`` (Prometheus), ``/healthz``, ``/readyz`` and a status page.

One small HTTP server per daemon, started by ``--metrics HOST:PORT`` (off by default; a bare
port binds loopback, the cloudflared convention). It runs in its own thread on the standard
library's WSGI server, so a slow scrape never blocks the event loop; everything it reports is
read from the loop with ``run_coroutine_threadsafe`` and a deadline:

* ``/healthz`` answers 200 when the event loop runs a no-op within two seconds (the process is
  alive *and* its loop is responsive), 503 otherwise;
* ``/readyz`` asks the daemon's ``ready()`` coroutine (logged in, monitor running, workers up,
  not draining) and answers 200 or 503 with the reason;
* ``/metrics`` is ``prometheus_client``'s text format; daemons register collectors that take one
  snapshot per scrape, so counting costs the data path nothing (the pumps keep their own
  counters and are read at scrape time);
* ``/`` is a read-only, server-rendered status page with no script and no external asset.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import functools
import html
import ipaddress
import json
import logging
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from .errors import ConfigError

log = logging.getLogger("noports.metrics")

LOOP_DEADLINE = 2.0  # seconds the loop may take to answer a probe or a snapshot

Snapshot = dict[str, Any]


def parse_address(text: str) -> tuple[str, int]:
    """``PORT``, ``HOST:PORT`` or ``[V6]:PORT``; a bare port means loopback."""
    t = text.strip()
    host = "127.0.0.1"
    if t.startswith("["):
        end = t.find("]")
        if end < 0 or not t[end + 1 :].startswith(":"):
            raise ConfigError(f"--metrics: bad address {text!r} (expected [V6]:PORT)")
        host, t = t[1:end], t[end + 2 :]
    elif ":" in t:
        host, _, t = t.rpartition(":")
        host = host or "127.0.0.1"
    try:
        port = int(t)
    except ValueError:
        raise ConfigError(f"--metrics: bad port in {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--metrics: port {port} out of range")
    return host, port


def add_option(parser: Any) -> None:
    """The ``--metrics HOST:PORT`` option, the same on every daemon (an argparse parser)."""
    parser.add_argument(
        "--metrics",
        default=None,
        metavar="HOST:PORT",
        help="serve /metrics (Prometheus), /healthz, /readyz and a status page at / on this "
        "address (a bare PORT binds 127.0.0.1; off by default)",
    )


@functools.cache
def _server_classes(v6: bool) -> tuple[Any, Any]:
    """The threaded WSGI server and a quiet handler; imported on first use, so the daemons'
    command lines do not pay for ``wsgiref``/``http.server`` when ``--metrics`` is off."""
    import socketserver
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        allow_reuse_address = True
        address_family = socket.AF_INET6 if v6 else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
            log.debug("metrics %s %s", self.address_string(), format % args)

    return Server, QuietHandler


class Endpoint:
    """The operator HTTP endpoint of one daemon.

    ``ready`` returns ``(ready, reason)``; ``snapshot`` returns the dict the status page and
    the collectors read. Both run on ``loop``.
    """

    def __init__(
        self,
        address: str,
        *,
        loop: asyncio.AbstractEventLoop,
        program: str,
        registry: Any,
        ready: Callable[[], Awaitable[tuple[bool, str]]],
        snapshot: Callable[[], Awaitable[Snapshot]],
    ) -> None:
        self.host, self.port = parse_address(address)
        self.loop = loop
        self.program = program
        self.registry = registry
        self._ready = ready
        self._snapshot = snapshot
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.scrapes = 0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> tuple[str, int]:
        try:
            family = ipaddress.ip_address(self.host).version
        except ValueError:
            family = 4
        cls, handler = _server_classes(family == 6)
        try:
            server = cls((self.host, self.port), handler)
        except OSError as exc:
            raise ConfigError(
                f"--metrics: cannot listen on {self.host}:{self.port}: {exc}"
            ) from None
        server.set_app(self.app)
        self._server = server
        self.port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"{self.program}-metrics", daemon=True
        )
        self._thread.start()
        log.info("%s metrics on http://%s:%d/metrics", self.program, self.host, self.port)
        return self.host, self.port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- loop bridge ------------------------------------------------------------------------

    def on_loop(self, coro: Awaitable[Any]) -> Any:
        fut: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(
            coro,  # type: ignore[arg-type]
            self.loop,
        )
        try:
            return fut.result(LOOP_DEADLINE)
        except BaseException:
            fut.cancel()
            raise

    def snapshot(self) -> Snapshot:
        return dict(self.on_loop(self._snapshot()))

    # -- WSGI -------------------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _reply(start_response, "405 Method Not Allowed", b"GET only\n")
        try:
            if path == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self.scrapes += 1
                body = generate_latest(self.registry)
                return _reply(start_response, "200 OK", body, CONTENT_TYPE_LATEST)
            if path == "/healthz":
                t0 = time.perf_counter()
                self.on_loop(asyncio.sleep(0))
                ms = (time.perf_counter() - t0) * 1000
                return _reply(start_response, "200 OK", f"ok (loop answered in {ms:.1f} ms)\n")
            if path == "/readyz":
                ok, reason = self.on_loop(self._ready())
                status = "200 OK" if ok else "503 Service Unavailable"
                return _reply(start_response, status, (reason or "ready") + "\n")
            if path in ("/", "/status"):
                return _reply(
                    start_response,
                    "200 OK",
                    status_page(self.program, self.snapshot()),
                    "text/html; charset=utf-8",
                )
            if path == "/status.json":
                text = json.dumps(self.snapshot(), default=str, sort_keys=True) + "\n"
                return _reply(start_response, "200 OK", text, "application/json")
        except (TimeoutError, asyncio.TimeoutError, RuntimeError):
            return _reply(start_response, "503 Service Unavailable", "event loop not responding\n")
        except Exception as exc:  # the endpoint must never take the daemon down
            log.warning("metrics %s failed: %s: %s", path, type(exc).__name__, exc)
            return _reply(start_response, "500 Internal Server Error", "internal error\n")
        return _reply(start_response, "404 Not Found", "not found\n")


def _reply(
    start_response: Callable[..., Any],
    status: str,
    body: bytes | str,
    ctype: str = "text/plain; charset=utf-8",
) -> list[bytes]:
    data = body.encode() if isinstance(body, str) else body
    start_response(
        status,
        [
            ("Content-Type", ctype),
            ("Content-Length", str(len(data))),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'"),
        ],
    )
    return [data]


def _fmt_bytes(n: Any) -> str:
    try:
        v = float(n)
    except (TypeError, ValueError):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return str(n)


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    if not rows:
        return f"<p class=empty>{html.escape(empty)}</p>"
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = []
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            if c.startswith("bytes"):
                v = _fmt_bytes(v)
            cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def status_page(program: str, snap: Snapshot) -> str:
    """Server-rendered, read-only status HTML; every value is escaped; no script."""
    title = html.escape(f"{program} {snap.get('atsign', '')}".strip())
    summary = snap.get("summary", {})
    items = "".join(
        f"<dt>{html.escape(str(k))}</dt>"
        f"<dd>{html.escape(str(_fmt_bytes(v) if 'bytes' in k else v))}</dd>"
        for k, v in summary.items()
    )
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta http-equiv="refresh" content="5">',
        f"<title>{title}</title><style>",
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;",
        "padding:.2em .6em;text-align:left}dt{font-weight:600;float:left;width:14em}",
        "dd{margin:0 0 .2em 14em}.empty{color:#777}",
        f"</style></head><body><h1>{title}</h1>",
        f"<dl id=summary>{items}</dl>",
        "<h2>Live sessions</h2>",
        _table(snap.get("sessions", []), snap.get("session_columns", []), "no live sessions"),
    ]
    if "workers" in snap:
        workers = _table(snap["workers"], snap.get("worker_columns", []), "no workers")
        parts += ["<h2>Workers</h2>", workers]
    parts += [
        "<h2>Recent refusals</h2>",
        _table(snap.get("refusals", []), ["time", "requester", "reason"], "no refusals"),
        "</body></html>",
    ]
    return "".join(parts)


# -- the shared half of every daemon's observer ------------------------------------------------

RECENT_REFUSALS = 20


class Observer:
    """What every daemon's observer shares: the registry, the build info, the endpoint's
    start/stop, the recent refusals and the one-snapshot-per-scrape collector.

    A daemon's observer names its ``program`` and ``kind`` (the noun in the build-info help)
    and defines ``ready()``, ``snapshot()`` and ``families(snap)`` (the metric families it
    exports from one snapshot).
    """

    def __init__(self, program: str, kind: str) -> None:
        from prometheus_client import CollectorRegistry

        self.program = program
        self.kind = kind
        self.registry = CollectorRegistry(auto_describe=False)
        self.refusals: collections.deque[dict[str, str]] = collections.deque(maxlen=RECENT_REFUSALS)
        self.started = time.time()
        self.endpoint: Endpoint | None = None
        self.registry.register(_Collector(self))  # type: ignore[arg-type]  # duck-typed Collector

    def start(self, address: str, loop: asyncio.AbstractEventLoop | None = None) -> tuple[str, int]:
        """Serve on ``address``; ``loop`` defaults to the running one."""
        self.endpoint = Endpoint(
            address,
            loop=loop or asyncio.get_running_loop(),
            program=self.program,
            registry=self.registry,
            ready=self.ready,
            snapshot=self.snapshot,
        )
        return self.endpoint.start()

    def close(self) -> None:
        if self.endpoint is not None:
            self.endpoint.close()
            self.endpoint = None

    def note_refusal(self, requester: str, reason: str) -> None:
        self.refusals.appendleft(
            {"time": time.strftime("%H:%M:%S"), "requester": requester, "reason": reason}
        )

    def uptime(self) -> int:
        return int(time.time() - self.started)

    async def ready(self) -> tuple[bool, str]:
        return True, "ready"

    async def snapshot(self) -> Snapshot:
        return {}

    def families(self, snap: Snapshot) -> Iterable[Any]:
        return ()


class _Collector:
    """One snapshot per scrape, turned into the build info and the observer's families."""

    def __init__(self, obs: Observer) -> None:
        self.obs = obs

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import InfoMetricFamily

        from . import __version__, _compat

        ep = self.obs.endpoint
        snap = ep.snapshot() if ep is not None else {}
        doc = f"Version and implementation of this {self.obs.kind}"
        info = InfoMetricFamily("noports_build", doc)
        info.add_metric([], {"version": __version__, "implementation": _compat.implementation()})
        yield info
        yield from self.obs.families(snap)


def client_ready(client: Any, monitor_running: bool, stopping: bool = False) -> tuple[bool, str]:
    """Readiness of a daemon that lives on one atServer connection and its monitor."""
    if stopping:
        return False, "stopping"
    if client is None or getattr(client, "_closed", False):
        return False, "not logged in to the atServer"
    if not monitor_running:
        return False, "monitor not running"
    return True, "ready"


def gauge(name: str, doc: str, value: float) -> Any:
    from prometheus_client.core import GaugeMetricFamily

    return GaugeMetricFamily(name, doc, value=value)


def counter(name: str, doc: str, value: float) -> Any:
    from prometheus_client.core import CounterMetricFamily

    c = CounterMetricFamily(name, doc)
    c.add_metric([], value)
    return c


def labelled(
    name: str,
    doc: str,
    label: str,
    values: Mapping[str, float],
    keys: Iterable[str] = (),
    *,
    kind: str = "counter",
) -> Any:
    """A counter (or ``kind="gauge"``) family with one label: ``keys`` always (0 if absent),
    then the other keys of ``values`` in sorted order."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
    fam = cls(name, doc, labels=[label])
    fixed = list(keys)
    for key in fixed + sorted(k for k in values if k not in fixed):
        fam.add_metric([str(key)], values.get(key, 0))
    return fam

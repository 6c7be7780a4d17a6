"""Relay auto-selection (latest spec section 1): which relay a session uses when ``-r`` is empty
or a comma list.

The official rule (noports_core ``RelaySelector``, sshnoports 5.15.1):

1. candidates: the ``-r`` list, or the keys of the standard list
   (``https://atsign-foundation.github.io/noports/<rootDomain>/standard_relays.json``);
2. ``discover_request.sshrvd`` to every candidate in parallel (``{"items":["ipaddr","port"]}``,
   ttln 10 s); a relay that does not answer within 10 s is dropped;
3. the client measures TCP-connect latency to each answer's ``ipaddr:port`` (5 s timeout, -1
   when unreachable or ``port`` is null) while the daemon is asked for its own
   (``relay_latency_request.<dev>``, the answers as JSON); the daemon's answer is awaited at
   most 20 s, then the client's figures alone decide;
4. the lowest average of both latencies wins (client-only when the daemon gave none).

Beyond the official rule:

* once one relay has answered, the others get :data:`DISCOVER_GRACE` more seconds, not the
  full 10 (a dead relay costs 2 s, not 10);
* the daemon's ping is sent alongside; a daemon that says it cannot answer latency requests
  (the C daemon ``c0.1.0``, Dart daemons before 5.15.0) is not waited for;
* our relays add their load (``sessions``/``maxSessions``) to the answer: a full relay is
  skipped while another has room, and among relays that no latency probe can reach (no
  single-port listener, ``port`` null) the least loaded, then the quickest to answer, wins
  instead of failing with "No reachable RV found".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
from typing import Any

from ..at.client import AtClient
from ..errors import ConfigError, NoPortsError, PeerTimeoutError
from ..names import InvalidNameError, validate_atsign
from ..record import Record
from .features import parse_ping_response

log = logging.getLogger("noports.session.relays")

STANDARD_RELAYS_URL = "https://atsign-foundation.github.io/noports/{root}/standard_relays.json"
URL_ENV = "NOPORTS_STANDARD_RELAYS_URL"
PROGRESS = (
    "No relay supplied, will find the lowest-latency relay available; "
    "this may take up to 25 seconds"
)
DISCOVER_TIMEOUT = 10.0
DISCOVER_GRACE = 2.0
DEVICE_LATENCY_TIMEOUT = 20.0
PROBE_TIMEOUT = 5.0
MAX_CANDIDATES = 16
NOTIFY_TTLN_MS = 60_000
DISCOVER_TTLN_MS = 10_000


class NoRelayError(PeerTimeoutError):
    """No candidate relay answered (official: ``No RV servers could be resolved``)."""


def parse_relay_option(value: str | None) -> tuple[str, list[str] | None]:
    """``-r`` as given: ``("@r", None)`` for one relay; ``("", [..])`` for a comma list;
    ``("", None)`` when empty (use the standard list). Spaces are ignored."""
    text = "".join((value or "").split())
    if "," not in text:
        if not text:
            return "", None
        return validate_atsign(text, add_at=True), None
    out: list[str] = []
    for part in text.split(","):
        if not part:
            continue
        try:
            a = validate_atsign(part, add_at=True)
        except InvalidNameError as exc:
            raise ConfigError(f"-r: {exc}") from None
        if a not in out:
            out.append(a)
    if not out:
        return "", None
    if len(out) > MAX_CANDIDATES:
        raise ConfigError(f"-r: at most {MAX_CANDIDATES} relays")
    return "", out


def standard_relays_url(root: str | None) -> str:
    if os.environ.get(URL_ENV):
        return os.environ[URL_ENV]
    host = (root or "root.atsign.org").removeprefix("proxy:").split(":", 1)[0]
    return STANDARD_RELAYS_URL.format(root=host)


def fetch_standard_relays(url: str, timeout: float = 10.0) -> list[str]:
    """The keys of ``standard_relays`` in the list at ``url`` (blocking; run in a thread)."""
    import urllib.request  # only when selecting from the standard list (start-up cost)

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - https or test
            if r.status != 200:
                raise NoRelayError(f"Unexpected status {r.status} fetching RV list from {url}")
            body = json.loads(r.read(1 << 20).decode("utf-8"))
    except NoRelayError:
        raise
    except (OSError, ValueError) as exc:
        raise NoRelayError(f"Failed to fetch the relay list from {url}: {exc}") from None
    relays = body.get("standard_relays") if isinstance(body, dict) else None
    if not isinstance(relays, dict) or not relays:
        raise NoRelayError(f"the relay list at {url} has no standard_relays")
    out = []
    for k in list(relays)[:MAX_CANDIDATES]:
        with contextlib.suppress(InvalidNameError):
            out.append(validate_atsign(str(k), add_at=True))
    return out


async def probe_latency(entry: Any, timeout: float = PROBE_TIMEOUT) -> int:
    """Milliseconds to TCP-connect to ``{"ipaddr": host, "port": n}`` (then closed), or -1
    when the entry has no usable address or port (official: ``port`` null means -1) or the
    connect fails within ``timeout``."""
    if not isinstance(entry, dict):
        return -1
    host, port = entry.get("ipaddr"), entry.get("port")
    if not isinstance(host, str) or not host or len(host) > 255:
        return -1
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        return -1
    t0 = time.perf_counter()
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError, ValueError, UnicodeError):
        return -1
    ms = int((time.perf_counter() - t0) * 1000)
    w.close()
    with contextlib.suppress(OSError):
        await w.wait_closed()
    return ms


class Choice(Record):
    """The outcome, with the figures behind it (for ``-v`` and tests)."""

    __slots__ = ("relay", "reason", "answered", "client_ms", "device_ms", "answer_ms")
    relay: str
    reason: str
    answered: dict[str, dict[str, Any]]
    client_ms: dict[str, int]
    device_ms: dict[str, int] | None
    answer_ms: dict[str, float]

    def __init__(
        self,
        relay: str,
        reason: str,
        answered: dict[str, dict[str, Any]] | None = None,
        client_ms: dict[str, int] | None = None,
        device_ms: dict[str, int] | None = None,
        answer_ms: dict[str, float] | None = None,
    ) -> None:
        self.relay = relay
        self.reason = reason
        self.answered = {} if answered is None else answered
        self.client_ms = {} if client_ms is None else client_ms
        self.device_ms = device_ms
        self.answer_ms = {} if answer_ms is None else answer_ms


def _load(info: dict[str, Any]) -> float | None:
    s, m = info.get("sessions"), info.get("maxSessions")
    if isinstance(s, int) and isinstance(m, int) and not isinstance(s, bool) and m > 0:
        return s / m
    return None


def choose(
    answered: dict[str, dict[str, Any]],
    client_ms: dict[str, int],
    device_ms: dict[str, int] | None,
    answer_ms: dict[str, float] | None = None,
) -> tuple[str, str]:
    """(relay, reason) by the official rule plus our load and reachability fallbacks."""
    if not answered:
        raise NoRelayError("No RV servers could be resolved")
    pool = list(answered)
    full = [r for r in pool if (_load(answered[r]) or 0.0) >= 1.0]
    if full and len(full) < len(pool):
        pool = [r for r in pool if r not in full]  # a full relay only if all are
    best: str | None = None
    best_v = float("inf")
    if device_ms:
        for r in device_ms:  # the daemon's map order decides ties, as official
            d, c = device_ms.get(r, -1), client_ms.get(r, -1)
            if r in pool and d >= 0 and c >= 0 and (d + c) / 2 < best_v:
                best, best_v = r, (d + c) / 2
        if best is not None:
            return best, f"lowest average latency ({best_v:g} ms)"
    for r in pool:
        c = client_ms.get(r, -1)
        if c >= 0 and c < best_v:
            best, best_v = r, c
    if best is not None:
        return best, f"lowest client latency ({best_v:g} ms)"
    answer_ms = answer_ms or {}
    best = min(
        pool,
        key=lambda r: (
            _load(answered[r]) if _load(answered[r]) is not None else 2.0,
            answer_ms.get(r, float("inf")),
        ),
    )
    return best, "no relay reachable by a latency probe: least loaded, quickest to answer"


async def select_relay(
    client: AtClient,
    *,
    daemon: str,
    device: str,
    candidates: list[str] | None,
    root: str | None,
    progress: Any = None,
    discover_timeout: float = DISCOVER_TIMEOUT,
    device_timeout: float = DEVICE_LATENCY_TIMEOUT,
) -> Choice:
    """Run the selection; raises :class:`NoRelayError` when no relay answers."""
    if progress is not None:
        progress(PROGRESS)
    if candidates is None:
        url = standard_relays_url(root)
        candidates = await asyncio.get_running_loop().run_in_executor(
            None, fetch_standard_relays, url
        )
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    answered: dict[str, dict[str, Any]] = {}
    answer_ms: dict[str, float] = {}
    first = asyncio.Event()
    all_in = asyncio.Event()
    latency: asyncio.Future[dict[str, int] | None] = loop.create_future()
    ping: asyncio.Future[str] = loop.create_future()
    want = set(candidates)
    rx = (
        r"discover_response\.sshrvd@|"
        rf"relay_latency_response\.{re.escape(device)}\.sshnp|heartbeat\.{re.escape(device)}\.sshnp"
    )
    mon = client.monitor(rx)
    try:
        await mon.started(10.0)

        async def route() -> None:
            while True:
                n = await mon.next()
                frm = (n.from_atsign or "").lower()
                key = n.short_key.lower()
                if key == "discover_response.sshrvd" and frm in want and frm not in answered:
                    try:
                        info = json.loads(n.value or "")
                    except ValueError:
                        continue
                    if isinstance(info, dict):
                        answered[frm] = info
                        answer_ms[frm] = round((loop.time() - t0) * 1000, 1)
                        first.set()
                        if len(answered) == len(want):
                            all_in.set()
                elif frm == daemon and key == f"relay_latency_response.{device}.sshnp":
                    if not latency.done():
                        try:
                            raw = json.loads(n.value or "")
                            ok = isinstance(raw, dict) and all(
                                isinstance(v, int) and not isinstance(v, bool) for v in raw.values()
                            )
                        except ValueError:
                            ok = False
                        latency.set_result({str(k): v for k, v in raw.items()} if ok else None)
                elif frm == daemon and key == f"heartbeat.{device}.sshnp" and not ping.done():
                    ping.set_result(n.value or "")

        pump = loop.create_task(route())
        try:
            body = json.dumps({"items": ["ipaddr", "port"]}, separators=(",", ":"))
            sends = [
                client.notify(
                    r, "discover_request", body, namespace="sshrvd", ttln_ms=DISCOVER_TTLN_MS
                )
                for r in candidates
            ]
            sends.append(
                client.notify(
                    daemon, f"ping.{device}", "ping", namespace="sshnp", ttln_ms=NOTIFY_TTLN_MS
                )
            )
            results = await asyncio.gather(*sends, return_exceptions=True)
            for r, res in zip([*candidates, daemon], results, strict=True):
                if isinstance(res, BaseException):
                    log.warning("could not notify %s: %s", r, res)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(first.wait(), discover_timeout)
            if not answered:
                raise NoRelayError(
                    "No RV servers could be resolved (no relay of "
                    f"{', '.join(candidates)} answered within {discover_timeout:g} s)"
                )
            left = max(0.0, discover_timeout - (loop.time() - t0))
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(all_in.wait(), min(DISCOVER_GRACE, left))
            rv_map = dict(answered)
            for r in candidates:
                if r not in rv_map:
                    log.warning("relay %s did not answer the discover request: skipped", r)
            with contextlib.suppress(NoPortsError, OSError):
                await client.notify(
                    daemon,
                    f"relay_latency_request.{device}",
                    json.dumps(rv_map, separators=(",", ":")),
                    namespace="sshnp",
                    ttln_ms=NOTIFY_TTLN_MS,
                )
            probes = [await probe_latency(rv_map[r]) for r in rv_map]  # sequential, as official
            client_ms = dict(zip(rv_map, probes, strict=True))
            device_ms = await _device_latency(loop, latency, ping, device_timeout, t0)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
    finally:
        await mon.close()
    relay, reason = choose(rv_map, client_ms, device_ms, answer_ms)
    log.info(
        "selected relay %s: %s (answers %s, client ms %s, device ms %s)",
        relay,
        reason,
        rv_map,
        client_ms,
        device_ms,
    )
    return Choice(relay, reason, rv_map, client_ms, device_ms, answer_ms)


async def _device_latency(
    loop: asyncio.AbstractEventLoop,
    latency: asyncio.Future[dict[str, int] | None],
    ping: asyncio.Future[str],
    timeout: float,
    t0: float,
) -> dict[str, int] | None:
    """The daemon's figures, None after ``timeout`` (official fallback) or as soon as its
    ping reply shows it never answers latency requests."""
    deadline = loop.time() + timeout
    judged = False
    while not latency.done():
        if ping.done() and not judged:
            judged = True
            try:
                info = parse_ping_response(ping.result())
            except NoPortsError:
                info = None
            if info is not None and not info.answers_relay_latency():
                log.info(
                    "the device daemon (version %s) does not answer latency requests", info.version
                )
                return None
        left = deadline - loop.time()
        if left <= 0:
            log.info("no relay latencies from the device within %g s: client figures only", timeout)
            return None
        waiters: set[asyncio.Future[Any]] = {asyncio.shield(latency)}
        if not judged:
            waiters.add(asyncio.shield(ping))
        done, pending = await asyncio.wait(
            waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED
        )
        for w in pending:
            w.cancel()
    return latency.result()

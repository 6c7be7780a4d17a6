"""The srvd control process: atProtocol requests in, sessions placed on workers, replies out.

One :class:`~noports.at.client.AtClient` monitor receives every notification whose key
contains ``sshrvd`` (spec 4.2). Each request is handled in its own task (bounded by
``MAX_INFLIGHT``): decide (:mod:`.requests`), fetch ``public:publickey@<atSign>`` for each
authenticating side (the client's cache, re-fetched after ``PUBLIC_KEY_TTL``), create the
session on the least-loaded worker (:mod:`.pool`), and notify the sender R2:
key ``<sid>`` in namespace ``sshrvd``, value ``<ip>,<portA>,<portB>,<rvdNonce>`` (``null`` for
legacy requests) or the JSON form, ttl 10 s, ttln 1 min. A refused request gets a negative
acknowledgement instead of silence: key ``nack.<sid>`` in ``sshrvd``, value = the reason
(spec 10), at most ``NACK_BURST`` per sender per ``NACK_WINDOW`` seconds.

Stop (SIGTERM/SIGINT): new requests are refused with "relay is shutting down", live
sessions get ``drain_seconds`` to finish, then workers close everything and are joined.
A second signal skips the rest of the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..at.client import AtClient
from ..at.commands import plookup
from ..at.config import DEFAULT_ROOT_PORT
from ..at.protocol import Notification
from ..crypto import escr, rsa
from ..crypto.atkeys import AtKeys, default_keys_path
from ..errors import AtError, LocalError, NoPortsError, PortsExhaustedError
from ..log import escape
from ..relay import SessionSpec, raise_nofile_limit
from ..sdnotify import notify as notify_systemd
from ..sdnotify import watchdog
from ..session import mutex as session_mutex
from . import grant as grants
from . import requests as rq
from .observe import Observer, refusal_fields, session_fields
from .pool import WorkerGone, WorkerHandle, WorkerPool

log = logging.getLogger("noports.srvd")  # official "shout" lines: always logged
vlog = logging.getLogger("noports.srvd.detail")  # -v: session parameters and the like

MONITOR_REGEX = "sshrvd@"
REPLY_TTL_MS = 10_000
REPLY_TTLN_MS = 60_000
PUBLIC_KEY_TTL = 300.0
MAX_INFLIGHT = 64
NACK_BURST = 10
NACK_WINDOW = 10.0


@dataclass
class Settings:
    """Validated srvd configuration (the CLI builds it; see ``noports.cli.srvd``)."""

    atsign: str
    ip: str
    keys_file: str | None = None
    managers: frozenset[str] | None = None  # None = open
    root: str | None = None
    ca_file: str | None = None
    bind: str = "0.0.0.0"
    port_range: tuple[int, int] | None = None
    workers: int = 1
    max_sessions: int = 10_000
    per_requester: int = 50
    require_auth: bool = False
    json_response: bool = False
    drain_seconds: float = 30.0
    snoop: bool = False
    limits: dict[str, Any] = field(default_factory=dict)
    log_level: int = logging.WARNING
    log_format: str = "text"
    impl: str | None = None
    loop_kind: str | None = None
    metrics: str | None = None  # --metrics HOST:PORT (off when None)
    single_port: int | None = None  # --443: the single-port listener's bind port
    single_advertise: int = 443  # the port only443 replies name (official: always 443)
    refuse_payload_auth: bool = False  # --refuse-payload-auth: escr on both sides or nothing


class Srvd:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.admission = rq.Admission(
            managers=settings.managers,
            require_auth=settings.require_auth,
            max_sessions=settings.max_sessions,
            per_requester=settings.per_requester,
        )
        self.client: AtClient | None = None
        self.pool: WorkerPool | None = None
        self.results: Counter[str] = Counter()
        self.sessions: dict[str, tuple[WorkerHandle, _Live, float]] = {}
        self._stop = asyncio.Event()
        self._signals = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT)
        self._nacks: dict[str, list[float]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._stale_keys: set[str] = set()
        self.monitor_running = False
        self.observer: Observer | None = None
        self.reloader: Callable[[], Settings] | None = None  # SIGHUP: settings as they are now
        self._event_logging: dict[str, tuple[str, str]] = {}
        self._no_nack: set[str] = set()  # live requests from clients without multipleAcksOk

    # -- lifecycle -------------------------------------------------------------------------

    def request_stop(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info(
                "srvd %s stopping: refusing new sessions, draining %d live session(s) "
                "for up to %gs",
                self.s.atsign,
                len(self.sessions),
                self.s.drain_seconds,
            )
            self.admission.draining = True
        else:
            log.warning("second stop signal: closing all sessions now")
            self._idle.set()
        self._stop.set()

    def _root(self) -> str | None:
        return self.s.root

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGUSR1, self._stats_soon)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        fd_limit = raise_nofile_limit()
        if self.s.snoop:
            log.warning("snoop is ON: relayed bytes are written to the log (privacy!)")
        self.pool = WorkerPool(
            self.s.workers,
            self._worker_config(),
            on_closed=self._on_closed,
            on_lost=self._on_lost,
            loop_kind=self.s.loop_kind,
            on_lookup=self._on_lookup,
        )
        monitor = None
        consumer: asyncio.Task[None] | None = None
        connect: asyncio.Task[AtClient] | None = None
        try:
            path = self.s.keys_file or default_keys_path(self.s.atsign)
            # fail fast, before any worker starts; like ssh, refuse a group/world-readable file
            keys = AtKeys.load(path, self.s.atsign, strict_mode=True)
            connect = loop.create_task(
                AtClient.connect(
                    self.s.atsign, keys=keys, root=self._root(), ca_file=self.s.ca_file
                )
            )
            if self.s.metrics:
                self.observer = Observer(self)
                self.observer.start(self.s.metrics)
            if not await self._unless_stopped(self.pool.start()):
                return 0
            if not await self._unless_stopped(asyncio.shield(connect)):
                return 0
            self.client = connect.result()
            self.client.public_key_ttl = PUBLIC_KEY_TTL
            monitor = self.client.monitor(MONITOR_REGEX)
            if not await self._unless_stopped(monitor.started(30.0)):
                return 0
            self.monitor_running = True
            notify_systemd("READY=1", f"STATUS=relay {self.s.atsign} ready")
            log.info(
                "srvd %s ready: monitor started (%d worker(s), bind %s, ports %s, fd limit %s)",
                self.s.atsign,
                self.s.workers,
                self.s.bind,
                f"{self.s.port_range[0]}-{self.s.port_range[1]}" if self.s.port_range else "any",
                fd_limit,
            )
            consumer = loop.create_task(self._consume(monitor))
            dog = loop.create_task(watchdog())
            self._tasks.add(dog)
            dog.add_done_callback(self._tasks.discard)
            stop = loop.create_task(self._stop.wait())
            done, _ = await asyncio.wait({consumer, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if consumer in done:
                consumer.result()  # the monitor ended: raise its error
                raise LocalError("notification monitor ended")
            self.monitor_running = False
            notify_systemd("STOPPING=1")
            await self._drain()
            return 0
        finally:
            self.monitor_running = False
            if self.observer is not None:
                self.observer.close()
            if connect is not None:
                connect.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    made = await connect  # also retrieves an exception nobody awaited
                    if self.client is None:
                        await made.close()
            if consumer is not None:
                consumer.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await consumer
            for t in list(self._tasks):
                t.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=2.0)
            if monitor is not None:
                await monitor.close()
            await self.pool.close()
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.close()
            log.info("srvd %s stopped: requests %s", self.s.atsign, dict(self.results) or "none")

    async def _unless_stopped(self, aw: Any) -> bool:
        """Await a start-up step; False (step cancelled) if a stop signal came first."""
        step = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if step.done():
            step.result()
            return True
        step.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await step
        log.info("srvd %s stopped during start-up", self.s.atsign)
        return False

    async def _drain(self) -> None:
        deadline = time.monotonic() + self.s.drain_seconds
        while self.sessions and self._signals < 2:
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("drain time is up: closing %d live session(s)", len(self.sessions))
                return
            self._idle.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(left, 1.0))
        log.info("all sessions have ended")

    # settings that a reload cannot change in a running relay
    RESTART_ONLY = (
        "atsign", "ip", "keys_file", "root", "ca_file", "bind", "port_range", "workers",
        "snoop", "impl", "loop_kind",
    )

    def reload(self) -> bool:
        """SIGHUP: re-read the configuration, validate it, apply what can change live.

        A bad configuration is reported and the running one kept; live sessions are never
        touched (new limits apply to sessions created from now on)."""
        if self.reloader is None:
            log.warning("SIGHUP: no configuration source to reload from; ignored")
            return False
        try:
            new = self.reloader()
        except (NoPortsError, ValueError, OSError) as exc:
            log.error("configuration reload failed, keeping the running configuration: %s", exc)
            return False
        old = self.s
        kept = [n for n in self.RESTART_ONLY if getattr(new, n) != getattr(old, n)]
        for name in kept:
            log.warning("reload: %s changed; it takes effect after a restart", name)
        changes = {
            n: getattr(new, n)
            for n in ("managers", "max_sessions", "per_requester", "require_auth",
                      "json_response", "drain_seconds", "limits", "log_level", "metrics")
            if getattr(new, n) != getattr(old, n)
        }
        a = self.admission
        a.managers, a.require_auth = new.managers, new.require_auth
        a.max_sessions, a.per_requester = new.max_sessions, new.per_requester
        logging.getLogger("noports.srvd.detail").setLevel(new.log_level)
        if "limits" in changes and self.pool is not None:
            self.pool.config["limits"] = new.limits
            for h in list(self.pool.workers.values()):
                h.send({"op": "limits", "limits": new.limits})
        if "metrics" in changes:
            if self.observer is not None:
                self.observer.close()
                self.observer = None
            if new.metrics:
                self.observer = Observer(self)
                self.observer.start(new.metrics)
        self.s = dataclasses.replace(new, **{n: getattr(old, n) for n in self.RESTART_ONLY})
        log.info(
            "configuration reloaded: %s",
            ", ".join(sorted(changes)) or "no change",
            extra={"fields": {"event": "config_reloaded", "changed": sorted(changes),
                              "restart_needed": kept}},
        )
        return True

    def _stats_soon(self) -> None:
        task = asyncio.get_running_loop().create_task(self.log_stats())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def log_stats(self) -> None:
        """SIGUSR1: one line per worker and one for the control process."""
        if self.pool is None:
            return
        for row in await self.pool.stats():
            log.info(
                "stats worker %d (pid %s): %s sessions, %s pairs, %s pre-auth sockets, "
                "%s shed pre-auth",
                row["index"],
                row.get("pid"),
                row.get("sessions"),
                row.get("pairs"),
                row.get("preauth"),
                row.get("preauth_refused"),
            )
        log.info(
            "stats: %d live sessions, %d requesters, requests %s",
            len(self.sessions),
            len(self.admission.per),
            dict(self.results) or "none",
        )

    def _worker_config(self) -> dict[str, Any]:
        return {
            "bind": self.s.bind,
            "ip": self.s.ip,
            "port_range": list(self.s.port_range) if self.s.port_range else None,
            "limits": self.s.limits,
            "impl": self.s.impl,
            "snoop": self.s.snoop,
            "log_level": self.s.log_level,
            "log_format": self.s.log_format,
            "single_port": self.s.single_port,
        }

    # -- worker events ---------------------------------------------------------------------

    def _on_closed(self, h: WorkerHandle, msg: dict[str, Any]) -> None:
        sid = str(msg.get("sid"))
        self._event_logging.pop(sid.lower(), None)
        self._no_nack.discard(sid.lower())
        entry = self.sessions.pop(sid.lower(), None)
        self.admission.release(sid)
        if entry is not None:
            _, live, started = entry
            self.results["closed_" + str(msg.get("outcome"))] += 1
            failures = msg.get("failures") or {}
            if not msg.get("pairs") and isinstance(failures, dict) and failures.get("bad_sig"):
                # signatures failed and nothing paired: the peer may have rotated its keys,
                # so the next request re-fetches instead of trusting the cache (12.1 #9)
                self._stale_keys.update({live.atsign_a, live.atsign_b})
            log.info(
                "Finished session %s for %s to %s using ports [%s, %s] (%s: %s pairs, "
                "%s bytes A->B, %s bytes B->A, %s auth failures)",
                sid,
                live.atsign_a,
                live.atsign_b,
                live.port_a,
                live.port_b,
                msg.get("outcome"),
                msg.get("pairs"),
                msg.get("bytes_ab"),
                msg.get("bytes_ba"),
                msg.get("auth_failed"),
                extra={"fields": session_fields(sid, live, msg, time.monotonic() - started)},
            )
        if not self.sessions:
            self._idle.set()

    def _on_lost(self, h: WorkerHandle, sids: set[str]) -> None:
        for sid in sids:
            self.sessions.pop(sid.lower(), None)
            self._event_logging.pop(sid.lower(), None)
            self._no_nack.discard(sid.lower())
            self.admission.release(sid)
            log.warning("session %s lost with worker %d", sid, h.index)
        self.results["lost"] += len(sids)
        if not self.sessions:
            self._idle.set()

    # -- requests --------------------------------------------------------------------------

    async def _consume(self, monitor: Any) -> None:
        loop = asyncio.get_running_loop()
        async for n in monitor:
            await self._inflight.acquire()
            task = loop.create_task(self._handle(n))
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._inflight.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("request handler failed: %r", task.exception())

    async def _handle(self, n: Notification) -> None:
        if n.operation != "update":
            return
        kind = rq.classify(n.short_key)
        if kind is None:
            vlog.info("ignoring %s from %s", escape(n.short_key, 120), escape(n.from_atsign, 80))
            return
        if kind == "discover":
            await self._discover(n)
            return
        if kind == "sessions":
            self._session_message(n)
            return
        t0 = time.perf_counter()
        sender = n.from_atsign
        log.info("New session request from %s", escape(sender, 80))
        try:
            grant = self.admission.check(kind, n.value, sender)
        except rq.Refusal as refusal:
            await self._refuse(sender, refusal)
            return
        req = grant.request
        if not req.multiple_acks_ok:  # official: nacks only to clients that take several answers
            self._no_nack.add(grant.session_id)
        if grants.needs_mutex(grant) and self.client is not None:
            if not await session_mutex.acquire(self.client, grant.session_id, rq.NAMESPACE):
                self.admission.release(grant.session_id)
                self._no_nack.discard(grant.session_id)
                self.results["mutex_lost"] += 1
                log.info(
                    "session %s is served by another srvd instance: staying silent",
                    grant.session_id,
                )
                return
        try:
            await self._grant(grants.plan(grant, n.value, self._policy()), t0)
        except rq.Refusal as refusal:
            self.admission.release(grant.session_id)
            await self._refuse(grant.sender, refusal)

    def _policy(self) -> grants.Policy:
        return grants.Policy(
            ip=self.s.ip,
            json_response=self.s.json_response,
            refuse_payload_auth=self.s.refuse_payload_auth,
            single_port=self.s.single_port is not None,
            single_advertise=self.s.single_advertise,
        )

    async def _prefetch(self, wanted: tuple[str, ...]) -> dict[str, str]:
        """Fetch these signing keys (the session's listed ones, :attr:`grants.Plan.prefetch`)."""
        out: dict[str, str] = {}
        for uri, value in zip(
            wanted, await asyncio.gather(*(self._plookup(u) for u in wanted)), strict=True
        ):
            if value:
                out[uri] = value
        return out

    async def _plookup(self, uri: str) -> str | None:
        """A signing key's published value, or None (missing, refused, or not a key URI)."""
        if self.client is None or not escr.valid_key_uri(uri) or not uri.startswith("public:"):
            return None
        try:
            text = await self.client.execute(plookup(uri[len("public:") :]))
        except (AtError, NoPortsError, OSError) as exc:
            vlog.info("signing key %s: %s", escape(uri, 200), exc)
            return None
        return text if text and text != "null" else None

    def _on_lookup(self, h: WorkerHandle, msg: dict[str, Any]) -> None:
        async def answer() -> None:
            key = msg.get("key")
            value = await self._plookup(key) if isinstance(key, str) else None
            with contextlib.suppress(WorkerGone, ConnectionError, OSError):
                h.send({"op": "looked_up", "rid": msg.get("rid"), "value": value})

        task = asyncio.get_running_loop().create_task(answer())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _grant(self, p: grants.Plan, t0: float) -> None:
        g, req = p.grant, p.grant.request
        assert self.client is not None and self.pool is not None
        owner_a, owner_b = p.key_owners
        keys = (await self._public_key(p, owner_a), await self._public_key(p, owner_b))
        prefetched = await self._prefetch(p.prefetch) if p.escr else None
        spec = SessionSpec(**grants.session_params(p, keys, prefetched))
        vlog.info(*grants.params_line(p))
        try:
            h, made = await self.pool.create_session(spec)
        except PortsExhaustedError as exc:
            raise grants.create_refused(p, exc, ports_exhausted=True) from None
        except (WorkerGone, LocalError) as exc:
            raise grants.create_refused(p, exc, ports_exhausted=False) from None
        ans = grants.answer(p, made, self._policy())
        reply = ans.reply
        rec = _Live(g.atsign_a, g.atsign_b, reply.port_a, reply.port_b)
        self.sessions[g.session_id] = (h, rec, time.monotonic())
        self._idle.clear()
        log.info(
            "Starting session %s for %s to %s using ports (%d, %d) on worker %d",
            g.session_id,
            g.atsign_a,
            g.atsign_b,
            reply.port_a,
            reply.port_b,
            h.index,
        )
        log.info("Sending response data for requested session %s : [%s]", g.session_id, ans.shown)
        try:
            await self.client.notify(
                g.sender,
                req.session_id,
                ans.value,
                namespace=rq.NAMESPACE,
                ttl_ms=REPLY_TTL_MS,
                ttln_ms=REPLY_TTLN_MS,
            )
        except (NoPortsError, OSError) as exc:
            log.error(
                "could not send the response for session %s to %s: %s; closing it",
                g.session_id,
                g.sender,
                exc,
            )
            self.pool.cancel(h, req.session_id)
            self.results[rq.ERROR] += 1
            return
        self.results["granted"] += 1
        if self.observer is not None:
            self.observer.setup_seconds.observe(time.perf_counter() - t0)
        vlog.info("session %s answered in %.1f ms", g.session_id, (time.perf_counter() - t0) * 1000)

    async def _public_key(self, p: grants.Plan, who: str | None) -> rsa.PublicKey | None:
        """A side's public key for its payload-mode auth line (None: not needed); re-fetched
        once the key a session used failed."""
        if who is None:
            return None
        assert self.client is not None
        try:
            stale = who in self._stale_keys
            key = await self.client.public_key(who, refresh=stale)
            self._stale_keys.discard(who)
            return key
        except (AtError, NoPortsError, OSError) as exc:
            raise grants.key_refused(p, who, exc) from None

    def _session_message(self, n: Notification) -> None:
        """``logging.<sid>.sessions``: the session's event logging config, accepted once and
        only from a participant (latest spec 8.2); recorded and named in the session's log
        lines. (The official event notification format is not known here: none is sent.)"""
        kind_sid = rq.session_message(n.short_key)
        assert kind_sid is not None
        kind, sid = kind_sid
        sender = n.from_atsign
        entry = self.sessions.get(sid)
        if kind != "logging" or entry is None:
            vlog.info("ignoring %s from %s", escape(n.short_key, 120), escape(sender, 80))
            return
        _h, live, _t = entry
        if sender not in (live.atsign_a, live.atsign_b):
            log.warning("%s is not a participant in session %s", escape(sender, 80), sid)
            return
        if sid in self._event_logging:
            vlog.info("session %s already has an event logging config", sid)
            return
        try:
            elc = json.loads(n.value or "")
            target = str(elc["atSign"])
            topic = str(elc["topic"])
        except (ValueError, KeyError, TypeError):
            log.info("ignoring a malformed event logging config for session %s", sid)
            return
        if not target.startswith("@") or len(target) > 64 or len(topic) > 200:
            log.info("ignoring an invalid event logging config for session %s", sid)
            return
        self._event_logging[sid] = (target, topic)
        log.info(
            "session %s: event logging to %s topic %s (from %s)",
            sid,
            escape(target, 80),
            escape(topic, 200),
            escape(sender, 80),
        )

    def _single_port(self) -> int | None:
        """The single-port listener's advertised port (443) when it runs, else None
        (spec-latest 1.3: official clients can only probe, so only choose, such relays)."""
        if getattr(self.s, "single_port", None) is None:
            return None
        return int(getattr(self.s, "single_advertise", 443))

    async def _discover(self, n: Notification) -> None:
        """Answer a relay auto-selection probe (spec-latest 1.3) with our address and load."""
        sender = n.from_atsign
        value = rq.discover_reply(
            n.value,
            ip=self.s.ip,
            port=self._single_port(),
            sessions=len(self.admission.live),
            max_sessions=self.s.max_sessions,
        )
        if value is None or self.client is None:
            vlog.info("ignoring a malformed discover_request from %s", escape(sender, 80))
            return
        if self.admission.managers is not None and sender not in self.admission.managers:
            vlog.info("not answering discover_request from %s (not a manager)", escape(sender, 80))
            return
        if not self._nack_allowed("discover " + sender):
            return
        self.results["discover"] += 1
        try:
            await self.client.notify(
                sender,
                rq.DISCOVER_REPLY,
                value,
                namespace=rq.NAMESPACE,
                ttln_ms=REPLY_TTLN_MS,
            )
        except (NoPortsError, OSError) as exc:
            log.info("could not answer discover_request from %s: %s", escape(sender, 80), exc)

    async def _refuse(self, sender: str, r: rq.Refusal) -> None:
        self.results[r.kind] += 1
        if self.observer is not None:
            self.observer.refused(escape(sender, 80), r.kind, r.session_id)
        log.info(
            "Session %s for %s is denied: %s (%s)",
            r.session_id or "?",
            escape(sender, 80),
            escape(r.reason, 300),
            r.kind,
            extra={"fields": refusal_fields(escape(sender, 80), r.kind, r.session_id)},
        )
        quiet = r.session_id is not None and r.session_id.lower() in self._no_nack
        if quiet:
            self._no_nack.discard(str(r.session_id).lower())
        if r.session_id is None or self.client is None or not r.nack or quiet:
            return
        if not self._nack_allowed(sender):
            vlog.info("not sending more nacks to %s for now", escape(sender, 80))
            return
        try:
            await self.client.notify(
                sender,
                f"nack.{r.session_id}",
                r.reason,
                namespace=rq.NAMESPACE,
                ttl_ms=REPLY_TTL_MS,
                ttln_ms=REPLY_TTLN_MS,
            )
        except (NoPortsError, OSError) as exc:
            log.info("could not send a nack to %s: %s", escape(sender, 80), exc)

    def _nack_allowed(self, sender: str) -> bool:
        now = time.monotonic()
        if len(self._nacks) > 10_000:
            self._nacks = {k: v for k, v in self._nacks.items() if v and now - v[-1] < NACK_WINDOW}
        times = [t for t in self._nacks.get(sender, []) if now - t < NACK_WINDOW]
        if len(times) >= NACK_BURST:
            self._nacks[sender] = times
            return False
        times.append(now)
        self._nacks[sender] = times
        return True


@dataclass(frozen=True)
class _Live:
    atsign_a: str
    atsign_b: str
    port_a: int
    port_b: int


def default_root(root: str | None, root_domain: str) -> str:
    """``--root``/NOPORTS_ROOT wins; otherwise the official ``--root-domain`` on port 64."""
    if root:
        return root
    if os.environ.get("NOPORTS_ROOT"):
        return os.environ["NOPORTS_ROOT"]
    return f"{root_domain}:{DEFAULT_ROOT_PORT}"

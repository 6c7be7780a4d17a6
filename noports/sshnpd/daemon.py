"""The device daemon: start-up, the notification loop, authorisation and dispatch (spec 6).

Start-up (6.2): authenticate to our atServer; share ``username`` (D7) and ``device_info``
(D8) with every manager, or delete both when hidden; start the connectivity probe (``noop:0``
every 15 s, logging ``connection lost`` / ``connection available``); start the monitor on
``.<dev>.sshnp@`` (and the NPA responses when ``-p``); refresh device_info hourly; with ``-p``
send the policy heartbeat D9 now and every 5 minutes. Once the monitor is registered the
daemon logs ``Monitor for <atSign> device <dev>: monitor started`` (the official e2e harness
waits for ``Monitor .*monitor started``).

Every notification is authorised first (6.3): managers and the policy atSign get ``*:*``;
others are checked with the policy service when ``-p`` is set (cached 15 s), else ignored.
Unauthorised senders get no reply at all, not even to pings. Dispatch (6.5): ``ping`` →
``heartbeat`` with the feature JSON; ``ssh_request`` / ``npt_request`` → :mod:`.sessions`;
``sshpublickey`` → ``authorized_keys`` with ``-s``; anything else is logged and ignored.

The monitor loop never waits for a request: each is its own task, at most
:data:`MAX_HANDLERS` at a time (more are dropped and logged); tunnels are bounded by
``max_sessions``. ``stop()`` stops taking requests, lets running tunnels finish for up to
``drain`` seconds, then cancels everything and removes pending ephemeral keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..at.client import AtClient
from ..at.protocol import Notification
from ..crypto import rsa
from ..crypto.sshkey import InvalidPublicKeyError
from ..errors import ConnectError, KeyNotFoundError, NoPortsError
from ..log import escape
from ..names import validate_atsign, validate_session_id
from ..sdnotify import notify as notify_systemd
from ..sdnotify import watchdog
from ..session import mutex as session_mutex
from ..session.features import ping_response_json
from ..session.permitopen import PermitOpen
from ..session.relayauth import publish_signing_key, signing_uri
from ..session.relays import probe_latency
from .authkeys import AuthorizedKeys, ephemeral_options
from .ephemeral import EphemeralKeys
from .npa_client import RESPONSE_REGEX, NpaClient
from .sessions import Refusal, SessionHandler, SessionSettings

log = logging.getLogger("noports.sshnpd")

NAMESPACE = "sshnp"
MAX_HANDLERS = 64
PROBE_INTERVAL = 15.0
DEVICE_INFO_REFRESH = 3600.0
POLICY_HEARTBEAT = 300.0
DEVICE_INFO_TTL_MS = 30 * 86400 * 1000
REPLY_TTL_MS = 10_000
REPLY_TTLN_MS = 60_000
MONITOR_START_TIMEOUT = 30.0
LATENCY_MAX_RELAYS = 16


def _session_id_of(value: str | None) -> str | None:
    """The ``sessionId`` inside a signed request envelope, if it is a valid one (unverified:
    only used to name the session mutex)."""
    try:
        payload = json.loads(value or "").get("payload")
        return validate_session_id(payload.get("sessionId"))
    except (ValueError, AttributeError, TypeError, NoPortsError):
        return None


@dataclass
class DaemonConfig:
    atsign: str
    device: str = "default"
    managers: tuple[str, ...] = ()
    policy_manager: str | None = None
    device_group: str = "__none__"
    permit_open: PermitOpen = field(default_factory=PermitOpen)
    accept_public_keys: bool = False
    public_key_permissions: str = ""
    hide: bool = False
    local_sshd_port: int = 22
    ephemeral_permissions: str = ""
    ssh_algorithm: str = "ssh-ed25519"
    require_aead: bool = False
    authorized_keys: Path | None = None
    username: str | None = None
    max_sessions: int = 128
    #: on SIGTERM/SIGINT, seconds running tunnels may take to finish before they are cut
    drain: float = 0.0
    #: the published ESCR signing key (``public:_apsk.<eid|primary>.a.__e@<me>``), advertised
    #: in the ping reply; None = the one this daemon publishes for its own keys
    signing_key_uri: str | None = None
    #: ``--metrics HOST:PORT``: /metrics, /healthz, /readyz and the status page (off when None)
    metrics: str | None = None
    #: level of the root logger (-v INFO, --debug DEBUG); None = leave it as set up
    log_level: int | None = None


class Daemon:
    """One running sshnpd. ``await Daemon(cfg, client).run()`` until ``stop()``."""

    def __init__(
        self, cfg: DaemonConfig, client: AtClient, on_ready: Callable[[str], None] | None = None
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.on_ready = on_ready
        self.managers = frozenset(cfg.managers)
        self.authorized_keys = AuthorizedKeys(cfg.authorized_keys)
        self.ephemeral = EphemeralKeys(
            self.authorized_keys,
            sshd_port=cfg.local_sshd_port,
            extra_permissions=cfg.ephemeral_permissions,
            algorithm=cfg.ssh_algorithm,
        )
        self.sessions = SessionHandler(
            SessionSettings(
                cfg.device,
                cfg.permit_open,
                cfg.local_sshd_port,
                cfg.require_aead,
                client.keys.encrypt_private,
                self.ephemeral,
                signing_key=client.keys.pkam_private,
                signing_uri=signing_uri(client),
            ),
            self._public_key,
            max_sessions=cfg.max_sessions,
        )
        self.npa: NpaClient | None = None
        if cfg.policy_manager:
            self.npa = NpaClient(
                self._notify_rpc,
                policy=cfg.policy_manager,
                daemon=cfg.atsign,
                device=cfg.device,
                device_group=cfg.device_group,
            )
        self._handlers: set[asyncio.Task[None]] = set()
        self._background: list[asyncio.Task[None]] = []
        self._stop = asyncio.Event()
        self._force = asyncio.Event()
        self.ping_json = self._ping_json()
        #: session event logging asked for by the policy service (latest spec 8.2)
        self.event_logging: dict[str, Any] | None = None
        self.monitor_running = False
        self.observer: Any = None  # observe.Observer when --metrics is given
        if cfg.metrics:
            self._make_observer()
        #: SIGHUP: the configuration as it is now (command line, environment, file)
        self.reloader: Callable[[], DaemonConfig] | None = None
        self._policy_task: asyncio.Task[None] | None = None

    def _make_observer(self) -> None:
        from .observe import Observer

        self.observer = Observer(self)
        self.sessions.on_end = self._session_ended

    def _ping_json(self) -> str:
        cfg = self.cfg
        return ping_response_json(
            device=cfg.device,
            device_group=cfg.device_group,
            accepts_public_keys=cfg.accept_public_keys,
            allowed_services=cfg.permit_open.allowed_services(),
            escr=True,  # our tunnel ends answer ESCR challenges (relay.escr / srv -a escr)
            public_signing_key_uri=cfg.signing_key_uri or signing_uri(self.client),
        )

    # -- helpers ------------------------------------------------------------------------------
    async def _public_key(self, atsign: str, refresh: bool) -> rsa.PublicKey:
        return await self.client.public_key(atsign, refresh=refresh)

    async def _notify_rpc(self, to: str, key: str, value: str) -> Any:
        return await self.client.notify(to, key, value, namespace=NAMESPACE, ttln_ms=30_000)

    def monitor_regex(self) -> str:
        own = rf"\.{self.cfg.device}\.sshnp@"
        config = rf"config\.{re.escape(self.cfg.device)}\.devices\.policy\.sshnp@"
        # the policy responses are always monitored, so that a reload can add a policy
        # atSign without a new monitor; accept() ignores them while there is no policy
        return f"{own}|{RESPONSE_REGEX}|{config}"

    def stop(self) -> None:
        """First call: stop (draining if configured). A second call cuts the drain short."""
        if self._stop.is_set():
            self._force.set()
        self._stop.set()

    # -- start-up and background --------------------------------------------------------------
    async def share_records(self, managers: list[str] | None = None) -> None:
        """D7 username and D8 device_info for every manager (deleted when hidden)."""
        dev = self.cfg.device
        user = self.cfg.username or getpass.getuser()
        for m in sorted(self.managers if managers is None else managers):
            try:
                if self.cfg.hide:
                    for name in ("username", "device_info"):
                        with contextlib.suppress(KeyNotFoundError):
                            await self.client.delete(f"{name}.{dev}.{NAMESPACE}", shared_with=m)
                    log.info("hidden: username and device_info deleted for %s", m)
                    continue
                await self.client.put(
                    f"username.{dev}.{NAMESPACE}", user, shared_with=m, ttr=-1, ccd=True
                )
                await self.client.notify(
                    m,
                    f"username.{dev}",
                    user,
                    namespace=NAMESPACE,
                    ttr_ms=-1,
                    ccd=True,
                    ttln_ms=REPLY_TTLN_MS,
                )
                await self.put_device_info(m)
            except (NoPortsError, OSError) as exc:
                log.error("could not share records with %s: %s", m, exc)

    async def put_device_info(self, manager: str) -> None:
        await self.client.put(
            f"device_info.{self.cfg.device}.{NAMESPACE}",
            self.ping_json,
            shared_with=manager,
            ttl=DEVICE_INFO_TTL_MS,
            ttr=-1,
            ccd=True,
        )

    async def _refresh_device_info(self) -> None:
        while True:
            await asyncio.sleep(DEVICE_INFO_REFRESH)
            for m in sorted(self.managers):
                try:
                    await self.put_device_info(m)
                except (NoPortsError, OSError) as exc:
                    log.warning("device_info refresh for %s failed: %s", m, exc)

    async def _policy_heartbeat(self) -> None:
        while self.cfg.policy_manager:
            try:
                await self.client.notify(
                    self.cfg.policy_manager,
                    f"{self.cfg.device}.devices.policy",
                    self.ping_json,
                    namespace=NAMESPACE,
                    ttln_ms=int(POLICY_HEARTBEAT * 1000),
                )
            except (NoPortsError, OSError) as exc:
                log.warning("policy heartbeat failed: %s", exc)
            await asyncio.sleep(POLICY_HEARTBEAT)

    async def _probe(self) -> None:
        up = True
        while True:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.client.execute("noop:0", timeout=10.0)
                ok = True
            except (NoPortsError, OSError, asyncio.TimeoutError):
                ok = False
            if ok != up:
                (log.warning if not ok else log.info)(
                    "connection %s", "available" if ok else "lost"
                )
                up = ok

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        if self.observer is not None and self.observer.endpoint is None:
            self.observer.start(self.cfg.metrics)
        await self.share_records()
        self._background.append(loop.create_task(self._probe()))
        self._background.append(loop.create_task(self._publish_signing_key()))
        monitor = self.client.monitor(self.monitor_regex())
        try:
            await monitor.started(MONITOR_START_TIMEOUT)
            self.monitor_running = True
            notify_systemd("READY=1", f"STATUS=sshnpd {self.cfg.atsign} {self.cfg.device} ready")
            self._background.append(loop.create_task(watchdog()))
            if self.on_ready:
                self.on_ready(
                    f"Monitor for {self.cfg.atsign} device {self.cfg.device}: monitor started"
                )
            if not self.cfg.hide:
                self._background.append(loop.create_task(self._refresh_device_info()))
            if self.cfg.policy_manager:
                self._policy_task = loop.create_task(self._policy_heartbeat())
                self._background.append(self._policy_task)
            reader = loop.create_task(self._read(monitor))
            stopper = loop.create_task(self._stop.wait())
            await asyncio.wait([reader, stopper], return_when=asyncio.FIRST_COMPLETED)
            for t in (reader, stopper):
                t.cancel()
            await asyncio.gather(reader, stopper, return_exceptions=True)
            if not self._stop.is_set() and reader.done() and not reader.cancelled():
                exc = reader.exception()
                raise exc if exc is not None else ConnectError("the notification monitor ended")
        finally:
            self.monitor_running = False
            notify_systemd("STOPPING=1")
            await monitor.close()
            if self._stop.is_set() and self.cfg.drain > 0:
                await self.drain(self.cfg.drain)
            await self.shutdown()

    # -- reload (SIGHUP) ----------------------------------------------------------------------
    #: settings a running daemon cannot change: they name it, or were used once at start-up
    RESTART_ONLY = (
        "atsign", "device", "hide", "local_sshd_port", "ssh_algorithm", "authorized_keys",
        "username", "signing_key_uri",
    )
    #: settings a reload applies at once (new sessions see them; live tunnels are untouched)
    LIVE = (
        "managers", "policy_manager", "device_group", "permit_open", "accept_public_keys",
        "public_key_permissions", "ephemeral_permissions", "require_aead", "max_sessions",
        "drain", "metrics", "log_level",
    )

    def reload(self) -> bool:
        """SIGHUP: re-read the configuration, validate it, apply what can change live.

        A bad configuration is logged in one line and the running one kept. Live tunnels are
        never touched: new managers, policy and permit-open apply to requests from now on."""
        if self.reloader is None:
            log.warning("SIGHUP: no configuration source to reload from; ignored")
            return False
        try:
            new = self.reloader()
        except (NoPortsError, ValueError, OSError) as exc:
            log.error("configuration reload failed, keeping the running configuration: %s",
                      escape(str(exc), 300))
            return False
        old = self.cfg
        kept = [n for n in self.RESTART_ONLY if getattr(new, n) != getattr(old, n)]
        for name in kept:
            log.warning("reload: %s changed; it takes effect after a restart", name)
        changes = sorted(n for n in self.LIVE if getattr(new, n) != getattr(old, n))
        self.cfg = dataclasses.replace(new, **{n: getattr(old, n) for n in self.RESTART_ONLY})
        self._apply(old, self.cfg)
        log.warning(
            "configuration reloaded: %s",
            ", ".join(changes) or "no change",
            extra={"fields": {"event": "config_reloaded", "changed": changes,
                              "restart_needed": kept}},
        )
        return True

    def _apply(self, old: DaemonConfig, new: DaemonConfig) -> None:
        loop = asyncio.get_running_loop()
        added = [m for m in new.managers if m not in self.managers]
        self.managers = frozenset(new.managers)
        if new.policy_manager != old.policy_manager or new.device_group != old.device_group:
            self.npa = (
                NpaClient(
                    self._notify_rpc,
                    policy=new.policy_manager,
                    daemon=new.atsign,
                    device=new.device,
                    device_group=new.device_group,
                )
                if new.policy_manager
                else None
            )
        s = self.sessions
        s.s = dataclasses.replace(
            s.s, daemon_permit=new.permit_open, require_aead=new.require_aead
        )
        s.max_sessions = new.max_sessions
        self.ephemeral.options = ephemeral_options(new.local_sshd_port, new.ephemeral_permissions)
        self.ping_json = self._ping_json()
        if new.log_level is not None:
            logging.getLogger().setLevel(new.log_level)
        if new.metrics != old.metrics:
            if self.observer is not None:
                self.observer.close()
            if new.metrics:
                if self.observer is None:
                    self._make_observer()
                try:
                    self.observer.start(new.metrics)
                except (NoPortsError, OSError) as exc:
                    self.observer.endpoint = None
                    log.error("reload: cannot serve metrics on %s: %s", new.metrics, exc)
        if not self.monitor_running:
            return  # run() starts the background work from self.cfg
        if added and not new.hide:
            task = loop.create_task(self.share_records(added))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if (new.policy_manager, new.device_group) != (old.policy_manager, old.device_group):
            if self._policy_task is not None:
                self._policy_task.cancel()
                with contextlib.suppress(ValueError):
                    self._background.remove(self._policy_task)
                self._policy_task = None
            if new.policy_manager:
                self._policy_task = loop.create_task(self._policy_heartbeat())
                self._background.append(self._policy_task)

    async def _publish_signing_key(self) -> None:
        """ESCR relay auth: relays verify our answers with the key published here."""
        try:
            await publish_signing_key(self.client)
        except (NoPortsError, OSError) as exc:
            log.warning("could not publish the relay signing key (escr sessions will fail): %s",
                        exc)

    async def drain(self, seconds: float) -> None:
        """No new work (the monitor is closed); let running tunnels end for ``seconds``."""
        for t in list(self._handlers):
            t.cancel()
        running = list(self.sessions.tunnels)
        if running:
            log.warning(
                "draining %d session(s) for up to %g s (signal again to cut them)",
                len(running),
                seconds,
            )
            loop = asyncio.get_running_loop()
            deadline = loop.time() + seconds
            force = loop.create_task(self._force.wait())
            try:
                pending: set[asyncio.Future[Any]] = set(running)
                while pending and not force.done() and loop.time() < deadline:
                    _, pending = await asyncio.wait(
                        {*pending, force},
                        timeout=deadline - loop.time(),
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    pending.discard(force)
            finally:
                force.cancel()

    async def shutdown(self) -> None:
        for t in (*self._background, *self._handlers):
            t.cancel()
        await asyncio.gather(*self._background, *self._handlers, return_exceptions=True)
        self._background.clear()
        await self.sessions.close()
        pending = self.ephemeral.pending
        if pending:
            await asyncio.get_running_loop().run_in_executor(None, self.ephemeral.remove_all_now)
            log.info("removed pending ephemeral keys of %d session(s)", len(pending))
        if self.observer is not None:
            self.observer.close()

    def _session_ended(self, sid: str, task: asyncio.Task[Any]) -> None:
        fields = self.observer.session_ended(sid, task) if self.observer is not None else None
        if fields is not None:
            log.warning(
                "session %s ended (%s, %s s, %s bytes A->B, %s bytes B->A)",
                sid,
                fields["outcome"],
                fields["duration_s"],
                fields["bytes_a_to_b"],
                fields["bytes_b_to_a"],
                extra={"fields": fields},
            )

    async def _read(self, monitor: Any) -> None:
        async for n in monitor:
            if self.observer is not None:
                self.observer.notification_in()
            self.accept(n)

    def accept(self, n: Notification) -> None:
        """Route one notification without waiting for it to be handled."""
        if n.operation != "update" or not n.from_atsign:
            return
        sender = n.from_atsign.lower()
        key = n.short_key
        if self.npa is not None and self.npa.on_response(sender, key, n.value):
            return
        if (
            sender == self.cfg.policy_manager
            and key.lower() == f"config.{self.cfg.device}.devices.policy.{NAMESPACE}"
        ):
            self._policy_config(n.value)
            return
        suffix = f".{self.cfg.device}.{NAMESPACE}"
        if not key.lower().endswith(suffix):
            return
        command = key[: -len(suffix)].lower()
        if len(self._handlers) >= MAX_HANDLERS:
            log.warning("busy: dropping %s from %s", escape(command, 60), escape(sender, 80))
            return
        task = asyncio.get_running_loop().create_task(self._handle(sender, command, n.value))
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _authorise(self, sender: str) -> PermitOpen | None:
        if sender in self.managers or sender == self.cfg.policy_manager:
            return PermitOpen.allow_all()
        if self.npa is None:
            log.warning(
                "ignoring a notification from %s: not in --managers list", escape(sender, 80)
            )
            return None
        decision = await self.npa.check(sender)
        if not decision.authorized:
            log.warning(
                "ignoring a notification from %s: %s",
                escape(sender, 80),
                escape(decision.message or "denied by the policy", 200),
            )
            return None
        return decision.permit

    async def _handle(self, sender: str, command: str, value: str | None) -> None:
        try:
            permit = await self._authorise(sender)
            if permit is None:
                if self.observer is not None and command in ("ssh_request", "npt_request"):
                    self._refused(sender, "unauthorised", None)
                return
            if command == "ping":
                await self.client.notify(
                    sender,
                    f"heartbeat.{self.cfg.device}",
                    self.ping_json,
                    namespace=NAMESPACE,
                    ttl_ms=REPLY_TTL_MS,
                    ttln_ms=REPLY_TTLN_MS,
                )
                log.info("answered a ping from %s", sender)
            elif command in ("ssh_request", "npt_request"):
                await self._session(command[:3], sender, value, permit)
            elif command == "sshpublickey":
                await self._public_key_request(sender, value)
            elif command == "relay_latency_request":
                await self._relay_latency(sender, value)
            else:
                log.info("ignoring unknown command %s from %s", escape(command, 60), sender)
        except asyncio.CancelledError:
            raise
        except (NoPortsError, OSError) as exc:
            log.error("handling %s from %s failed: %s", escape(command, 60), sender, exc)
        except Exception:
            log.exception("unexpected error handling %s from %s", escape(command, 60), sender)

    async def _reply_error(self, to: str, sid: str, text: str) -> None:
        """D5 error: a plain string, not signed (spec 6.8)."""
        await self.client.notify(
            to,
            f"{sid}.{self.cfg.device}",
            text,
            namespace=NAMESPACE,
            ttl_ms=REPLY_TTL_MS,
            ttln_ms=REPLY_TTLN_MS,
        )

    async def _session(self, kind: str, sender: str, value: str | None, permit: PermitOpen) -> None:
        sid: str | None = None
        # redundant daemons on this device (latest spec 8.2): one instance owns each session,
        # raced for alongside the signature check; the others drop the request silently
        asked = _session_id_of(value)
        mutex = (
            asyncio.ensure_future(session_mutex.acquire(self.client, asked, NAMESPACE))
            if asked is not None
            else None
        )
        try:
            verified = await asyncio.gather(
                self.sessions.verify(kind, sender, value), return_exceptions=True
            )
            if mutex is not None and not await mutex:
                log.info("session %s is served by another sshnpd instance", asked)
                return
            if isinstance(verified[0], BaseException):
                raise verified[0]
            req = verified[0]
            sid = req.session_id
            if self.observer is not None:
                self.observer.session_started(sid, sender, kind, req.relay_host)
            payload = await self.sessions.start(req, sender, permit)
            if self.observer is not None:
                self.observer.granted()
            if self.event_logging is not None:
                payload["eventLoggingConfig"] = dict(self.event_logging)
                fwd = asyncio.get_running_loop().create_task(
                    self._forward_event_logging(req.relay_atsign, sid)
                )
                self._handlers.add(fwd)
                fwd.add_done_callback(self._handlers.discard)
        except Refusal as r:
            fields = None
            if self.observer is not None:
                from .observe import refusal_reason

                fields = self.observer.refused(
                    escape(sender, 80), refusal_reason(r.text), r.session_id or sid
                )
            log.warning(
                "%s_request from %s refused: %s",
                kind,
                sender,
                escape(r.text, 300),
                extra={"fields": fields} if fields else None,
            )
            if r.session_id is not None:
                await self._reply_error(sender, r.session_id, r.text)
            return
        except BaseException:
            if self.observer is not None and sid is not None:
                self.observer.live.pop(sid, None)  # no tunnel: not a live session
            raise
        await self.client.send_signed(
            sender,
            f"{sid}.{self.cfg.device}",
            payload,
            namespace=NAMESPACE,
            ttl_ms=REPLY_TTL_MS,
            ttln_ms=REPLY_TTLN_MS,
        )

    def _refused(self, sender: str, reason: str, sid: str | None) -> None:
        fields = self.observer.refused(escape(sender, 80), reason, sid)
        log.warning("session request refused: %s", reason, extra={"fields": fields})

    def _policy_config(self, value: str | None) -> None:
        """``{"eventLoggingConfig": {"atSign","topic","ttln"}}`` from the policy service: the
        daemon then names it in every session reply and hands it to the session's relay."""
        try:
            elc = json.loads(value or "").get("eventLoggingConfig")
        except (ValueError, AttributeError):
            log.warning("ignoring a malformed policy config notification")
            return
        if elc is None:
            self.event_logging = None
            log.info("session event logging is off")
            return
        try:
            atsign = validate_atsign(str(elc.get("atSign")))
            topic, ttln = elc.get("topic"), elc.get("ttln")
            if not isinstance(topic, str) or not topic or len(topic) > 200:
                raise ValueError("topic")
            if ttln is not None and (not isinstance(ttln, int) or isinstance(ttln, bool)):
                raise ValueError("ttln")
        except (ValueError, AttributeError, NoPortsError) as exc:
            log.warning("ignoring an invalid eventLoggingConfig (%s)", exc)
            return
        self.event_logging = {"atSign": atsign, "topic": topic, "ttln": ttln}
        log.info("session event logging to %s topic %s", atsign, escape(topic, 200))

    async def _forward_event_logging(self, relay: str | None, sid: str) -> None:
        """``@relay:logging.<sid>.sessions.sshrvd@me`` with the config (ttln 1 min)."""
        if self.event_logging is None or not relay:
            return
        try:
            await self.client.notify(
                validate_atsign(relay, add_at=True),
                f"logging.{sid}.sessions.sshrvd",
                json.dumps(self.event_logging, separators=(",", ":")),
                ttln_ms=REPLY_TTLN_MS,
            )
        except (NoPortsError, OSError) as exc:
            log.warning("could not pass the event logging config to %s: %s", relay, exc)

    async def _relay_latency(self, sender: str, value: str | None) -> None:
        """Relay auto-selection (spec-latest 1.4): TCP-connect latency to each relay the
        client lists, ``{"@rv": ms or -1}`` back as ``relay_latency_response.<dev>``. A null
        or non-JSON value gets no reply, as official."""
        try:
            relays = json.loads(value) if value is not None else None
        except ValueError:
            relays = None
        if not isinstance(relays, dict):
            log.info("ignoring a malformed relay_latency_request from %s", sender)
            return
        entries = list(relays.items())[:LATENCY_MAX_RELAYS]
        results = await asyncio.gather(*(probe_latency(v) for _k, v in entries))
        reply = {str(k): ms for (k, _v), ms in zip(entries, results, strict=True)}
        await self.client.notify(
            sender,
            f"relay_latency_response.{self.cfg.device}",
            json.dumps(reply, separators=(",", ":")),
            namespace=NAMESPACE,
            ttln_ms=REPLY_TTLN_MS,
        )
        log.info("answered a relay latency request from %s: %s", sender, reply)

    async def _public_key_request(self, sender: str, value: str | None) -> None:
        if not self.cfg.accept_public_keys:
            log.info("ignoring an ssh public key from %s (no -s)", sender)
            return
        try:
            added = await asyncio.get_running_loop().run_in_executor(
                None,
                self.authorized_keys.add_client_key,
                value or "",
                self.cfg.public_key_permissions,
            )
        except InvalidPublicKeyError as exc:
            log.warning("ssh public key from %s refused: %s", sender, exc)
            return
        log.warning(
            "ssh public key from %s %s",
            sender,
            "added to authorized_keys" if added else "already present",
        )

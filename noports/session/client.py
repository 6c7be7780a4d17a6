"""Client-side session set-up shared by ``sshnp`` and ``npt`` (spec 3.1, 3.3, 10).

One call, :func:`establish`, takes a connected :class:`~noports.at.client.AtClient` and a
:class:`SessionSpec` and returns an :class:`Established` session: relay address, the relay auth
line for our side, the data-plane crypto and the daemon's success payload. The tunnel itself is
started by the caller (single mode for sshnp, multi for npt) with those values, in-process.
The decisions (what to send, routing the answers, deadlines, feature checks, verification, the
crypto choice) are :class:`~noports.session.handshake.ClientHandshake`'s, tested in memory;
this module does the I/O.

Round trips are overlapped (DESIGN section 4, set-up target <= 300 ms median):

1. one monitor for everything this session can receive (``<sid>`` replies from the relay and
   the daemon, ``nack.<sid>``, ``heartbeat.<dev>.sshnp``), registered *before* anything is sent;
   in parallel: the daemon's public key, the ephemeral RSA key and (sshnp) the username record;
2. the ping (D1) and the relay request (R1 / legacy R1L) go out together;
3. the relay reply (R2) and the ping reply (D2) are awaited together; the feature check runs
   on the ping reply; a relay ``nack`` ends the set-up with its message. When the flags need
   no daemon feature (sshnp ``--no-ad --no-et`` without ``-s``) there is no ping, as in the
   official client (its ``featureCheck`` returns at once for an empty list): v4-era daemons
   that never answer pings (the official Python sshnpd, spec 6.11) serve the v4 flow;
4. the signed session request (D3/D4) offers twin keys and, unless told not to, the AEAD mode;
5. the daemon's reply (D5): a plain string is an error (one line, distinct exit code); an
   envelope is verified with the daemon's public key (re-encoding the received payload; the
   key is re-fetched once on failure), its ``sessionId`` must be ours, then the keys unwrap.

Crypto choice: AEAD if the daemon answered with the secret; else twin or legacy CTR; clear only
when encryption was turned off. ``require_aead`` refuses anything but AEAD.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any

from ..at.client import AtClient
from ..crypto import ephemeral, rsa
from ..errors import KeyNotFoundError, NoPortsError
from ..names import validate_atsign
from ..tunnel.keys import TunnelCrypto
from . import relayauth
from .errors import EscrUnsupportedError, NoAnswerError, UsernameNotSharedError
from .features import DaemonFeature
from .handshake import (
    DAEMON_TIMEOUT,
    NACK_GRACE,
    NEED_DATA,
    NOTIFY_TTL_MS,
    NOTIFY_TTLN_MS,
    PING_TIMEOUT,
    RELAY_TIMEOUT,
    ClientHandshake,
    Established,
    NeedKey,
    Notify,
    SessionSpec,
)
from .relays import select_relay

log = logging.getLogger("noports.session")

__all__ = [
    "DAEMON_TIMEOUT",
    "NACK_GRACE",
    "NOTIFY_TTLN_MS",
    "NOTIFY_TTL_MS",
    "PING_TIMEOUT",
    "RELAY_TIMEOUT",
    "Established",
    "NoAnswerError",
    "SessionSpec",
    "connect_client",
    "establish",
    "establish_any",
    "start_ephemeral_keygen",
]

Progress = Callable[[str], None]


def _noop(_msg: str) -> None:
    return None


# made on first use: concurrent.futures.thread (with queue) is ~1 ms of start-up, and a
# session with an X25519 key (--require-aead) never makes an RSA one
_KEYGEN: concurrent.futures.ThreadPoolExecutor | None = None


def _keygen() -> concurrent.futures.ThreadPoolExecutor:
    global _KEYGEN
    if _KEYGEN is None:
        _KEYGEN = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="ephemeral-rsa"
        )
    return _KEYGEN


def start_ephemeral_keygen() -> concurrent.futures.Future[rsa.PrivateKey]:
    """Start making the session's ephemeral RSA-2048 key now (it takes 50-250 ms): callers
    start it before connecting to the atServer so it overlaps the TLS and PKAM round trips.
    The first call takes the key the program started at launch (``crypto.ephemeral``)."""
    return ephemeral.take() or _keygen().submit(rsa.generate)


async def establish(
    client: AtClient,
    spec: SessionSpec,
    *,
    progress: Progress = _noop,
    ephemeral: concurrent.futures.Future[rsa.PrivateKey] | None = None,
) -> Established:
    """Run the whole set-up; raises a NoPortsError subclass with a one-line message.

    ``ephemeral``: a key generation started earlier (:func:`start_ephemeral_keygen`); one is
    started here otherwise. Each session needs a fresh key: never pass the same future twice.
    The decisions are :class:`~noports.session.handshake.ClientHandshake`'s; this drives it.
    """
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    timings: dict[str, float] = {}

    def mark(name: str) -> None:
        timings[name] = round((loop.time() - t0) * 1000, 1)

    mark("start")
    if not spec.relay:
        choice = await select_relay(
            client,
            daemon=spec.daemon,
            device=spec.device,
            candidates=spec.relay_candidates,
            root=spec.root,
            progress=progress,
        )
        progress(f"Using relay {choice.relay} ({choice.reason})")
        spec = spec.replace(relay=choice.relay)
        mark("relaySelect")
    hs = ClientHandshake(
        spec, me=client.atsign, my_uri=relayauth.signing_uri(client), clock=loop.time
    )
    io = _Driver(client, hs, progress, mark)
    try:
        await io.open(ephemeral)
        progress("Waiting for daemon feature check response")
        reply = (await io.next()).reply
        mark("relay")
        progress("Received host and port from srvd")
        info = (await io.next()).info
        mark("ping")
        progress("Received daemon feature check response")
        hs.check_features(info)
        progress("Required daemon features are supported")
        username = await io.before_request()
        eph = await io.send_request()
        progress("Waiting for response from the device daemon")
        ev = await io.next()
        mark("response")
        progress("Received response from the device daemon")
        while isinstance(ev, NeedKey):
            ev = hs.key_received(await io.daemon_key(ev))
        crypto = hs.crypto(ev.payload, eph)
        auth = hs.relay_auth(client.keys.encrypt_private, client.keys.pkam_private)
        mark("keys")
        log.info(
            "session %s established: relay %s:%d, %s", hs.sid, reply.host, reply.port_a,
            _mode(crypto),
        )
        log.debug("set-up timings (ms): %s", timings)
        return Established(
            hs.sid, reply.host, reply.port_a, auth, crypto, ev.payload, info, username, timings,
            spec.relay,
        )
    finally:
        await io.close()


class _Driver:
    """The I/O of one :class:`ClientHandshake`: the monitor and its pump, the look-ups that
    run alongside (the daemon's key, the ephemeral key, the username, our signing key)."""

    def __init__(
        self, client: AtClient, hs: ClientHandshake, progress: Progress,
        mark: Callable[[str], None],
    ) -> None:
        self.client = client
        self.hs = hs
        self.progress = progress
        self.mark = mark
        self.wake = asyncio.Event()
        self.mon = client.monitor(ClientHandshake.regex(hs.sid, hs.spec.device))
        self.pump: asyncio.Task[None] | None = None
        self.side: list[asyncio.Future[Any]] = []
        self.eph_task: asyncio.Future[rsa.PrivateKey] | None = None
        self.pk_task: asyncio.Future[rsa.PublicKey] | None = None
        self.user_task: asyncio.Future[str] | None = None
        self.publish: asyncio.Future[str] | None = None

    async def open(self, ephemeral: concurrent.futures.Future[rsa.PrivateKey] | None) -> None:
        """Start the look-ups and the monitor, then send the ping and the relay request."""
        client, hs, spec = self.client, self.hs, self.hs.spec
        if hs.wants_ephemeral_rsa:
            self.eph_task = asyncio.wrap_future(ephemeral or start_ephemeral_keygen())
        self.pk_task = asyncio.ensure_future(client.public_key(spec.daemon))
        self.side.append(self.pk_task)
        if spec.fetch_username:
            self.user_task = asyncio.ensure_future(
                client.get(f"username.{spec.device}.sshnp", shared_by=spec.daemon)
            )
            self.side.append(self.user_task)
        await self.mon.started(10.0)
        self.mark("monitor")
        self.pump = asyncio.ensure_future(self._route())
        self.pump.add_done_callback(self._pump_ended)
        if hs.escr_mode and spec.auth_client:  # the relay fetches it when our socket answers
            self.publish = asyncio.ensure_future(relayauth.publish_signing_key(client))
            self.side.append(self.publish)
        self.progress("Sending daemon feature check request")
        self.progress("Fetching host and port from srvd")
        await asyncio.gather(*(self._notify(n) for n in hs.opening()))
        hs.opening_sent()
        self.mark("sent")

    async def _route(self) -> None:
        while True:
            n = await self.mon.next()
            self.hs.receive(n.from_atsign or "", n.short_key, n.value)
            self.wake.set()

    def _pump_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        self.hs.monitor_ended(task.exception() or RuntimeError("monitor ended"))
        self.wake.set()

    async def next(self) -> Any:
        """The handshake's next event: wait for a notification or its deadline, as it says."""
        loop = asyncio.get_running_loop()
        while True:
            ev = self.hs.next_event()
            if ev is not NEED_DATA:
                return ev
            self.wake.clear()
            at = self.hs.deadline()
            timeout = None if at is None else max(0.0, at - loop.time())
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                pass

    async def before_request(self) -> str | None:
        """sshnp: share our ssh public key (-s) and resolve the remote username."""
        share = self.hs.share_public_key()
        if share is not None:
            self.progress("Sharing ssh public key")
            await self._notify(share)
        if self.user_task is None:
            return None
        self.progress("Resolving remote username for user session")
        try:
            return self.hs.check_username(await self.user_task)
        except KeyNotFoundError:
            raise UsernameNotSharedError(
                "Remote username record not shared with the client (use -u)"
            ) from None

    async def send_request(self) -> rsa.PrivateKey | None:
        """Sign and send the session request; returns the ephemeral RSA key (if any)."""
        hs = self.hs
        # the key may have been made for nothing: our daemon took the X25519 exchange
        task = self.eph_task if hs.wants_ephemeral_rsa else None
        eph = await task if task is not None else None
        req = hs.request(eph.public_key() if eph is not None else None)
        if self.publish is not None:  # the relay checks our answers with it: it must be there
            try:
                await self.publish
            except (NoPortsError, OSError) as exc:
                raise hs.publish_failed(exc) from None
        self.progress("Sending session request to the device daemon")
        await self.client.send_signed(
            req.to, req.key, req.payload, namespace=req.namespace, ttl_ms=req.ttl_ms,
            ttln_ms=req.ttln_ms,
        )
        hs.request_sent()
        self.mark("request")
        return eph

    async def daemon_key(self, need: NeedKey) -> rsa.PublicKey:
        if need.refresh:
            return await self.client.public_key(need.atsign, refresh=True)
        assert self.pk_task is not None
        try:
            return await self.pk_task  # warmed in parallel with the round trips
        except KeyNotFoundError:
            raise KeyNotFoundError(f"{need.atsign} has no public key") from None

    async def _notify(self, n: Notify) -> str:
        return await self.client.notify(
            n.to, n.key, n.value, namespace=n.namespace, ttl_ms=n.ttl_ms, ttln_ms=n.ttln_ms
        )

    async def close(self) -> None:
        if self.pump is not None:
            self.pump.cancel()
        for fut in self.side:  # early failures leave look-ups running: stop them, swallow results
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()
        await self.mon.close()


def _mode(crypto: TunnelCrypto) -> str:
    from ..tunnel.keys import mode_name

    return mode_name(crypto)


async def connect_client(
    atsign: str,
    *,
    keys_file: str | None,
    root: str | None,
    ca_file: str | None,
    timeout: float = 10.0,
    pass_phrase: str | None = None,
) -> AtClient:
    """Our atClient (PKAM); errors keep their types (KeyFileError, ConnectError...).
    ``pass_phrase`` opens a password-protected atKeys file."""
    a = validate_atsign(atsign, add_at=True)
    keys = None
    if pass_phrase:
        from ..crypto.atkeys import AtKeys, default_keys_path

        keys = AtKeys.load(keys_file or default_keys_path(a), a, pass_phrase=pass_phrase)
    return await AtClient.connect(
        a,
        keys=keys,
        keys_file=keys_file,
        root=root,
        ca_file=ca_file,
        timeout=timeout,
        spare=True,  # the session's monitor connects and authenticates alongside
    )


async def establish_any(
    client: AtClient,
    spec: SessionSpec,
    *,
    progress: Progress = _noop,
    ephemeral: concurrent.futures.Future[rsa.PrivateKey] | None = None,
) -> Established:
    """:func:`establish`; when ``--ram`` was not given and the daemon turns out to lack escr
    relay auth (an official daemon before 5.11, or one that does not advertise it), once
    more in payload mode. The abandoned relay session ends unused at the relay."""
    try:
        return await establish(client, spec, progress=progress, ephemeral=ephemeral)
    except EscrUnsupportedError:
        if not spec.ram_fallback or spec.only443:
            raise
    log.info("the device daemon has no escr relay auth: falling back to payload mode")
    progress("Device daemon has no escr relay authentication; using payload mode")
    again = spec.replace(
        relay_auth_mode="payload",
        required=[f for f in spec.required if f is not DaemonFeature.SUPPORTS_RAM_ESCR],
    )
    return await establish(client, again, progress=progress)

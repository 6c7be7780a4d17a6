"""Client-side session set-up shared by ``sshnp`` and ``npt`` (spec 3.1, 3.3, 10).

One call, :func:`establish`, takes a connected :class:`~noports.at.client.AtClient` and a
:class:`SessionSpec` and returns an :class:`Established` session: relay address, the relay auth
line for our side, the data-plane crypto and the daemon's success payload. The tunnel itself is
started by the caller (single mode for sshnp, multi for npt) with those values, in-process.

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
import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..at.client import AtClient
from ..crypto import ephemeral, rsa
from ..crypto.envelope import relay_auth_line
from ..crypto.escr import EscrAuth
from ..errors import (
    ConfigError,
    KeyNotFoundError,
    NoPortsError,
    ProtocolError,
    RemoteError,
    SignatureError,
)
from ..names import validate_atsign, validate_device_name
from ..tunnel.keys import AeadKeys, TunnelCrypto
from . import relayauth, wire
from .errors import (
    DaemonFailedError,
    DaemonRefusedError,
    DowngradeRefusedError,
    EscrUnsupportedError,
    FeatureRefusedError,
    NoAnswerError,
    RelayRefusedError,
    UsernameNotSharedError,
)
from .features import (
    FEATURE_CHECK_TIMEOUT_MESSAGE,
    DaemonFeature,
    DaemonInfo,
    UnsupportedFeatureError,
    parse_ping_response,
    require_features,
)
from .relays import select_relay

log = logging.getLogger("noports.session")

RELAY_TIMEOUT = 20.0  # spec 3.5: relay response wait
DAEMON_TIMEOUT = 15.0  # spec 3.5: daemon session response
PING_TIMEOUT = 20.0  # --daemon-ping-timeout default
NOTIFY_TTL_MS = 10_000
NACK_GRACE = 1.0  # seconds another relay instance has to grant after one refused
NOTIFY_TTLN_MS = 60_000


@dataclass
class SessionSpec:
    """What to ask for. ``kind`` is ``"ssh"`` (D3) or ``"npt"`` (D4)."""

    kind: str
    daemon: str
    device: str
    relay: str  # "" = select one (latest spec 1): from relay_candidates, else the standard list
    auth_client: bool = True  # --ac: our tunnel end authenticates to the relay
    auth_device: bool = True  # --ad: the daemon's end authenticates to the relay
    encrypt: bool = True  # --et
    offer_aead: bool = True  # our strong mode offer
    require_aead: bool = False  # refuse anything weaker
    twin_keys: bool = True
    required: list[DaemonFeature] = field(default_factory=list)
    ping_timeout: float = PING_TIMEOUT
    relay_timeout: float = RELAY_TIMEOUT
    daemon_timeout: float = DAEMON_TIMEOUT
    # npt
    remote_host: str = "localhost"
    remote_port: int = 22
    timeout_ms: int = 30_000
    # sshnp: resolve the remote username from the daemon's shared record
    fetch_username: bool = False
    # sshnp -s: "<type> <base64>" sent as D6 once the feature check passed
    public_key: str | None = None
    # --ram: how both tunnel ends authenticate to the relay; --443: the single-port relay
    relay_auth_mode: str = "escr"
    only443: bool = False
    ram_fallback: bool = False  # --ram not given: payload with a daemon that lacks escr
    # relay auto-selection (when ``relay`` is empty)
    relay_candidates: list[str] | None = None
    root: str | None = None  # the root domain, for the standard relay list's address

    def __post_init__(self) -> None:
        self.daemon = validate_atsign(self.daemon, add_at=True)
        if self.relay:
            self.relay = validate_atsign(self.relay, add_at=True)
        self.device = validate_device_name(self.device)
        if self.kind not in ("ssh", "npt"):
            raise ValueError(self.kind)
        if self.relay_auth_mode not in relayauth.MODES:
            raise ConfigError(f"unknown relay auth mode {self.relay_auth_mode!r}")
        if self.only443 and self.relay_auth_mode != "escr":
            raise ConfigError("--443 needs escr relay authentication (drop --ram payload)")
        if self.only443 and not (self.auth_client and self.auth_device):
            raise ConfigError("--443 needs both tunnel ends to authenticate (drop --no-ad/--no-ac)")
        escr_b = self.relay_auth_mode == "escr" and self.auth_device
        if escr_b and DaemonFeature.SUPPORTS_RAM_ESCR not in self.required:
            self.required.append(DaemonFeature.SUPPORTS_RAM_ESCR)
        if self.require_aead:
            self.offer_aead = True
            if DaemonFeature.NOPORTS_AEAD not in self.required:
                self.required.append(DaemonFeature.NOPORTS_AEAD)


@dataclass
class Established:
    session_id: str
    relay_host: str
    relay_port: int  # portA (client side)
    auth_line: str | EscrAuth | None  # None when our side does not authenticate
    crypto: TunnelCrypto
    payload: dict[str, Any]  # the daemon's verified success payload
    info: DaemonInfo | None
    username: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    relay: str | None = None  # the relay atSign used (chosen when -r was empty or a list)

    @property
    def mode(self) -> str:
        from ..tunnel.keys import mode_name

        return mode_name(self.crypto)


Progress = Callable[[str], None]


def _noop(_msg: str) -> None:
    return None


def _classify_daemon_error(text: str) -> RemoteError:
    line = " ".join(text.split())[:300]
    low = line.lower()
    if "permit" in low or "signature" in low or "not authori" in low or "denied" in low:
        return DaemonRefusedError(f"the device daemon refused: {line}")
    return DaemonFailedError(f"the device daemon reported an error: {line}")


class _Inbox:
    """Routes this session's notifications to futures by kind."""

    def __init__(self, sid: str, spec: SessionSpec) -> None:
        loop = asyncio.get_running_loop()
        self.sid = sid
        self.spec = spec
        self.relay: asyncio.Future[str] = loop.create_future()
        self.ping: asyncio.Future[str] = loop.create_future()
        self.daemon: asyncio.Future[str] = loop.create_future()
        self._want_relay = f"{sid}.sshrvd"
        self._want_daemon = f"{sid}.{spec.device}.sshnp"
        self._want_ping = f"heartbeat.{spec.device}.sshnp"

    @staticmethod
    def regex(sid: str, device: str) -> str:
        return f"{re.escape(sid)}|heartbeat\\.{re.escape(device)}\\.sshnp"

    def feed(self, frm: str, short_key: str, value: str | None) -> None:
        frm = frm.lower()
        if value is None:
            return
        if frm == self.spec.relay and f"nack.{self.sid}" in short_key:
            err = RelayRefusedError(
                f"the relay {self.spec.relay} refused the session: "
                f"{' '.join(value.split())[:300]}"
            )
            # several relay instances may answer one request (multipleAcksOk): the first ack
            # wins, so a refusal stands only if no instance grants within NACK_GRACE
            asyncio.get_running_loop().call_later(NACK_GRACE, _set_exc, self.relay, err)
        elif frm == self.spec.relay and short_key == self._want_relay:
            _set(self.relay, value)
        elif frm == self.spec.daemon and short_key.lower() == self._want_daemon:
            _set(self.daemon, value)
        elif frm == self.spec.daemon and short_key.lower() == self._want_ping:
            _set(self.ping, value)


def _set(f: asyncio.Future[str], v: str) -> None:
    if not f.done():
        f.set_result(v)


def _set_exc(f: asyncio.Future[str], e: BaseException) -> None:
    if not f.done():
        f.set_exception(e)


async def _wait(f: asyncio.Future[str], timeout: float, err: BaseException) -> str:
    try:
        return await asyncio.wait_for(asyncio.shield(f), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise err from None


_KEYGEN = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="ephemeral-rsa")


def start_ephemeral_keygen() -> concurrent.futures.Future[rsa.PrivateKey]:
    """Start making the session's ephemeral RSA-2048 key now (it takes 50-250 ms): callers
    start it before connecting to the atServer so it overlaps the TLS and PKAM round trips.
    The first call takes the key the program started at launch (``crypto.ephemeral``)."""
    return ephemeral.take() or _KEYGEN.submit(rsa.generate)


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
        spec = dataclasses.replace(spec, relay=choice.relay)
        mark("relaySelect")
    sid = wire.new_session_id()
    me = client.atsign
    inbox = _Inbox(sid, spec)
    mon = client.monitor(_Inbox.regex(sid, spec.device))
    pump: asyncio.Task[None] | None = None
    side: list[asyncio.Future[Any]] = []
    try:
        kex = _kex_private(spec)
        eph_task = (
            asyncio.wrap_future(ephemeral or start_ephemeral_keygen())
            if spec.encrypt and kex is None
            else None
        )
        pk_task = asyncio.ensure_future(client.public_key(spec.daemon))
        user_task = (
            asyncio.ensure_future(
                client.get(f"username.{spec.device}.sshnp", shared_by=spec.daemon)
            )
            if spec.fetch_username
            else None
        )
        side += [pk_task] + ([user_task] if user_task is not None else [])
        await mon.started(10.0)
        mark("monitor")

        async def route() -> None:
            while True:
                n = await mon.next()
                inbox.feed(n.from_atsign or "", n.short_key, n.value)

        pump = asyncio.ensure_future(route())
        pump.add_done_callback(lambda t: _pump_ended(t, inbox))

        nonce = wire.client_nonce()
        legacy_relay = not spec.auth_client and not spec.auth_device
        escr_mode = spec.relay_auth_mode == "escr" and not legacy_relay
        relay_aes = relayauth.new_aes_key() if escr_mode else None
        my_uri = relayauth.signing_uri(client)
        if escr_mode and spec.auth_client:  # the relay fetches it when our socket answers
            publish = asyncio.ensure_future(relayauth.publish_signing_key(client))
            side.append(publish)
        progress("Sending daemon feature check request")
        progress("Fetching host and port from srvd")
        check_features = bool(spec.required)  # no feature needed: no ping (official client)
        sends = []
        if check_features:
            sends.append(
                client.notify(
                    spec.daemon,
                    f"ping.{spec.device}",
                    "ping",
                    namespace="sshnp",
                    ttln_ms=NOTIFY_TTLN_MS,
                )
            )
        if legacy_relay:
            relay_req = client.notify(
                spec.relay,
                f"{spec.device}",
                sid,
                namespace="sshrvd",
                ttl_ms=NOTIFY_TTL_MS,
                ttln_ms=NOTIFY_TTLN_MS,
            )
        else:
            body = wire.relay_request(
                session_id=sid,
                atsign_a=me,
                atsign_b=spec.daemon,
                auth_a=spec.auth_client,
                auth_b=spec.auth_device,
                client_nonce=nonce,
            )
            body = relayauth.add_relay_request_fields(
                body, mode=spec.relay_auth_mode if escr_mode else "payload", aes_key=relay_aes,
                only443=spec.only443, prefetch=[my_uri] if escr_mode else [],
            )
            relay_req = client.notify(
                spec.relay,
                f"{spec.device}.request_ports",
                json.dumps(body, separators=(",", ":")),
                namespace="sshrvd",
                ttl_ms=NOTIFY_TTL_MS,
                ttln_ms=NOTIFY_TTLN_MS,
            )
        await asyncio.gather(*sends, relay_req)
        mark("sent")

        progress("Waiting for daemon feature check response")
        ping_wait = (
            asyncio.ensure_future(
                _wait(
                    inbox.ping,
                    spec.ping_timeout,
                    NoAnswerError(
                        f"{FEATURE_CHECK_TIMEOUT_MESSAGE}: no answer from device "
                        f"{spec.device!r} of {spec.daemon} within {spec.ping_timeout:g} s (is "
                        f"the daemon running, the device name right and {me} in its managers "
                        "list?)"
                    ),
                )
            )
            if check_features
            else None
        )
        relay_wait = asyncio.ensure_future(
            _wait(
                inbox.relay,
                spec.relay_timeout,
                NoAnswerError(
                    f"Connection timeout to srvd {spec.relay} service (no answer within "
                    f"{spec.relay_timeout:g} s)"
                ),
            )
        )
        try:
            reply_text = await relay_wait
            reply = wire.parse_relay_reply(reply_text)
            mark("relay")
            progress("Received host and port from srvd")
            ping_text = await ping_wait if ping_wait is not None else None
        finally:
            for t in (ping_wait, relay_wait):
                if t is None:
                    continue
                if not t.done():
                    t.cancel()
                elif not t.cancelled():
                    t.exception()  # both timed out: the one not raised is still retrieved
        info = parse_ping_response(ping_text) if ping_text is not None else None
        mark("ping")
        progress("Received daemon feature check response")
        if (
            info is not None
            and DaemonFeature.SUPPORTS_RAM_ESCR in spec.required
            and not info.features.get(DaemonFeature.SUPPORTS_RAM_ESCR.value)
        ):
            raise EscrUnsupportedError(
                "This device daemon does not support escr relay authentication "
                "(use --ram payload)"
            )
        if info is not None:
            try:
                require_features(info, spec.required)
            except UnsupportedFeatureError as exc:
                raise FeatureRefusedError(str(exc)) from None
        progress("Required daemon features are supported")
        if spec.public_key:
            progress("Sharing ssh public key")
            await client.notify(
                spec.daemon,
                f"sshpublickey.{spec.device}",
                spec.public_key,
                namespace="sshnp",
                ttl_ms=NOTIFY_TTL_MS,
                ttln_ms=NOTIFY_TTLN_MS,
            )

        username = None
        if user_task is not None:
            progress("Resolving remote username for user session")
            try:
                username = (await user_task).strip()
            except KeyNotFoundError:
                raise UsernameNotSharedError(
                    "Remote username record not shared with the client (use -u)"
                ) from None
            if not username or any(c.isspace() or ord(c) < 0x20 for c in username):
                raise ProtocolError("the shared remote username is not a valid user name")

        eph = await eph_task if eph_task is not None else None
        eph_pub = eph.public_key() if eph is not None else None
        kex_pk = _kex_public(kex)
        if spec.kind == "ssh":
            payload = wire.ssh_request(
                session_id=sid,
                host=reply.host,
                port=reply.port_b,
                client_nonce=nonce,
                rvd_nonce=reply.rvd_nonce,
                ephemeral_pk=eph_pub,
                auth_to_rvd=spec.auth_device,
                encrypt=spec.encrypt,
                twin_keys=spec.twin_keys and spec.encrypt,
                aead=spec.offer_aead and spec.encrypt,
                relay_atsign=spec.relay,
                kex_pk=kex_pk,
            )
            key = f"ssh_request.{spec.device}"
        else:
            payload = wire.npt_request(
                session_id=sid,
                rvd_host=reply.host,
                rvd_port=reply.port_b,
                requested_port=spec.remote_port,
                requested_host=spec.remote_host,
                client_nonce=nonce,
                rvd_nonce=reply.rvd_nonce,
                ephemeral_pk=eph_pub,
                encrypt=spec.encrypt,
                timeout_ms=spec.timeout_ms,
                twin_keys=spec.twin_keys and spec.encrypt,
                aead=spec.offer_aead and spec.encrypt,
                relay_atsign=spec.relay,
                kex_pk=kex_pk,
            )
            key = f"npt_request.{spec.device}"
        if escr_mode:
            payload = relayauth.add_request_fields(payload, mode="escr", aes_key=relay_aes)
            if spec.auth_client:  # the relay checks our answers with it: it must be there
                try:
                    await publish
                except (NoPortsError, OSError) as exc:
                    raise EscrUnsupportedError(
                        f"cannot publish our relay signing key ({exc}); use --ram payload"
                    ) from None
        progress("Sending session request to the device daemon")
        await client.send_signed(
            spec.daemon,
            key,
            payload,
            namespace="sshnp",
            ttl_ms=NOTIFY_TTL_MS,
            ttln_ms=NOTIFY_TTLN_MS,
        )
        mark("request")
        progress("Waiting for response from the device daemon")
        text = await _wait(
            inbox.daemon,
            spec.daemon_timeout,
            NoAnswerError(f"No response from the device daemon within {spec.daemon_timeout:g} s"),
        )
        mark("response")
        progress("Received response from the device daemon")
        result = await _verify(client, spec, sid, text, pk_task)
        crypto = (
            _choose_crypto_kex(spec, sid, result, kex)
            if kex is not None
            else _choose_crypto(spec, sid, result, eph)
        )
        auth: str | EscrAuth | None = (
            relay_auth_line(sid, nonce, reply.rvd_nonce, client.keys.encrypt_private)
            if spec.auth_client and reply.rvd_nonce
            else None
        )
        if escr_mode and spec.auth_client:
            assert relay_aes is not None
            auth = relayauth.escr_auth(sid, relay_aes, my_uri, client.keys.pkam_private, True)
        elif spec.auth_client and not reply.rvd_nonce:
            raise ProtocolError("the relay sent no rvdNonce, so our side cannot authenticate")
        mark("keys")
        log.info(
            "session %s established: relay %s:%d, %s", sid, reply.host, reply.port_a, _mode(crypto)
        )
        log.debug("set-up timings (ms): %s", timings)
        return Established(
            sid, reply.host, reply.port_a, auth, crypto, result, info, username, timings, spec.relay
        )
    finally:
        if pump is not None:
            pump.cancel()
        for fut in side:  # early failures leave look-ups running: stop them, swallow results
            if not fut.done():
                fut.cancel()
            elif not fut.cancelled():
                fut.exception()
        await mon.close()


def _pump_ended(task: asyncio.Task[None], inbox: _Inbox) -> None:
    if task.cancelled():
        return
    exc = task.exception() or RuntimeError("monitor ended")
    for f in (inbox.relay, inbox.ping, inbox.daemon):
        _set_exc(f, exc)


def _mode(crypto: TunnelCrypto) -> str:
    from ..tunnel.keys import mode_name

    return mode_name(crypto)


async def _verify(
    client: AtClient, spec: SessionSpec, sid: str, text: str, pk_task: asyncio.Future[rsa.PublicKey]
) -> dict[str, Any]:
    if not text.lstrip().startswith("{"):
        raise _classify_daemon_error(text)
    try:
        await pk_task  # warm the key cache in parallel with the round trips
    except KeyNotFoundError:
        raise KeyNotFoundError(f"{spec.daemon} has no public key") from None
    try:
        payload = await client.verify_signed(text, spec.daemon)
    except SignatureError as exc:
        raise SignatureError(
            f"the device daemon's response signature did not verify: {exc}"
        ) from None
    except ProtocolError as exc:
        raise ProtocolError(f"the device daemon's response is malformed: {exc}") from None
    if payload.get("sessionId") != sid:
        raise ProtocolError("the device daemon's response is for another session")
    status = payload.get("status")
    if status is not None and status != "connected":
        raise _classify_daemon_error(str(status))
    return payload


def _choose_crypto(
    spec: SessionSpec, sid: str, payload: dict[str, Any], eph: rsa.PrivateKey | None
) -> TunnelCrypto:
    if eph is None:
        if spec.require_aead:
            raise DowngradeRefusedError("--require-aead needs encryption (drop --no-et)")
        return None
    keys = wire.SessionKeys.from_response(payload, eph)
    if keys.aead_secret is not None:
        return AeadKeys(keys.aead_secret, sid)
    if spec.require_aead:
        raise DowngradeRefusedError(
            "the device daemon did not accept the AEAD mode and --require-aead was given; refusing "
            "to fall back to AES-CTR"
        )
    if keys.ctr is None:
        raise ProtocolError(
            "the device daemon sent no session keys although encryption was requested"
        )
    return keys.ctr


# -- X25519 in place of the RSA ephemeral key, between our own programs -------------------
# Only with ``require_aead``: the feature check has then confirmed our AEAD mode before the
# request, so the daemon is ours; anything else keeps the RSA key official peers need.


def _kex_private(spec: SessionSpec) -> Any:
    if not (spec.encrypt and spec.require_aead):
        return None
    from ..crypto.ephemeral import x25519_private

    return x25519_private()


def _kex_public(private: Any) -> bytes | None:
    if private is None:
        return None
    from ..crypto.ephemeral import x25519_public_raw

    return x25519_public_raw(private)


def _choose_crypto_kex(
    spec: SessionSpec, sid: str, payload: dict[str, Any], private: Any
) -> TunnelCrypto:
    if wire.KEX_PK_FIELD not in payload:
        raise DowngradeRefusedError(
            "the device daemon did not accept the AEAD mode and --require-aead was given; refusing "
            "to fall back to AES-CTR"
        )
    keys = wire.kex_keys_from_response(payload, private, sid)
    if keys.aead_secret is None:
        raise DowngradeRefusedError(
            "the device daemon did not accept the AEAD mode and --require-aead was given; refusing "
            "to fall back to AES-CTR"
        )
    return AeadKeys(keys.aead_secret, sid)


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
    again = dataclasses.replace(
        spec,
        relay_auth_mode="payload",
        required=[f for f in spec.required if f is not DaemonFeature.SUPPORTS_RAM_ESCR],
    )
    return await establish(client, again, progress=progress)

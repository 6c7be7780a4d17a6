"""The client side of a session set-up, without I/O (spec 3.1, 3.3, 10; DESIGN section 4).

:class:`ClientHandshake` decides what :func:`noports.session.client.establish` sends, routes
the notifications it receives, keeps the deadlines on an injected clock, checks the daemon's
features, verifies the daemon's answer and chooses the tunnel crypto. It does no I/O: the
driver sends what it is told (:class:`Notify`, :class:`SignedNotify`), feeds in what arrives
(:meth:`~ClientHandshake.receive`, :meth:`~ClientHandshake.monitor_ended`), fetches a key
when asked (:class:`NeedKey`), and calls :meth:`~ClientHandshake.next_event` again whenever
something arrived or :meth:`~ClientHandshake.deadline` passed (h11's ``NEED_DATA`` pattern).

The steps, in order; a failure raises a NoPortsError subclass with a one-line message:

``OPENING``       :meth:`opening`: the ping (D1, only when a feature is needed) and the relay
                  request (R1, or the legacy R1L); :meth:`opening_sent` starts both deadlines
``AWAIT_RELAY``   next_event: :class:`RelayAnswered` (R2), or the relay's nack once no other
                  instance granted within ``NACK_GRACE``, or the relay timeout
``AWAIT_PING``    next_event: :class:`PingAnswered` (``info`` None without a ping), or timeout
``REQUEST``       :meth:`check_features`, :meth:`share_public_key`, :meth:`request` (D3/D4)
``AWAIT_DAEMON``  :meth:`request_sent`; next_event: :class:`NeedKey` for an envelope, an
                  error for a plain string (D5), or the daemon timeout
``VERIFY``        :meth:`key_received`: :class:`NeedKey` (``refresh``: once, after a signature
                  failure with the cached key) or :class:`Verified`
``DONE``          :meth:`crypto` and :meth:`relay_auth` for the tunnel
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Callable
from typing import Any

from ..crypto import rsa
from ..crypto.envelope import relay_auth_line, verify_envelope
from ..crypto.escr import EscrAuth
from ..errors import (
    ConfigError,
    LocalError,
    NoPortsError,
    ProtocolError,
    RemoteError,
    SignatureError,
)
from ..names import validate_atsign, validate_device_name
from ..record import Frozen, Record, set_field
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
)
from .features import (
    FEATURE_CHECK_TIMEOUT_MESSAGE,
    DaemonFeature,
    DaemonInfo,
    UnsupportedFeatureError,
    parse_ping_response,
    require_features,
)

RELAY_TIMEOUT = 20.0  # spec 3.5: relay response wait
DAEMON_TIMEOUT = 15.0  # spec 3.5: daemon session response
PING_TIMEOUT = 20.0  # --daemon-ping-timeout default
NOTIFY_TTL_MS = 10_000
NACK_GRACE = 1.0  # seconds another relay instance has to grant after one refused
NOTIFY_TTLN_MS = 60_000


class SessionSpec(Record):
    """What to ask for. ``kind`` is ``"ssh"`` (D3) or ``"npt"`` (D4)."""

    __slots__ = (
        "kind",
        "daemon",
        "device",
        "relay",
        "auth_client",
        "auth_device",
        "encrypt",
        "offer_aead",
        "require_aead",
        "twin_keys",
        "required",
        "ping_timeout",
        "relay_timeout",
        "daemon_timeout",
        "remote_host",
        "remote_port",
        "timeout_ms",
        "fetch_username",
        "public_key",
        "relay_auth_mode",
        "only443",
        "ram_fallback",
        "relay_candidates",
        "root",
    )
    kind: str
    daemon: str
    device: str
    relay: str  # "" = select one (latest spec 1): from relay_candidates, else the standard list
    auth_client: bool  # --ac: our tunnel end authenticates to the relay
    auth_device: bool  # --ad: the daemon's end authenticates to the relay
    encrypt: bool  # --et
    offer_aead: bool  # our strong mode offer
    require_aead: bool  # refuse anything weaker
    twin_keys: bool
    required: list[DaemonFeature]
    ping_timeout: float
    relay_timeout: float
    daemon_timeout: float
    # npt
    remote_host: str
    remote_port: int
    timeout_ms: int
    # sshnp: resolve the remote username from the daemon's shared record
    fetch_username: bool
    # sshnp -s: "<type> <base64>" sent as D6 once the feature check passed
    public_key: str | None
    # --ram: how both tunnel ends authenticate to the relay; --443: the single-port relay
    relay_auth_mode: str
    only443: bool
    ram_fallback: bool  # --ram not given: payload with a daemon that lacks escr
    # relay auto-selection (when ``relay`` is empty)
    relay_candidates: list[str] | None
    root: str | None  # the root domain, for the standard relay list's address

    def __init__(
        self,
        kind: str,
        daemon: str,
        device: str,
        relay: str,
        auth_client: bool = True,
        auth_device: bool = True,
        encrypt: bool = True,
        offer_aead: bool = True,
        require_aead: bool = False,
        twin_keys: bool = True,
        required: list[DaemonFeature] | None = None,
        ping_timeout: float = PING_TIMEOUT,
        relay_timeout: float = RELAY_TIMEOUT,
        daemon_timeout: float = DAEMON_TIMEOUT,
        remote_host: str = "localhost",
        remote_port: int = 22,
        timeout_ms: int = 30_000,
        fetch_username: bool = False,
        public_key: str | None = None,
        relay_auth_mode: str = "escr",
        only443: bool = False,
        ram_fallback: bool = False,
        relay_candidates: list[str] | None = None,
        root: str | None = None,
    ) -> None:
        self.kind = kind
        self.daemon = daemon
        self.device = device
        self.relay = relay
        self.auth_client = auth_client
        self.auth_device = auth_device
        self.encrypt = encrypt
        self.offer_aead = offer_aead
        self.require_aead = require_aead
        self.twin_keys = twin_keys
        self.required = [] if required is None else required
        self.ping_timeout = ping_timeout
        self.relay_timeout = relay_timeout
        self.daemon_timeout = daemon_timeout
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.timeout_ms = timeout_ms
        self.fetch_username = fetch_username
        self.public_key = public_key
        self.relay_auth_mode = relay_auth_mode
        self.only443 = only443
        self.ram_fallback = ram_fallback
        self.relay_candidates = relay_candidates
        self.root = root
        self.__post_init__()

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


class Established(Record):
    __slots__ = (
        "session_id",
        "relay_host",
        "relay_port",
        "auth_line",
        "crypto",
        "payload",
        "info",
        "username",
        "timings",
        "relay",
    )
    session_id: str
    relay_host: str
    relay_port: int  # portA (client side)
    auth_line: str | EscrAuth | None  # None when our side does not authenticate
    crypto: TunnelCrypto
    payload: dict[str, Any]  # the daemon's verified success payload
    info: DaemonInfo | None
    username: str | None
    timings: dict[str, float]
    relay: str | None  # the relay atSign used (chosen when -r was empty or a list)

    def __init__(
        self,
        session_id: str,
        relay_host: str,
        relay_port: int,
        auth_line: str | EscrAuth | None,
        crypto: TunnelCrypto,
        payload: dict[str, Any],
        info: DaemonInfo | None,
        username: str | None = None,
        timings: dict[str, float] | None = None,
        relay: str | None = None,
    ) -> None:
        self.session_id = session_id
        self.relay_host = relay_host
        self.relay_port = relay_port
        self.auth_line = auth_line
        self.crypto = crypto
        self.payload = payload
        self.info = info
        self.username = username
        self.timings = {} if timings is None else timings
        self.relay = relay

    @property
    def mode(self) -> str:
        from ..tunnel.keys import mode_name

        return mode_name(self.crypto)


# -- what the driver does (out) and what it hands back (in) ---------------------------------


class Notify(Frozen):
    """Send this notification (``AtClient.notify``)."""

    __slots__ = ("to", "key", "value", "namespace", "ttl_ms", "ttln_ms")
    to: str
    key: str
    value: str
    namespace: str
    ttl_ms: int | None
    ttln_ms: int

    def __init__(
        self,
        to: str,
        key: str,
        value: str,
        namespace: str,
        ttl_ms: int | None,
        ttln_ms: int,
    ) -> None:
        set_field(self, "to", to)
        set_field(self, "key", key)
        set_field(self, "value", value)
        set_field(self, "namespace", namespace)
        set_field(self, "ttl_ms", ttl_ms)
        set_field(self, "ttln_ms", ttln_ms)


class SignedNotify(Frozen):
    """Sign ``payload`` and send it (``AtClient.send_signed``)."""

    __slots__ = ("to", "key", "payload", "namespace", "ttl_ms", "ttln_ms")
    to: str
    key: str
    payload: dict[str, Any]
    namespace: str
    ttl_ms: int
    ttln_ms: int

    def __init__(
        self,
        to: str,
        key: str,
        payload: dict[str, Any],
        namespace: str,
        ttl_ms: int,
        ttln_ms: int,
    ) -> None:
        set_field(self, "to", to)
        set_field(self, "key", key)
        set_field(self, "payload", payload)
        set_field(self, "namespace", namespace)
        set_field(self, "ttl_ms", ttl_ms)
        set_field(self, "ttln_ms", ttln_ms)


class NeedKey(Frozen):
    """Fetch ``public:publickey@<atsign>`` (bypassing caches when ``refresh``) and pass it to
    :meth:`ClientHandshake.key_received`."""

    __slots__ = ("atsign", "refresh")
    atsign: str
    refresh: bool

    def __init__(self, atsign: str, refresh: bool = False) -> None:
        set_field(self, "atsign", atsign)
        set_field(self, "refresh", refresh)


class RelayAnswered(Frozen):
    __slots__ = ("reply",)
    reply: wire.RelayReply

    def __init__(self, reply: wire.RelayReply) -> None:
        set_field(self, "reply", reply)


class PingAnswered(Frozen):
    __slots__ = ("info",)
    info: DaemonInfo | None  # None: no feature was needed, so no ping was sent

    def __init__(self, info: DaemonInfo | None) -> None:
        set_field(self, "info", info)


class Verified(Frozen):
    __slots__ = ("payload",)
    payload: dict[str, Any]  # the daemon's verified success payload

    def __init__(self, payload: dict[str, Any]) -> None:
        set_field(self, "payload", payload)


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


#: :meth:`ClientHandshake.next_event`: nothing to do until a notification or the deadline.
NEED_DATA = _NeedData()


class State(enum.Enum):
    OPENING = "opening"
    AWAIT_RELAY = "await relay"
    AWAIT_PING = "await ping"
    REQUEST = "request"
    AWAIT_DAEMON = "await daemon"
    VERIFY = "verify"
    DONE = "done"


class _Slot:
    """One awaited answer. As with a future, the first value or failure wins; timers are
    failures that stand at their time unless an answer came first."""

    __slots__ = ("value", "error", "timers")

    def __init__(self) -> None:
        self.value: str | None = None
        self.error: BaseException | None = None
        self.timers: list[tuple[float, BaseException]] = []

    @property
    def done(self) -> bool:
        return self.value is not None or self.error is not None

    def set(self, value: str) -> None:
        if not self.done:
            self.value = value

    def fail(self, exc: BaseException) -> None:
        if not self.done:
            self.error = exc

    def settle(self, now: float) -> None:
        for at, exc in sorted(self.timers, key=lambda t: t[0]):
            if at <= now:
                self.fail(exc)
        if self.done:
            self.timers.clear()

    def next_timer(self) -> float | None:
        return None if self.done or not self.timers else min(t[0] for t in self.timers)

    def result(self) -> str | None:
        """The value, None while waiting; raises the failure."""
        if self.error is not None:
            raise self.error
        return self.value


def classify_daemon_error(text: str) -> RemoteError:
    line = " ".join(text.split())[:300]
    low = line.lower()
    if "permit" in low or "signature" in low or "not authori" in low or "denied" in low:
        return DaemonRefusedError(f"the device daemon refused: {line}")
    return DaemonFailedError(f"the device daemon reported an error: {line}")


class ClientHandshake:
    """One session set-up as the client sees it; see the module docstring for the steps.

    ``clock`` is the driver's monotonic clock (``loop.time``); ``relay_aes`` and ``kex`` are
    made here unless given (tests pass their own); ``my_uri`` is our signing key's URI.
    """

    def __init__(
        self,
        spec: SessionSpec,
        *,
        me: str,
        my_uri: str,
        clock: Callable[[], float],
        sid: str | None = None,
        nonce: str | None = None,
        relay_aes: str | None = None,
        kex: Any = None,
    ) -> None:
        if not spec.relay:
            raise LocalError("the handshake needs a relay (select one first)")
        self.spec = spec
        self.me = me
        self.my_uri = my_uri
        self.clock = clock
        self.sid = sid or wire.new_session_id()
        self.nonce = nonce or wire.client_nonce()
        self.legacy_relay = not spec.auth_client and not spec.auth_device
        self.escr_mode = spec.relay_auth_mode == "escr" and not self.legacy_relay
        self.relay_aes = (relay_aes or relayauth.new_aes_key()) if self.escr_mode else None
        self.kex = kex if kex is not None else _kex_private(spec)
        self.check_features_needed = bool(spec.required)  # none needed: no ping (official)
        self.state = State.OPENING
        self.reply: wire.RelayReply | None = None
        self._relay = _Slot()
        self._ping = _Slot()
        self._daemon = _Slot()
        self._want_relay = f"{self.sid}.sshrvd"
        self._want_daemon = f"{self.sid}.{spec.device}.sshnp"
        self._want_ping = f"heartbeat.{spec.device}.sshnp"
        self._text = ""
        self._first_key: rsa.PublicKey | None = None
        self._first_error: SignatureError | None = None

    # -- input ----------------------------------------------------------------------------

    @staticmethod
    def regex(sid: str, device: str) -> str:
        """The monitor regex for everything this session can receive."""
        return f"{re.escape(sid)}|heartbeat\\.{re.escape(device)}\\.sshnp"

    @property
    def wants_ephemeral_rsa(self) -> bool:
        """True when the request carries an RSA ephemeral key (else X25519, or no crypto)."""
        return self.spec.encrypt and self.kex is None

    def receive(self, frm: str, short_key: str, value: str | None) -> None:
        """A notification from the monitor (any order, any time)."""
        self._settle()
        frm = frm.lower()
        if value is None:
            return
        spec = self.spec
        if frm == spec.relay and f"nack.{self.sid}" in short_key:
            err = RelayRefusedError(
                f"the relay {spec.relay} refused the session: {' '.join(value.split())[:300]}"
            )
            # several relay instances may answer one request (multipleAcksOk): the first ack
            # wins, so a refusal stands only if no instance grants within NACK_GRACE
            self._relay.timers.append((self.clock() + NACK_GRACE, err))
        elif frm == spec.relay and short_key == self._want_relay:
            self._relay.set(value)
        elif frm == spec.daemon and short_key.lower() == self._want_daemon:
            self._daemon.set(value)
        elif frm == spec.daemon and short_key.lower() == self._want_ping:
            self._ping.set(value)

    def monitor_ended(self, exc: BaseException) -> None:
        """The notification monitor failed: every answer still awaited fails with ``exc``."""
        self._settle()
        for slot in (self._relay, self._ping, self._daemon):
            slot.fail(exc)

    def _settle(self) -> None:
        now = self.clock()
        for slot in (self._relay, self._ping, self._daemon):
            slot.settle(now)

    def deadline(self) -> float | None:
        """When :meth:`next_event` may change without input (None: only input changes it)."""
        slot = {
            State.AWAIT_RELAY: self._relay,
            State.AWAIT_PING: self._ping,
            State.AWAIT_DAEMON: self._daemon,
        }.get(self.state)
        return None if slot is None else slot.next_timer()

    # -- steps ----------------------------------------------------------------------------

    def _expect(self, *states: State) -> None:
        if self.state not in states:
            raise LocalError(f"handshake step out of order (state {self.state.value})")

    def opening(self) -> list[Notify]:
        """The ping (when a feature is needed) and the relay request, sent together."""
        self._expect(State.OPENING)
        spec = self.spec
        out = []
        if self.check_features_needed:
            out.append(
                Notify(spec.daemon, f"ping.{spec.device}", "ping", "sshnp", None, NOTIFY_TTLN_MS)
            )
        if self.legacy_relay:
            out.append(
                Notify(spec.relay, f"{spec.device}", self.sid, "sshrvd", NOTIFY_TTL_MS,
                       NOTIFY_TTLN_MS)
            )
        else:
            body = wire.relay_request(
                session_id=self.sid,
                atsign_a=self.me,
                atsign_b=spec.daemon,
                auth_a=spec.auth_client,
                auth_b=spec.auth_device,
                client_nonce=self.nonce,
            )
            body = relayauth.add_relay_request_fields(
                body, mode=spec.relay_auth_mode if self.escr_mode else "payload",
                aes_key=self.relay_aes, only443=spec.only443,
                prefetch=[self.my_uri] if self.escr_mode else [],
            )
            out.append(
                Notify(spec.relay, f"{spec.device}.request_ports",
                       json.dumps(body, separators=(",", ":")), "sshrvd", NOTIFY_TTL_MS,
                       NOTIFY_TTLN_MS)
            )
        return out

    def opening_sent(self) -> None:
        """The opening went out: the relay and ping answers are awaited from now."""
        self._expect(State.OPENING)
        spec = self.spec
        now = self.clock()
        self._relay.timers.append((
            now + spec.relay_timeout,
            NoAnswerError(
                f"Connection timeout to srvd {spec.relay} service (no answer within "
                f"{spec.relay_timeout:g} s)"
            ),
        ))
        if self.check_features_needed:
            self._ping.timers.append((
                now + spec.ping_timeout,
                NoAnswerError(
                    f"{FEATURE_CHECK_TIMEOUT_MESSAGE}: no answer from device "
                    f"{spec.device!r} of {spec.daemon} within {spec.ping_timeout:g} s (is "
                    f"the daemon running, the device name right and {self.me} in its "
                    "managers list?)"
                ),
            ))
        self.state = State.AWAIT_RELAY

    def next_event(self) -> RelayAnswered | PingAnswered | NeedKey | _NeedData:
        """The next answer, in protocol order (relay, ping, daemon); raises a failure."""
        self._settle()
        if self.state is State.AWAIT_RELAY:
            text = self._relay.result()
            if text is None:
                return NEED_DATA
            self.reply = wire.parse_relay_reply(text)
            self.state = State.AWAIT_PING
            return RelayAnswered(self.reply)
        if self.state is State.AWAIT_PING:
            if not self.check_features_needed:
                self.state = State.REQUEST
                return PingAnswered(None)
            text = self._ping.result()
            if text is None:
                return NEED_DATA
            self.state = State.REQUEST
            return PingAnswered(parse_ping_response(text))
        if self.state is State.AWAIT_DAEMON:
            text = self._daemon.result()
            if text is None:
                return NEED_DATA
            if not text.lstrip().startswith("{"):
                raise classify_daemon_error(text)
            self._text = text
            self.state = State.VERIFY
            return NeedKey(self.spec.daemon)
        raise LocalError(f"no event to wait for in state {self.state.value}")

    def check_features(self, info: DaemonInfo | None) -> None:
        """Refuse a daemon that lacks a feature the flags need (the official wording)."""
        spec = self.spec
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
            if (
                self.kex is None
                and spec.encrypt
                and spec.offer_aead
                and info.features.get(DaemonFeature.NOPORTS_KEX.value) is True
            ):
                # our daemon says it answers an X25519 offer: no RSA ephemeral key is needed
                # (one made ahead is left unused); official peers never say so
                from ..crypto.ephemeral import x25519_private

                self.kex = x25519_private()

    def share_public_key(self) -> Notify | None:
        """sshnp -s: D6, our ssh public key for the device's authorized_keys."""
        spec = self.spec
        if not spec.public_key:
            return None
        return Notify(spec.daemon, f"sshpublickey.{spec.device}", spec.public_key, "sshnp",
                      NOTIFY_TTL_MS, NOTIFY_TTLN_MS)

    @staticmethod
    def check_username(text: str) -> str:
        username = text.strip()
        if not username or any(c.isspace() or ord(c) < 0x20 for c in username):
            raise ProtocolError("the shared remote username is not a valid user name")
        return username

    def request(self, eph_pub: rsa.PublicKey | None) -> SignedNotify:
        """The signed session request (D3 for ssh, D4 for npt) on the relay's answer."""
        self._expect(State.REQUEST)
        spec, reply = self.spec, self.reply
        assert reply is not None
        common: dict[str, Any] = {
            "session_id": self.sid,
            "client_nonce": self.nonce,
            "rvd_nonce": reply.rvd_nonce,
            "ephemeral_pk": eph_pub,
            "encrypt": spec.encrypt,
            "twin_keys": spec.twin_keys and spec.encrypt,
            "aead": spec.offer_aead and spec.encrypt,
            "relay_atsign": spec.relay,
            "kex_pk": _kex_public(self.kex),
        }
        if spec.kind == "ssh":
            payload = wire.ssh_request(
                host=reply.host, port=reply.port_b, auth_to_rvd=spec.auth_device, **common
            )
            key = f"ssh_request.{spec.device}"
        else:
            payload = wire.npt_request(
                rvd_host=reply.host,
                rvd_port=reply.port_b,
                requested_port=spec.remote_port,
                requested_host=spec.remote_host,
                timeout_ms=spec.timeout_ms,
                **common,
            )
            key = f"npt_request.{spec.device}"
        if self.escr_mode:
            payload = relayauth.add_request_fields(payload, mode="escr", aes_key=self.relay_aes)
        return SignedNotify(spec.daemon, key, payload, "sshnp", NOTIFY_TTL_MS, NOTIFY_TTLN_MS)

    @staticmethod
    def publish_failed(exc: NoPortsError | OSError) -> EscrUnsupportedError:
        """The error when our relay signing key cannot be published (the relay needs it)."""
        return EscrUnsupportedError(
            f"cannot publish our relay signing key ({exc}); use --ram payload"
        )

    def request_sent(self) -> None:
        """The request went out: the daemon's answer is awaited from now."""
        self._expect(State.REQUEST)
        spec = self.spec
        self._daemon.timers.append((
            self.clock() + spec.daemon_timeout,
            NoAnswerError(f"No response from the device daemon within {spec.daemon_timeout:g} s"),
        ))
        self.state = State.AWAIT_DAEMON

    def key_received(self, key: rsa.PublicKey) -> NeedKey | Verified:
        """The daemon's public key, as :class:`NeedKey` asked. A failure with the first (cached)
        key asks once more, bypassing caches: the daemon may have re-onboarded."""
        self._expect(State.VERIFY)
        try:
            if self._first_key is None:
                self._first_key = key
                try:
                    payload = verify_envelope(self._text, key)
                except SignatureError as exc:
                    self._first_error = exc
                    return NeedKey(self.spec.daemon, refresh=True)
            elif rsa.public_to_b64(key) == rsa.public_to_b64(self._first_key):
                assert self._first_error is not None
                raise self._first_error
            else:
                payload = verify_envelope(self._text, key)
        except SignatureError as exc:
            raise SignatureError(
                f"the device daemon's response signature did not verify: {exc}"
            ) from None
        except ProtocolError as exc:
            raise ProtocolError(f"the device daemon's response is malformed: {exc}") from None
        if payload.get("sessionId") != self.sid:
            raise ProtocolError("the device daemon's response is for another session")
        status = payload.get("status")
        if status is not None and status != "connected":
            raise classify_daemon_error(str(status))
        self.state = State.DONE
        return Verified(payload)

    def crypto(self, payload: dict[str, Any], eph: rsa.PrivateKey | None) -> TunnelCrypto:
        """The tunnel crypto the verified answer gives: AEAD, twin or legacy CTR, or clear."""
        self._expect(State.DONE)
        if self.kex is not None:
            return _choose_crypto_kex(self.spec, self.sid, payload, self.kex)
        return _choose_crypto(self.spec, self.sid, payload, eph)

    def relay_auth(
        self, encrypt_private: rsa.PrivateKey, pkam_private: rsa.PrivateKey
    ) -> str | EscrAuth | None:
        """How our tunnel end authenticates to the relay (None: it does not)."""
        self._expect(State.DONE)
        spec, reply = self.spec, self.reply
        assert reply is not None
        auth: str | EscrAuth | None = (
            relay_auth_line(self.sid, self.nonce, reply.rvd_nonce, encrypt_private)
            if spec.auth_client and reply.rvd_nonce
            else None
        )
        if self.escr_mode and spec.auth_client:
            assert self.relay_aes is not None
            auth = relayauth.escr_auth(self.sid, self.relay_aes, self.my_uri, pkam_private, True)
        elif spec.auth_client and not reply.rvd_nonce:
            raise ProtocolError("the relay sent no rvdNonce, so our side cannot authenticate")
        return auth


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
# From the start with ``require_aead`` (the feature check then confirms our AEAD mode before
# the request, so the daemon is ours), else once the ping answer says ``noportsKex``
# (:meth:`ClientHandshake.check_features`); anything else keeps the RSA key official peers
# need.


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
    if wire.KEX_PK_FIELD not in payload and not spec.require_aead:
        raise ProtocolError(
            "the device daemon advertised noportsKex but answered without its X25519 key"
        )
    if wire.KEX_PK_FIELD not in payload:
        raise DowngradeRefusedError(
            "the device daemon did not accept the AEAD mode and --require-aead was given; refusing "
            "to fall back to AES-CTR"
        )
    keys = wire.kex_keys_from_response(payload, private, sid)
    if keys.aead_secret is None and not spec.require_aead:
        raise ProtocolError(
            "the device daemon answered our X25519 offer without the AEAD mode it advertised"
        )
    if keys.aead_secret is None:
        raise DowngradeRefusedError(
            "the device daemon did not accept the AEAD mode and --require-aead was given; refusing "
            "to fall back to AES-CTR"
        )
    return AeadKeys(keys.aead_secret, sid)

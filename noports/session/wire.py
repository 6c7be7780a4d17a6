"""Session payloads between clients, device daemons and relays (spec 2.2, 3.1, 3.3, 4.2, 10).

Field order is part of the contract: signatures cover Dart's compact JSON of the payload in
insertion order, so builders emit the official order and parsers keep whatever they received
(unknown fields included) for signature checks.

Our additions ride in fields the official tools ignore:

* ``twinKeys: true`` in a request asks for one AES key+IV per direction (the later official
  fix for keystream reuse); the response carries ``aesKeyC2D``/``ivC2D``/``aesKeyD2C``/``ivD2C``,
  each wrapped like ``sessionAESKey``.
* ``noportsAead: 1`` in a request offers the strong mode (DESIGN decision 2); a daemon that
  accepts answers with ``noportsAeadSecret``: the 32-byte session secret, base64, wrapped with
  the client's ephemeral key exactly as ``sessionAESKey`` is. An official daemon ignores the
  offer and answers in the legacy form; the client then uses legacy or twin-key CTR, or
  refuses when the user required the strong mode.

* ``noportsKex: "x25519"`` with ``noportsKexPK`` in a request (sent by our client only when
  the feature check confirmed our AEAD mode, ``--require-aead``) replaces the RSA-2048
  ephemeral key; the daemon answers with its own ``noportsKexPK`` and the key fields sealed
  under the X25519-derived key (``noports.crypto.ephemeral``, "X25519"). RSA stays for
  official peers.

Wrapping (spec 1.3): RSAES-PKCS1-v1_5 with the client's ephemeral RSA-2048 public key over the
UTF-8 bytes of the *base64 text* of each key, IV or secret; the ciphertext is base64.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from ..at.commands import random_uuid
from ..crypto import rsa
from ..crypto.encoding import b64d, b64e
from ..crypto.stream import CtrKeys
from ..errors import ProtocolError
from ..record import Frozen, set_field
from ..tunnel.keys import AeadKeys

if TYPE_CHECKING:
    import datetime as _dt

EPHEMERAL_PK_TYPE = "rsa2048"
AEAD_VERSION = 1


def new_session_id() -> str:
    return random_uuid()


def client_nonce(now: _dt.datetime | None = None) -> str:
    """Dart ``DateTime.now().toIso8601String()``: local time, microseconds, no zone."""
    if now is not None:
        return now.strftime("%Y-%m-%dT%H:%M:%S.%f")
    # the same text as datetime.now() without importing datetime (~2 ms at start)
    sec, us = divmod(time.time_ns() // 1000, 1_000_000)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.localtime(sec))}.{us:06d}"


# ---------------------------------------------------------------------------------------
# Key transport


def wrap(public_key: rsa.PublicKey, raw: bytes) -> str:
    """Wrap raw key bytes: RSA-PKCS1v15(pk, base64(raw) as UTF-8), base64."""
    return rsa.encrypt(public_key, b64e(raw).encode("ascii"))


def unwrap(private_key: rsa.PrivateKey, wrapped_b64: str, *, what: str, length: int) -> bytes:
    text = rsa.decrypt(private_key, wrapped_b64)
    try:
        inner = text.decode("ascii")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"{what} does not unwrap to base64 text") from exc
    return b64d(inner, what=what, length=length)


class SessionKeys(Frozen):
    """What the daemon hands the client for one session's data plane."""

    __slots__ = ("ctr", "aead_secret")
    ctr: CtrKeys | None  # legacy (same both ways) or twin keys
    aead_secret: bytes | None

    def __init__(self, ctr: CtrKeys | None = None, aead_secret: bytes | None = None) -> None:
        set_field(self, "ctr", ctr)
        set_field(self, "aead_secret", aead_secret)

    @classmethod
    def generate(cls, *, encrypt: bool, twin: bool, aead: bool) -> SessionKeys:
        ctr = None
        if encrypt:
            if twin:
                ctr = CtrKeys(os.urandom(32), os.urandom(16), os.urandom(32), os.urandom(16))
            else:
                ctr = CtrKeys(os.urandom(32), os.urandom(16))
        return cls(ctr=ctr, aead_secret=os.urandom(32) if aead and encrypt else None)

    def aead(self, session_id: str) -> AeadKeys | None:
        return AeadKeys(self.aead_secret, session_id) if self.aead_secret else None

    def response_fields(self, client_pk: rsa.PublicKey) -> dict[str, Any]:
        """The wrapped key fields of a success response (latest spec 3.2): the C2D key and IV
        are named ``aesKeyC2D``/``ivC2D`` with twin keys, else ``sessionAESKey``/``sessionIV``;
        ``aesKeyD2C``/``ivD2C`` follow (null without twin keys)."""
        twin = (
            self.ctr is not None and self.ctr.key_d2c is not None and self.ctr.iv_d2c is not None
        )
        names = ("aesKeyC2D", "ivC2D") if twin else ("sessionAESKey", "sessionIV")
        out: dict[str, Any] = {names[0]: None, names[1]: None}
        if self.ctr is not None:
            out[names[0]] = wrap(client_pk, self.ctr.key_c2d)
            out[names[1]] = wrap(client_pk, self.ctr.iv_c2d)
        out["aesKeyD2C"] = out["ivD2C"] = None
        if twin:
            assert self.ctr is not None and self.ctr.key_d2c and self.ctr.iv_d2c
            out["aesKeyD2C"] = wrap(client_pk, self.ctr.key_d2c)
            out["ivD2C"] = wrap(client_pk, self.ctr.iv_d2c)
        if self.aead_secret is not None:
            out["noportsAeadSecret"] = wrap(client_pk, self.aead_secret)
        return out

    def raw_fields(self) -> dict[str, bytes]:
        """The raw key material by response field name (the X25519 response seals these)."""
        out: dict[str, bytes] = {}
        if self.ctr is not None:
            out["sessionAESKey"] = self.ctr.key_c2d
            out["sessionIV"] = self.ctr.iv_c2d
            if self.ctr.key_d2c is not None and self.ctr.iv_d2c is not None:
                out["aesKeyD2C"] = self.ctr.key_d2c
                out["ivD2C"] = self.ctr.iv_d2c
        if self.aead_secret is not None:
            out["noportsAeadSecret"] = self.aead_secret
        return out

    @classmethod
    def from_response(cls, payload: dict[str, Any], ephemeral: rsa.PrivateKey) -> SessionKeys:
        def get(name: str, length: int) -> bytes | None:
            v = payload.get(name)
            if v is None:
                return None
            if not isinstance(v, str):
                raise ProtocolError(f"{name} is not a string")
            return unwrap(ephemeral, v, what=name, length=length)

        return cls.from_getter(get)

    @classmethod
    def from_getter(cls, get: Any) -> SessionKeys:
        """From ``get(field name, length) -> raw bytes or None`` (RSA or X25519 unwrapping)."""
        key = get("aesKeyC2D", 32) or get("sessionAESKey", 32)
        iv = get("ivC2D", 16) or get("sessionIV", 16)
        ctr = None
        if key is not None and iv is not None:
            k2, iv2 = get("aesKeyD2C", 32), get("ivD2C", 16)
            ctr = (
                CtrKeys(key, iv, k2, iv2)
                if k2 is not None and iv2 is not None
                else CtrKeys(key, iv)
            )
        elif (key is None) != (iv is None):
            raise ProtocolError("response has a session key without an IV (or the reverse)")
        return cls(ctr=ctr, aead_secret=get("noportsAeadSecret", 32))


# ---------------------------------------------------------------------------------------
# Client -> daemon requests (signed envelopes; D3 and D4)


RELAY_AUTH_MODES = ("payload", "escr")


def ssh_request(
    *,
    session_id: str,
    host: str,
    port: int,
    client_nonce: str,
    rvd_nonce: str | None,
    ephemeral_pk: rsa.PublicKey | None,
    auth_to_rvd: bool = True,
    encrypt: bool = True,
    twin_keys: bool = False,
    aead: bool = False,
    direct: bool = True,
    relay_auth_mode: str = "payload",
    relay_auth_aes_key: str | None = None,
    relay_atsign: str | None = None,
    kex_pk: bytes | None = None,
) -> dict[str, Any]:
    """The latest official field order (spec-latest 3.1); our ``noportsAead`` goes last."""
    p: dict[str, Any] = {
        "direct": direct,
        "sessionId": session_id,
        "host": host,
        "port": port,
        "authenticateToRvd": auth_to_rvd,
        "relayAuthMode": relay_auth_mode,
        "relayAuthAesKey": relay_auth_aes_key,
        "clientNonce": client_nonce,
        "rvdNonce": rvd_nonce,
        "encryptRvdTraffic": encrypt,
        "clientEphemeralPK": rsa.public_to_b64(ephemeral_pk) if ephemeral_pk else None,
        "clientEphemeralPKType": EPHEMERAL_PK_TYPE,
        "twinKeys": twin_keys,
        "relayAtsign": relay_atsign,
    }
    _additions(p, aead)
    _kex_offer(p, kex_pk)
    return p


def npt_request(
    *,
    session_id: str,
    rvd_host: str,
    rvd_port: int,
    requested_port: int,
    requested_host: str,
    client_nonce: str,
    rvd_nonce: str | None,
    ephemeral_pk: rsa.PublicKey | None,
    encrypt: bool = True,
    timeout_ms: int = 30000,
    twin_keys: bool = False,
    aead: bool = False,
    relay_auth_mode: str = "payload",
    relay_auth_aes_key: str | None = None,
    relay_atsign: str | None = None,
    kex_pk: bytes | None = None,
) -> dict[str, Any]:
    """The latest official field order (spec-latest 3.1); our ``noportsAead`` goes last."""
    p: dict[str, Any] = {
        "sessionId": session_id,
        "rvdHost": rvd_host,
        "rvdPort": rvd_port,
        "requestedPort": requested_port,
        "requestedHost": requested_host,
        "authenticateToRvd": True,
        "relayAuthMode": relay_auth_mode,
        "relayAuthAesKey": relay_auth_aes_key,
        "clientNonce": client_nonce,
        "rvdNonce": rvd_nonce,
        "encryptRvdTraffic": encrypt,
        "clientEphemeralPK": rsa.public_to_b64(ephemeral_pk) if ephemeral_pk else None,
        "clientEphemeralPKType": EPHEMERAL_PK_TYPE,
        "timeout": timeout_ms,
        "twinKeys": twin_keys,
        "relayAtsign": relay_atsign,
    }
    _additions(p, aead)
    _kex_offer(p, kex_pk)
    return p


def _additions(p: dict[str, Any], aead: bool) -> None:
    if aead:
        p["noportsAead"] = AEAD_VERSION


# -- X25519 key exchange between our own programs (see the module docstring) ------------

KEX_FIELD = "noportsKex"
KEX_PK_FIELD = "noportsKexPK"


def _kex_offer(p: dict[str, Any], kex_pk: bytes | None) -> None:
    if kex_pk is not None:
        from ..crypto.ephemeral import KEX_X25519

        p[KEX_FIELD] = KEX_X25519
        p[KEX_PK_FIELD] = b64e(kex_pk)


def _kex_request_pk(p: dict[str, Any], kind: str) -> bytes | None:
    """The client's X25519 public key when the request offers the exchange, else None."""
    if p.get(KEX_FIELD) != "x25519":
        return None
    v = p.get(KEX_PK_FIELD)
    if not isinstance(v, str):
        raise ProtocolError(f"{kind}_request field {KEX_PK_FIELD} must be a string")
    return b64d(v, what=KEX_PK_FIELD, length=32)


def kex_response_fields(keys: SessionKeys, client_kex_pk: bytes, session_id: str) -> dict[str, Any]:
    """The key fields of a success response for an X25519 offer (daemon side)."""
    from ..crypto import ephemeral as eph

    private = eph.x25519_private()
    aead = eph.x25519_field_key(private, client_kex_pk, session_id, client=False)
    fields = keys.raw_fields()
    out: dict[str, Any] = {"sessionAESKey": None, "sessionIV": None}
    out.update({k: eph.seal_field(aead, k, v) for k, v in fields.items()})
    out[KEX_PK_FIELD] = b64e(eph.x25519_public_raw(private))
    return out


def kex_keys_from_response(payload: dict[str, Any], private: Any, session_id: str) -> SessionKeys:
    """Client side: open the key fields of a response to our X25519 offer."""
    from ..crypto import ephemeral as eph

    v = payload.get(KEX_PK_FIELD)
    if not isinstance(v, str):
        raise ProtocolError(f"the response has no {KEX_PK_FIELD} for our X25519 offer")
    try:
        aead = eph.x25519_field_key(
            private, b64d(v, what=KEX_PK_FIELD, length=32), session_id, client=True
        )
    except ValueError as exc:
        raise ProtocolError(str(exc)) from None

    def get(name: str, length: int) -> bytes | None:
        t = payload.get(name)
        if t is None:
            return None
        if not isinstance(t, str):
            raise ProtocolError(f"{name} is not a string")
        try:
            raw = eph.open_field(aead, name, t)
        except ValueError as exc:
            raise ProtocolError(str(exc)) from None
        if len(raw) != length:
            raise ProtocolError(f"{name} is {len(raw)} bytes, expected {length}")
        return raw

    return SessionKeys.from_getter(get)


class SessionRequest(Frozen):
    """A validated ssh_request or npt_request as the daemon sees it."""

    __slots__ = (
        "kind",
        "session_id",
        "relay_host",
        "relay_port",
        "client_nonce",
        "rvd_nonce",
        "auth_to_rvd",
        "encrypt",
        "ephemeral_pk",
        "target_host",
        "target_port",
        "timeout_ms",
        "twin_keys",
        "aead",
        "direct",
        "raw",
        "relay_auth_mode",
        "relay_auth_aes_key",
        "relay_atsign",
        "kex_pk",
    )
    kind: str  # "ssh" or "npt"
    session_id: str
    relay_host: str
    relay_port: int
    client_nonce: str | None
    rvd_nonce: str | None
    auth_to_rvd: bool
    encrypt: bool
    ephemeral_pk: rsa.PublicKey | None
    target_host: str | None  # npt only (ssh targets the daemon's sshd)
    target_port: int | None
    timeout_ms: int | None
    twin_keys: bool
    aead: bool
    direct: bool
    raw: dict[str, Any]
    relay_auth_mode: str  # the mode the daemon's relay sockets use
    relay_auth_aes_key: str | None  # ESCR: base64 of the 32-byte session key
    relay_atsign: str | None  # informational (event logging)
    kex_pk: bytes | None  # the client's X25519 public key (our own clients)

    def __init__(
        self,
        kind: str,
        session_id: str,
        relay_host: str,
        relay_port: int,
        client_nonce: str | None,
        rvd_nonce: str | None,
        auth_to_rvd: bool,
        encrypt: bool,
        ephemeral_pk: rsa.PublicKey | None,
        target_host: str | None,
        target_port: int | None,
        timeout_ms: int | None,
        twin_keys: bool,
        aead: bool,
        direct: bool,
        raw: dict[str, Any],
        relay_auth_mode: str = "payload",
        relay_auth_aes_key: str | None = None,
        relay_atsign: str | None = None,
        kex_pk: bytes | None = None,
    ) -> None:
        set_field(self, "kind", kind)
        set_field(self, "session_id", session_id)
        set_field(self, "relay_host", relay_host)
        set_field(self, "relay_port", relay_port)
        set_field(self, "client_nonce", client_nonce)
        set_field(self, "rvd_nonce", rvd_nonce)
        set_field(self, "auth_to_rvd", auth_to_rvd)
        set_field(self, "encrypt", encrypt)
        set_field(self, "ephemeral_pk", ephemeral_pk)
        set_field(self, "target_host", target_host)
        set_field(self, "target_port", target_port)
        set_field(self, "timeout_ms", timeout_ms)
        set_field(self, "twin_keys", twin_keys)
        set_field(self, "aead", aead)
        set_field(self, "direct", direct)
        set_field(self, "raw", raw)
        set_field(self, "relay_auth_mode", relay_auth_mode)
        set_field(self, "relay_auth_aes_key", relay_auth_aes_key)
        set_field(self, "relay_atsign", relay_atsign)
        set_field(self, "kex_pk", kex_pk)


def parse_request(kind: str, p: dict[str, Any]) -> SessionRequest:
    """Validate a received payload; raises ProtocolError with a one-line reason."""

    def s(name: str, *, optional: bool = False) -> str | None:
        v = p.get(name)
        if v is None and optional:
            return None
        if not isinstance(v, str) or not v:
            raise ProtocolError(f"{kind}_request field {name} must be a non-empty string")
        return v

    def i(name: str, lo: int, hi: int, *, optional: bool = False) -> int | None:
        v = p.get(name)
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise ProtocolError(f"{kind}_request field {name} must be an integer in {lo}..{hi}")
        return v

    def b(name: str, default: bool) -> bool:
        v = p.get(name, default)
        if v is None:
            return default
        if not isinstance(v, bool):
            raise ProtocolError(f"{kind}_request field {name} must be a boolean")
        return v

    if kind == "ssh":
        host, port = s("host"), i("port", 1, 65535)
        target_host = target_port = timeout = None
        direct = b("direct", True)
    elif kind == "npt":
        host, port = s("rvdHost"), i("rvdPort", 1, 65535)
        target_host, target_port = s("requestedHost"), i("requestedPort", 1, 65535)
        timeout = i("timeout", 0, 366 * 86400 * 1000, optional=True)
        direct = True
    else:
        raise ValueError(kind)
    encrypt = b("encryptRvdTraffic", False)
    pk_text = s("clientEphemeralPK", optional=True)
    pk = None
    if pk_text is not None:
        if p.get("clientEphemeralPKType", EPHEMERAL_PK_TYPE) != EPHEMERAL_PK_TYPE:
            raise ProtocolError("clientEphemeralPKType must be rsa2048")
        pk = rsa.public_from_b64(pk_text)
    kex_pk = _kex_request_pk(p, kind)
    if encrypt and pk is None and kex_pk is None:
        raise ProtocolError(f"{kind}_request asks for encryption but has no clientEphemeralPK")
    aead_v = p.get("noportsAead")
    mode = p.get("relayAuthMode")
    mode = "payload" if mode is None else mode
    if not isinstance(mode, str) or mode.lower() not in RELAY_AUTH_MODES:
        raise ProtocolError(f"{kind}_request field relayAuthMode must be payload or escr")
    ram_key = s("relayAuthAesKey", optional=True)
    relay_atsign = p.get("relayAtsign")
    return SessionRequest(
        kind=kind,
        session_id=s("sessionId") or "",
        relay_host=host or "",
        relay_port=port or 0,
        client_nonce=s("clientNonce", optional=True),
        rvd_nonce=s("rvdNonce", optional=True),
        auth_to_rvd=b("authenticateToRvd", False),
        encrypt=encrypt,
        ephemeral_pk=pk,
        target_host=target_host,
        target_port=target_port,
        timeout_ms=timeout,
        twin_keys=b("twinKeys", False),
        aead=isinstance(aead_v, int) and not isinstance(aead_v, bool) and aead_v >= AEAD_VERSION,
        direct=direct,
        raw=p,
        relay_auth_mode=mode.lower(),
        relay_auth_aes_key=ram_key,
        relay_atsign=relay_atsign if isinstance(relay_atsign, str) else None,
        kex_pk=kex_pk,
    )


def success_response(
    session_id: str,
    keys: SessionKeys | None,
    client_pk: rsa.PublicKey | None,
    *,
    ephemeral_private_key_pem: str | None = None,
    ssh: bool = True,
    event_logging: dict[str, Any] | None = None,
    kex_pk: bytes | None = None,
) -> dict[str, Any]:
    """D5 success payload: status, sessionId[, ephemeralPrivateKey], the C2D key and IV (named
    per twin keys), aesKeyD2C, ivD2C, eventLoggingConfig[, noportsAeadSecret].

    ``kex_pk``: the client's X25519 offer; when given, the keys travel under it, not RSA."""
    p: dict[str, Any] = {"status": "connected", "sessionId": session_id}
    if ssh:
        p["ephemeralPrivateKey"] = ephemeral_private_key_pem
    extra: dict[str, Any] = {}
    fields: dict[str, Any] | None = None
    if keys is not None and kex_pk is not None:
        fields = kex_response_fields(keys, kex_pk, session_id)
    elif keys is not None and client_pk is not None:
        fields = keys.response_fields(client_pk)
    if fields is not None:
        aead = fields.pop("noportsAeadSecret", None)
        p.update(fields)
        if aead is not None:
            extra["noportsAeadSecret"] = aead
    else:
        p.update({"sessionAESKey": None, "sessionIV": None, "aesKeyD2C": None, "ivD2C": None})
    p["eventLoggingConfig"] = event_logging
    p.update(extra)
    return p


# ---------------------------------------------------------------------------------------
# Client -> relay (R1/R1L) and relay -> client (R2)


def relay_request(
    *,
    session_id: str,
    atsign_a: str,
    atsign_b: str,
    auth_a: bool,
    auth_b: bool,
    client_nonce: str,
    relay_auth_mode: str = "payload",
    relay_auth_aes_key: str | None = None,
    only443: bool = False,
    multiple_acks_ok: bool = True,
    pre_fetch: list[str] | None = None,
    send_json_response: bool = True,
) -> dict[str, Any]:
    """R1 as current official clients send it (spec-latest 2.1), fields in their order."""
    return {
        "sessionId": session_id,
        "atSignA": atsign_a,
        "atSignB": atsign_b,
        "authenticateSocketA": auth_a,
        "authenticateSocketB": auth_b,
        "clientNonce": client_nonce,
        "relayAuthMode": relay_auth_mode,
        "relayAuthAesKey": relay_auth_aes_key,
        "only443": only443,
        "multipleAcksOk": multiple_acks_ok,
        "preFetch": list(pre_fetch or []),
        "sendJsonResponse": send_json_response,
    }


class RelayRequest(Frozen):
    __slots__ = (
        "session_id",
        "atsign_a",
        "atsign_b",
        "auth_a",
        "auth_b",
        "client_nonce",
        "json_response",
        "legacy",
        "relay_auth_mode",
        "relay_auth_aes_key",
        "only443",
        "multiple_acks_ok",
        "pre_fetch",
    )
    session_id: str
    atsign_a: str
    atsign_b: str
    auth_a: bool
    auth_b: bool
    client_nonce: str | None
    json_response: bool
    legacy: bool
    # later fields, with the relay's defaults for requests that lack them (spec-latest 2.1)
    relay_auth_mode: str
    relay_auth_aes_key: str | None
    only443: bool
    multiple_acks_ok: bool
    pre_fetch: tuple[str, ...]

    def __init__(
        self,
        session_id: str,
        atsign_a: str,
        atsign_b: str,
        auth_a: bool,
        auth_b: bool,
        client_nonce: str | None,
        json_response: bool,
        legacy: bool,
        relay_auth_mode: str = "payload",
        relay_auth_aes_key: str | None = None,
        only443: bool = False,
        multiple_acks_ok: bool = False,
        pre_fetch: tuple[str, ...] = (),
    ) -> None:
        set_field(self, "session_id", session_id)
        set_field(self, "atsign_a", atsign_a)
        set_field(self, "atsign_b", atsign_b)
        set_field(self, "auth_a", auth_a)
        set_field(self, "auth_b", auth_b)
        set_field(self, "client_nonce", client_nonce)
        set_field(self, "json_response", json_response)
        set_field(self, "legacy", legacy)
        set_field(self, "relay_auth_mode", relay_auth_mode)
        set_field(self, "relay_auth_aes_key", relay_auth_aes_key)
        set_field(self, "only443", only443)
        set_field(self, "multiple_acks_ok", multiple_acks_ok)
        set_field(self, "pre_fetch", pre_fetch)


def parse_relay_request(value: str, *, sender: str, legacy: bool) -> RelayRequest:
    """R1 (JSON) or R1L (the bare session id, no auth, no nonce)."""
    from ..crypto.encoding import loads_object

    if legacy:
        sid = value.strip()
        if not sid or len(sid) > 128 or any(c.isspace() for c in sid):
            raise ProtocolError("legacy relay request must be a session id")
        return RelayRequest(sid, sender, sender, False, False, None, False, True)
    p = loads_object(value, what="relay request")
    for f in ("sessionId", "atSignA", "atSignB", "clientNonce"):
        if not isinstance(p.get(f), str) or not p[f]:
            raise ProtocolError(f"relay request field {f} must be a non-empty string")
    for f in ("authenticateSocketA", "authenticateSocketB", "only443", "multipleAcksOk"):
        if not isinstance(p.get(f) if p.get(f) is not None else False, bool):
            raise ProtocolError(f"relay request field {f} must be a boolean")
    mode = p.get("relayAuthMode")
    mode = "payload" if mode is None else mode
    if not isinstance(mode, str) or mode.lower() not in RELAY_AUTH_MODES:
        raise ProtocolError("relay request field relayAuthMode must be payload or escr")
    key = p.get("relayAuthAesKey")
    if key is not None and (not isinstance(key, str) or not key):
        raise ProtocolError("relay request field relayAuthAesKey must be a string or null")
    pre = p.get("preFetch")
    pre = [] if pre is None else pre
    if not isinstance(pre, list) or not all(isinstance(k, str) for k in pre) or len(pre) > 8:
        raise ProtocolError("relay request field preFetch must be a list of at most 8 keys")
    return RelayRequest(
        p["sessionId"],
        p["atSignA"],
        p["atSignB"],
        bool(p.get("authenticateSocketA", False)),
        bool(p.get("authenticateSocketB", False)),
        p["clientNonce"],
        p.get("sendJsonResponse") is True,
        False,
        relay_auth_mode=mode.lower(),
        relay_auth_aes_key=key,
        only443=p.get("only443") is True,
        multiple_acks_ok=p.get("multipleAcksOk") is True,
        pre_fetch=tuple(pre),
    )


class RelayReply(Frozen):
    __slots__ = ("host", "port_a", "port_b", "rvd_nonce")
    host: str
    port_a: int
    port_b: int
    rvd_nonce: str | None

    def __init__(self, host: str, port_a: int, port_b: int, rvd_nonce: str | None) -> None:
        set_field(self, "host", host)
        set_field(self, "port_a", port_a)
        set_field(self, "port_b", port_b)
        set_field(self, "rvd_nonce", rvd_nonce)


def relay_reply(
    reply: RelayReply, *, json_form: bool = False, extra: dict[str, Any] | None = None
) -> str:
    """R2: the JSON form when asked (``extra`` fields follow the official four), else CSV."""
    if json_form:
        from ..crypto.encoding import canonical_json

        body: dict[str, Any] = {
            "address": reply.host,
            "portA": reply.port_a,
            "portB": reply.port_b,
            "rvdNonce": reply.rvd_nonce,
        }
        body.update(extra or {})
        return canonical_json(body)
    nonce = reply.rvd_nonce if reply.rvd_nonce else "null"
    return f"{reply.host},{reply.port_a},{reply.port_b},{nonce}"


def parse_relay_reply(text: str) -> RelayReply:
    """R2: CSV ``host,portA,portB[,rvdNonce]`` (``null`` for legacy) or the JSON form."""
    t = text.strip()
    if t.startswith("{"):
        from ..crypto.encoding import loads_object

        p = loads_object(t, what="relay reply")
        host, pa, pb, nonce = p.get("address"), p.get("portA"), p.get("portB"), p.get("rvdNonce")
    else:
        parts = t.split(",")
        if len(parts) not in (3, 4):
            raise ProtocolError("relay reply is not host,portA,portB[,rvdNonce]")
        host = parts[0]
        try:
            pa, pb = int(parts[1]), int(parts[2])
        except ValueError as exc:
            raise ProtocolError("relay reply ports are not integers") from exc
        nonce = parts[3] if len(parts) == 4 and parts[3] != "null" else None
    if not isinstance(host, str) or not host:
        raise ProtocolError("relay reply has no host")
    ports: list[int] = []
    for port in (pa, pb):
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ProtocolError("relay reply port out of range")
        ports.append(port)
    if nonce is not None and not isinstance(nonce, str):
        raise ProtocolError("relay reply rvdNonce is not a string")
    return RelayReply(host, ports[0], ports[1], nonce)

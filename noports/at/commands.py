"""atProtocol command builders: pure functions from arguments to one command line.

Why a module of its own: every verb has quirks (fixed metadata order, case rules, the
Dart ``pkam`` form, ``notify`` option order) and getting one wrong means a silent
``AT0003`` from an official server. Builders return the line **without** the trailing
``\\n``; :func:`encode` adds it. They refuse any newline in what they are given, because a
newline inside a value would let a caller smuggle a second command onto the connection.

Key strings follow the wire forms of spec atprotocol 1.4/1.5: ``public:<k>@me``,
``@bob:<k>@me``, ``<k>@me``, ``cached:@me:<k>@bob``, ``privatekey:<name>``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

from ..crypto import rsa
from ..crypto.encoding import canonical_json
from ..errors import LocalError
from ..names import InvalidNameError, normalise_atsign
from ..record import Frozen, set_field


def random_uuid() -> str:
    """``str(uuid.uuid4())`` without importing ``uuid`` (which imports ``platform``: ~3 ms
    at every program start): 122 random bits, version 4, RFC 4122 variant."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


# Metadata in the order of at_commons VerbSyntax (spec 1.5): (attribute, wire name, kind).
_META_ORDER: tuple[tuple[str, str, str], ...] = (
    ("ttl", "ttl", "int"),
    ("ttb", "ttb", "int"),
    ("ttr", "ttr", "int"),
    ("ccd", "ccd", "bool"),
    ("data_signature", "dataSignature", "str"),
    ("shared_key_status", "sharedKeyStatus", "str"),
    ("is_binary", "isBinary", "bool"),
    ("is_encrypted", "isEncrypted", "bool"),
    ("shared_key_enc", "sharedKeyEnc", "str"),
    ("pub_key_cs", "pubKeyCS", "str"),
    ("encoding", "encoding", "str"),
    ("enc_key_name", "encKeyName", "str"),
    ("enc_algo", "encAlgo", "str"),
    ("iv_nonce", "ivNonce", "str"),
    ("ske_enc_key_name", "skeEncKeyName", "str"),
    ("ske_enc_algo", "skeEncAlgo", "str"),
    ("immutable", "immutable", "bool"),  # at_commons VerbSyntax: after skeEncAlgo
)
_WIRE_TO_ATTR = {wire.lower(): (attr, kind) for attr, wire, kind in _META_ORDER}
_META_VALUE = re.compile(r"^[^:@\s]+$")


class CommandError(LocalError, ValueError):
    """A command could not be built from the given arguments (our misuse, not the server)."""


class Metadata(Frozen):
    """Key/notification metadata that travels on ``update`` and ``notify`` commands.

    Only the fields set (not None) are sent, in the fixed Dart order. :meth:`from_json`
    reads the JSON the server returns for ``llookup:meta`` and inside notifications.
    """

    __slots__ = (
        "ttl",
        "ttb",
        "ttr",
        "ccd",
        "data_signature",
        "shared_key_status",
        "is_binary",
        "is_encrypted",
        "shared_key_enc",
        "pub_key_cs",
        "encoding",
        "enc_key_name",
        "enc_algo",
        "iv_nonce",
        "ske_enc_key_name",
        "ske_enc_algo",
        "immutable",
    )
    ttl: int | None
    ttb: int | None
    ttr: int | None
    ccd: bool | None
    data_signature: str | None
    shared_key_status: str | None
    is_binary: bool | None
    is_encrypted: bool | None
    shared_key_enc: str | None
    pub_key_cs: str | None
    encoding: str | None
    enc_key_name: str | None
    enc_algo: str | None
    iv_nonce: str | None
    ske_enc_key_name: str | None
    ske_enc_algo: str | None
    #: a record that cannot be overwritten while it lives (the atServer refuses the update);
    #: redundant srvd/sshnpd instances race for one with it (session mutexes)
    immutable: bool | None

    def __init__(
        self,
        ttl: int | None = None,
        ttb: int | None = None,
        ttr: int | None = None,
        ccd: bool | None = None,
        data_signature: str | None = None,
        shared_key_status: str | None = None,
        is_binary: bool | None = None,
        is_encrypted: bool | None = None,
        shared_key_enc: str | None = None,
        pub_key_cs: str | None = None,
        encoding: str | None = None,
        enc_key_name: str | None = None,
        enc_algo: str | None = None,
        iv_nonce: str | None = None,
        ske_enc_key_name: str | None = None,
        ske_enc_algo: str | None = None,
        immutable: bool | None = None,
    ) -> None:
        set_field(self, "ttl", ttl)
        set_field(self, "ttb", ttb)
        set_field(self, "ttr", ttr)
        set_field(self, "ccd", ccd)
        set_field(self, "data_signature", data_signature)
        set_field(self, "shared_key_status", shared_key_status)
        set_field(self, "is_binary", is_binary)
        set_field(self, "is_encrypted", is_encrypted)
        set_field(self, "shared_key_enc", shared_key_enc)
        set_field(self, "pub_key_cs", pub_key_cs)
        set_field(self, "encoding", encoding)
        set_field(self, "enc_key_name", enc_key_name)
        set_field(self, "enc_algo", enc_algo)
        set_field(self, "iv_nonce", iv_nonce)
        set_field(self, "ske_enc_key_name", ske_enc_key_name)
        set_field(self, "ske_enc_algo", ske_enc_algo)
        set_field(self, "immutable", immutable)

    def wire(self) -> str:
        """``:ttl:5:ttr:-1:…`` (empty when nothing is set)."""
        out: list[str] = []
        for attr, name, kind in _META_ORDER:
            v = getattr(self, attr)
            if v is None:
                continue
            if kind == "bool":
                text = "true" if v else "false"
            elif kind == "int":
                if isinstance(v, bool) or not isinstance(v, int):
                    raise CommandError(f"metadata {name} must be an integer")
                if v < -1 or (v == -1 and attr != "ttr"):
                    raise CommandError(f"metadata {name} must not be negative")
                text = str(v)
            else:
                text = str(v)
                if not _META_VALUE.match(text):
                    raise CommandError(f"metadata {name} may not contain ':', '@' or whitespace")
            out.append(f":{name}:{text}")
        return "".join(out)

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | None) -> Metadata:
        """Lenient parse: unknown fields are ignored, booleans may be strings, ints may be text."""
        if not obj:
            return cls()
        kw: dict[str, Any] = {}
        for key, value in obj.items():
            hit = _WIRE_TO_ATTR.get(str(key).lower())
            if hit is None or value is None:
                continue
            attr, kind = hit
            if kind == "bool":
                kw[attr] = value if isinstance(value, bool) else str(value).lower() == "true"
            elif kind == "int":
                try:
                    kw[attr] = int(value)
                except (TypeError, ValueError):
                    continue
            else:
                kw[attr] = str(value)
        return cls(**kw)

    def merged(self, other: Metadata) -> Metadata:
        """Fields of ``other`` that are set win over ours."""
        kw = {n: getattr(self, n) for n in self._fields}
        for n in other._fields:
            v = getattr(other, n)
            if v is not None:
                kw[n] = v
        return Metadata(**kw)


# ---------------------------------------------------------------------------------------
# helpers


def encode(command: str) -> bytes:
    """The bytes to write for one command line."""
    check_line(command)
    return (command + "\n").encode("utf-8")


def check_line(text: str) -> str:
    if "\n" in text or "\r" in text:
        raise CommandError("a command may not contain a newline")
    return text


def atsign(a: str) -> str:
    """Normalise ``alice``/``@Alice `` to ``@alice`` (servers lower-case keys)."""
    try:
        return normalise_atsign(a)
    except InvalidNameError:
        raise CommandError(f"not a valid atSign: {a!r}") from None


def _tok(text: str, what: str) -> str:
    """A token that must not contain ':' or whitespace (ids, key names parts)."""
    if not text or re.search(r"[:\s]", text):
        raise CommandError(f"{what} may not be empty or contain ':' or whitespace")
    return text


def key_string(
    name: str,
    owner: str,
    *,
    shared_with: str | None = None,
    public: bool = False,
    cached: bool = False,
) -> str:
    """The wire key: ``public:n@o``, ``@w:n@o``, ``n@o``; ``cached:`` prefix on request."""
    if public and shared_with:
        raise CommandError("a key is either public or shared, not both")
    if not name or re.search(r"[\s@]", name) or name.startswith(":"):
        raise CommandError(f"invalid key name {name!r}")
    s = f"{name}{atsign(owner)}"
    if public:
        s = "public:" + s
    elif shared_with:
        s = f"{atsign(shared_with)}:{s}"
    if cached:
        s = "cached:" + s
    return s


# ---------------------------------------------------------------------------------------
# authentication


def root_lookup(who: str) -> str:
    """The root directory wants the atSign without its ``@``."""
    return atsign(who)[1:]


def from_(who: str, client_config: Mapping[str, Any] | None = None) -> str:
    """``from:@alice``; ``client_config`` (e.g. ``{"version":"3.0.38"}``) turns on JSON errors."""
    cmd = f"from:{atsign(who)}"
    if client_config:
        cmd += ":clientConfig:" + canonical_json(dict(client_config))
    return check_line(cmd)


def pkam_signature(key: rsa.PrivateKey, challenge: str, hashing: str = "sha256") -> str:
    """Base64 RSA PKCS#1 v1.5 signature over the UTF-8 challenge (everything after ``data:``)."""
    return rsa.sign(key, challenge.encode("utf-8"), hashing)


def pkam(
    signature: str,
    *,
    enrollment_id: str | None = None,
    dart_form: bool = True,
    hashing: str = "sha256",
) -> str:
    """``pkam:signingAlgo:rsa2048:hashingAlgo:sha256[:enrollmentId:<id>]:<sig>`` (Dart form),
    or the short ``pkam:[enrollmentId:<id>:]<sig>`` that atsdk and the C SDK send."""
    if hashing not in ("sha256", "sha512"):
        raise CommandError(f"unsupported PKAM hashing {hashing!r}")
    parts = ["pkam"]
    if dart_form:
        parts += ["signingAlgo", "rsa2048", "hashingAlgo", hashing]
    elif hashing != "sha256":
        parts += ["hashingAlgo", hashing]
    if enrollment_id:
        parts += ["enrollmentId", _tok(enrollment_id, "enrollmentId")]
    parts.append(_tok(signature, "signature"))
    return ":".join(parts)


def cram_digest(secret: str, challenge: str) -> str:
    """Lower-case hex SHA-512 of secret + challenge."""
    return hashlib.sha512((secret + challenge).encode("utf-8")).hexdigest()


def cram(secret: str, challenge: str) -> str:
    return "cram:" + cram_digest(secret, challenge)


# ---------------------------------------------------------------------------------------
# data verbs

_OPS = (None, "meta", "all")


def _op(op: str | None) -> str:
    if op not in _OPS:
        raise CommandError(f"lookup operation must be meta, all or None, not {op!r}")
    return f"{op}:" if op else ""


def llookup(key: str, op: str | None = None) -> str:
    """Own store: ``llookup[:meta|:all]:<key>`` where key is a full wire key string."""
    return check_line(f"llookup:{_op(op)}{key}")


def lookup(key: str, op: str | None = None, *, bypass_cache: bool = False) -> str:
    """Data another atSign shared with me: ``lookup[:bypassCache:true][:meta|:all]:<k>@<them>``."""
    bc = "bypassCache:true:" if bypass_cache else ""
    return check_line(f"lookup:{bc}{_op(op)}{key}")


def plookup(key: str, op: str | None = None, *, bypass_cache: bool = False) -> str:
    """Someone's public data: ``plookup[:bypassCache:true][:meta|:all]:<k>@<them>``."""
    bc = "bypassCache:true:" if bypass_cache else ""
    return check_line(f"plookup:{bc}{_op(op)}{key}")


def update(key: str, value: str, metadata: Metadata | None = None) -> str:
    """``update<META>:<key> <value>``; the value must already be text without newlines."""
    meta = metadata.wire() if metadata else ""
    return check_line(f"update{meta}:{key} {value}")


def delete(key: str) -> str:
    return check_line(f"delete:{key}")


def scan(
    regex: str | None = None,
    *,
    show_hidden: bool = False,
    for_atsign: str | None = None,
    page: int | None = None,
) -> str:
    cmd = "scan"
    if show_hidden:
        cmd += ":showHidden:true"
    if for_atsign:
        cmd += ":" + atsign(for_atsign)
    if page is not None:
        cmd += f":page:{int(page)}"
    if regex:
        cmd += " " + regex
    return check_line(cmd)


# ---------------------------------------------------------------------------------------
# notifications


def notify(
    key: str,
    value: str | None = None,
    *,
    id: str | None = None,
    operation: str | None = None,
    message_type: str | None = None,
    priority: str | None = None,
    strategy: str | None = None,
    latest_n: int | None = None,
    notifier: str | None = None,
    ttln: int | None = None,
    metadata: Metadata | None = None,
) -> str:
    """Every option of spec 1.8, in the server's fixed order. ``key`` is the full wire key
    (``@bob:k.ns@alice`` or ``public:k@alice``); ``value`` is already encrypted if needed."""
    cmd = "notify"
    if id is not None:
        if not re.match(r"^[\w-]+$", id):
            raise CommandError("notification id may contain only letters, digits, '_' and '-'")
        cmd += f":id:{id}"
    if operation is not None:
        if operation not in ("update", "delete"):
            raise CommandError("operation must be update or delete")
        cmd += f":{operation}"
    if message_type is not None:
        if message_type not in ("key", "text"):
            raise CommandError("messageType must be key or text")
        cmd += f":messageType:{message_type}"
    if priority is not None:
        if priority not in ("low", "medium", "high"):
            raise CommandError("priority must be low, medium or high")
        cmd += f":priority:{priority}"
    if strategy is not None:
        if strategy not in ("all", "latest"):
            raise CommandError("strategy must be all or latest")
        cmd += f":strategy:{strategy}"
    if latest_n is not None:
        cmd += f":latestN:{int(latest_n)}"
    if notifier is not None:
        cmd += ":notifier:" + _tok(notifier, "notifier")
    if ttln is not None:
        if int(ttln) < 0:
            raise CommandError("ttln must not be negative")
        cmd += f":ttln:{int(ttln)}"
    if metadata is not None:
        cmd += metadata.wire()
    if not (key.startswith("@") or key.startswith("public:")):
        raise CommandError("a notify key must be @recipient:… or public:…")
    cmd += ":" + key
    if value is not None:
        cmd += ":" + value
    return check_line(cmd)


def notify_status(notification_id: str) -> str:
    return "notify:status:" + _tok(notification_id, "notification id")


def notify_remove(notification_id: str) -> str:
    return "notify:remove:" + _tok(notification_id, "notification id")


def monitor(
    regex: str | None = None,
    *,
    since: int | None = None,
    self_notifications: bool = False,
    strict: bool = False,
) -> str:
    """``monitor[:strict][:selfNotifications][:<epochMillis>][ <regex>]``."""
    cmd = "monitor"
    if strict:
        cmd += ":strict"
    if self_notifications:
        cmd += ":selfNotifications"
    if since is not None:
        if int(since) < 0:
            raise CommandError("monitor since must not be negative")
        cmd += f":{int(since)}"
    if regex:
        cmd += " " + regex
    return check_line(cmd)


def noop(ms: int = 0) -> str:
    if not 0 <= int(ms) <= 5000:
        raise CommandError("noop takes 0..5000 ms")
    return f"noop:{int(ms)}"


def info(brief: bool = False) -> str:
    return "info:brief" if brief else "info"


EXIT = "@exit"


# ---------------------------------------------------------------------------------------
# APKAM: enroll, otp, keys


_ENROLL_OPS = ("request", "approve", "deny", "revoke", "list", "fetch", "unrevoke", "delete")


def enroll(op: str, params: Mapping[str, Any] | None = None, *, force: bool = False) -> str:
    """``enroll:<op>[:force][:<json>]``; ``params`` keep their order (compact JSON)."""
    if op not in _ENROLL_OPS:
        raise CommandError(f"unknown enroll operation {op!r}")
    cmd = f"enroll:{op}"
    if force:
        cmd += ":force"
    if params is not None:
        cmd += ":" + canonical_json(dict(params))
    return check_line(cmd)


def otp_get(ttl_ms: int | None = None) -> str:
    return "otp:get" + (f":ttl:{int(ttl_ms)}" if ttl_ms is not None else "")


def otp_put(passcode: str, ttl_ms: int | None = None) -> str:
    cmd = "otp:put:" + _tok(passcode, "passcode")
    return cmd + (f":ttl:{int(ttl_ms)}" if ttl_ms is not None else "")


def keys_get(key_name: str) -> str:
    """``keys:get:keyName:<name>`` (the only ``keys`` form NoPorts needs)."""
    return "keys:get:keyName:" + _tok(key_name, "key name")


def keys_verb(
    op: str,
    *,
    visibility: str | None = None,
    namespace: str | None = None,
    app_name: str | None = None,
    device_name: str | None = None,
    key_type: str | None = None,
    encryption_key_name: str | None = None,
    key_name: str | None = None,
    value: str | None = None,
) -> str:
    """General ``keys:(put|get|delete)…`` form, parts in the at_commons order."""
    if op not in ("put", "get", "delete"):
        raise CommandError("keys operation must be put, get or delete")
    cmd = f"keys:{op}"
    if visibility is not None:
        if visibility not in ("public", "private", "self"):
            raise CommandError("keys visibility must be public, private or self")
        cmd += f":{visibility}"
    for wire, v in (
        ("namespace", namespace),
        ("appName", app_name),
        ("deviceName", device_name),
        ("keyType", key_type),
        ("encryptionKeyName", encryption_key_name),
        ("keyName", key_name),
    ):
        if v is not None:
            cmd += f":{wire}:{_tok(v, wire)}"
    if value is not None:
        cmd += " " + value
    return check_line(cmd)

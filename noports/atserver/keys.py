"""atKeys and their metadata, as the server stores and renders them (no I/O).

A stored key is its full lower-cased name: ``public:x@alice``, ``@bob:x@alice``, ``x@alice``,
``_x@alice``, ``cached:@alice:x@bob``, ``private:otp.__otp@alice`` or one of the system keys
``privatekey:at_pkam_publickey`` / ``privatekey:at_secret``. Metadata is a plain dict with the
at_commons field names, so rendering to JSON keeps the field order clients are used to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from .. import names
from ..errors import AtError

MAX_KEY_LEN = 248
MAX_CACHED_KEY_LEN = 255
MAX_ATSIGN_LEN = 55

_NAME_RE = re.compile(r"^[^:@\s]+$")

SYSTEM_KEYS = ("privatekey:at_pkam_publickey", "privatekey:at_secret")

# Metadata fields a client may set, by canonical at_commons name, with their kind.
META_FIELDS: dict[str, str] = {
    "ttl": "int",
    "ttb": "int",
    "ttr": "int",
    "ccd": "bool",
    "dataSignature": "str",
    "sharedKeyStatus": "str",
    "isBinary": "bool",
    "isEncrypted": "bool",
    "sharedKeyEnc": "str",
    "pubKeyCS": "str",
    "encoding": "str",
    "encKeyName": "str",
    "encAlgo": "str",
    "ivNonce": "str",
    "skeEncKeyName": "str",
    "skeEncAlgo": "str",
    "immutable": "bool",
}
# Lookup table tolerant of case and snake_case spellings (the C SDK writes ``message_type``).
META_ALIASES = {name.lower(): name for name in META_FIELDS}

# Order of fields in rendered metadata JSON (Dart AtMetaData.toJson order).
RENDER_ORDER = (
    "createdBy",
    "updatedBy",
    "createdAt",
    "updatedAt",
    "availableAt",
    "expiresAt",
    "refreshAt",
    "status",
    "version",
    "ttl",
    "ttb",
    "ttr",
    "ccd",
    "isBinary",
    "isEncrypted",
    "dataSignature",
    "sharedKeyStatus",
    "sharedKeyEnc",
    "pubKeyCS",
    "encoding",
    "encKeyName",
    "encAlgo",
    "ivNonce",
    "skeEncKeyName",
    "skeEncAlgo",
)

# ``shared_key.<atSign without @>``: the owner's copy of a key shared with that atSign.
_SHARED_KEY_COPY = re.compile(r"shared_key\.[^.:@\s]{1,55}")


def canon_meta_name(token: str) -> str | None:
    return META_ALIASES.get(token.replace("_", "").lower())


def parse_bool(text: str) -> bool:
    t = text.lower()
    if t == "true":
        return True
    if t == "false":
        return False
    raise AtError.for_code("AT0003", f"{text!r} is not a boolean")


def parse_int(text: str, *, allow_negative: bool = False) -> int:
    if not re.fullmatch(r"-?\d{1,18}" if allow_negative else r"\d{1,18}", text):
        raise AtError.for_code("AT0003", f"{text!r} is not a valid number")
    return int(text)


def coerce_meta(name: str, raw: str) -> Any:
    kind = META_FIELDS[name]
    if kind == "int":
        return parse_int(raw, allow_negative=(name == "ttr"))
    if kind == "bool":
        return parse_bool(raw)
    return raw


def normalise_atsign(text: str) -> str:
    """:func:`noports.names.normalise_atsign`, refusing with AT0003."""
    try:
        return names.normalise_atsign(text)
    except names.InvalidNameError:
        raise AtError.for_code("AT0003", f"invalid atSign {text!r}") from None


@dataclass(frozen=True)
class AtKey:
    """A parsed full key name. ``visibility`` is public, shared, self, private or system."""

    full: str
    name: str  # the entity part, e.g. ``ssh_request.dev.sshnp``
    shared_by: str | None  # ``@alice`` (None for system keys)
    shared_with: str | None = None
    visibility: str = "self"
    cached: bool = False

    @property
    def namespace(self) -> str | None:
        """Text after the first dot of the name (``dev.sshnp``), or None."""
        return self.name.split(".", 1)[1] if "." in self.name else None

    @property
    def hidden(self) -> bool:
        return self.name.startswith("_")


def parse_key(text: str, default_owner: str | None = None) -> AtKey:
    """Parse ``[cached:][public:|private:|@for:]name[@owner]`` into an AtKey (lower-cased)."""
    full = text.strip().lower()
    if full in SYSTEM_KEYS:
        return AtKey(full=full, name=full.split(":", 1)[1], shared_by=None, visibility="system")
    rest = full
    cached = False
    if rest.startswith("cached:"):
        cached, rest = True, rest[len("cached:") :]
    visibility, shared_with = "self", None
    if rest.startswith("public:"):
        visibility, rest = "public", rest[len("public:") :]
    elif rest.startswith("private:"):
        visibility, rest = "private", rest[len("private:") :]
    elif rest.startswith("@"):
        head, sep, tail = rest.partition(":")
        if not sep:
            raise AtError.for_code("AT0016", f"invalid key {text!r}")
        shared_with = normalise_atsign(head)
        visibility, rest = "shared", tail
    name, at, owner = rest.partition("@")
    if not at:
        if default_owner is None:
            raise AtError.for_code("AT0016", f"key {text!r} has no owner atSign")
        owner = default_owner[1:]
    if not _NAME_RE.match(name):
        raise AtError.for_code("AT0016", f"invalid key {text!r}")
    shared_by = normalise_atsign(owner)
    if visibility == "shared" and shared_with == shared_by:
        visibility = "self"  # ``@alice:x@alice`` is alice's own data
    prefix = ("cached:" if cached else "") + (
        "public:"
        if visibility == "public"
        else "private:"
        if visibility == "private"
        else f"{shared_with}:"
        if shared_with
        else ""
    )
    canonical = f"{prefix}{name}{shared_by}"
    limit = MAX_CACHED_KEY_LEN if cached else MAX_KEY_LEN
    if len(canonical) > limit:
        raise AtError.for_code(
            "AT0016", f"key length {len(canonical)} is greater than max allowed {limit}"
        )
    return AtKey(canonical, name, shared_by, shared_with, visibility, cached)


def is_reserved(key: AtKey) -> bool:
    """Keys every authenticated connection may use, whatever its enrolled namespaces.

    Exactly the official reserved keys that carry an owner (at_commons
    ``Regexes._reservedKeysWithAtsignSuffix``): ``public:publickey``,
    ``public:signing_publickey``, ``@owner:signing_privatekey``, ``private:blocklist``,
    ``@other:shared_key`` and ``shared_key.<other>``; plus the system keys. Not any name that
    merely starts with ``shared_key`` or ``_`` (those belong to a namespace like any other).
    """
    if key.visibility == "system":
        return True
    if key.cached:
        return False
    n, vis = key.name, key.visibility
    if vis == "public":
        return n in ("publickey", "signing_publickey")
    if vis == "private":
        return n == "blocklist"
    if vis == "shared":
        return n == "shared_key"
    return n == "signing_privatekey" or bool(_SHARED_KEY_COPY.fullmatch(n))


def namespace_allows(namespaces: dict[str, str], key: AtKey, write: bool) -> bool:
    """APKAM rule: ``"." + keyNamespace`` must end with ``"." + enrolledNamespace``."""
    if is_reserved(key):
        return True
    ns = key.namespace
    for enrolled, access in namespaces.items():
        if write and access != "rw":
            continue
        if enrolled == "*":
            return True
        if ns is not None and ("." + ns).endswith("." + enrolled):
            return True
    return False


def dart_time(ms: int | None) -> str | None:
    """Dart ``DateTime.toUtc().toString()``: ``2024-10-21 09:46:48.982Z``."""
    if ms is None:
        return None
    dt = datetime.fromtimestamp(ms / 1000, tz=timezone.utc)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}Z"


@dataclass
class Record:
    """One stored key: value plus metadata and the times derived from ttl/ttb/ttr."""

    key: str
    value: str | None
    meta: dict[str, Any]
    created_at: int
    updated_at: int
    expires_at: int | None = None
    available_at: int | None = None
    refresh_at: int | None = None
    version: int = 0
    created_by: str | None = None

    def visible(self, now: int) -> bool:
        if self.expires_at is not None and now >= self.expires_at:
            return False
        return not (self.available_at is not None and now < self.available_at)

    def render_meta(self) -> dict[str, Any]:
        m = self.meta
        full: dict[str, Any] = {
            "createdBy": self.created_by,
            "updatedBy": self.created_by,
            "createdAt": dart_time(self.created_at),
            "updatedAt": dart_time(self.updated_at),
            "availableAt": dart_time(self.available_at if self.available_at else self.created_at),
            "expiresAt": dart_time(self.expires_at),
            "refreshAt": dart_time(self.refresh_at),
            "status": "active",
            "version": self.version,
            "ttl": m.get("ttl", 0),
            "ttb": m.get("ttb", 0),
            "ttr": m.get("ttr", 0),
            "ccd": m.get("ccd", False),
            "isBinary": m.get("isBinary", False),
            "isEncrypted": m.get("isEncrypted", False),
        }
        for name in RENDER_ORDER:
            if name not in full and m.get(name) is not None:
                full[name] = m[name]
        return {k: v for k, v in full.items() if v is not None}


def apply_times(meta: dict[str, Any], now: int) -> tuple[int | None, int | None, int | None]:
    """(expires_at, available_at, refresh_at) for metadata set at ``now``."""
    ttl = int(meta.get("ttl") or 0)
    ttb = int(meta.get("ttb") or 0)
    ttr = int(meta.get("ttr") or 0)
    available = now + ttb if ttb > 0 else None
    expires = (available or now) + ttl if ttl > 0 else None
    refresh = now + ttr if ttr > 0 else None
    return expires, available, refresh

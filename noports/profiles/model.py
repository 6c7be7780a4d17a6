"""The desktop app's profile (``features/profile/models/profile.dart``) and its export format
(``util/export.dart``): ``{"profiles": [<profile without uuid>, ...]}`` as JSON or YAML.

Field names and defaults are the desktop app's. Fields this version does not know are kept
(``extra``) and written back unchanged, so a round trip through us loses nothing the desktop
app stored. An imported profile gets a new v4 uuid when it has none, as the desktop app does.
"""

from __future__ import annotations

import json
import re
import uuid as _uuid
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from ..names import InvalidNameError, validate_atsign, validate_device_name

PROFILES_KEY = "profiles"
MISSING_PROFILES = "The profiles section is missing or incorrectly formatted."
MAX_DOCUMENT_BYTES = 1 << 20
MAX_PROFILES = 1000
_HOST_RE = re.compile(r"^[A-Za-z0-9_.:\-\[\]%]{1,253}$")
_NAME_MAX = 100
KNOWN = (
    "displayName",
    "sshnpdAtsign",
    "deviceName",
    "relayAtsign",
    "remoteHost",
    "remotePort",
    "localHost",
    "localPort",
    "only443",
    "keepAlive",
    "connectUriProtocol",
    "connectUriUsername",
    "connectUri",
)
COMMON_PORTS = ((22, "ssh"), (3389, "rdp"), (5900, "vnc"), (80, "http"), (443, "https"))


class DocumentError(ConfigError):
    """An import document or profile that cannot be used (one line, exit code 2)."""


def new_uuid() -> str:
    return str(_uuid.uuid4())


def _port(v: object, what: str, lo: int) -> int:
    if isinstance(v, bool):
        raise DocumentError(f"{what} must be a number")
    try:
        n = int(v)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise DocumentError(f"{what} must be a number") from None
    if isinstance(v, float) and v != n:
        raise DocumentError(f"{what} must be a whole number")
    if not lo <= n <= 65535:
        raise DocumentError(f"{what} must be {lo}..65535")
    return n


def _host(v: object, what: str) -> str:
    s = str(v or "").strip()
    if not _HOST_RE.fullmatch(s):
        raise DocumentError(f"{what} must be a hostname or an IP address")
    return s


def _bool(v: object, what: str) -> bool:
    if isinstance(v, bool):
        return v
    if v in (None, ""):
        return False
    if isinstance(v, str) and v.lower() in ("true", "false"):
        return v.lower() == "true"
    raise DocumentError(f"{what} must be true or false")


def _opt_str(v: object) -> str | None:
    if v is None:
        return None
    s = str(v).strip()
    return s or None


@dataclass(frozen=True)
class Profile:
    """One tunnel: ``npt -t sshnpdAtsign -d deviceName -r relay -p remotePort -l localPort``."""

    uuid: str
    displayName: str
    sshnpdAtsign: str
    deviceName: str
    remotePort: int
    localPort: int = 0
    relayAtsign: str | None = None
    remoteHost: str = "localhost"
    localHost: str = "localhost"
    only443: bool = False
    keepAlive: bool = False
    connectUriProtocol: str | None = None
    connectUriUsername: str | None = None
    connectUri: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_json(cls, obj: object, *, uuid: str | None = None) -> Profile:
        """Validate a profile object; ``uuid`` overrides, a missing one is generated."""
        if not isinstance(obj, dict):
            raise DocumentError("a profile must be an object")
        name = str(obj.get("displayName") or "").strip()
        if not name:
            raise DocumentError("displayName is required")
        if len(name) > _NAME_MAX or any(ord(c) < 32 for c in name):
            raise DocumentError(f"displayName must be 1..{_NAME_MAX} printable characters")
        try:
            daemon = validate_atsign(str(obj.get("sshnpdAtsign") or "").strip(), add_at=True)
            device = validate_device_name(str(obj.get("deviceName") or "").strip())
            relay = _opt_str(obj.get("relayAtsign"))
            if relay is not None:
                relay = validate_atsign(relay, add_at=True)
        except InvalidNameError as exc:
            raise DocumentError(str(exc)) from None
        uid = uuid or _opt_str(obj.get("uuid")) or new_uuid()
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", uid):
            raise DocumentError("uuid must be letters, digits, '-' or '_'")
        proto = _opt_str(obj.get("connectUriProtocol"))
        if proto is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]{0,15}", proto):
            raise DocumentError("connectUriProtocol must be a URI scheme such as http")
        return cls(
            uuid=uid,
            displayName=name,
            sshnpdAtsign=daemon,
            deviceName=device,
            remotePort=_port(obj.get("remotePort"), "remotePort", 1),
            localPort=_port(obj.get("localPort", 0), "localPort", 0),
            relayAtsign=relay,
            remoteHost=_host(obj.get("remoteHost") or "localhost", "remoteHost"),
            localHost=_host(obj.get("localHost") or "localhost", "localHost"),
            only443=_bool(obj.get("only443"), "only443"),
            keepAlive=_bool(obj.get("keepAlive"), "keepAlive"),
            connectUriProtocol=proto,
            connectUriUsername=_opt_str(obj.get("connectUriUsername")),
            connectUri=_opt_str(obj.get("connectUri")),
            extra={k: v for k, v in obj.items() if k not in KNOWN and k != "uuid"},
        )

    def exportable(self) -> dict[str, Any]:
        """The desktop app's ``toExportableJson()``: every field but the uuid."""
        out: dict[str, Any] = dict(self.extra)
        out.update(
            displayName=self.displayName,
            relayAtsign=self.relayAtsign,
            sshnpdAtsign=self.sshnpdAtsign,
            deviceName=self.deviceName,
            remoteHost=self.remoteHost,
            remotePort=self.remotePort,
            localHost=self.localHost,
            localPort=self.localPort,
            only443=self.only443,
            keepAlive=self.keepAlive,
        )
        for k in ("connectUriProtocol", "connectUriUsername", "connectUri"):
            v = getattr(self, k)
            if v is not None:
                out[k] = v
        return out

    def to_json(self) -> dict[str, Any]:
        """What the desktop app stores in ``<uuid>.profiles.noports``: the export plus uuid."""
        return {**self.exportable(), "uuid": self.uuid}

    def copy(self, **changes: Any) -> Profile:
        return replace(self, **changes)

    def duplicate(self) -> Profile:
        return replace(self, uuid=new_uuid(), displayName=f"{self.displayName} (copy)"[:_NAME_MAX])

    def matches(self, query: str) -> bool:
        """The desktop app's search: name, device name + device atSign (case-insensitive)."""
        q = query.strip().lower()
        if not q:
            return True
        hay = f"{self.displayName}\n{self.deviceName}{self.sshnpdAtsign}\n{self.deviceName}"
        return q in hay.lower()

    def npt_argv(
        self, client: str, default_relay: str, *, override_relay: bool = False
    ) -> list[str]:
        """The equivalent ``npt`` command line (shown to the user, not run)."""
        relay = default_relay if override_relay or not self.relayAtsign else self.relayAtsign
        argv = ["npt", "-f", client, "-t", self.sshnpdAtsign, "-d", self.deviceName, "-r", relay]
        argv += ["--rh", self.remoteHost, "-p", str(self.remotePort), "-l", str(self.localPort)]
        if self.keepAlive:
            argv.append("-K")
        return argv


def _format(fmt: str | None, filename: str | None) -> str | None:
    if fmt:
        f = fmt.lower()
    elif filename and "." in filename:
        f = filename.rsplit(".", 1)[1].lower()
    else:
        return None
    if f == "yml":
        f = "yaml"
    if f not in ("json", "yaml"):
        raise DocumentError(f"unknown profile file type {f!r} (json or yaml)")
    return f


def _load_yaml(text: str) -> Any:
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - yaml is in the ui extra
        raise DocumentError("YAML needs PyYAML: pip install 'noports[ui]'") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DocumentError(f"not valid YAML: {str(exc).splitlines()[0]}") from None


def parse_document(
    text: str | bytes, fmt: str | None = None, *, filename: str | None = None
) -> list[Profile]:
    """Profiles from an export document; the type comes from ``fmt``, else the file's
    extension, else the content (JSON first, YAML otherwise). Every profile gets a new uuid
    unless the document carries one."""
    if isinstance(text, bytes):
        if len(text) > MAX_DOCUMENT_BYTES:
            raise DocumentError(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise DocumentError("the document is not UTF-8 text") from None
    if len(text) > MAX_DOCUMENT_BYTES:
        raise DocumentError(f"the document is larger than {MAX_DOCUMENT_BYTES} bytes")
    kind = _format(fmt, filename)
    doc: Any
    if kind == "json" or (kind is None and text.lstrip().startswith(("{", "["))):
        try:
            doc = json.loads(text)
        except ValueError as exc:
            if kind == "json":
                raise DocumentError(f"not valid JSON: {exc}") from None
            doc = _load_yaml(text)
    else:
        doc = _load_yaml(text)
    if not isinstance(doc, dict) or not isinstance(doc.get(PROFILES_KEY), list):
        raise DocumentError(MISSING_PROFILES)
    items = doc[PROFILES_KEY]
    if len(items) > MAX_PROFILES:
        raise DocumentError(f"more than {MAX_PROFILES} profiles in one document")
    out = []
    for i, item in enumerate(items, 1):
        try:
            out.append(Profile.from_json(item))
        except DocumentError as exc:
            raise DocumentError(f"profile {i}: {exc}") from None
    return out


def dump_document(profiles: list[Profile], fmt: str = "yaml") -> str:
    """The desktop app's export: ``{"profiles": [...]}`` without uuids."""
    doc = {PROFILES_KEY: [p.exportable() for p in profiles]}
    f = _format(fmt, None)
    if f == "json":
        return json.dumps(doc, indent=2) + "\n"
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))

"""Daemon features: the ping / heartbeat / device_info JSON and the client's feature check.

The daemon answers a ``ping`` with a JSON object whose key order and feature names are a wire
contract with official clients (spec 6.6): ``devicename``, ``deviceGroupName``, ``version``,
``corePackageVersion``, ``supportedFeatures`` and ``allowedServices``. We add one feature flag of
our own, :data:`NOPORTS_AEAD` (``noportsAead``): the strong AEAD data-plane mode. Official
clients look features up by name and ignore names they do not know, so the extra key is safe.

Clients (``sshnp`` spec 3.1 step 4, ``npt`` spec 3.3 step 1) check that the daemon supports the
features their flags need, and refuse with the official wording
``This device daemon does not <description>``. A reply without ``supportedFeatures`` comes
from a v4 daemon and is read as ``{"acceptsPublicKeys": true}`` only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

from .. import __version__
from ..errors import ProtocolError, RemoteError
from ..record import Frozen, set_field

__all__ = [
    "DaemonFeature",
    "NOPORTS_AEAD",
    "FEATURE_CHECK_TIMEOUT_MESSAGE",
    "DaemonInfo",
    "UnsupportedFeatureError",
    "ping_response",
    "ping_response_json",
    "parse_ping_response",
    "sshnp_required_features",
    "npt_required_features",
    "check_features",
    "require_features",
]


class DaemonFeature(str, Enum):
    """Feature names (the enum *value* is the wire name) with the official descriptions."""

    SR_AUTH = "srAuth"
    SR_E2EE = "srE2ee"
    ACCEPTS_PUBLIC_KEYS = "acceptsPublicKeys"
    SUPPORTS_PORT_CHOICE = "supportsPortChoice"
    ADJUSTABLE_TIMEOUT = "adjustableTimeout"
    CONTROL_CHANNEL_HEARTBEATS = "controlChannelHeartbeats"
    SUPPORTS_RAM_ESCR = "supportsRamEscr"
    TWIN_KEYS = "twinKeys"
    NOPORTS_AEAD = "noportsAead"
    RELAY_LATENCY = "relayLatency"

    @property
    def description(self) -> str:
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    DaemonFeature.SR_AUTH: "authenticate to the socket rendezvous",
    DaemonFeature.SR_E2EE: "encrypt traffic to the socket rendezvous",
    DaemonFeature.ACCEPTS_PUBLIC_KEYS: "accept ssh public keys from the client",
    DaemonFeature.SUPPORTS_PORT_CHOICE: "support requests for specific device ports",
    DaemonFeature.ADJUSTABLE_TIMEOUT: "support the 'timeout' value in npt session requests",
    DaemonFeature.CONTROL_CHANNEL_HEARTBEATS: "support control channel heartbeats",
    DaemonFeature.SUPPORTS_RAM_ESCR: "support the escr relay authentication mode",
    DaemonFeature.TWIN_KEYS: "support twin session keys",
    DaemonFeature.NOPORTS_AEAD: "support the noports AEAD encryption mode",
    DaemonFeature.RELAY_LATENCY: "answer relay latency requests",
}

#: The control-protocol version that introduced each official feature (spec-latest 8.1);
#: ``npCpVersion`` is the highest among the features this daemon advertises as true.
CONTROL_PROTOCOL_VERSIONS = {
    "acceptsPublicKeys": (1, 0, 0),
    "srAuth": (1, 1, 0),
    "srE2ee": (1, 1, 0),
    "supportsPortChoice": (1, 2, 0),
    "adjustableTimeout": (1, 3, 0),
    "controlChannelHeartbeats": (1, 4, 0),
    "supportsRamEscr": (1, 4, 0),
    "twinKeys": (1, 5, 0),
}
#: First official sshnpd release that answers ``relay_latency_request`` (spec-latest 1.4).
RELAY_LATENCY_SINCE = (5, 15, 0)

NOPORTS_AEAD = DaemonFeature.NOPORTS_AEAD.value
#: The error text clients use when no ping reply arrives in time (official wording).
FEATURE_CHECK_TIMEOUT_MESSAGE = "Daemon feature check timed out"
#: The official npt default tunnel timeout; other values need ``adjustableTimeout``.
NPT_DEFAULT_TIMEOUT_S = 30
CORE_PACKAGE_VERSION = f"noports-{__version__}"


class UnsupportedFeatureError(RemoteError):
    """The daemon lacks a feature the client's flags require."""


def ping_response(
    device: str,
    *,
    device_group: str = "__none__",
    accepts_public_keys: bool,
    allowed_services: Sequence[str],
    version: str = __version__,
    core_version: str = CORE_PACKAGE_VERSION,
    aead: bool = True,
    escr: bool = False,
    public_signing_key_uri: str | None = None,
) -> dict[str, Any]:
    """The ping-response / device_info object in the official key order (spec-latest 8.1).

    Features are truthful: ``supportsRamEscr`` and ``authModes`` list ESCR only when ``escr``
    (the daemon's tunnel ends can do it); ``publicSigningKeyUri`` is present only when given
    (the signing key is published). Our additions: ``noportsAead`` and ``relayLatency`` (this
    daemon answers ``relay_latency_request``, so clients need not guess from ``version``).
    ``device`` and ``device_group`` must already be validated (``names``); ``allowed_services``
    is ``PermitOpen.allowed_services()``.
    """
    features: dict[str, bool] = {
        DaemonFeature.SR_AUTH.value: True,
        DaemonFeature.SR_E2EE.value: True,
        DaemonFeature.ACCEPTS_PUBLIC_KEYS.value: bool(accepts_public_keys),
        DaemonFeature.SUPPORTS_PORT_CHOICE.value: True,
        DaemonFeature.ADJUSTABLE_TIMEOUT.value: True,
        DaemonFeature.CONTROL_CHANNEL_HEARTBEATS.value: True,  # heartbeat:<n> is ignored
        DaemonFeature.SUPPORTS_RAM_ESCR.value: bool(escr),
        DaemonFeature.TWIN_KEYS.value: True,
        DaemonFeature.NOPORTS_AEAD.value: bool(aead),
        DaemonFeature.RELAY_LATENCY.value: True,
    }
    cp = max(v for k, v in CONTROL_PROTOCOL_VERSIONS.items() if features.get(k))
    out: dict[str, Any] = {
        "devicename": device,
        "deviceGroupName": device_group,
        "version": version,
        "corePackageVersion": core_version,
        "supportedFeatures": features,
        "authModes": ["payload", "escr"] if escr else ["payload"],
        "allowedServices": list(allowed_services),
        "npCpVersion": ".".join(map(str, cp)),
    }
    if public_signing_key_uri:
        out["publicSigningKeyUri"] = public_signing_key_uri
    return out


def ping_response_json(**kw: Any) -> str:
    """:func:`ping_response` encoded as Dart's ``jsonEncode`` would (compact, key order kept)."""
    device = kw.pop("device")
    return json.dumps(ping_response(device, **kw), separators=(",", ":"), ensure_ascii=False)


class DaemonInfo(Frozen):
    """A peer's ping response, read tolerantly. Unknown keys are ignored."""

    __slots__ = (
        "features",
        "device",
        "device_group",
        "version",
        "core_version",
        "allowed_services",
        "legacy",
        "raw",
    )
    _hidden = ("raw",)
    features: Mapping[str, bool]
    device: str | None
    device_group: str | None
    version: str | None
    core_version: str | None
    allowed_services: tuple[str, ...]
    #: True when ``supportedFeatures`` was absent (a v4 daemon).
    legacy: bool
    raw: Mapping[str, Any]

    def __init__(
        self,
        features: Mapping[str, bool],
        device: str | None = None,
        device_group: str | None = None,
        version: str | None = None,
        core_version: str | None = None,
        allowed_services: tuple[str, ...] = (),
        legacy: bool = False,
        raw: Mapping[str, Any] | None = None,
    ) -> None:
        set_field(self, "features", features)
        set_field(self, "device", device)
        set_field(self, "device_group", device_group)
        set_field(self, "version", version)
        set_field(self, "core_version", core_version)
        set_field(self, "allowed_services", allowed_services)
        set_field(self, "legacy", legacy)
        set_field(self, "raw", {} if raw is None else raw)

    def answers_relay_latency(self) -> bool:
        """Whether this daemon answers ``relay_latency_request`` (spec-latest 1.4): ours say so
        with ``relayLatency``; official Dart daemons from 5.15.0; the C daemon (``c0.1.0``)
        and older ones never do, so a client need not wait the 20 s for them."""
        if self.supports(DaemonFeature.RELAY_LATENCY):
            return True
        v = self.version or ""
        parts = v.split("-", 1)[0].split("+", 1)[0].split(".")
        try:
            triple = tuple(int(x) for x in parts[:3])
        except ValueError:
            return False
        return len(triple) == 3 and triple >= RELAY_LATENCY_SINCE

    def supports(self, feature: DaemonFeature | str) -> bool:
        name = feature.value if isinstance(feature, DaemonFeature) else feature
        # Official clients test ``== true``: anything but a JSON true means "no".
        return self.features.get(name) is True


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def parse_ping_response(data: str | bytes | Mapping[str, Any]) -> DaemonInfo:
    """Parse a ping response. Raises :class:`ProtocolError` only if it is not a JSON object."""
    if isinstance(data, (str, bytes)):
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"ping response is not JSON: {exc}") from None
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise ProtocolError("ping response is not a JSON object")
    raw_features = obj.get("supportedFeatures")
    legacy = raw_features is None
    features: dict[str, bool]
    if legacy:
        features = {DaemonFeature.ACCEPTS_PUBLIC_KEYS.value: True}
    elif isinstance(raw_features, Mapping):
        features = {str(k): v for k, v in raw_features.items() if isinstance(v, bool)}
    else:
        features = {}  # present but malformed: claim nothing
    services = obj.get("allowedServices")
    allowed = tuple(s for s in services if isinstance(s, str)) if isinstance(services, list) else ()
    return DaemonInfo(
        features=features,
        device=_opt_str(obj, "devicename"),
        device_group=_opt_str(obj, "deviceGroupName"),
        version=_opt_str(obj, "version"),
        core_version=_opt_str(obj, "corePackageVersion"),
        allowed_services=allowed,
        legacy=legacy,
        raw=dict(obj),
    )


def sshnp_required_features(
    *,
    authenticate_device_to_rvd: bool = True,
    encrypt_rvd_traffic: bool = True,
    send_ssh_public_key: bool = False,
    aead: bool = False,
) -> list[DaemonFeature]:
    """Features sshnp requires: ``srAuth`` if ``--ad``, ``srE2ee`` if ``--et``,
    ``acceptsPublicKeys`` if ``-s``; plus ``noportsAead`` when the strong mode is demanded."""
    req: list[DaemonFeature] = []
    if authenticate_device_to_rvd:
        req.append(DaemonFeature.SR_AUTH)
    if encrypt_rvd_traffic:
        req.append(DaemonFeature.SR_E2EE)
    if send_ssh_public_key:
        req.append(DaemonFeature.ACCEPTS_PUBLIC_KEYS)
    if aead:
        req.append(DaemonFeature.NOPORTS_AEAD)
    return req


def npt_required_features(
    *, timeout_s: float = NPT_DEFAULT_TIMEOUT_S, aead: bool = False
) -> list[DaemonFeature]:
    """npt always needs ``srAuth``, ``srE2ee`` (even with ``--no-et``, as official) and
    ``supportsPortChoice``; ``adjustableTimeout`` if the timeout is not the 30 s default."""
    req = [DaemonFeature.SR_AUTH, DaemonFeature.SR_E2EE, DaemonFeature.SUPPORTS_PORT_CHOICE]
    if timeout_s != NPT_DEFAULT_TIMEOUT_S:
        req.append(DaemonFeature.ADJUSTABLE_TIMEOUT)
    if aead:
        req.append(DaemonFeature.NOPORTS_AEAD)
    return req


def check_features(
    info: DaemonInfo, required: Iterable[DaemonFeature]
) -> list[tuple[DaemonFeature, bool, str]]:
    """``(feature, supported, reason)`` per required feature; reason is ``''`` when supported."""
    out = []
    for f in required:
        ok = info.supports(f)
        out.append((f, ok, "" if ok else f"This device daemon does not {f.description}"))
    return out


def require_features(info: DaemonInfo, required: Iterable[DaemonFeature]) -> None:
    """Raise :class:`UnsupportedFeatureError` listing every missing feature's reason."""
    reasons = [r for _f, ok, r in check_features(info, required) if not ok]
    if reasons:
        raise UnsupportedFeatureError("; ".join(reasons))

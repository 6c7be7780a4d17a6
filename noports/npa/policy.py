"""The NPA policy: who may open which ``host:port`` on which device (spec 8).

A daemon configured with ``-p @policy`` asks the policy service, for each client request,
whether ``clientAtsign`` may use device ``daemonDeviceName`` (in group
``daemonDeviceGroupName``) of ``daemonAtsign``. The answer is the NPA success payload
``{"authorized": bool, "message": str | None, "permitOpen": ["host:port", ...]}``; the daemon
then applies ``permitOpen`` as its per-client permit-open list.

File format: the official ``npp_file --yaml`` YAML (a ``.yaml``/``.yml`` file, see
:func:`parse_official_yaml`), or this TOML::

    # Optional: only answer for these daemons (empty or absent = any daemon).
    daemon_atsigns = ["@home_devices"]

    # A group of users: members, optionally a narrower daemon list, and the targets.
    [groups.admins]
    atsigns = ["@alice", "@bob"]
    [groups.admins.device_names]
    "my_pi" = ["localhost:22", "localhost:3389"]
    [groups.admins.device_groups]
    "lab" = ["*:*"]

    [groups.web_team]
    atsigns = ["@carol"]
    daemon_atsigns = ["@web_devices"]
    device_groups = { "web" = ["localhost:80", "localhost:443"] }

    # Per-user entries are groups with one member.
    [users."@dave"]
    device_names = { "build01" = ["localhost:22"] }

Rules (as the official ``npp_file`` demo): for each group the client belongs to (whose
``daemon_atsigns``, if given, include the daemon), a ``device_names`` entry for the device
wins; otherwise the ``device_groups`` entry for the device's group applies. The permits of
all matching groups are combined. No match, or only empty lists, means *denied*. Everything is
validated on load (atSigns, device names, each ``host:port`` through the permit-open parser),
and unknown keys are errors, so a typo cannot silently widen or narrow access.

:class:`PolicyStore` reloads the file when its inode, size or mtime changes, checked on each
decision (one ``stat``). A broken new file keeps the last good policy, and the error is kept
in ``last_error`` and logged once. Every decision yields an audit record (JSON-safe, no secrets).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError, ProtocolError
from ..log import escape
from ..names import (
    InvalidNameError,
    validate_atsign,
    validate_device_group,
    validate_device_name,
)
from ..session.permitopen import PermitOpen, PermitOpenError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

__all__ = [
    "PolicyRequest",
    "Decision",
    "Policy",
    "PolicyStore",
    "parse_policy",
    "parse_official_yaml",
    "load_policy",
]

log = logging.getLogger("noports.npa.policy")

_TOP_KEYS = {"daemon_atsigns", "groups", "users"}
_GROUP_KEYS = {"atsigns", "daemon_atsigns", "device_names", "device_groups"}
_USER_KEYS = _GROUP_KEYS - {"atsigns"}


@dataclass(frozen=True)
class PolicyRequest:
    """The P1 request payload, validated."""

    daemon_atsign: str
    device_name: str
    device_group: str
    client_atsign: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> PolicyRequest:
        """Validate a request payload; :class:`ProtocolError` means "reply nack"."""
        if not isinstance(payload, Mapping):
            raise ProtocolError("auth check payload is not an object")
        try:
            group = payload.get("daemonDeviceGroupName", "__none__")
            return cls(
                daemon_atsign=validate_atsign(payload.get("daemonAtsign")),  # type: ignore[arg-type]
                device_name=validate_device_name(payload.get("daemonDeviceName")),  # type: ignore[arg-type]
                device_group=validate_device_group(group if group is not None else "__none__"),
                client_atsign=validate_atsign(payload.get("clientAtsign")),  # type: ignore[arg-type]
            )
        except InvalidNameError as exc:
            raise ProtocolError(f"invalid auth check request: {exc}") from None


@dataclass(frozen=True)
class Decision:
    authorized: bool
    message: str | None
    permit_open: tuple[str, ...]
    #: Names of the groups whose rules matched (for the audit record).
    matched: tuple[str, ...] = ()

    def payload(self) -> dict[str, Any]:
        """The NPA success payload, official key order."""
        return {
            "authorized": self.authorized,
            "message": self.message,
            "permitOpen": list(self.permit_open),
        }


@dataclass(frozen=True)
class _Group:
    name: str
    members: frozenset[str]
    daemons: frozenset[str]  # empty = any daemon
    device_names: Mapping[str, PermitOpen]
    device_groups: Mapping[str, PermitOpen]


@dataclass(frozen=True)
class Policy:
    daemons: frozenset[str]
    groups: tuple[_Group, ...]
    digest: str = ""

    def decide(self, req: PolicyRequest) -> Decision:
        if self.daemons and req.daemon_atsign not in self.daemons:
            return Decision(False, f"{req.daemon_atsign} is not a daemon this policy serves", ())
        permits: list[str] = []
        matched: list[str] = []
        for g in self.groups:
            if req.client_atsign not in g.members or (
                g.daemons and req.daemon_atsign not in g.daemons
            ):
                continue
            rule = g.device_names.get(req.device_name)
            if rule is None:
                rule = g.device_groups.get(req.device_group)
            if rule is None:
                continue
            matched.append(g.name)
            for p in rule.allowed_services():
                if p not in permits:
                    permits.append(p)
        if not permits:
            return Decision(
                False,
                f"{req.client_atsign} is not permitted to use device {req.device_name}"
                f" of {req.daemon_atsign}",
                (),
                tuple(matched),
            )
        return Decision(True, None, tuple(permits), tuple(matched))


def _err(where: str, msg: str) -> ConfigError:
    return ConfigError(f"policy {where}: {msg}")


def _atsign_list(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list):
        raise _err(where, "expected an array of atSigns")
    try:
        return frozenset(validate_atsign(v) for v in value)
    except InvalidNameError as exc:
        raise _err(where, str(exc)) from None


def _rules(value: Any, where: str, validate: Callable[[str], str]) -> dict[str, PermitOpen]:
    if not isinstance(value, Mapping):
        raise _err(where, 'expected a table of name = ["host:port", ...]')
    out: dict[str, PermitOpen] = {}
    for name, permits in value.items():
        try:
            canon = validate(name)
        except InvalidNameError as exc:
            raise _err(where, str(exc)) from None
        if canon in out:
            raise _err(where, f"{name!r} is given twice (names are case-insensitive)")
        if not isinstance(permits, list) or not all(isinstance(p, str) for p in permits):
            raise _err(f"{where}.{canon}", 'expected an array of "host:port" strings')
        try:
            out[canon] = PermitOpen.parse(permits)
        except PermitOpenError as exc:
            raise _err(f"{where}.{canon}", str(exc)) from None
    return out


def _group(name: str, body: Any, where: str, members: frozenset[str] | None) -> _Group:
    if not isinstance(body, Mapping):
        raise _err(where, "expected a table")
    allowed = _GROUP_KEYS if members is None else _USER_KEYS
    for key in body:
        if key not in allowed:
            raise _err(where, f"unknown key '{escape(key, 80)}'")
    if members is None:
        if "atsigns" not in body:
            raise _err(where, "missing 'atsigns'")
        members = _atsign_list(body["atsigns"], f"{where}.atsigns")
    daemons = _atsign_list(body.get("daemon_atsigns", []), f"{where}.daemon_atsigns")
    return _Group(
        name=name,
        members=members,
        daemons=daemons,
        device_names=_rules(
            body.get("device_names", {}), f"{where}.device_names", validate_device_name
        ),
        device_groups=_rules(
            body.get("device_groups", {}), f"{where}.device_groups", validate_device_group
        ),
    )


def parse_policy(data: bytes, *, source: str = "<policy>") -> Policy:
    """Parse and fully validate policy TOML; raise :class:`ConfigError` naming the problem."""
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"policy {source}: {exc}") from None
    for key in doc:
        if key not in _TOP_KEYS:
            raise _err(source, f"unknown key '{escape(key, 80)}'")
    groups: list[_Group] = []
    raw_groups = doc.get("groups", {})
    if not isinstance(raw_groups, Mapping):
        raise _err(source, "'groups' must be a table")
    for gname, body in raw_groups.items():
        groups.append(_group(gname, body, f"{source}: groups.{escape(gname, 80)}", None))
    raw_users = doc.get("users", {})
    if not isinstance(raw_users, Mapping):
        raise _err(source, "'users' must be a table")
    for user, body in raw_users.items():
        try:
            member = validate_atsign(user)
        except InvalidNameError as exc:
            raise _err(f"{source}: users", str(exc)) from None
        groups.append(
            _group(
                f"user:{member}", body, f"{source}: users.{escape(user, 80)}", frozenset({member})
            )
        )
    daemons = _atsign_list(doc.get("daemon_atsigns", []), f"{source}: daemon_atsigns")
    return Policy(daemons, tuple(groups), hashlib.sha256(data).hexdigest()[:16])


_YAML_GROUP_KEYS = {"userAtSigns", "permissions"}
_YAML_PERM_KEYS = {"daemonAtSigns", "deviceNames", "deviceGroupNames"}


def parse_official_yaml(data: bytes, *, source: str = "<policy>") -> Policy:
    """The official ``npp_file --yaml`` policy::

        userGroups:
          admins:
            userAtSigns: ['@alice', '@bob']
            permissions:
              daemonAtSigns: ['@home_devices']
              deviceNames: {my_pi: ['localhost:22']}
              deviceGroupNames: {lab: ['*:*']}

    Each user group becomes a group of this policy restricted to its ``daemonAtSigns``; a
    group without ``daemonAtSigns`` grants nothing (as official), and the policy answers only
    for the daemons some group names (official: the union is the daemon list). Validated like
    the TOML form; unknown keys are errors naming the key.
    """
    try:
        import yaml  # type: ignore[import-untyped]

        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, ImportError) as exc:
        raise ConfigError(f"policy {source}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"policy {source}: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, Mapping) or "userGroups" not in doc:
        raise _err(source, "expected 'userGroups:' at the top (official npp_file format)")
    for key in doc:
        if key != "userGroups":
            raise _err(source, f"unknown key '{escape(str(key), 80)}'")
    raw = doc.get("userGroups") or {}
    if not isinstance(raw, Mapping):
        raise _err(source, "'userGroups' must be a map")
    groups: list[_Group] = []
    daemons: set[str] = set()
    for gname, body in raw.items():
        where = f"{source}: userGroups.{escape(str(gname), 80)}"
        if not isinstance(body, Mapping):
            raise _err(where, "expected a map")
        for key in body:
            if key not in _YAML_GROUP_KEYS:
                raise _err(where, f"unknown key '{escape(str(key), 80)}'")
        perms = body.get("permissions") or {}
        if not isinstance(perms, Mapping):
            raise _err(f"{where}.permissions", "expected a map")
        for key in perms:
            if key not in _YAML_PERM_KEYS:
                raise _err(f"{where}.permissions", f"unknown key '{escape(str(key), 80)}'")
        group_daemons = _atsign_list(
            perms.get("daemonAtSigns") or [], f"{where}.permissions.daemonAtSigns"
        )
        if not group_daemons:
            log.warning("policy %s: user group %s has no daemonAtSigns: it grants nothing",
                        source, gname)  # fmt: skip
            continue
        daemons |= group_daemons
        groups.append(
            _Group(
                name=str(gname),
                members=_atsign_list(body.get("userAtSigns") or [], f"{where}.userAtSigns"),
                daemons=group_daemons,
                device_names=_rules(
                    perms.get("deviceNames") or {},
                    f"{where}.permissions.deviceNames",
                    validate_device_name,
                ),
                device_groups=_rules(
                    perms.get("deviceGroupNames") or {},
                    f"{where}.permissions.deviceGroupNames",
                    validate_device_group,
                ),
            )
        )
    if not daemons:
        raise _err(source, "no user group names any daemonAtSigns: the policy grants nothing")
    return Policy(frozenset(daemons), tuple(groups), hashlib.sha256(data).hexdigest()[:16])


def _parse_any(data: bytes, *, source: str) -> Policy:
    if source.lower().endswith((".yaml", ".yml")):
        return parse_official_yaml(data, source=source)
    return parse_policy(data, source=source)


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """A policy file: the official ``npp_file`` YAML (``.yaml``/``.yml``) or our TOML."""
    with open(path, "rb") as fh:
        return _parse_any(fh.read(), source=os.fspath(path))


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class PolicyStore:
    """A policy file that reloads itself on change; decisions never see a half-read file."""

    path: str
    clock: Callable[[], float] = time.time
    policy: Policy = field(init=False)
    last_error: str | None = field(init=False, default=None)
    _sig: tuple[int, int, int, int] | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.path = os.fspath(self.path)
        loaded = self._load()
        if loaded is None:
            raise ConfigError(self.last_error or f"cannot load policy {self.path}")

    def _load(self) -> Policy | None:
        """Load if the file changed; returns the new policy, or None (unchanged / broken)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            self._fail(None, f"cannot open policy {self.path}: {exc.strerror}")
            return None
        try:
            sig = _signature(os.fstat(fd))
            if sig == self._sig:
                return None
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
        finally:
            os.close(fd)
        try:
            policy = _parse_any(b"".join(chunks), source=self.path)
        except ConfigError as exc:
            self._fail(sig, str(exc))
            return None
        self.policy, self._sig, self.last_error = policy, sig, None
        log.info("policy loaded from %s (version %s)", escape(self.path), policy.digest)
        return policy

    def _fail(self, sig: tuple[int, int, int, int] | None, msg: str) -> None:
        if msg != self.last_error:
            log.error("%s; keeping the last good policy", escape(msg))
        self.last_error = msg
        if sig is not None:
            self._sig = sig  # do not re-parse the same broken file on every decision

    def refresh(self) -> bool:
        """Re-read the file even if it looks unchanged (SIGHUP); True if it loaded."""
        self._sig = None
        self.last_error = None
        return self._load() is not None

    def maybe_reload(self) -> bool:
        """Cheap change check (one stat); True if a new policy was loaded."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._fail(None, f"cannot stat policy {self.path}: {exc.strerror}")
            return False
        if _signature(st) == self._sig:
            return False
        return self._load() is not None

    def decide(self, payload: Mapping[str, Any]) -> tuple[Decision, dict[str, Any]]:
        """Decide a request payload; returns the decision and its audit record.

        Raises :class:`ProtocolError` for an invalid request (the caller replies ``nack``).
        """
        self.maybe_reload()
        try:
            req = PolicyRequest.from_payload(payload)
        except ProtocolError as exc:
            self.audit_invalid(payload, str(exc))
            raise
        decision = self.policy.decide(req)
        return decision, self.audit(req, decision)

    def audit(self, req: PolicyRequest, decision: Decision) -> dict[str, Any]:
        """A JSON-safe record of one decision (identities and outcome only, no secrets)."""
        record = {
            "ts": round(self.clock(), 3),
            "event": "npa_decision",
            "daemonAtsign": req.daemon_atsign,
            "deviceName": req.device_name,
            "deviceGroupName": req.device_group,
            "clientAtsign": req.client_atsign,
            "authorized": decision.authorized,
            "permitOpen": list(decision.permit_open),
            "message": decision.message,
            "matchedGroups": list(decision.matched),
            "policyVersion": self.policy.digest,
            "policyError": self.last_error,
        }
        log.info("npa decision", extra={"fields": record})
        return record

    def audit_invalid(self, payload: Any, reason: str) -> dict[str, Any]:
        def field_of(key: str) -> str | None:
            v = payload.get(key) if isinstance(payload, Mapping) else None
            return escape(v, 80) if isinstance(v, str) else None

        record = {
            "ts": round(self.clock(), 3),
            "event": "npa_invalid_request",
            "daemonAtsign": field_of("daemonAtsign"),
            "clientAtsign": field_of("clientAtsign"),
            "reason": escape(reason, 200),
        }
        log.warning("npa invalid request", extra={"fields": record})
        return record

"""at_activate's decisions, without I/O: what a command line asks for, and what to print.

:func:`plan` makes every check the command line gets before a secret is read or a socket is
opened (``-s`` SPP grammar, ``-e``/``--ttl``, ``-n`` namespaces), in the order the driver
always made them. The filters (``-A``/``-D``/``-i``, ``-L``) are checked where the driver
needs them, after it has connected, so an unreadable keys file still wins over a bad regex.
The ``*_event`` functions turn a result into an :data:`Event`: the ``--output json`` object
and the text line (None: nothing in text mode). The notification parser of ``auto`` is here
too. The driver that reads secrets, connects and prints is ``at_activate._run``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..at.onboard import parse_namespaces
from ..errors import ConfigError
from ..npt.durations import parse_duration

if TYPE_CHECKING:
    import argparse

    from ..at.onboard import Enrollment, Onboarded, PendingEnrollment

PROG = "at_activate"
SPP_RE = re.compile(r"[A-Za-z0-9]{6,16}")
MANAGE_SUFFIX = ".new.enrollments.__manage"
# the enrollments approve/deny/revoke/unrevoke choose from
SELECT_STATUS = {"approve": "pending", "deny": "pending", "revoke": "approved"}
VERB_ING = {"deny": "Denying", "revoke": "Revoking", "unrevoke": "Un-Revoking"}

Event = tuple[dict[str, Any], "str | None"]
"""(the ``--output json`` object, the text line or None)"""

Pattern = re.Pattern[str]


def expiry_ms(text: str | None) -> int | None:
    """``-e/--expiry`` in milliseconds; None when absent or zero (= no expiry)."""
    if text is None or not text.strip():
        return None
    seconds = parse_duration(text)  # ConfigError names a bad text
    if not any(c in "123456789" for c in text):
        return None  # "0", "0ms": no expiry (parse_duration reads 0 as "never" too)
    return int(round(seconds * 1000))


def dart_str(v: Any) -> str:
    """A value as Dart's ``toString`` prints it (the official tool prints maps this way)."""
    if isinstance(v, dict):
        return "{" + ", ".join(f"{dart_str(k)}: {dart_str(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(dart_str(x) for x in v) + "]"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def reply(status: str, eid: str) -> str:
    """The server's answer as the official tool prints it: ``data:{"status":...}``."""
    return "data:" + json.dumps({"status": status, "enrollmentId": eid}, separators=(",", ":"))


# -- what the command line asks for --------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    cmd: str
    ttl_ms: int | None = None  # otp, spp: passcode lifetime; enroll: lifetime of the new keys
    namespaces: dict[str, str] | None = None  # enroll

    @property
    def manages(self) -> bool:
        """True: the command runs as the atSign's manager (loads its keys and connects)."""
        return self.cmd not in ("status", "onboard", "enroll")


def plan(args: argparse.Namespace) -> Plan:
    """The checks made before any secret or socket; raises ConfigError (exit 2)."""
    cmd = args.cmd
    if cmd in ("status", "onboard"):
        return Plan(cmd)
    if cmd == "enroll":
        namespaces = parse_namespaces(args.namespaces)
        return Plan(cmd, ttl_ms=expiry_ms(args.expiry), namespaces=namespaces)
    if cmd == "spp" and not SPP_RE.fullmatch(args.spp):
        raise ConfigError("SPP must be alphanumeric and 6 to 16 characters long")
    ttl_ms = expiry_ms(getattr(args, "expiry", None))
    if cmd == "otp" and args.ttl is not None:
        if args.ttl <= 0:
            raise ConfigError("--ttl must be positive")
        ttl_ms = args.ttl * 1000
    return Plan(cmd, ttl_ms=ttl_ms)


def regex(text: str | None, flag: str) -> Pattern | None:
    if text is None:
        return None
    try:
        return re.compile(text)
    except re.error as exc:
        raise ConfigError(f"{flag}: bad regular expression {text!r}: {exc}") from exc


def filters(args: argparse.Namespace) -> tuple[Pattern | None, Pattern | None]:
    """``-A/--arx`` and ``-D/--drx`` compiled (None: not given)."""
    return regex(args.arx, "-A/--arx"), regex(args.drx, "-D/--drx")


def selection_filters(args: argparse.Namespace) -> tuple[Pattern | None, Pattern | None]:
    """The filters of approve/deny/revoke/unrevoke without ``-i``: at least one is needed."""
    arx, drx = filters(args)
    if arx is None and drx is None:
        raise ConfigError(
            f"{args.cmd}: at least one of -i/--enrollmentId, -A/--arx or -D/--drx is needed"
        )
    return arx, drx


def auto_filters(args: argparse.Namespace) -> tuple[Pattern | None, Pattern | None]:
    """``auto``: ``-L`` at least 1 and at least one of ``-A``/``-D``."""
    if args.limit < 1:
        raise ConfigError("-L/--limit must be at least 1")
    arx, drx = filters(args)
    if arx is None and drx is None:
        raise ConfigError("auto: you must supply -A/--arx and/or -D/--drx")
    return arx, drx


def matches(arx: Pattern | None, drx: Pattern | None, app: str | None, dev: str | None) -> bool:
    return (arx is None or bool(arx.search(app or ""))) and (
        drx is None or bool(drx.search(dev or ""))
    )


def matching(
    items: Iterable[Enrollment], arx: Pattern | None, drx: Pattern | None
) -> list[Enrollment]:
    return [e for e in items if matches(arx, drx, e.app_name, e.device_name)]


def new_request(key: str, value: str | None, seen: set[str]) -> tuple[str, str, str] | None:
    """``auto``: (enrollment id, app name, device name) of a new-enrollment notification not
    seen before (and now marked seen), else None."""
    key = key.split(":", 1)[1] if key.startswith("@") else key
    eid = key.split(".", 1)[0]
    if eid in seen or MANAGE_SUFFIX not in key:
        return None
    seen.add(eid)
    try:
        er = json.loads(value or "{}")
    except ValueError:
        er = {}
    if not isinstance(er, dict):
        er = {}
    return eid, str(er.get("appName") or ""), str(er.get("deviceName") or "")


# -- what to print -------------------------------------------------------------------------


def onboarded_event(done: Onboarded) -> Event:
    return (
        {
            "atsign": done.keys.atsign,
            "enrollmentId": done.enrollment_id,
            "keysFile": str(done.path),
            "status": "activated",
        },
        f"{done.keys.atsign} activated; keys saved to {done.path}",
    )


def pending_event(p: PendingEnrollment) -> Event:
    return {"enrollmentId": p.enrollment_id, "status": "pending"}, (
        f"Enrollment ID: {p.enrollment_id}"
    )


def waiting_hint(p: PendingEnrollment, wait_timeout: float) -> str:
    return (
        f"Waiting for approval (up to {wait_timeout:g}s); approve it with: "
        f"{PROG} approve -a {p.atsign} -i {p.enrollment_id}"
    )


def enrolled_event(done: Onboarded) -> Event:
    return (
        {"enrollmentId": done.enrollment_id, "status": "approved", "keysFile": str(done.path)},
        f"enrollment {done.enrollment_id} approved; keys saved to {done.path}",
    )


def otp_event(code: str, ttl_ms: int | None) -> Event:
    return {"otp": code, "ttlSeconds": None if ttl_ms is None else ttl_ms / 1000}, code


def spp_event(response: str) -> Event:
    return {"spp": "set", "response": response}, f"Server response: data:{response}"


def fetched_event(eid: str, body: dict[str, Any]) -> Event:
    return {"enrollmentId": eid, **body}, f"Fetched enrollment OK: {dart_str(body)}"


def deleted_event(eid: str, status: str) -> Event:
    return {"enrollmentId": eid, "status": status}, "Server response: " + reply(status, eid)[5:]


def approved_event(e: Enrollment) -> Event:
    return (
        {"enrollmentId": e.enrollment_id, "status": e.status, "namespaces": e.namespaces},
        f"Server response: {reply(e.status, e.enrollment_id)}",
    )


def verdict_event(eid: str, status: str) -> Event:
    return {"enrollmentId": eid, "status": status}, f"Server response: {reply(status, eid)}"


def action_line(cmd: str, e: Enrollment) -> str:
    """The progress line before approve/deny/revoke/unrevoke acts on ``e``."""
    if cmd == "approve":
        return (
            f'Approving enrollmentId {e.enrollment_id} with appName "{e.app_name}" '
            f'and deviceName "{e.device_name}"'
        )
    return f"{VERB_ING[cmd]} enrollmentId {e.enrollment_id}"

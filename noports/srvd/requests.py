"""Session-request decisions, without I/O (spec 4.2 plus the later fixes of 10 and 12.1).

:func:`classify` says what a notification is; :class:`Admission` decides whether a parsed
request gets a session, and keeps the ledger of live sessions that the decisions need
(duplicate ids, the global cap, per-requester quotas). The control process does the I/O:
key look-ups, the worker call, the reply or the negative acknowledgement.

Checks, in order (the first failure is the answer):

1. the request parses (R1 JSON via :func:`noports.session.wire.parse_relay_request`, R1L a
   bare session id); the session id is a UUID v4 and every atSign is valid;
2. ``--manager``: the **notification's sender** must be a manager (unless ``open``);
3. JSON requests: the sender must be ``atSignA`` (the official later fix for 12.1 #4);
4. ``--require-auth``: both sides must authenticate (refuses legacy and half-auth requests);
5. not shutting down; the session id is not live already;
6. fewer than ``max_sessions`` live sessions, and the sender has fewer than its quota.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from ..errors import ProtocolError
from ..names import InvalidNameError, validate_atsign, validate_session_id
from ..session.wire import RelayRequest, parse_relay_request

NAMESPACE = "sshrvd"
SUFFIX = "." + NAMESPACE
REQUEST_PORTS = ".request_ports"
# Later official notification types on the relay namespace that are not session requests.
IGNORED_TYPES = frozenset({"auth_modes", "sessions"})
#: Relay auto-selection (spec-latest 1.3): ``@relay:discover_request.sshrvd@client``.
DISCOVER_KEY = "discover_request" + SUFFIX
DISCOVER_REPLY = "discover_response"
DISCOVER_ITEMS = 8

# Refusal kinds (metric labels): why a request got no session.
INVALID = "invalid"
DENIED = "denied"
DUPLICATE = "duplicate"
QUOTA = "quota"
CAPACITY = "capacity"
SHUTDOWN = "shutdown"
ERROR = "error"


def session_message(short_key: str) -> tuple[str, str] | None:
    """``(type, sid)`` for ``<type>.<sid>.sessions.sshrvd`` (latest spec 8.2), else None."""
    parts = short_key.lower().split(".")
    if len(parts) == 4 and parts[2:] == ["sessions", NAMESPACE] and parts[0] and parts[1]:
        return parts[0], parts[1]
    return None


def classify(short_key: str) -> str | None:
    """``"json"`` (R1), ``"legacy"`` (R1L), ``"discover"``, ``"sessions"`` or None (ignore).

    ``short_key`` is the key without ``@to:`` and ``@from`` (``dev.request_ports.sshrvd``).
    A legacy request is ``<device>.sshrvd``: exactly one label before the namespace.
    """
    k = short_key.lower()
    if not k.endswith(SUFFIX):
        return None
    if k == DISCOVER_KEY:
        return "discover"
    if session_message(k) is not None:
        return "sessions"
    head = k[: -len(SUFFIX)]
    if head.endswith(REQUEST_PORTS):
        return "json"
    if not head or "." in head or ":" in head or head in IGNORED_TYPES:
        return None
    return "legacy"


def discover_reply(
    value: str | None, *, ip: str, port: int | None, sessions: int, max_sessions: int
) -> str | None:
    """The ``discover_response`` value for a ``discover_request`` value, or None (no answer).

    Official form: a JSON object with, for each requested item in request order, ``ipaddr``
    (the relay's ``--ip``) and ``port`` (443 when the single-port listener runs, else null);
    unknown items are skipped; a value that is not ``{"items": [...]}`` gets no answer. Our
    addition (official clients ignore it): ``sessions`` and ``maxSessions``, the relay's
    current load, so our clients can avoid a saturated relay.
    """
    from ..crypto.encoding import canonical_json, loads_object

    try:
        body = loads_object(value or "", what="discover request")
    except ProtocolError:
        return None
    items = body.get("items")
    if not isinstance(items, list):
        return None
    out: dict[str, object] = {}
    for item in items[:DISCOVER_ITEMS]:
        if item == "ipaddr":
            out["ipaddr"] = ip
        elif item == "port":
            out["port"] = port
    out["sessions"] = sessions
    out["maxSessions"] = max_sessions
    return canonical_json(out)


@dataclass(frozen=True)
class Refusal(Exception):
    """No session. ``session_id`` (as the client wrote it) is set when a nack can be addressed."""

    kind: str
    reason: str
    session_id: str | None = None
    #: send ``nack.<sid>`` (official: only to requests with ``multipleAcksOk``)
    nack: bool = True

    def __str__(self) -> str:
        return self.reason


@dataclass(frozen=True)
class Grant:
    """A request that passed every check; its session id is reserved in the ledger."""

    request: RelayRequest
    sender: str
    session_id: str  # canonical (lower-case); ``request.session_id`` is what the client sent
    atsign_a: str
    atsign_b: str


class Admission:
    """The ledger of live sessions and the checks that use it."""

    def __init__(
        self,
        *,
        managers: frozenset[str] | None,
        require_auth: bool,
        max_sessions: int,
        per_requester: int,
    ) -> None:
        self.managers = managers  # None = open
        self.require_auth = require_auth
        self.max_sessions = max_sessions
        self.per_requester = per_requester
        self.draining = False
        self.live: dict[str, str] = {}  # canonical session id -> requester
        self.per: Counter[str] = Counter()

    def check(self, kind: str, value: str | None, sender: str) -> Grant:
        """Parse and decide; on success the session id is reserved (``release`` it later)."""
        try:
            who = validate_atsign(sender)
        except InvalidNameError as exc:
            raise Refusal(INVALID, f"invalid sender: {exc}") from None
        if value is None:
            raise Refusal(INVALID, "request has no value")
        try:
            req = parse_relay_request(value, sender=who, legacy=(kind == "legacy"))
        except ProtocolError as exc:
            raise Refusal(INVALID, str(exc)) from None
        try:
            return self._decide(req, who)
        except Refusal as r:
            if req.multiple_acks_ok:
                raise
            raise dataclasses.replace(r, nack=False) from None

    def _decide(self, req: RelayRequest, who: str) -> Grant:
        try:
            sid = validate_session_id(req.session_id)
        except InvalidNameError as exc:
            raise Refusal(INVALID, str(exc)) from None
        asked = req.session_id  # nacks go to the id as the client wrote it
        try:
            a = validate_atsign(req.atsign_a)
            b = validate_atsign(req.atsign_b)
        except InvalidNameError as exc:
            raise Refusal(INVALID, str(exc), asked) from None
        if self.managers is not None and who not in self.managers:
            raise Refusal(DENIED, f"{who} is not allowed to use this relay", asked)
        if not req.legacy and a != who:
            raise Refusal(DENIED, f"atSignA {a} is not the requester {who}", asked)
        if self.require_auth and not (req.auth_a and req.auth_b):
            raise Refusal(DENIED, "this relay requires both sockets to authenticate", asked)
        if self.draining:
            raise Refusal(SHUTDOWN, "relay is shutting down", asked)
        if sid in self.live:
            raise Refusal(DUPLICATE, f"session id {sid} is already in use", asked)
        if len(self.live) >= self.max_sessions:
            raise Refusal(CAPACITY, f"relay is at capacity ({self.max_sessions} sessions)", asked)
        if self.per[who] >= self.per_requester:
            raise Refusal(
                QUOTA,
                f"{who} already has {self.per[who]} live sessions (quota {self.per_requester})",
                asked,
            )
        self.live[sid] = who
        self.per[who] += 1
        return Grant(req, who, sid, a, b)

    def release(self, session_id: str) -> bool:
        """Forget a session (ended, lost with its worker, or never created)."""
        sid = session_id.lower()
        who = self.live.pop(sid, None)
        if who is None:
            return False
        self.per[who] -= 1
        if self.per[who] <= 0:
            del self.per[who]
        return True

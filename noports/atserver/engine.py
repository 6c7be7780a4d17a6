"""The server core: shared state (``Engine``) and one ``Session`` per connection (no I/O).

A session turns a request line into a ``Reply`` (text to write, an optional delay before
writing it, whether to close afterwards). It talks to its connection only through a ``Port``
(``write``/``close``, in ``reply``), which the asyncio adapter implements and tests can fake.
Verb handlers live in the ``verbs_*`` modules, gathered in ``verbs.HANDLERS`` and passed to the
``Engine`` (so this module never imports them); this module owns framing of
replies and errors (prompt rules, legacy vs JSON errors) and connection bookkeeping.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import AtError
from .hub import Hub
from .parse import DEFAULT_BUFFER_LIMIT, Command, loads_client_json, parse_line
from .reply import Port, Reply
from .store import Store

log = logging.getLogger("noports.server")

Clock = Callable[[], int]


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Config:
    """Tunables. Defaults are the official server's shipped values (spec section 4)."""

    host: str = "127.0.0.1"
    port: int = 0
    buffer_limit: int = DEFAULT_BUFFER_LIMIT
    max_connections: int = 200
    unauth_timeout: float = 600.0
    # pre-auth limits (not in the official server; see net.AtServer.admit)
    max_unauth: int = 100  # unauthenticated connections at once; the oldest is shed
    max_unauth_per_source: int = 32  # the same, per peer address
    auth_deadline: float = 60.0  # seconds to authenticate, however busy the connection is
    unauth_buffer_limit: int = 64 * 1024  # largest line before authentication
    auth_timeout: float = 30 * 24 * 3600.0
    stats_interval: float = 15.0
    notification_expiry_ms: int = 15 * 60 * 1000
    noop_max_ms: int = 5000
    challenge_ttl_ms: int = 60_000
    otp_ttl_ms: int = 5 * 60 * 1000
    enroll_pending_ttl_ms: int = 48 * 3600 * 1000
    enroll_requests_per_hour: int = 5
    bad_otp_delay: float = 0.25  # base of the growing (Fibonacci) delay after bad OTPs
    root_unknown_delay: float = 3.0
    monitor_buffer_limit: int = 8 * 1024 * 1024  # close a monitor that stops reading
    version: str = "3.0.52"


class Engine:
    """State shared by every session: the store, the monitor hub, the clock, live sessions."""

    def __init__(
        self,
        store: Store,
        config: Config | None = None,
        clock: Clock = wall_ms,
        *,
        handlers: Handlers,
    ) -> None:
        self.store = store
        self.handlers = handlers  # the verb table (``verbs.HANDLERS``), passed in: no import back
        self.config = config or Config()
        self.clock = clock
        self.hub = Hub()
        self.sessions: set[Session] = set()
        self.started_ms = clock()
        self.address = f"{self.config.host}:{self.config.port}"

    def session(self, port: Port) -> Session:
        s = Session(self, port)
        self.sessions.add(s)
        return s

    def closed(self, s: Session) -> None:
        self.sessions.discard(s)
        self.hub.unregister(s)

    def sessions_for_enrollment(self, atsign: str, eid: str) -> list[Session]:
        return [
            s for s in self.sessions if s.atsign == atsign and s.enrollment_id == eid and s.authed
        ]


Handlers = Mapping[str, Callable[["Session", Command], Reply]]


def _version_tuple(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        out.append(int(digits or 0))
    return tuple(out)


@dataclass(eq=False)
class Session:
    """One connection's protocol state."""

    engine: Engine
    port: Port
    atsign: str | None = None  # from ``from:``
    authed: bool = False
    auth_kind: str | None = None  # pkam | apkam | cram
    enrollment_id: str | None = None
    namespaces: dict[str, str] | None = None  # None: unrestricted (legacy PKAM / CRAM)
    challenge: str | None = None
    challenge_at: int = 0
    json_errors: bool = False
    monitoring: bool = False
    closed: bool = False
    root_unknown: int = 0
    bad_otps: int = 0
    enroll_times: list[int] = field(default_factory=list)
    last_write: float = 0.0  # last client activity, on the loop clock of net.py (which sets it)

    # -- framing -----------------------------------------------------------------------

    @property
    def prompt(self) -> str:
        if self.monitoring:
            return ""
        return f"{self.atsign}@" if self.authed and self.atsign else "@"

    def data(self, payload: str) -> Reply:
        return Reply(f"data:{payload}\n{self.prompt}")

    def error(self, exc: AtError) -> Reply:
        code, desc = exc.code, exc.description
        if self.json_errors:
            body = json.dumps({"errorCode": code, "errorDescription": desc})
            return Reply(f"error:{body}\n{self.prompt}")
        if not self.authed and code in ("AT0401", "AT0003", "AT0001"):
            return Reply(f"error:{code}-Exception: {desc}\n{self.prompt}")
        title = type(exc).default_description if type(exc) is not AtError else "error"
        return Reply(f"error:{code}-{title} : {desc}\n{self.prompt}")

    def response_error(self, code: str, desc: str) -> Reply:
        """The 'response path' error form used by pkam for APKAM states: ``error:AT0026:...``."""
        if self.json_errors:
            return Reply(
                f"error:{json.dumps({'errorCode': code, 'errorDescription': desc})}\n{self.prompt}"
            )
        return Reply(f"error:{code}:{desc}\n{self.prompt}")

    # -- dispatch ----------------------------------------------------------------------

    def handle(self, line: str) -> Reply:
        """Run one request line and return what to write. Never raises for client mistakes."""
        if not line:  # a bare CRLF: the Dart atServer's exact answer, prompt in the same write
            if self.authed:
                return Reply(f"error:AT0003-Invalid syntax : invalid command\n{self.prompt}")
            return Reply(f"error:AT0003-Exception: invalid command\n{self.prompt}")
        try:
            cmd = parse_line(line)
            return self.dispatch(cmd)
        except AtError as exc:
            return self.error(exc)
        except Exception as exc:  # a bug must not take the connection (or server) down
            log.exception("internal error handling a %s request", line.split(":", 1)[0][:20])
            return self.error(
                AtError.for_code("AT0011", f"internal server exception: {type(exc).__name__}")
            )

    def dispatch(self, cmd: Command) -> Reply:
        verb = cmd.verb
        if verb == "exit":
            return Reply("", close=True)
        handler = self.engine.handlers.get(verb)
        if handler is None:
            raise AtError.for_code("AT0003", f"verb {verb} is not supported")
        return handler(self, cmd)

    # -- helpers for handlers -------------------------------------------------------------

    def require_auth(self) -> str:
        if not self.authed or self.atsign is None:
            raise AtError.for_code("AT0401", "Command cannot be executed without auth")
        return self.atsign

    def set_client_config(self, raw: str | None) -> None:
        self.json_errors = False
        if not raw:
            return
        try:
            cfg = loads_client_json(raw)
            version = str(cfg.get("version", "0"))
        except (ValueError, AttributeError, AtError):
            return
        self.json_errors = _version_tuple(version) >= (3, 0, 38)

    def new_challenge(self, atsign: str) -> str:
        self.challenge = f"_{uuid.uuid4()}{atsign}:{uuid.uuid4()}"
        self.challenge_at = self.engine.clock()
        return self.challenge

    def take_challenge(self) -> str | None:
        """The pending challenge if still fresh; one use only."""
        c, self.challenge = self.challenge, None
        if (
            c is None
            or self.engine.clock() - self.challenge_at > self.engine.config.challenge_ttl_ms
        ):
            return None
        return c

    def push(self, text: str) -> None:
        if not self.closed:
            self.port.write(text)

    def info_meta(self) -> dict[str, Any]:
        return {"enrollmentId": self.enrollment_id, "namespace": self.namespaces}

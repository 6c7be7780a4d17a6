"""Sans-IO atProtocol client codec: bytes in, events out (STYLE.md 5 and 10).

No sockets, no clock, no asyncio. The asyncio adapter (:mod:`noports.at.connection`) feeds
received bytes to :meth:`AtClientCodec.receive_data`, pulls :meth:`AtClientCodec.next_event`
until :data:`NEED_DATA`, and writes what :meth:`AtClientCodec.send` returns.

Framing (spec atprotocol 1.0): replies are ``data:<payload>\\n<prompt>`` or
``error:ATxxxx…\\n<prompt>``; the prompt (``@`` before authentication, ``@alice@`` after) is
written without a newline and may also be glued to the front of the next line
(``@alice@notification: {…}``). Monitor pushes are ``notification: <json>\\n``. The root
directory answers ``host:port\\r\\n@`` or ``null\\r\\n@``.

Prompts are announced as :class:`Prompt` events. A trailing ``@`` is ambiguous (the bare
prompt, or the start of ``@alice@``), so the codec tracks which prompt it expects: ``@``
until a ``pkam``/``cram`` it sent succeeds, then ``@<atsign>@``. That keeps the event
stream identical however the bytes are chunked. Incomplete input is capped
(``max_buffer``): beyond it :class:`~noports.errors.BufferLimitError` is raised and the
codec is dead, so a peer cannot make us buffer without bound.

Command builders live in :mod:`noports.at.commands` and are re-exported here.
"""

from __future__ import annotations

import enum
import json
import re
from collections import deque
from typing import Any

from ..errors import AtError, BufferLimitError, LocalError, ProtocolError
from ..record import Frozen, set_field
from . import commands
from .commands import *  # noqa: F401,F403  (builders are part of this module's API)
from .commands import Metadata

DEFAULT_MAX_BUFFER = 16 * 1024 * 1024  # > the Dart server's 10,240,000-byte command buffer


class State(enum.Enum):
    """Where the conversation is (asyncpg ``ProtocolState`` style)."""

    GREETING = "greeting"  # waiting for the server's first prompt
    READY = "ready"  # request/response
    MONITOR = "monitor"  # ``monitor`` sent: pushes plus replies to noop
    CLOSED = "closed"  # EOF seen, @exit sent, or a fatal error


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class Event(Frozen):
    """Base class of every event (values, not behaviour)."""

    __slots__ = ()


class Prompt(Event):
    """The server is ready: ``@`` (unauthenticated) or ``@alice@``."""

    __slots__ = ("text",)
    text: str

    def __init__(self, text: str) -> None:
        set_field(self, "text", text)

    @property
    def atsign(self) -> str | None:
        return self.text[:-1] if len(self.text) > 1 else None


class Data(Event):
    """``data:<text>``; ``verb`` is the verb of the command it answers (None if unsolicited)."""

    __slots__ = ("text", "verb")
    text: str
    verb: str | None

    def __init__(self, text: str, verb: str | None = None) -> None:
        set_field(self, "text", text)
        set_field(self, "verb", verb)


class ErrorReply(Event):
    """``error:…`` in any of its three forms; :meth:`exception` gives the AtError subclass."""

    __slots__ = ("code", "description", "verb")
    code: str | None
    description: str
    verb: str | None

    def __init__(self, code: str | None, description: str, verb: str | None = None) -> None:
        set_field(self, "code", code)
        set_field(self, "description", description)
        set_field(self, "verb", verb)

    def exception(self) -> AtError:
        if self.code is None:
            return AtError(self.description or "unknown error")
        return AtError.for_code(self.code, self.description)


class RootReply(Event):
    """The root directory's answer: ``host:port``, or None/None for ``null``."""

    __slots__ = ("host", "port")
    host: str | None
    port: int | None

    def __init__(self, host: str | None, port: int | None) -> None:
        set_field(self, "host", host)
        set_field(self, "port", port)

    @property
    def found(self) -> bool:
        return self.host is not None


class Notification(Event):
    """One ``notification:`` push, as sent (the value is still ciphertext if encrypted).

    ``raw`` (the JSON as received) is left out of the repr and the comparison."""

    __slots__ = (
        "id",
        "from_atsign",
        "to_atsign",
        "key",
        "value",
        "operation",
        "epoch_millis",
        "message_type",
        "is_encrypted",
        "metadata",
        "raw",
        "decrypted",
    )
    _hidden = ("raw",)
    id: str
    from_atsign: str
    to_atsign: str
    key: str
    value: str | None
    operation: str
    epoch_millis: int
    message_type: str
    is_encrypted: bool
    metadata: Metadata
    raw: dict[str, Any]
    decrypted: bool

    def __init__(
        self,
        id: str,
        from_atsign: str,
        to_atsign: str,
        key: str,
        value: str | None,
        operation: str,
        epoch_millis: int,
        message_type: str,
        is_encrypted: bool,
        metadata: Metadata,
        raw: dict[str, Any] | None = None,
        decrypted: bool = False,
    ) -> None:
        set_field(self, "id", id)
        set_field(self, "from_atsign", from_atsign)
        set_field(self, "to_atsign", to_atsign)
        set_field(self, "key", key)
        set_field(self, "value", value)
        set_field(self, "operation", operation)
        set_field(self, "epoch_millis", epoch_millis)
        set_field(self, "message_type", message_type)
        set_field(self, "is_encrypted", is_encrypted)
        set_field(self, "metadata", metadata)
        set_field(self, "raw", {} if raw is None else raw)
        set_field(self, "decrypted", decrypted)

    @property
    def is_stats(self) -> bool:
        """The 15-second stats heartbeat (id ``-1``): not a real notification."""
        return self.id == "-1"

    @property
    def short_key(self) -> str:
        """The key without ``@to:`` and ``@from`` (``ssh_request.dev.sshnp``)."""
        k = self.key
        if k.startswith("@") and ":" in k:
            k = k.split(":", 1)[1]
        if k.startswith("public:"):
            k = k[len("public:") :]
        frm = self.from_atsign
        if frm and k.endswith(frm):
            k = k[: -len(frm)]
        return k

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Notification:
        try:
            nid = obj["id"]
        except KeyError as exc:
            raise ProtocolError("notification has no id") from exc
        try:
            epoch = int(obj.get("epochMillis") or 0)
        except (TypeError, ValueError) as exc:
            raise ProtocolError("notification epochMillis is not an integer") from exc
        enc = obj.get("isEncrypted")
        value = obj.get("value")
        meta = obj.get("metadata")
        return cls(
            id=str(nid),
            from_atsign=str(obj.get("from") or ""),
            to_atsign=str(obj.get("to") or ""),
            key=str(obj.get("key") or ""),
            value=None if value is None else str(value),
            operation=str(obj.get("operation") or "update"),
            epoch_millis=epoch,
            message_type=str(obj.get("messageType") or "MessageType.key"),
            is_encrypted=enc if isinstance(enc, bool) else str(enc).lower() == "true",
            metadata=Metadata.from_json(meta if isinstance(meta, dict) else None),
            raw=obj,
        )


class Closed(Event):
    """The peer closed the connection (``receive_data(b"")``)."""

    __slots__ = ()


# ---------------------------------------------------------------------------------------

_PROMPT_PREFIX = re.compile(r"@[^@\s:]+@|@")
_FULL_PROMPT = re.compile(r"^(?:@[^@\s:]+@|@)$")
_ROOT_REPLY = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):(\d{1,5})$")
# verbs that never get a reply line
_NO_REPLY = frozenset({"monitor", "@exit"})


def parse_error(payload: str) -> tuple[str | None, str]:
    """``AT0015-key not found : x``, ``AT0026:enrollment_id: …`` or JSON -> (code, description)."""
    text = payload.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            code = obj.get("errorCode")
            desc = obj.get("errorDescription") or obj.get("errorMessage") or ""
            code_s = str(code) if code is not None else None
            if code_s is not None and AtError.parse_code(code_s) is None:
                code_s = None
            return code_s, str(desc)
    code = AtError.parse_code(text)
    if code is None:
        return None, text
    rest = text[len(code) :]
    if rest[:1] in ("-", ":"):
        rest = rest[1:]
    return code, rest.strip()


class AtClientCodec:
    """The client side of one atProtocol connection (an atServer, or the root with ``root``).

    ``send(line)`` records what reply to expect and returns bytes; ``receive_data(data)``
    buffers; ``next_event()`` returns the next :class:`Event` or :data:`NEED_DATA`.
    """

    def __init__(self, *, root: bool = False, max_buffer: int = DEFAULT_MAX_BUFFER) -> None:
        self.root = root
        self.max_buffer = max_buffer
        self.state = State.GREETING
        self.atsign: str | None = None  # from the last ``from:``
        self.authenticated = False
        self._buf = bytearray()
        self._tail = 0  # _buf[_tail:] holds no b"\n"
        self._events: deque[Event] = deque()
        self._pending: deque[str] = deque()  # verbs awaiting a reply, oldest first
        self._eof = False
        self._dead: ProtocolError | None = None
        self._closed_sent = False

    # -- outgoing ----------------------------------------------------------------------

    @property
    def expected_prompt(self) -> str:
        return f"{self.atsign}@" if self.authenticated and self.atsign else "@"

    @property
    def awaiting_reply(self) -> int:
        """How many sent commands still wait for their reply line."""
        return len(self._pending)

    def send(self, command: str) -> bytes:
        """Bytes for ``command``; records the reply it expects. Refuses after close."""
        if self.state is State.CLOSED:
            raise LocalError("connection is closed")
        data = commands.encode(command)
        verb = self._verb(command)
        if verb == "from":
            self.atsign = commands.atsign(command[5:].split(":clientConfig:", 1)[0])
        if verb == "monitor":
            self.state = State.MONITOR
        elif verb == "@exit":
            self.state = State.CLOSED
        if verb not in _NO_REPLY:
            self._pending.append(verb)
        return data

    def _verb(self, command: str) -> str:
        if self.root:
            return "@exit" if command.strip() == commands.EXIT else "lookup"
        head = command.split(":", 1)[0].split(" ", 1)[0]
        return head.replace(" ", "").lower()

    # -- incoming ----------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Buffer ``data``; ``b""`` means EOF. Raises BufferLimitError beyond the cap."""
        if self._dead is not None:
            raise self._dead
        if not data:
            self._eof = True
            return
        start = len(self._buf)
        self._buf += data
        last = self._buf.rfind(b"\n", start)
        if last >= 0:
            self._tail = last + 1
        if len(self._buf) - self._tail > self.max_buffer:
            self._dead = BufferLimitError(
                f"atProtocol line longer than {self.max_buffer} bytes without a newline"
            )
            self.state = State.CLOSED
            raise self._dead

    def next_event(self) -> Event | _NeedData:
        """The next event, or NEED_DATA. Raises ProtocolError on a malformed line."""
        while not self._events:
            if self._dead is not None:
                raise self._dead
            if not self._step():
                break
        if self._events:
            return self._events.popleft()
        return NEED_DATA

    def events(self) -> list[Event]:
        """Drain every event available now (convenience for the adapters and tests)."""
        out: list[Event] = []
        while True:
            ev = self.next_event()
            if isinstance(ev, _NeedData):
                return out
            out.append(ev)

    def _step(self) -> bool:
        """Parse one unit from the buffer into ``_events``; False when nothing more can be."""
        nl = self._buf.find(b"\n", 0, self._tail) if self._tail else -1
        if nl >= 0:
            raw = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            self._tail -= nl + 1
            self._line(raw)
            return True
        if self._buf:
            if self._tail_prompt():
                return True
            if self._eof:  # an unterminated last line: parse it as a line
                raw = bytes(self._buf)
                self._buf.clear()
                self._tail = 0
                self._line(raw)
                return True
            return False
        if self._eof and not self._closed_sent:
            self._closed_sent = True
            self.state = State.CLOSED
            self._events.append(Closed())
            return True
        return False

    def _tail_prompt(self) -> bool:
        """Announce and consume a complete prompt at the end of the buffer.

        ``@`` is held back while ``@<atsign>@`` is expected (it may be the start of it);
        anything else that looks like a whole prompt cannot grow into a line any more.
        """
        if len(self._buf) > 64 or self._buf[:1] != b"@":
            return False
        try:
            tail = self._buf.decode("utf-8")
        except UnicodeDecodeError:
            return False
        if not _FULL_PROMPT.match(tail):
            return False
        expected = self.expected_prompt
        if tail != expected and expected.startswith(tail) and not self._eof:
            return False
        self._buf.clear()
        self._tail = 0
        self._announce_prompt(tail)
        return True

    def _announce_prompt(self, text: str) -> None:
        if self.state is State.GREETING:
            self.state = State.READY
        self._events.append(Prompt(text))

    def _line(self, raw: bytes) -> None:
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self._fail(ProtocolError("atProtocol reply is not UTF-8"))
            raise self._dead from exc  # type: ignore[misc]
        line = line.rstrip("\r")
        # strip and announce prompts glued to the front of the line
        while line.startswith("@"):
            m = _PROMPT_PREFIX.match(line)
            if m is None:  # pragma: no cover - the pattern always matches "@"
                break
            self._announce_prompt(m.group(0))
            line = line[m.end() :]
        if not line.strip():
            return
        self._classify(line)

    def _classify(self, line: str) -> None:
        if line.startswith("notification:"):
            body = line[len("notification:") :].strip()
            try:
                obj = json.loads(body)
            except ValueError:
                self._fail(ProtocolError("notification is not valid JSON"))
            if not isinstance(obj, dict):
                self._fail(ProtocolError("notification is not a JSON object"))
            self._events.append(Notification.from_json(obj))
            return
        if line.startswith("data:"):
            verb = self._pending.popleft() if self._pending else None
            text = line[5:]
            if verb in ("pkam", "cram") and text.strip() == "success":
                self.authenticated = True
            self._events.append(Data(text, verb))
            return
        if line.startswith("error:"):
            verb = self._pending.popleft() if self._pending else None
            code, desc = parse_error(line[6:])
            if code == "AT0005":
                self.state = State.CLOSED  # the server closes after a buffer overflow
            self._events.append(ErrorReply(code, desc, verb))
            return
        if self.root:
            verb = self._pending.popleft() if self._pending else None
            text = line.strip()
            if text == "null":
                self._events.append(RootReply(None, None))
                return
            m = _ROOT_REPLY.match(text)
            if m:
                host = m.group(1).strip("[]")
                port = int(m.group(2))
                if 0 < port < 65536:
                    self._events.append(RootReply(host, port))
                    return
            del verb
        self._fail(ProtocolError(f"unexpected atProtocol line: {line[:80]!r}"))

    def _fail(self, exc: ProtocolError) -> None:
        self._dead = exc
        self.state = State.CLOSED
        raise exc

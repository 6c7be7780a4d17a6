"""Multi-mode control messages (spec 5.3 and 10), sans-IO.

Client to daemon, one per data connection, on the (decrypted) control stream::

    connect:no:encrypt\\n                            clear data connection
    connect:<b64 key32>:<b64 iv16>\\n                AES-CTR, same key+IV both ways (legacy)
    connect:<kC2D>:<ivC2D>:<kD2C>:<ivD2C>\\n         AES-CTR twin keys
    connect:aead:<conn-id>\\n                        ours: AEAD records, keys derived from
                                                    the session secret and <conn-id>
    heartbeat:<n>\\n                                 keep-alive, ignored

``connect:aead:`` only ever travels inside the AEAD-protected control channel, so nobody
but the client can send it, and the daemon refuses connection ids that do not increase
(no replayed or duplicated connection keys). Each data connection's records bind its id
into the key *and* the AAD, so two data sockets cross-paired at the relay fail their first
record instead of mixing streams.

Old clients (< 5.6.1) sent ``connect:<key>:<iv>`` without the newline; the parser buffers
until ``\\n`` and, while the session is not a twin-key or AEAD one, also accepts a
newline-less buffer made of whole 77-byte old messages (the official "exact multiple of
77" rule, checked strictly). Unterminated input is capped at ``max_line`` bytes.
"""

from __future__ import annotations

import re

from ..crypto.stream import CtrKeys
from ..errors import BufferLimitError, ProtocolError
from ..record import Frozen, set_field

MAX_LINE = 4096
OLD_MESSAGE_LEN = 77  # "connect:" + 44 + ":" + 24

# compiled on first use (``re``'s cache), not at import: only a daemon facing old clients
# parses unterminated messages
_OLD = rb"(?:connect:[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{22}==|connect:no:encrypt)+"
_OLD_ONE = rb"connect:[A-Za-z0-9+/]{43}=:[A-Za-z0-9+/]{22}==|connect:no:encrypt"


class Connect(Frozen):
    """Open one data connection. Exactly one of: clear (both None), ``keys``, ``conn_id``."""

    __slots__ = ("keys", "conn_id")
    keys: CtrKeys | None
    conn_id: int | None

    def __init__(self, keys: CtrKeys | None = None, conn_id: int | None = None) -> None:
        set_field(self, "keys", keys)
        set_field(self, "conn_id", conn_id)

    @property
    def kind(self) -> str:
        if self.conn_id is not None:
            return "aead"
        if self.keys is None:
            return "clear"
        return "twin" if self.keys.twin else "legacy"


class Heartbeat(Frozen):
    __slots__ = ("value",)
    value: str

    def __init__(self, value: str) -> None:
        set_field(self, "value", value)


class Unknown(Frozen):
    """Anything else (logged by the daemon as ``Unknown request to control socket``)."""

    __slots__ = ("text", "reason")
    text: str
    reason: str

    def __init__(self, text: str, reason: str = "unknown request") -> None:
        set_field(self, "text", text)
        set_field(self, "reason", reason)


Event = Connect | Heartbeat | Unknown


def format_connect(keys: CtrKeys | None = None, conn_id: int | None = None) -> bytes:
    if conn_id is not None:
        return f"connect:aead:{conn_id}\n".encode("ascii")
    if keys is None:
        return b"connect:no:encrypt\n"
    return ("connect:" + ":".join(keys.connect_fields()) + "\n").encode("ascii")


def format_heartbeat(n: int) -> bytes:
    return f"heartbeat:{n}\n".encode("ascii")


def parse_message(line: str) -> Event:
    """One message, without its newline (surrounding whitespace ignored, as Dart trims)."""
    text = line.strip()
    if text.startswith("heartbeat:"):
        return Heartbeat(text[len("heartbeat:") :])
    if not text.startswith("connect:"):
        return Unknown(text)
    fields = text[len("connect:") :].split(":")
    if fields == ["no", "encrypt"]:
        return Connect()
    try:
        if len(fields) == 2 and fields[0] == "aead":
            if not fields[1].isdigit() or len(fields[1]) > 10:
                return Unknown(text, "bad connection id")
            return Connect(conn_id=int(fields[1]))
        if len(fields) == 2:
            return Connect(keys=CtrKeys.from_b64(fields[0], fields[1]))
        if len(fields) == 4:
            return Connect(keys=CtrKeys.from_b64(*fields))
    except ProtocolError as exc:
        return Unknown(text, str(exc))
    return Unknown(text, "malformed connect request")


class ControlParser:
    """Bytes of the decrypted control stream in, events out."""

    def __init__(self, *, accept_unterminated: bool = True, max_line: int = MAX_LINE) -> None:
        self.accept_unterminated = accept_unterminated
        self.max_line = max_line
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Event]:
        self._buf += data
        events: list[Event] = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if line.strip():
                events.append(parse_message(line.decode("utf-8", "replace")))
        if self._buf and self.accept_unterminated and re.fullmatch(_OLD, self._buf):
            for m in re.finditer(_OLD_ONE, bytes(self._buf)):
                events.append(parse_message(m.group().decode("ascii")))
            self._buf.clear()
        if len(self._buf) > self.max_line:
            raise BufferLimitError(f"control message longer than {self.max_line} bytes")
        return events

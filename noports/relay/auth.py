"""The relay auth line as a sans-IO state machine (spec noports-protocol 4.4).

Bytes go in, a verdict comes out; nothing here reads a clock or touches a socket, so the
parser can be tested and fuzzed on its own. The adapter (``inbound.py``) enforces the
absolute deadline and asks ``want()`` how many bytes it may read next: the verifier never
lets more than ``max_line`` bytes (newline included) be read before a verdict, so an
oversized sender is cut at the cap instead of being buffered (finding 2b.2).

A verdict is final. ``rest`` holds the bytes that followed the newline in the same read:
they are tunnel data and must be forwarded, never dropped.
"""

from __future__ import annotations

import enum
import functools
import hashlib
from dataclasses import dataclass

from ..crypto import rsa
from ..crypto.envelope import RelayLineCheck
from ..errors import SignatureError

DEFAULT_MAX_LINE = 4096
MAX_REMEMBERED = 16

# The remembered lines' digests are only compared with each other, in memory: BLAKE2b-256
# (collision resistant like SHA-256) is CPython's own code, where ``hashlib.sha256`` sets up
# an OpenSSL 3 digest context per call (provider lookups: ~2-4x the hashing of a line,
# measured in the relay's pairing profile).
_line_digest = functools.partial(hashlib.blake2b, digest_size=32)


class Outcome(enum.Enum):
    NEED_MORE = "need_more"
    OK = "ok"
    FAILED = "failed"
    PENDING = "pending"  # ESCR: the signing key is being fetched; stop reading meanwhile


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    rest: bytes = b""


NEED_MORE = Verdict(Outcome.NEED_MORE)
OK = Verdict(Outcome.OK)  # the usual success: nothing followed the line in its read


class AuthLine:
    """Accumulates one connection's first line and checks it against a session.

    ``verified`` (optional, shared by one session side) remembers digests of lines that
    verified, so repeated identical lines skip the RSA check; only successes are stored.

    ``reason`` values on failure (stable, for logs and counters): ``oversize``, ``eof``,
    ``malformed`` (not a signed envelope), ``nonce`` (rvdNonce of another session or a
    stale one), ``bad_sig`` (signature does not verify with this side's key).
    """

    _buf: bytes | bytearray

    __slots__ = ("_buf", "_check_line", "_key", "_max", "_verdict", "_verified")

    # The optional ESCR attributes ``Inbound`` reads with getattr: found here at once, where
    # a miss on a slotted instance would raise and catch an AttributeError per socket.
    greeting = None
    ok_line = None
    fail_line = None
    target = None
    cancel = None

    def __init__(
        self,
        session_id: str,
        client_nonce: str,
        rvd_nonce: str,
        key: rsa.PublicKey,
        max_line: int = DEFAULT_MAX_LINE,
        verified: set[bytes] | None = None,
        check: RelayLineCheck | None = None,
    ) -> None:
        if max_line < 2:
            raise ValueError("max_line must allow at least one byte and a newline")
        self._buf = b""
        # ``check`` lets a session encode its signed bytes (and their digest) once, not per
        # socket; it must be made from the same session id and nonces.
        self._check_line = check or RelayLineCheck(session_id, client_nonce, rvd_nonce)
        self._key = key
        self._max = max_line
        self._verdict = NEED_MORE
        self._verified = verified

    @property
    def verdict(self) -> Verdict:
        return self._verdict

    def want(self) -> int:
        """How many more bytes may be read before a verdict is forced (0 once decided)."""
        if self._verdict.outcome is not Outcome.NEED_MORE:
            return 0
        return self._max - len(self._buf)

    def feed(self, data: bytes) -> Verdict:
        """Add received bytes. Bytes beyond ``want()`` are an adapter bug, still handled."""
        if self._verdict is not NEED_MORE:
            return self._verdict
        buf = self._buf
        if buf:  # an earlier read ended mid-line (rare: the line usually comes whole)
            start = len(buf)
            buf += data  # the bytearray kept below: linear in the line, however it is cut
            nl = buf.find(b"\n", start)
        else:
            buf = data
            nl = data.find(b"\n")
        if nl < 0 or nl >= self._max:
            if len(buf) >= self._max:
                return self._decide(Verdict(Outcome.FAILED, "oversize"))
            if not self._buf:
                self._buf = bytearray(data)
            return NEED_MORE
        return self._decide(self._check(bytes(buf[:nl]), bytes(buf[nl + 1 :])))

    def eof(self) -> Verdict:
        """The peer closed (or half-closed) before finishing its line."""
        if self._verdict is NEED_MORE:
            return self._decide(Verdict(Outcome.FAILED, "eof"))
        return self._verdict

    def _decide(self, verdict: Verdict) -> Verdict:
        self._verdict = verdict
        self._buf = b""  # the line is a bearer token: do not keep it around
        return verdict

    def _check(self, line: bytes, rest: bytes) -> Verdict:
        digest = None
        if self._verified is not None:
            # Every socket of a multi session repeats the same line (spec 4.4): a line this
            # session and side already verified needs no second RSA operation.
            digest = _line_digest(line).digest()
            if digest in self._verified:
                return Verdict(Outcome.OK, "", rest) if rest else OK
        try:
            self._check_line.verify(line, self._key)
        except SignatureError as exc:
            reason = "nonce" if "rvdNonce" in str(exc) else "bad_sig"
            return Verdict(Outcome.FAILED, reason)
        except Exception:  # noqa: BLE001 - any parse failure (incl. RecursionError) is a refusal
            return Verdict(Outcome.FAILED, "malformed")
        if digest is not None and self._verified is not None:
            if len(self._verified) < MAX_REMEMBERED:  # distinct valid lines: a key holder's
                self._verified.add(digest)
        return Verdict(Outcome.OK, "", rest) if rest else OK

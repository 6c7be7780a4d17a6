"""The strong data-plane mode: authenticated records (DESIGN decision 2, reliability T7).

Sans-IO: bytes in, plaintext or errors out; no sockets, no clock. The transfer loop in
``noports._speedups.xfer_*`` drives the same objects through their low-level ``*_into``
methods so the hot path allocates nothing.

Wire format of one direction (one TCP byte stream)::

    preamble  = "N" "P" 0x01 suite                     4 bytes, once, first
    record    = type:u8 | ctlen:u24be | ciphertext(ctlen - 16) | tag(16)
    type      = 0x00 data (1..MAX_PLAINTEXT bytes) | 0x01 close (empty plaintext)

* suite: 0x01 AES-256-GCM, 0x02 ChaCha20-Poly1305. Each *sender* picks its suite (AES-GCM
  when the CPU has AES instructions, else ChaCha20); receivers accept both, so the two ends
  never need to agree in advance. The suite is bound into the key and the AAD, so changing
  the preamble byte only makes every tag fail.
* key = HKDF-SHA256(ikm = 32-byte session secret, salt = UTF-8 session id,
  info = "noports-aead-v1 <suite-label> <c2d|d2c> <conn-id>"), 32 bytes. One key per
  direction (and per multi-mode connection), so the two directions never share a keystream.
* nonce = 4 zero bytes || u64be record sequence number, starting at 0 in each direction.
  A dropped, duplicated or reordered record uses the wrong nonce and fails its tag.
* AAD = header(4) || preamble(4) || "c2d"|"d2c" || u32be conn-id || UTF-8 session id: a
  record cannot be moved to another direction, connection or session, and its type and
  length are authenticated.
* close: the sender's last record. EOF without it is ``TruncationError``; anything after it,
  any failed tag, unknown type or oversize length is ``IntegrityError``. The receiver never
  releases plaintext of a record whose tag has not verified.
"""

from __future__ import annotations

import os
import struct
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import ConfigError, IntegrityError, TruncationError

SUITE_AES_256_GCM = 1
SUITE_CHACHA20_POLY1305 = 2
SUITE_LABELS = {SUITE_AES_256_GCM: "aes-256-gcm", SUITE_CHACHA20_POLY1305: "chacha20-poly1305"}
SUITE_BY_NAME = {
    "aes-256-gcm": SUITE_AES_256_GCM,
    "aesgcm": SUITE_AES_256_GCM,
    "chacha20-poly1305": SUITE_CHACHA20_POLY1305,
    "chacha20": SUITE_CHACHA20_POLY1305,
}

MAGIC = b"NP\x01"
PREAMBLE_LEN = 4
HEADER_LEN = 4
TAG_LEN = 16
NONCE_LEN = 12
SECRET_LEN = 32
MAX_PLAINTEXT = 65536
MAX_FRAME = HEADER_LEN + MAX_PLAINTEXT + TAG_LEN
TYPE_DATA = 0
TYPE_CLOSE = 1
# Counter nonces must never repeat under one key; far beyond any real tunnel's life.
MAX_SEQ = 2**63

C2D = "c2d"
D2C = "d2c"

_HEADER = struct.Struct(">I")
_SEQ = struct.Struct(">Q")


def cpu_has_aes(cpuinfo: str | None = None) -> bool:
    """True when the CPU advertises AES instructions (x86 ``flags``, Arm ``Features``).

    Reads /proc/cpuinfo; where that does not exist (not Linux) assume yes: every current
    macOS and Windows machine has them.
    """
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return True
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            if "aes" in value.split():
                return True
    return False


def default_suite(force: str | None = None) -> int:
    """Suite for what we send: ``force`` or env ``NOPORTS_AEAD_SUITE`` wins, else by CPU."""
    name = force or os.environ.get("NOPORTS_AEAD_SUITE")
    if name:
        try:
            return SUITE_BY_NAME[name.lower()]
        except KeyError:
            raise ConfigError(
                f"unknown AEAD suite {name!r} (aes-256-gcm or chacha20-poly1305)"
            ) from None
    return SUITE_AES_256_GCM if cpu_has_aes() else SUITE_CHACHA20_POLY1305


def derive_key(secret: bytes, session_id: str, direction: str, conn_id: int, suite: int) -> bytes:
    """The per-direction (per-connection) record key; see the module docstring."""
    if len(secret) != SECRET_LEN:
        raise ConfigError(f"AEAD session secret must be {SECRET_LEN} bytes, got {len(secret)}")
    if direction not in (C2D, D2C):
        raise ValueError(f"unknown direction {direction!r}")
    if not 0 <= conn_id < 2**32:
        raise ValueError("connection id out of range")
    info = f"noports-aead-v1 {SUITE_LABELS[suite]} {direction} {conn_id}".encode("ascii")
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=session_id.encode("utf-8"), info=info
    ).derive(secret)


# cryptography >= 47 encrypts and decrypts into a caller's buffer. Older releases (Debian 12
# ships 38, Debian 13 ships 43) only allocate: the same bytes, one copy more per record.
AEAD_INTO: bool = hasattr(AESGCM, "encrypt_into") and hasattr(ChaCha20Poly1305, "decrypt_into")


class AllocatingAEAD:
    """``encrypt_into``/``decrypt_into`` over the allocating ``encrypt``/``decrypt``."""

    __slots__ = ("_aead",)

    def __init__(self, aead: Any) -> None:
        self._aead = aead

    def encrypt_into(self, nonce: Any, data: Any, aad: Any, buf: Any) -> int:
        ct = self._aead.encrypt(bytes(nonce), bytes(data), bytes(aad))
        n = len(ct)
        memoryview(buf)[:n] = ct
        return n

    def decrypt_into(self, nonce: Any, data: Any, aad: Any, buf: Any) -> int:
        pt = self._aead.decrypt(bytes(nonce), bytes(data), bytes(aad))
        n = len(pt)
        memoryview(buf)[:n] = pt
        return n


def _aead(suite: int, key: bytes, into: bool | None = None) -> Any:
    """The AEAD for ``suite``; ``into=False`` forces the allocating path (benchmarks, tests)."""
    a = AESGCM(key) if suite == SUITE_AES_256_GCM else ChaCha20Poly1305(key)
    return a if (AEAD_INTO if into is None else into) else AllocatingAEAD(a)


def _context(direction: str, conn_id: int, session_id: str) -> bytes:
    return direction.encode("ascii") + conn_id.to_bytes(4, "big") + session_id.encode("utf-8")


class RecordSealer:
    """Sender half: turns plaintext into records for one direction.

    Attributes ``nonce`` and ``aad`` are preallocated and patched in place per record; the
    compiled transfer loop uses them directly (it keeps ``seq`` in step).
    """

    def __init__(
        self,
        secret: bytes,
        session_id: str,
        direction: str,
        conn_id: int = 0,
        suite: int | None = None,
    ) -> None:
        self.suite = default_suite() if suite is None else suite
        if self.suite not in SUITE_LABELS:
            raise ConfigError(f"unknown AEAD suite {self.suite}")
        self.aead = _aead(
            self.suite, derive_key(secret, session_id, direction, conn_id, self.suite)
        )
        self.preamble = MAGIC + bytes([self.suite])
        self.nonce = bytearray(NONCE_LEN)
        self.aad = bytearray(HEADER_LEN) + self.preamble + _context(direction, conn_id, session_id)
        self.seq = 0
        self.started = False
        self.closed = False

    def __repr__(self) -> str:
        return f"RecordSealer(suite={SUITE_LABELS[self.suite]}, seq={self.seq})"

    def start_into(self, out: Any) -> int:
        """Write the preamble into ``out`` if it has not been sent; returns bytes written."""
        if self.started:
            return 0
        out[:PREAMBLE_LEN] = self.preamble
        self.started = True
        return PREAMBLE_LEN

    def seal_into(self, pt: Any, out: Any, rtype: int = TYPE_DATA) -> int:
        """Seal ``pt`` (<= MAX_PLAINTEXT bytes) as one record at the start of ``out``.

        ``out`` must hold ``len(pt) + 20`` bytes and must not overlap ``pt``. Returns the
        record length. No allocation beyond the memoryview slices.
        """
        n = len(pt)
        if self.closed:
            raise IntegrityError("record stream already closed")
        if n > MAX_PLAINTEXT:
            raise ValueError("record plaintext too long")
        if self.seq >= MAX_SEQ:
            raise IntegrityError("record sequence space exhausted")
        ctlen = n + TAG_LEN
        hdr = (rtype << 24) | ctlen
        _HEADER.pack_into(out, 0, hdr)
        _HEADER.pack_into(self.aad, 0, hdr)
        _SEQ.pack_into(self.nonce, 4, self.seq)
        self.seq += 1
        self.aead.encrypt_into(
            self.nonce, pt, self.aad, memoryview(out)[HEADER_LEN : HEADER_LEN + ctlen]
        )
        if rtype == TYPE_CLOSE:
            self.closed = True
        return HEADER_LEN + ctlen

    def close_into(self, out: Any) -> int:
        """The authenticated close record (20 bytes)."""
        return self.seal_into(b"", out, TYPE_CLOSE)

    # ---- allocating conveniences (control channel, tests) ---------------------------

    def seal(self, data: bytes) -> bytes:
        """Preamble (first call only) plus ``data`` as one or more data records."""
        out = bytearray(PREAMBLE_LEN + len(data) + (len(data) // MAX_PLAINTEXT + 1) * 20)
        mv = memoryview(out)
        pos = self.start_into(mv)
        src = memoryview(data)
        for off in range(0, len(data), MAX_PLAINTEXT):
            pos += self.seal_into(src[off : off + MAX_PLAINTEXT], mv[pos:])
        return bytes(out[:pos])

    def close(self) -> bytes:
        out = bytearray(PREAMBLE_LEN + HEADER_LEN + TAG_LEN)
        pos = self.start_into(out)
        pos += self.close_into(memoryview(out)[pos:])
        return bytes(out[:pos])


class RecordOpener:
    """Receiver half for one direction. The suite comes from the sender's preamble.

    Low level (transfer loop): ``take_preamble``, ``frame_length``, ``open_into``.
    Sans-IO level: ``receive_data`` returns verified plaintext chunks, ``receive_eof``
    raises ``TruncationError`` unless the close record arrived.
    """

    def __init__(
        self,
        secret: bytes,
        session_id: str,
        direction: str,
        conn_id: int = 0,
        suites: tuple[int, ...] = (SUITE_AES_256_GCM, SUITE_CHACHA20_POLY1305),
    ) -> None:
        self._secret = secret
        self._session_id = session_id
        self._direction = direction
        self._conn_id = conn_id
        self._suites = suites
        derive_key(secret, session_id, direction, conn_id, SUITE_AES_256_GCM)  # validate now
        self.suite = 0
        self.aead: Any = None
        self.nonce = bytearray(NONCE_LEN)
        self.aad = bytearray(HEADER_LEN)
        self.seq = 0
        self.closed = False
        self.failed = False
        self._buf = bytearray()

    def __repr__(self) -> str:
        return f"RecordOpener(suite={self.suite}, seq={self.seq}, closed={self.closed})"

    @property
    def started(self) -> bool:
        return self.aead is not None

    def take_preamble(self, data: Any) -> None:
        """Accept the 4-byte preamble; IntegrityError if it is not ours."""
        pre = bytes(data[:PREAMBLE_LEN])
        if len(pre) != PREAMBLE_LEN or pre[:3] != MAGIC:
            raise IntegrityError("record stream does not start with the noports preamble")
        suite = pre[3]
        if suite not in self._suites:
            raise IntegrityError(f"record stream uses an unacceptable suite {suite}")
        key = derive_key(self._secret, self._session_id, self._direction, self._conn_id, suite)
        self.suite = suite
        self.aead = _aead(suite, key)
        self.aad = (
            bytearray(HEADER_LEN) + pre + _context(self._direction, self._conn_id, self._session_id)
        )
        self._secret = b""

    def frame_length(self, header: Any) -> int:
        """Total length (header included) of the record whose 4-byte header is given."""
        hdr = _HEADER.unpack_from(header, 0)[0]
        rtype, ctlen = hdr >> 24, hdr & 0xFFFFFF
        if self.failed:
            raise IntegrityError("record stream already failed authentication")
        if self.closed:
            raise IntegrityError("data after the close record")
        if rtype == TYPE_DATA:
            if not TAG_LEN < ctlen <= MAX_PLAINTEXT + TAG_LEN:
                raise IntegrityError(f"record length {ctlen} out of range")
        elif rtype == TYPE_CLOSE:
            if ctlen != TAG_LEN:
                raise IntegrityError("close record with a body")
        else:
            raise IntegrityError(f"unknown record type {rtype}")
        return HEADER_LEN + ctlen

    def open_into(self, frame: Any, out: Any) -> int:
        """Verify and decrypt one whole record into ``out``; returns plaintext length.

        On a bad tag nothing of the record may be used (``out`` may hold unverified bytes;
        callers discard it) and the opener stays failed: every later call raises too.
        """
        if self.aead is None:
            raise IntegrityError("record before preamble")
        return self.open_frame_into(frame, self.frame_length(frame), out)

    def open_frame_into(self, frame: Any, flen: int, out: Any) -> int:
        """``open_into`` for a caller that already has ``flen = frame_length(frame)``.

        The transfer loop parses each header once to know whether the whole record has
        arrived; this skips parsing it a second time. The preamble must have been taken.
        """
        ptlen = flen - HEADER_LEN - TAG_LEN
        self.aad[0:HEADER_LEN] = frame[0:HEADER_LEN]
        _SEQ.pack_into(self.nonce, 4, self.seq)
        try:
            self.aead.decrypt_into(
                self.nonce, memoryview(frame)[HEADER_LEN:flen], self.aad, memoryview(out)[:ptlen]
            )
        except InvalidTag:
            self.failed = True  # poison: no later record is accepted either
            raise IntegrityError(f"record {self.seq} failed authentication") from None
        self.seq += 1
        if frame[0] == TYPE_CLOSE:
            self.closed = True
        return ptlen

    # ---- sans-IO level ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[bytes]:
        """Feed stream bytes; returns the plaintext of every record completed by them."""
        self._buf += data
        out: list[bytes] = []
        pos = 0
        buf = memoryview(self._buf)
        try:
            if not self.started:
                if len(buf) < PREAMBLE_LEN:
                    return out
                self.take_preamble(buf)
                pos = PREAMBLE_LEN
            while len(buf) - pos >= HEADER_LEN:
                if self.closed:
                    raise IntegrityError("data after the close record")
                flen = self.frame_length(buf[pos : pos + HEADER_LEN])
                if len(buf) - pos < flen:
                    break
                pt = bytearray(flen - HEADER_LEN - TAG_LEN)
                self.open_into(buf[pos : pos + flen], pt)
                pos += flen
                if pt:
                    out.append(bytes(pt))
            if self.closed and len(buf) > pos:
                raise IntegrityError("data after the close record")
        finally:
            buf.release()
        del self._buf[:pos]
        return out

    def receive_eof(self) -> None:
        """The transport ended: fine only after the close record."""
        if self.failed:
            raise IntegrityError("record stream failed authentication")
        if not self.closed:
            raise TruncationError("record stream ended without a close record")

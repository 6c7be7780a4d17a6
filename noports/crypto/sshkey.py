"""Strict parsing of one ssh public key line, ``<type> <base64>[ <comment>]`` (T9).

:func:`parse_public_key` accepts exactly ``<type> <base64>[ <comment>]``: one line of printable
ASCII (no CR, LF, NUL, tab), at most :data:`MAX_KEY_TEXT` bytes; the first word must be an
allowlisted key type, so any ``authorized_keys`` options prefix is refused; the base64 must be
canonical; the blob's embedded type must match the declared one and its structure must parse
exactly (our own SSH wire parse, then ``cryptography``'s ``load_ssh_public_key``); RSA keys need
2048+ bits; the comment is limited to ``[A-Za-z0-9 _.@+=:,/-]``, 256 characters.

Accepted key types: ``ssh-ed25519``, ``ecdsa-sha2-nistp256/384/521``, ``ssh-rsa`` (also declared
as the signature names ``rsa-sha2-256``/``rsa-sha2-512``, written out as ``ssh-rsa``), and the
FIDO security-key types ``sk-ssh-ed25519@openssh.com`` and ``sk-ecdsa-sha2-nistp256@openssh.com``.
The ``sk-`` types are allowed because they are strictly stronger (the private key never leaves
the authenticator, and sshd still enforces touch), and OpenSSH has accepted them in
``authorized_keys`` since 8.2. Certificates and DSA are refused.

Used by the daemon (``sshnpd -s``, ephemeral keys: :mod:`noports.sshnpd.authkeys`) and by the
client (``sshnp -i``), so it lives below both.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from ..errors import RemoteError
from ..record import Frozen, set_field

__all__ = [
    "MAX_KEY_TEXT",
    "KEY_TYPES",
    "InvalidPublicKeyError",
    "SshPublicKey",
    "parse_public_key",
]

#: Upper bound on a key line from a client (a 16384-bit RSA key is ~2.8 KB of base64).
MAX_KEY_TEXT = 16 * 1024
MAX_COMMENT = 256
MIN_RSA_BITS = 2048

#: Declared type -> the type string that must be embedded in the blob.
KEY_TYPES: dict[str, str] = {
    "ssh-ed25519": "ssh-ed25519",
    "ecdsa-sha2-nistp256": "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384": "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521": "ecdsa-sha2-nistp521",
    "ssh-rsa": "ssh-rsa",
    "rsa-sha2-256": "ssh-rsa",
    "rsa-sha2-512": "ssh-rsa",
    "sk-ssh-ed25519@openssh.com": "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com": "sk-ecdsa-sha2-nistp256@openssh.com",
}
_EC_POINT_LEN = {"nistp256": 65, "nistp384": 97, "nistp521": 133}

_LINE_CHARS = re.compile(r"[\x20-\x7e]+", re.ASCII)
_B64_RE = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_COMMENT_RE = re.compile(r"[A-Za-z0-9 _.@+=:,/\-]*", re.ASCII)


class InvalidPublicKeyError(RemoteError, ValueError):
    """A client-supplied ssh public key was refused (the file is left untouched)."""


def _bad(msg: str) -> InvalidPublicKeyError:
    return InvalidPublicKeyError(f"ssh public key refused: {msg}")


class _Wire:
    """Just enough of the SSH wire format (RFC 4251 strings) to check a key blob exactly."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def string(self) -> bytes:
        if len(self.data) - self.pos < 4:
            raise _bad("truncated key blob")
        (n,) = struct.unpack_from(">I", self.data, self.pos)
        self.pos += 4
        if n > len(self.data) - self.pos:
            raise _bad("truncated key blob")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def mpint(self) -> int:
        b = self.string()
        if not b or b[0] & 0x80:
            raise _bad("RSA integer is empty or negative")
        if len(b) > 1 and b[0] == 0 and not b[1] & 0x80:
            raise _bad("RSA integer is not minimally encoded")
        return int.from_bytes(b, "big")

    def end(self) -> None:
        if self.pos != len(self.data):
            raise _bad("unexpected data after the key")


def _check_blob(blob_type: str, blob: bytes) -> None:
    w = _Wire(blob)
    embedded = w.string()
    if embedded != blob_type.encode():
        raise _bad(f"declared type {blob_type} does not match the key blob")
    if blob_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        if len(w.string()) != 32:
            raise _bad("ed25519 public key must be 32 bytes")
    elif blob_type.startswith(("ecdsa-sha2-", "sk-ecdsa-sha2-")):
        curve = blob_type.split("@")[0].rsplit("-", 1)[1]
        if w.string() != curve.encode():
            raise _bad("ECDSA curve name does not match the key type")
        if len(w.string()) != _EC_POINT_LEN[curve]:
            raise _bad("ECDSA point has the wrong length")
    elif blob_type == "ssh-rsa":
        e, n = w.mpint(), w.mpint()
        if e < 3 or not e & 1:
            raise _bad("RSA exponent is invalid")
        if n.bit_length() < MIN_RSA_BITS:
            raise _bad(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    if blob_type.startswith("sk-"):
        app = w.string()
        if not app.startswith(b"ssh:") or _LINE_CHARS.fullmatch(app.decode("latin-1")) is None:
            raise _bad("security-key application must be a printable 'ssh:' string")
    w.end()


def _load_sk_key(blob_type: str, blob: bytes) -> Any:
    """The public point of a FIDO key whose blob ``_check_blob`` already accepted."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    w = _Wire(blob)
    w.string()
    try:
        if blob_type == "sk-ssh-ed25519@openssh.com":
            return ed25519.Ed25519PublicKey.from_public_bytes(w.string())
        w.string()  # curve name, checked
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), w.string())
    except ValueError as exc:
        raise _bad(f"key does not parse: {exc}") from None


class SshPublicKey(Frozen):
    """A validated public key. ``key_type`` is the blob type (``rsa-sha2-*`` → ``ssh-rsa``)."""

    __slots__ = ("key_type", "blob_b64", "comment")
    key_type: str
    blob_b64: str
    comment: str

    def __init__(self, key_type: str, blob_b64: str, comment: str = "") -> None:
        set_field(self, "key_type", key_type)
        set_field(self, "blob_b64", blob_b64)
        set_field(self, "comment", comment)

    def key_text(self) -> str:
        """``<type> <base64>``: the identity of the key (what idempotency compares)."""
        return f"{self.key_type} {self.blob_b64}"

    def line(self, options: str = "", comment: str | None = None) -> str:
        """One authorized_keys line *without* newline; ``options`` must be daemon-controlled."""
        c = self.comment if comment is None else comment
        parts = ([options] if options else []) + [self.key_text()] + ([c] if c else [])
        return " ".join(parts)


def parse_public_key(text: str | bytes, *, allow_comment: bool = True) -> SshPublicKey:
    """Strictly parse a client-supplied ``<type> <base64>[ <comment>]`` (module docstring)."""
    if isinstance(text, bytes):
        if len(text) > MAX_KEY_TEXT:
            raise _bad(f"longer than {MAX_KEY_TEXT} bytes")
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise _bad("not ASCII") from None
    if not isinstance(text, str):
        raise _bad("not a string")
    if len(text) > MAX_KEY_TEXT:
        raise _bad(f"longer than {MAX_KEY_TEXT} bytes")
    if _LINE_CHARS.fullmatch(text) is None:
        raise _bad("must be one line of printable ASCII (no CR, LF, NUL, tabs or non-ASCII)")
    parts = text.split(" ", 2)
    declared = parts[0]
    if declared not in KEY_TYPES:
        if "=" in declared or "," in declared or '"' in declared:
            raise _bad("authorized_keys options are not accepted from clients")
        raise _bad(f"key type {declared[:40]!r} is not allowed")
    if len(parts) < 2 or not parts[1]:
        raise _bad("missing base64 key data (or more than one space)")
    b64 = parts[1]
    comment = parts[2] if len(parts) == 3 else ""
    if comment and not allow_comment:
        raise _bad("a comment is not accepted here")
    if len(comment) > MAX_COMMENT or _COMMENT_RE.fullmatch(comment) is None:
        raise _bad("comment is too long or has characters outside [A-Za-z0-9 _.@+=:,/-]")
    if comment != comment.strip() or "  " in comment:
        raise _bad("comment has leading, trailing or repeated spaces")
    if _B64_RE.fullmatch(b64) is None or len(b64) % 4:
        raise _bad("key data is not canonical base64")
    try:
        blob = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise _bad("key data is not valid base64") from None
    if base64.b64encode(blob).decode("ascii") != b64:
        raise _bad("key data is not canonical base64")
    blob_type = KEY_TYPES[declared]
    _check_blob(blob_type, blob)
    try:
        key = load_ssh_public_key(f"{blob_type} {b64}".encode("ascii"))
    except (ValueError, TypeError) as exc:
        raise _bad(f"key does not parse: {exc}") from None
    except Exception as exc:  # cryptography's UnsupportedAlgorithm and friends
        if not (blob_type.startswith("sk-") and type(exc).__name__ == "UnsupportedAlgorithm"):
            raise _bad(f"key does not parse: {type(exc).__name__}") from None
        key = _load_sk_key(blob_type, blob)  # cryptography < 41 (Debian 12) has no sk-* loader
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise _bad(f"RSA keys must have at least {MIN_RSA_BITS} bits")
    return SshPublicKey(blob_type, b64, comment)

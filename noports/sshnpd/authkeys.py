"""Safe ``authorized_keys`` handling for ``sshpublickey`` requests and ephemeral keys (T9).

Threat: a client that may send a public key (``sshnpd -s``) tries to smuggle a second line
(``"ssh-ed25519 AAAA...\\nssh-rsa ... attacker"``), an options prefix (``command="sh" ...``), a
huge or binary blob, or relies on a crash mid-write to leave an empty file. The official daemons
checked only a prefix regex (Dart), inverted a prefix compare whose length came from the message
(C), or rewrote the file unvalidated and non-atomically (Python).

What we do:

* :func:`parse_public_key` accepts exactly ``<type> <base64>[ <comment>]``: one line of printable
  ASCII (no CR, LF, NUL, tab), at most :data:`MAX_KEY_TEXT` bytes; the first word must be an
  allowlisted key type, so any options prefix is refused; the base64 must be canonical; the
  blob's embedded type must match the declared one and its structure must parse exactly (our own
  SSH wire parse, then ``cryptography``'s ``load_ssh_public_key``); RSA keys need 2048+ bits; the
  comment is limited to ``[A-Za-z0-9 _.@+=:,/-]``, 256 characters.
* The options prefix is always the daemon's: ``-S/--sshpublickey-permissions`` (validated by
  :func:`validate_options`) or :func:`ephemeral_options`.
* :class:`AuthorizedKeys` changes the file under an ``flock`` on a sidecar lock file, reads it,
  skips a key that is already present, and writes the whole new content with
  :func:`noports.fsutil.write_secret` (temp file 0600 from creation, fsync, rename, directory
  fsync). A crash leaves the old or the new file, never a torn one, and the mode is 0600
  whatever the umask. ``~/.ssh`` is created 0700 if missing (official: fails). A missing final
  newline is added before appending, and appended lines end in a newline (the Dart daemon's
  ``-s`` lines did not).

Accepted key types: ``ssh-ed25519``, ``ecdsa-sha2-nistp256/384/521``, ``ssh-rsa`` (also declared
as the signature names ``rsa-sha2-256``/``rsa-sha2-512``, written out as ``ssh-rsa``), and the
FIDO security-key types ``sk-ssh-ed25519@openssh.com`` and ``sk-ecdsa-sha2-nistp256@openssh.com``.
The ``sk-`` types are allowed because they are strictly stronger (the private key never leaves
the authenticator, and sshd still enforces touch), and OpenSSH has accepted them in
``authorized_keys`` since 8.2. Certificates and DSA are refused.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import fcntl
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_ssh_public_key

from ..errors import ConfigError, KeyFileError, RemoteError
from ..fsutil import secure_dir, write_secret
from .names import validate_session_id

__all__ = [
    "MAX_KEY_TEXT",
    "KEY_TYPES",
    "InvalidPublicKeyError",
    "SshPublicKey",
    "parse_public_key",
    "validate_options",
    "ephemeral_options",
    "ephemeral_comment",
    "AuthorizedKeys",
    "default_authorized_keys_path",
]

#: Upper bound on a key line from a client (a 16384-bit RSA key is ~2.8 KB of base64).
MAX_KEY_TEXT = 16 * 1024
MAX_COMMENT = 256
MIN_RSA_BITS = 2048
#: Refuse to rewrite an authorized_keys file larger than this (something is badly wrong).
MAX_FILE = 4 * 1024 * 1024

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
# One authorized_keys option: name, or name="value" with \" escapes; comma separated.
_OPTION_RE = re.compile(r'[A-Za-z][A-Za-z0-9_-]*(?:="(?:[^"\\\x00-\x1f\x7f]|\\.)*")?', re.ASCII)


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


def _load_sk_key(blob_type: str, blob: bytes) -> object:
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


@dataclass(frozen=True)
class SshPublicKey:
    """A validated public key. ``key_type`` is the blob type (``rsa-sha2-*`` → ``ssh-rsa``)."""

    key_type: str
    blob_b64: str
    comment: str = ""

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


def validate_options(options: str) -> str:
    """Validate a daemon-side options prefix (``-S``, ``--ephemeral-permissions``).

    It must be a comma-separated list of ``name`` / ``name="value"`` options: no whitespace
    outside quotes, no newlines or control characters, balanced quotes. Returns it unchanged;
    raises :class:`ConfigError` otherwise (this is operator configuration).
    """
    if not isinstance(options, str):
        raise ConfigError("authorized_keys options must be a string")
    if options == "":
        return options
    if len(options) > 4096 or _LINE_CHARS.fullmatch(options) is None:
        raise ConfigError("authorized_keys options must be one line of printable ASCII")
    pos = 0
    while True:
        m = _OPTION_RE.match(options, pos)
        if m is None or m.end() == pos:
            raise ConfigError(f"authorized_keys options are malformed at offset {pos}: {options!r}")
        pos = m.end()
        if pos == len(options):
            return options
        if options[pos] != ",":
            raise ConfigError(f"authorized_keys options are malformed at offset {pos}: {options!r}")
        pos += 1


def ephemeral_comment(session_id: str) -> str:
    return f"sshnp_ephemeral_{validate_session_id(session_id)}"


def ephemeral_options(
    sshd_port: int,
    extra_permissions: str = "",
    *,
    style: str = "official",
    expiry: _dt.datetime | None = None,
) -> str:
    """The options prefix for an ephemeral key (spec 9.3).

    ``style="official"`` is byte-compatible with the Dart daemon:
    ``command="echo \\"ssh session complete\\";sleep 20",PermitOpen="localhost:<port>"``.
    ``style="restrict"`` starts from ``restrict`` (no pty, agent, X11 or rc), re-enables only
    port forwarding limited to ``localhost:<port>``, keeps the forced command, and with
    ``expiry`` adds ``expiry-time`` (UTC, OpenSSH 8.2+ understands the ``Z`` suffix) so the
    key dies even if the daemon crashes before removing it.
    """
    if isinstance(sshd_port, bool) or not isinstance(sshd_port, int) or not 1 <= sshd_port <= 65535:
        raise ConfigError(f"sshd port {sshd_port!r} is out of range")
    validate_options(extra_permissions)
    cmd = 'command="echo \\"ssh session complete\\";sleep 20"'
    if style == "official":
        opts = f'{cmd},PermitOpen="localhost:{sshd_port}"'
    elif style == "restrict":
        opts = f'restrict,port-forwarding,{cmd},permitopen="localhost:{sshd_port}"'
        if expiry is not None:
            if expiry.tzinfo is None:
                raise ConfigError("expiry must be timezone-aware")
            stamp = expiry.astimezone(_dt.timezone.utc).strftime("%Y%m%d%H%M%SZ")
            opts += f',expiry-time="{stamp}"'
    else:
        raise ConfigError(f"unknown ephemeral options style {style!r}")
    if extra_permissions:
        opts += "," + extra_permissions
    return validate_options(opts)


def default_authorized_keys_path() -> Path:
    return Path(os.path.expanduser("~")) / ".ssh" / "authorized_keys"


def _key_tokens(line: str) -> set[str]:
    """``type b64`` pairs found in a line, whatever options precede them."""
    toks = line.split()
    return {f"{KEY_TYPES[a]} {b}" for a, b in zip(toks, toks[1:], strict=False) if a in KEY_TYPES}


class AuthorizedKeys:
    """Locked, atomic, idempotent edits of one ``authorized_keys`` file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_authorized_keys_path()
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    # -- low level ---------------------------------------------------------------------
    def _edit(self, change: Callable[[bytes], bytes | None]) -> bool:
        """Run ``change(old) -> new | None`` under the lock; write ``new`` atomically."""
        secure_dir(self.path.parent)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        lock_fd = os.open(self.lock_path, flags, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            self._remove_stale_temps()
            old = self._read()
            new = change(old)
            if new is None or new == old:
                return False
            write_secret(self.path, new)
            return True
        finally:
            os.close(lock_fd)  # releases the flock

    def _read(self) -> bytes:
        try:
            fd = os.open(
                self.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            )
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise KeyFileError(f"cannot read {self.path} (a symlink?): {exc.strerror}") from None
        try:
            if os.fstat(fd).st_size > MAX_FILE:
                raise KeyFileError(f"{self.path} is larger than {MAX_FILE} bytes; refusing to edit")
            chunks = []
            while chunk := os.read(fd, 65536):
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    def _remove_stale_temps(self) -> None:
        """Delete temp files left by writers that were killed before their rename."""
        prefix = f".{self.path.name}."
        for entry in os.scandir(self.path.parent):
            name = entry.name
            if not (name.startswith(prefix) and name.endswith(".tmp")):
                continue
            pid_text = name[len(prefix) : -len(".tmp")]
            if not pid_text.isdigit() or int(pid_text) == os.getpid():
                continue
            try:
                os.kill(int(pid_text), 0)
                continue  # still alive (it cannot hold our lock, but leave it alone)
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                pass

    @staticmethod
    def _append(old: bytes, line: str) -> bytes:
        body = old if not old or old.endswith(b"\n") else old + b"\n"
        return body + line.encode("ascii") + b"\n"

    # -- public operations -------------------------------------------------------------
    def contains(self, key: SshPublicKey) -> bool:
        text = self._read().decode("utf-8", "replace")
        return any(key.key_text() in _key_tokens(ln) for ln in text.splitlines())

    def add_key(self, key: SshPublicKey, options: str = "", comment: str | None = None) -> bool:
        """Append ``key`` with a daemon-controlled ``options`` prefix unless already present.

        Returns True if the file changed. Presence is by key identity (type + blob), so a key
        sent twice, or with another comment or declared as ``rsa-sha2-512``, is written once.
        """
        validate_options(options)
        if comment is not None and (
            len(comment) > MAX_COMMENT or _COMMENT_RE.fullmatch(comment) is None
        ):
            raise ConfigError(f"invalid comment {comment!r}")
        line = key.line(options, comment)

        def change(old: bytes) -> bytes | None:
            text = old.decode("utf-8", "replace")
            if any(key.key_text() in _key_tokens(ln) for ln in text.splitlines()):
                return None
            return self._append(old, line)

        return self._edit(change)

    def add_client_key(self, text: str | bytes, permissions: str = "") -> bool:
        """Handle an ``sshpublickey`` request: strict parse, then :meth:`add_key`.

        ``permissions`` is the daemon's ``-S`` value. Raises :class:`InvalidPublicKeyError`
        (file untouched) for any refused key.
        """
        key = parse_public_key(text)
        return self.add_key(key, permissions)

    def add_ephemeral(self, key: SshPublicKey | str, session_id: str, options: str) -> bool:
        """Append an ephemeral key tagged ``sshnp_ephemeral_<sid>``.

        ``options`` comes from :func:`ephemeral_options`; the key is validated like a client's.
        """
        k = key if isinstance(key, SshPublicKey) else parse_public_key(key)
        return self.add_key(k, options, comment=ephemeral_comment(session_id))

    def remove_session(self, session_id: str) -> int:
        """Remove every line tagged ``sshnp_ephemeral_<sid>``; returns how many were removed."""
        tag = ephemeral_comment(session_id).encode("ascii")
        removed = 0

        def change(old: bytes) -> bytes | None:
            nonlocal removed
            lines = old.splitlines(keepends=True)
            kept = [ln for ln in lines if tag not in ln]
            removed = len(lines) - len(kept)
            return b"".join(kept) if removed else None

        self._edit(change)
        return removed

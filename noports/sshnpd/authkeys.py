"""Safe ``authorized_keys`` handling for ``sshpublickey`` requests and ephemeral keys (T9).

Threat: a client that may send a public key (``sshnpd -s``) tries to smuggle a second line
(``"ssh-ed25519 AAAA...\\nssh-rsa ... attacker"``), an options prefix (``command="sh" ...``), a
huge or binary blob, or relies on a crash mid-write to leave an empty file. The official daemons
checked only a prefix regex (Dart), inverted a prefix compare whose length came from the message
(C), or rewrote the file unvalidated and non-atomically (Python).

What we do:

* Keys are parsed by :func:`noports.crypto.sshkey.parse_public_key`: one line of printable
  ASCII, an allowlisted key type (so any options prefix is refused), canonical base64, an exactly
  parsed blob, RSA 2048+ bits and a restricted comment (details there).
* The options prefix is always the daemon's: ``-S/--sshpublickey-permissions`` (validated by
  :func:`validate_options`) or :func:`ephemeral_options`.
* :class:`AuthorizedKeys` changes the file under an ``flock`` on a sidecar lock file, reads it,
  skips a key that is already present, and writes the whole new content with
  :func:`noports.fsutil.write_secret` (temp file 0600 from creation, fsync, rename, directory
  fsync). A crash leaves the old or the new file, never a torn one, and the mode is 0600
  whatever the umask. ``~/.ssh`` is created 0700 if missing (official: fails). A missing final
  newline is added before appending, and appended lines end in a newline (the Dart daemon's
  ``-s`` lines did not).
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import re
from collections.abc import Callable
from pathlib import Path

from ..crypto.sshkey import (
    _COMMENT_RE,
    KEY_TYPES,
    MAX_COMMENT,
    SshPublicKey,
    parse_public_key,
)
from ..errors import ConfigError, KeyFileError
from ..fsutil import secure_dir, write_secret
from ..names import validate_session_id

__all__ = [
    "validate_options",
    "ephemeral_options",
    "ephemeral_comment",
    "AuthorizedKeys",
    "default_authorized_keys_path",
]

#: Refuse to rewrite an authorized_keys file larger than this (something is badly wrong).
MAX_FILE = 4 * 1024 * 1024

_LINE_CHARS = re.compile(r"[\x20-\x7e]+", re.ASCII)
# One authorized_keys option: name, or name="value" with \" escapes; comma separated.
_OPTION_RE = re.compile(r'[A-Za-z][A-Za-z0-9_-]*(?:="(?:[^"\\\x00-\x1f\x7f]|\\.)*")?', re.ASCII)


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

"""Validation of device names, atSigns and session ids: reject, never sanitise (T8).

These strings arrive from command lines, config files, ssh ``%h`` tokens and peers'
notifications, and then flow into atProtocol keys, regular expressions, file names and logs.
So each is checked against a small ASCII grammar *before* any I/O, and anything outside it is
refused with an error rather than "cleaned up": a cleaned-up name is a different name, and two
different inputs mapping to one name is exactly how an injection or an authorisation mix-up
starts.

Device names follow the official rule: *snakify* (lower-case; a space becomes ``_``), then the
result must **fully** match ``[a-z0-9_][a-z0-9_\\-]{1,35}`` (2 to 36 characters). Case folding is
documented and deliberate (official issue #839: ``MyPi`` and ``mypi`` are one device). Unlike a
plain ``str.lower()``, we first require printable ASCII, because Unicode case mapping turns
look-alikes into ASCII (KELVIN SIGN ``\\u212a`` lower-cases to ``k``) and would let a different
string alias a real device. Tabs, newlines and other control characters are rejected, not turned
into ``_``.
"""

from __future__ import annotations

import re
import unicodedata

from .errors import ConfigError

__all__ = [
    "DEVICE_NAME_PATTERN",
    "MAX_ATSIGN_LENGTH",
    "InvalidNameError",
    "snakify",
    "validate_device_name",
    "is_valid_device_name",
    "validate_device_group",
    "validate_atsign",
    "is_valid_atsign",
    "normalise_atsign",
    "validate_session_id",
    "is_valid_session_id",
]

#: The official device-name grammar (also used in ``device_info`` key regexes).
DEVICE_NAME_PATTERN = r"[a-z0-9_][a-z0-9_\-]{1,35}"
_DEVICE_RE = re.compile(DEVICE_NAME_PATTERN, re.ASCII)
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*", re.ASCII)

#: atServer limit on the length of an atSign, counting the leading ``@``.
MAX_ATSIGN_LENGTH = 55
# ASCII characters allowed after the '@'. Everything in the atProtocol's reserved set
# (``!*'`();:&=+$,/?#[]{}\\`` and ``@``), whitespace, quotes, ``%`` and ``<>|^~`` are refused.
_ATSIGN_ASCII = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-.")
# Emoji atSigns exist; emoji sequences are built from symbols plus these joiners/selectors.
_EMOJI_JOINERS = frozenset("\u200d\ufe0f\ufe0e") | {chr(c) for c in range(0x1F3FB, 0x1F400)}

# a pattern, compiled on first use (``re``'s cache) rather than at every program's start
_UUID4_RE = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"


class InvalidNameError(ConfigError):
    """A device name, device group, atSign or session id is outside its grammar.

    A ``ConfigError`` (hence a ``ValueError``) because on the command line it is a usage error;
    code that handles a peer's value catches it and refuses the request.
    """


def _short(value: object) -> str:
    """A log-safe rendering of a rejected value (``repr`` escapes controls; length capped)."""
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def snakify(name: str) -> str:
    """The official normalisation: lower-case and spaces to ``_``.

    Only printable ASCII is accepted (see the module docstring); anything else raises.
    """
    if not isinstance(name, str) or _PRINTABLE_ASCII.fullmatch(name) is None:
        raise InvalidNameError(f"device name {_short(name)} must be printable ASCII")
    return name.lower().replace(" ", "_")


def validate_device_name(name: str, *, what: str = "device name") -> str:
    """Return the canonical (snakified) device name, or raise :class:`InvalidNameError`."""
    canon = snakify(name)
    if _DEVICE_RE.fullmatch(canon) is None:
        raise InvalidNameError(
            f"{what} {_short(name)} is invalid: after lower-casing and replacing spaces with"
            f" '_' it must be 2-36 characters of a-z, 0-9, '_' and '-', not starting with '-'"
        )
    return canon


def is_valid_device_name(name: object) -> bool:
    try:
        validate_device_name(name)  # type: ignore[arg-type]
    except InvalidNameError:
        return False
    return True


def validate_device_group(name: str) -> str:
    """Device group names (``--device-group``, default ``__none__``) use the device grammar."""
    return validate_device_name(name, what="device group name")


def _atsign_char_ok(ch: str) -> bool:
    if ch in _ATSIGN_ASCII:
        return True
    if ord(ch) < 0x80:
        return False
    if ch in _EMOJI_JOINERS:
        return True
    # Symbols only (emoji): non-ASCII *letters* are refused because they are the look-alike
    # vector (Cyrillic 'а' vs Latin 'a') for anything a human compares by eye.
    return unicodedata.category(ch) == "So"


def validate_atsign(atsign: str, *, add_at: bool = False) -> str:
    """Return the canonical atSign (``@`` + lower-case), or raise :class:`InvalidNameError`.

    ``add_at=True`` accepts ``alice`` for ``@alice``, as the official CLIs do for user input;
    values from the wire must already carry the ``@``.
    """
    if not isinstance(atsign, str):
        raise InvalidNameError(f"atSign {_short(atsign)} must be a string")
    s = atsign
    if add_at and not s.startswith("@"):
        s = "@" + s
    if not s.startswith("@") or len(s) < 2:
        raise InvalidNameError(f"atSign {_short(atsign)} must start with '@' and have a name")
    if len(s) > MAX_ATSIGN_LENGTH:
        raise InvalidNameError(f"atSign {_short(atsign)} is longer than {MAX_ATSIGN_LENGTH}")
    # Lower-case ASCII only: str.lower() on non-ASCII can change length or map into ASCII.
    body = "".join(c.lower() if c < "\x80" else c for c in s[1:])
    bad = [c for c in body if not _atsign_char_ok(c)]
    if bad:
        raise InvalidNameError(
            f"atSign {_short(atsign)} contains a character that is not allowed: {_short(bad[0])}"
        )
    if body.startswith(".") or body.endswith(".") or ".." in body:
        raise InvalidNameError(f"atSign {_short(atsign)} has a misplaced '.'")
    return "@" + body


def is_valid_atsign(atsign: object) -> bool:
    try:
        validate_atsign(atsign)  # type: ignore[arg-type]
    except InvalidNameError:
        return False
    return True


#: The atProtocol's own atSign shape, as servers accept it on the wire.
_WIRE_ATSIGN = re.compile(r"^@[^@:\s]{1,55}$")


def normalise_atsign(text: str) -> str:
    """``alice`` or ``@Alice `` to ``@alice``: the one atSign normaliser of the atProtocol planes.

    Strips, lower-cases and adds the ``@``, then checks the protocol's shape (no ``@``, ``:`` or
    whitespace, 1 to 55 characters); raises :class:`InvalidNameError` otherwise. The client
    (:func:`noports.at.commands.atsign`) and the server (``atserver.keys.normalise_atsign``)
    both call it and re-raise in their own error type. :func:`validate_atsign` is the stricter
    T8 grammar for atSigns a NoPorts program acts on.
    """
    s = text.strip().lower()
    if not s.startswith("@"):
        s = "@" + s
    if not _WIRE_ATSIGN.match(s):
        raise InvalidNameError(f"not a valid atSign: {_short(text)}")
    return s


def validate_session_id(sid: str) -> str:
    """Return the canonical (lower-case) text of a UUID v4 session id, or raise.

    Session ids end up in atProtocol keys, ``authorized_keys`` comments and file names, so
    only the 36-character hyphenated form of a version-4, RFC 4122 variant UUID is accepted.
    """
    if not isinstance(sid, str) or len(sid) != 36:
        raise InvalidNameError(f"session id {_short(sid)} is not a UUID v4")
    canon = sid.lower()
    if re.fullmatch(_UUID4_RE, canon, re.ASCII) is None:
        raise InvalidNameError(f"session id {_short(sid)} is not a UUID v4")
    return canon


def is_valid_session_id(sid: object) -> bool:
    try:
        validate_session_id(sid)  # type: ignore[arg-type]
    except InvalidNameError:
        return False
    return True

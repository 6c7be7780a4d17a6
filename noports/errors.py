"""One exception hierarchy for the whole package, shared by compiled and pure code.

Two axes (STYLE.md 11): *Local* errors are our own misuse or configuration; *Remote* errors
are something a peer sent or did. atProtocol ``ATxxxx`` codes map to subclasses through a
registry, so ``except KeyNotFoundError`` works whatever server said it. Every class has an
``exit_code`` that the CLIs use, documented in README.md.
"""

from __future__ import annotations

import re
from typing import ClassVar

# Documented process exit codes (README "Exit codes").
EXIT_OK = 0
EXIT_ERROR = 1  # generic failure (official tools use 1)
EXIT_USAGE = 2  # bad command line / configuration
EXIT_AUTH = 3  # authentication or authorisation refused
EXIT_NOT_FOUND = 4  # unknown atSign, device, key or file
EXIT_TIMEOUT = 5  # a peer did not answer in time
EXIT_PROTOCOL = 6  # a peer broke the protocol / integrity failure
EXIT_NETWORK = 7  # could not connect
EXIT_SRV_EXCEPTION = 200  # srv contract: "Exception running srv : ..."


class NoPortsError(Exception):
    """Root of every error raised on purpose by noports."""

    exit_code: ClassVar[int] = EXIT_ERROR


class LocalError(NoPortsError):
    """Our side is misconfigured or misused."""


class RemoteError(NoPortsError):
    """A peer sent something wrong or refused us."""


class ConfigError(LocalError, ValueError):
    exit_code = EXIT_USAGE


class KeyFileError(LocalError):
    """A .atKeys (or ssh key) file is missing, unreadable, malformed or too open."""

    exit_code = EXIT_NOT_FOUND


class InsecureFileError(KeyFileError):
    """A secret file or its directory is group/world accessible, or is a symlink."""

    exit_code = EXIT_AUTH


class PortsExhaustedError(LocalError):
    """No free listening ports left in a configured port range (relay)."""


class ProtocolError(RemoteError):
    """A peer's bytes do not follow the protocol."""

    exit_code = EXIT_PROTOCOL


class BufferLimitError(ProtocolError):
    """A peer sent more than a hard cap allows before a frame/line ended."""


class SignatureError(RemoteError):
    """A signature did not verify."""

    exit_code = EXIT_AUTH


class IntegrityError(RemoteError):
    """An authenticated record failed to verify, or a stream was truncated/reordered."""

    exit_code = EXIT_PROTOCOL


class TruncationError(IntegrityError):
    """The stream ended without an authenticated close."""


class PeerTimeoutError(RemoteError, TimeoutError):
    exit_code = EXIT_TIMEOUT


class ConnectError(RemoteError, ConnectionError):
    exit_code = EXIT_NETWORK


class AuthRefusedError(RemoteError):
    exit_code = EXIT_AUTH


# ---------------------------------------------------------------------------------------
# atProtocol errors, keyed by ATxxxx code.

_AT_CODES: dict[str, type[AtError]] = {}
_CODE_RE = re.compile(r"^(AT\d{4})")


class AtError(RemoteError):
    """An ``error:ATxxxx`` from an atServer. ``code`` and ``description`` are set."""

    code: ClassVar[str] = "AT0001"
    default_description: ClassVar[str] = "server exception"

    def __init__(self, description: str | None = None, code: str | None = None) -> None:
        self.description = description if description is not None else self.default_description
        if code is not None:
            self.code = code  # type: ignore[misc]
        super().__init__(f"{self.code}: {self.description}")

    def __init_subclass__(cls, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if "code" in cls.__dict__:
            _AT_CODES[cls.code] = cls

    @staticmethod
    def for_code(code: str, description: str = "") -> AtError:
        cls = _AT_CODES.get(code, AtError)
        return cls(description or None, code=code)

    @staticmethod
    def parse_code(text: str) -> str | None:
        m = _CODE_RE.match(text)
        return m.group(1) if m else None


def _at(
    code: str, name: str, desc: str, base: type[AtError] = AtError, exit_code: int | None = None
):
    ns: dict[str, object] = {
        "code": code,
        "default_description": desc,
        "__doc__": f"{code}: {desc}",
    }
    if exit_code is not None:
        ns["exit_code"] = exit_code
    cls = type(name, (base,), ns)
    cls.__module__ = __name__
    return cls


ServerExceptionError = _at("AT0001", "ServerExceptionError", "server exception")
DatastoreError = _at("AT0002", "DatastoreError", "datastore exception")
InvalidSyntaxError = _at("AT0003", "InvalidSyntaxError", "invalid syntax", exit_code=EXIT_PROTOCOL)
SocketError = _at("AT0004", "SocketError", "socket error", exit_code=EXIT_NETWORK)
BufferLimitExceededError = _at("AT0005", "BufferLimitExceededError", "buffer limit exceeded")
OutboundConnectionLimitError = _at(
    "AT0006", "OutboundConnectionLimitError", "outbound connection limit exceeded"
)
SecondaryNotFoundError = _at(
    "AT0007", "SecondaryNotFoundError", "secondary server not found", exit_code=EXIT_NOT_FOUND
)
HandshakeError = _at("AT0008", "HandshakeError", "handshake failure", exit_code=EXIT_AUTH)
UnauthorizedError = _at("AT0009", "UnauthorizedError", "unauthorized", exit_code=EXIT_AUTH)
InternalServerError = _at("AT0010", "InternalServerError", "internal server error")
InternalServerExceptionError = _at(
    "AT0011", "InternalServerExceptionError", "internal server exception"
)
InboundConnectionLimitError = _at(
    "AT0012", "InboundConnectionLimitError", "inbound connection limit exceeded"
)
BlockedConnectionError = _at("AT0013", "BlockedConnectionError", "connection exception")
UnknownClientError = _at("AT0014", "UnknownClientError", "unknown client exception")
KeyNotFoundError = _at("AT0015", "KeyNotFoundError", "key not found", exit_code=EXIT_NOT_FOUND)
InvalidAtKeyError = _at("AT0016", "InvalidAtKeyError", "invalid atKey", exit_code=EXIT_PROTOCOL)
UnableToConnectError = _at(
    "AT0021", "UnableToConnectError", "unable to connect", exit_code=EXIT_NETWORK
)
IllegalArgumentsError = _at(
    "AT0022", "IllegalArgumentsError", "illegal arguments", exit_code=EXIT_PROTOCOL
)
AtTimeoutError = _at("AT0023", "AtTimeoutError", "timeout", exit_code=EXIT_TIMEOUT)
ServerPausedError = _at("AT0024", "ServerPausedError", "server is paused")
ApkamDeniedError = _at("AT0025", "ApkamDeniedError", "enrollment denied", exit_code=EXIT_AUTH)
ApkamAuthError = _at(
    "AT0026", "ApkamAuthError", "enrollment pending or authentication failed", exit_code=EXIT_AUTH
)
ApkamRevokedError = _at("AT0027", "ApkamRevokedError", "enrollment revoked", exit_code=EXIT_AUTH)
TooManyRequestsError = _at(
    "AT0028", "TooManyRequestsError", "too many requests or enrollment expired"
)
EnrollmentExpiredError = _at(
    "AT0029", "EnrollmentExpiredError", "enrollment expired", exit_code=EXIT_AUTH
)
InvalidEnrollmentStatusError = _at(
    "AT0030", "InvalidEnrollmentStatusError", "invalid enrollment status"
)
CannotRevokeSelfError = _at("AT0031", "CannotRevokeSelfError", "cannot revoke own enrollment")
ClientAuthFailedError = _at(
    "AT0401", "ClientAuthFailedError", "client authentication failed", exit_code=EXIT_AUTH
)


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, NoPortsError):
        return exc.exit_code
    if isinstance(exc, TimeoutError):
        return EXIT_TIMEOUT
    if isinstance(exc, ConnectionError):
        return EXIT_NETWORK
    return EXIT_ERROR

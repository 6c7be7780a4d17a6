"""The errors of setting up a session (:func:`noports.session.client.establish`).

Each names what the peer did, and carries the exit code the CLIs return (README "Exit codes").
"""

from __future__ import annotations

from ..errors import (
    EXIT_AUTH,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    KeyNotFoundError,
    PeerTimeoutError,
    RemoteError,
)
from .features import UnsupportedFeatureError

__all__ = [
    "DaemonRefusedError",
    "DaemonFailedError",
    "RelayRefusedError",
    "FeatureRefusedError",
    "EscrUnsupportedError",
    "DowngradeRefusedError",
    "UsernameNotSharedError",
    "NoAnswerError",
]


class DaemonRefusedError(RemoteError):
    """The daemon answered with an error string (permit-open, signature, start-up failure)."""

    exit_code = EXIT_AUTH


class DaemonFailedError(RemoteError):
    """The daemon answered with an error that is not a refusal (e.g. its tunnel end failed)."""


class RelayRefusedError(RemoteError):
    """The relay sent a negative acknowledgement."""

    exit_code = EXIT_AUTH


class FeatureRefusedError(UnsupportedFeatureError):
    """The daemon lacks a feature the flags need (official wording in the message)."""

    exit_code = EXIT_AUTH


class EscrUnsupportedError(FeatureRefusedError):
    """escr relay auth is not possible: the daemon does not advertise ``supportsRamEscr``,
    or our signing key cannot be published."""


class DowngradeRefusedError(RemoteError):
    """The strong mode was required and the daemon did not provide it."""

    exit_code = EXIT_AUTH


class UsernameNotSharedError(KeyNotFoundError):
    exit_code = EXIT_NOT_FOUND


class NoAnswerError(PeerTimeoutError):
    exit_code = EXIT_TIMEOUT

"""Relay limits: the knobs, the pre-auth admission gate, and the file-descriptor rlimit.

Every cap exists because of a threat in reliability.md: the auth deadline and line cap
(T3 slowloris/oversize), global and per-source pre-auth caps (T3 floods), the per-side
pending cap and pre-pairing buffer (T1 and T5), pump buffers (T5 slow consumer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..errors import ConfigError

log = logging.getLogger("noports.relay")


@dataclass(frozen=True)
class RelayLimits:
    """Tunables of one Relay. Defaults follow the official relay where it has a value."""

    auth_timeout: float = 5.0
    """Absolute seconds from accept to a verified auth line; trickling cannot extend it."""
    max_auth_line: int = 4096
    """Maximum auth line length in bytes, newline included; longer lines are cut and refused."""
    pair_timeout: float = 30.0
    """A session with no pair formed after this many seconds is closed ("lonely")."""
    prepair_buffer: int = 256 * 1024
    """Bytes buffered per socket before it is paired; reading stops when full."""
    max_preauth: int = 8192
    """Global cap on sockets still authenticating; excess connections are closed at once."""
    max_preauth_per_ip: int = 256
    """Cap on sockets still authenticating from one source address."""
    max_pending_per_side: int = 64
    """Per session and side: authenticated (or auth-off) sockets waiting for a partner."""
    pump_buffer: int = 256 * 1024
    """Pure pump: bytes read per call and the most held back per direction when blocked."""
    pipe_size: int = 1024 * 1024
    """Splice pump: requested pipe capacity per direction (F_SETPIPE_SZ), best effort."""
    listen_backlog: int = 256

    def __post_init__(self) -> None:
        if self.auth_timeout <= 0 or self.pair_timeout <= 0:
            raise ConfigError("relay timeouts must be positive")
        if self.max_auth_line < 64:
            raise ConfigError("max_auth_line must be at least 64 bytes")
        for name in ("prepair_buffer", "max_preauth", "max_preauth_per_ip",
                     "max_pending_per_side", "pump_buffer", "pipe_size", "listen_backlog"):
            if getattr(self, name) < 1:
                raise ConfigError(f"relay limit {name} must be at least 1")


class PreAuthGate:
    """Counts sockets that have not authenticated yet, globally and per source address.

    ``admit`` either takes a slot (and the caller must ``release`` it exactly once) or
    refuses; refused connections are closed by the caller without reading a byte.
    """

    __slots__ = ("_max", "_max_ip", "_total", "_per_ip", "refused")

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self._max = max_total
        self._max_ip = max_per_ip
        self._total = 0
        self._per_ip: dict[str, int] = {}
        self.refused = 0

    @property
    def total(self) -> int:
        return self._total

    def count(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)

    def resize(self, max_total: int, max_per_ip: int) -> None:
        """New caps (a reload); sockets already admitted stay until they finish."""
        self._max = max_total
        self._max_ip = max_per_ip

    def admit(self, ip: str) -> bool:
        n = self._per_ip.get(ip, 0)
        if self._total >= self._max or n >= self._max_ip:
            self.refused += 1
            return False
        self._total += 1
        self._per_ip[ip] = n + 1
        return True

    def release(self, ip: str) -> None:
        n = self._per_ip.get(ip, 0)
        if n <= 0:
            raise RuntimeError(f"pre-auth slot released twice for {ip}")
        self._total -= 1
        if n == 1:
            del self._per_ip[ip]
        else:
            self._per_ip[ip] = n - 1


def raise_nofile_limit() -> int | None:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the new soft limit.

    A relay holds two sockets per pair plus pipes, so the usual 1024 soft limit is far too
    low. Failure is harmless (returns None): the relay still works, with fewer sessions.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return None
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = hard
        if hard == resource.RLIM_INFINITY:
            target = 1 << 20
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        return int(soft)
    except (OSError, ValueError) as exc:
        log.debug("could not raise RLIMIT_NOFILE: %s", exc)
        return None

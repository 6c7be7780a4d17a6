"""Relay limits: the knobs, the pre-auth admission gate, and the file-descriptor rlimit.

Every cap exists because of a threat in reliability.md: the auth deadline and line cap
(T3 slowloris/oversize), global and per-source pre-auth caps (T3 floods), the per-side
pending cap and pre-pairing buffer (T1 and T5), pump buffers (T5 slow consumer).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from typing import Any, Protocol

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
    """Global cap on sockets still authenticating; a newcomer sheds a random older one."""
    max_preauth_per_ip: int = 256
    """Cap on sockets still authenticating from one source; a newcomer sheds its oldest."""
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


class Sheddable(Protocol):
    def shed(self) -> None:
        """Close now; the holder must ``release`` its slot from here (synchronously)."""


class PreAuthGate:
    """Sockets that have not authenticated yet, globally and per source address.

    A full gate never turns the newcomer away (that locked real peers out behind a flood of
    silent sockets): it sheds an older unauthenticated socket instead. At the per-source cap
    the source's own oldest socket goes, so a client sharing an address with a few attacker
    sockets still gets in; at the global cap a few sockets are picked at random (random early
    drop, as OpenSSH MaxStartups) and the one whose source holds the most pre-auth sockets
    goes, the oldest on a tie. Sources lose sockets in proportion to what they hold, and a
    peer with one socket in flight is shed only when every pick is a lone socket too.
    ``admit`` always takes a slot; the caller must ``release`` it exactly once.
    """

    __slots__ = ("_max", "_max_ip", "_items", "_slots", "_per_ip", "shed", "refused", "_rng",
                 "_next")

    PICKS = 4

    def __init__(self, max_total: int, max_per_ip: int) -> None:
        self._max = max_total
        self._max_ip = max_per_ip
        self._items: list[Sheddable] = []
        # holder -> [index in _items, admission order, source address]: one dict entry per
        # holder to add and pop (the socket pays it twice on every authentication)
        self._slots: dict[Sheddable, list[Any]] = {}
        self._next = 0
        self._per_ip: dict[str, dict[Sheddable, None]] = {}
        self.shed = 0
        self.refused = 0  # kept for the stats line: the gate itself refuses nobody now
        self._rng = random.Random()

    @property
    def total(self) -> int:
        return len(self._items)

    def count(self, ip: str) -> int:
        return len(self._per_ip.get(ip, ()))

    def resize(self, max_total: int, max_per_ip: int) -> None:
        """New caps (a reload); sockets already admitted stay until they finish or are shed."""
        self._max = max_total
        self._max_ip = max_per_ip

    def admit(self, ip: str, holder: Sheddable) -> bool:
        per_ip = self._per_ip
        mine = per_ip.get(ip)
        if mine is not None and len(mine) >= self._max_ip:
            self._shed(next(iter(mine)), ip)
            mine = per_ip.get(ip)  # gone if that was the source's last socket
        items = self._items
        if len(items) >= self._max:
            while len(items) >= self._max:
                picks = [items[self._rng.randrange(len(items))] for _ in range(self.PICKS)]
                self._shed(max(picks, key=self._weight), None)
            mine = per_ip.get(ip)
        self._next += 1
        self._slots[holder] = [len(items), self._next, ip]
        items.append(holder)
        if mine is None:
            per_ip[ip] = {holder: None}
        else:
            mine[holder] = None
        return True

    def _weight(self, h: Sheddable) -> tuple[int, int]:
        slot = self._slots[h]
        return len(self._per_ip[slot[2]]), -slot[1]

    def _shed(self, victim: Sheddable, ip: str | None) -> None:
        self.shed += 1
        n = len(self._items)
        victim.shed()
        if len(self._items) == n:  # the holder did not release: drop it here
            self._forget(victim)

    def release(self, ip: str, holder: Sheddable) -> None:
        if not self._forget(holder):
            raise RuntimeError(f"pre-auth slot released twice for {ip}")

    def _forget(self, holder: Sheddable) -> bool:
        slot = self._slots.pop(holder, None)
        if slot is None:
            return False
        items = self._items
        last = items.pop()
        if last is not holder:
            i = slot[0]
            items[i] = last
            self._slots[last][0] = i
        ip = slot[2]
        d = self._per_ip.get(ip)
        if d is not None:
            d.pop(holder, None)
            if not d:
                del self._per_ip[ip]
        return True


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

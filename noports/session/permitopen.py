"""``--permit-open``: which ``host:port`` targets a session may reach (T8, official #1375).

Official semantics, kept as the rule: a request for ``host:port`` is allowed when the list holds
``host:port``, ``*:port``, ``host:*`` or ``*:*``, by **exact string comparison** with no DNS or
IP normalisation (``localhost`` is not ``127.0.0.1``). The list is checked twice: the daemon's
own list, then the per-client list (``*:*`` for managers, the NPA's ``permitOpen`` otherwise).
An empty list permits nothing.

Exact comparison is only safe if both sides are in one canonical spelling, so entries and
requested hosts go through :func:`canonical_host` first, which *folds* harmless differences and
*rejects* everything ambiguous:

* Only printable ASCII without spaces: CR, LF, NUL, tabs, trailing spaces and any non-ASCII
  (Unicode/IDNA look-alikes, full-width digits) are rejected. ``xn--`` labels must decode.
* Host names are case-folded (``LOCALHOST`` → ``localhost``); labels are ``[a-z0-9_-]``, 1-63
  characters, not starting or ending with ``-``; at most 253 characters; no trailing dot.
* IPv4 only as four decimal octets without leading zeros (``127.0.0.1``). Every other numeric
  spelling that a resolver might turn into an address is rejected: ``127.1``, ``2130706433``,
  ``0x7f.1``, ``0177.0.0.1``, ``127.000.0.1``; so is any name whose last label is numeric.
* IPv6 only in brackets (``[::1]:22``), canonicalised to RFC 5952 text (``[0:0::1]`` →
  ``::1``); zone ids (``%eth0``) and IPv4-mapped addresses (``::ffff:127.0.0.1``) are rejected.
* Ports are ``*`` or decimal 1-65535 without sign or leading zero (``0``, ``022``, ``+22``,
  ``-1``, ``65536`` and the empty string are rejected).

:func:`resolve_checked` closes the DNS-rebinding gap: the name is checked, resolved **once**,
and the caller connects to the returned address and never resolves again.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import AuthRefusedError, ConfigError, ConnectError

__all__ = [
    "DEFAULT_PERMIT_OPEN",
    "POLICY_DEFAULT_PERMIT_OPEN",
    "ALLOW_ALL",
    "PermitOpenError",
    "PermitEntry",
    "PermitOpen",
    "PermitDecision",
    "canonical_host",
    "canonical_port",
    "parse_entry",
    "check_request",
    "resolve_checked",
]

#: The daemon's default list (official).
DEFAULT_PERMIT_OPEN = "localhost:22,localhost:3389"
#: The default when a policy manager is configured and ``--permit-open`` is not given.
POLICY_DEFAULT_PERMIT_OPEN = "*:*"

_ALLOWED_CHARS = re.compile(r"[\x21-\x7e]+", re.ASCII)
_LABEL_RE = re.compile(r"[a-z0-9_](?:[a-z0-9_\-]{0,61}[a-z0-9_])?", re.ASCII)
_NUMERIC_LABEL = re.compile(r"(?:0x[0-9a-f]*|[0-9]+)", re.ASCII)
_PORT_RE = re.compile(r"[1-9][0-9]{0,4}", re.ASCII)
_OCTET_RE = re.compile(r"(?:0|[1-9][0-9]{0,2})", re.ASCII)


class PermitOpenError(ConfigError):
    """A permit-open entry or a requested host/port is malformed or ambiguous."""


def _show(value: object) -> str:
    r = repr(value)
    return r if len(r) <= 80 else r[:77] + "..."


def _canonical_ipv4(text: str) -> str | None:
    """Canonical dotted quad, ``None`` if ``text`` is not numeric, raise if ambiguous."""
    parts = text.split(".")
    if not all(_NUMERIC_LABEL.fullmatch(p) for p in parts):
        if _NUMERIC_LABEL.fullmatch(parts[-1]):
            # "foo.123" / "a.0x1": resolvers (and browsers' URL parsers) may treat a numeric
            # final label as an address; refuse rather than guess.
            raise PermitOpenError(f"host {_show(text)} ends in a numeric label")
        return None
    if len(parts) != 4 or not all(_OCTET_RE.fullmatch(p) and int(p) <= 255 for p in parts):
        raise PermitOpenError(
            f"host {_show(text)} is a non-canonical IPv4 form; write four decimal octets"
        )
    return text


def canonical_host(host: str) -> str:
    """The canonical spelling of a host (no brackets for IPv6), or raise PermitOpenError."""
    if not isinstance(host, str) or not host:
        raise PermitOpenError("empty host")
    if _ALLOWED_CHARS.fullmatch(host) is None:
        raise PermitOpenError(
            f"host {_show(host)} contains whitespace, control or non-ASCII characters"
        )
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise PermitOpenError(f"host {_show(host)} has unbalanced brackets")
        host = host[1:-1]
        if ":" not in host:
            raise PermitOpenError(f"host {_show(host)} in brackets is not an IPv6 address")
    if ":" in host:
        if "%" in host:
            raise PermitOpenError(f"IPv6 zone ids are not allowed ({_show(host)})")
        try:
            addr = ipaddress.IPv6Address(host)
        except ValueError:
            raise PermitOpenError(f"host {_show(host)} is not a valid IPv6 address") from None
        if addr.ipv4_mapped is not None or "." in host:
            raise PermitOpenError(
                f"host {_show(host)}: IPv4 inside IPv6 is ambiguous; use the IPv4 address"
            )
        return addr.compressed
    h = host.lower()
    if len(h) > 253:
        raise PermitOpenError(f"host {_show(host)} is longer than 253 characters")
    ipv4 = _canonical_ipv4(h)
    if ipv4 is not None:
        return ipv4
    labels = h.split(".")
    for label in labels:
        if _LABEL_RE.fullmatch(label) is None:
            raise PermitOpenError(f"host {_show(host)} is not a valid host name")
        if label.startswith("xn--"):
            try:
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise PermitOpenError(f"host {_show(host)} has an invalid IDNA label") from None
    return h


def canonical_port(port: object) -> int:
    """A port as an int 1-65535. Strings must be plain decimal (no sign, no leading zero)."""
    if isinstance(port, bool):
        raise PermitOpenError(f"port {_show(port)} is not a number")
    if isinstance(port, int):
        if 1 <= port <= 65535:
            return port
        raise PermitOpenError(f"port {port} is out of range 1-65535")
    if isinstance(port, str) and _PORT_RE.fullmatch(port) and int(port) <= 65535:
        return int(port)
    raise PermitOpenError(f"port {_show(port)} must be a decimal number 1-65535")


@dataclass(frozen=True)
class PermitEntry:
    """One canonical entry. ``host == "*"`` / ``port is None`` are the wildcards."""

    host: str
    port: int | None

    def matches(self, host: str, port: int) -> bool:
        """``host``/``port`` must already be canonical (see :func:`check_request`)."""
        return self.host in ("*", host) and (self.port is None or self.port == port)

    def __str__(self) -> str:
        h = f"[{self.host}]" if ":" in self.host else self.host
        return f"{h}:{'*' if self.port is None else self.port}"


ALLOW_ALL = PermitEntry("*", None)


def parse_entry(text: str) -> PermitEntry:
    """Parse one ``host:port`` entry (``*`` allowed for either half)."""
    if not isinstance(text, str) or not text:
        raise PermitOpenError("empty permit-open entry")
    if _ALLOWED_CHARS.fullmatch(text) is None:
        raise PermitOpenError(
            f"permit-open entry {_show(text)} contains whitespace, control or non-ASCII characters"
        )
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise PermitOpenError(f"permit-open entry {_show(text)}: expected [ipv6]:port")
        host_part, port_part = text[: close + 1], text[close + 2 :]
    else:
        if text.count(":") != 1:
            raise PermitOpenError(
                f"permit-open entry {_show(text)}: expected host:port (IPv6 needs [brackets])"
            )
        host_part, port_part = text.split(":")
    if not host_part:
        raise PermitOpenError(f"permit-open entry {_show(text)} has an empty host")
    host = "*" if host_part == "*" else canonical_host(host_part)
    port = None if port_part == "*" else canonical_port(port_part)
    return PermitEntry(host, port)


@dataclass(frozen=True)
class PermitDecision:
    allowed: bool
    message: str | None = None


@dataclass(frozen=True)
class PermitOpen:
    """An ordered, de-duplicated list of permits. Deny by default (empty list)."""

    entries: tuple[PermitEntry, ...] = ()
    #: In non-strict parsing, the entries that were dropped (each grants nothing).
    rejected: tuple[str, ...] = field(default=(), compare=False)

    @classmethod
    def parse(cls, spec: str | Iterable[str], *, strict: bool = True) -> PermitOpen:
        """Parse a comma-separated string (the CLI form) or a list of entries.

        ``strict=True`` (our own configuration) raises on the first bad entry. ``strict=False``
        (lists from a peer, e.g. an NPA ``permitOpen``) drops bad entries and records them in
        ``rejected``: a malformed grant grants nothing.
        """
        items: list[Any]
        if isinstance(spec, str):
            items = spec.split(",") if spec else []
        else:
            items = list(spec)
        out: list[PermitEntry] = []
        bad: list[str] = []
        for item in items:
            try:
                if not isinstance(item, str):
                    raise PermitOpenError(f"permit-open entry {_show(item)} is not a string")
                entry = parse_entry(item)
            except PermitOpenError:
                if strict:
                    raise
                bad.append(_show(item))
                continue
            if entry not in out:
                out.append(entry)
        return cls(tuple(out), tuple(bad))

    @classmethod
    def allow_all(cls) -> PermitOpen:
        return cls((ALLOW_ALL,))

    def check(self, host: str, port: int | str) -> bool:
        """True iff the request is well-formed and some entry matches it."""
        try:
            h, p = canonical_host(host), canonical_port(port)
        except PermitOpenError:
            return False
        return any(e.matches(h, p) for e in self.entries)

    def names_exactly(self, host: str, port: int) -> bool:
        """True iff an entry names ``host`` itself (or is ``*``) for ``port``."""
        return any(e.matches(host, port) for e in self.entries)

    def allowed_services(self) -> list[str]:
        """The list for ping responses (``allowedServices``), official ``host:port`` style."""
        return [str(e) for e in self.entries]

    def __str__(self) -> str:
        return ",".join(self.allowed_services())

    def __bool__(self) -> bool:
        return bool(self.entries)


def _target(host: object, port: object) -> str:
    """How a target is shown in a refusal: the canonical form if it has one, else escaped."""
    try:
        h = canonical_host(host)  # type: ignore[arg-type]
        h = f"[{h}]" if ":" in h else h
    except PermitOpenError:
        h = _show(host)
    try:
        p = str(canonical_port(port))
    except PermitOpenError:
        p = _show(port)
    return f"{h}:{p}"


def check_request(
    daemon: PermitOpen, client: PermitOpen, host: str, port: int | str
) -> PermitDecision:
    """The two-level check, with the official refusal wording (spec 6.8)."""
    if not daemon.check(host, port):
        return PermitDecision(False, f"Daemon does not permit connections to {_target(host, port)}")
    if not client.check(host, port):
        return PermitDecision(
            False, f"Client is not permitted connections to {_target(host, port)}"
        )
    return PermitDecision(True)


Resolver = Callable[[str, int], Sequence[tuple[Any, ...]]]


def _default_resolver(host: str, port: int) -> Sequence[tuple[Any, ...]]:
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)


def resolve_checked(
    host: str,
    port: int | str,
    *lists: PermitOpen,
    resolver: Resolver | None = None,
) -> tuple[str, int]:
    """Check ``host:port`` against every list, then return the exact address to connect to.

    * A numeric IP request needs no DNS; it is allowed only if each list names that IP (or
      has a ``*`` host, which grants every host by definition).
    * A name is resolved **once**; the first address is returned. ``localhost`` and
      ``*.localhost`` must resolve to loopback (RFC 6761), so a poisoned resolver cannot point
      the always-permitted ``localhost`` somewhere else.
    * The caller must connect to the returned address and never resolve the name again.

    Raises :class:`AuthRefusedError` (with the official wording) when not permitted, and
    :class:`ConnectError` when the name does not resolve.
    """
    if not lists:
        raise AuthRefusedError("no permit-open list to check against (deny by default)")
    try:
        h, p = canonical_host(host), canonical_port(port)
    except PermitOpenError as exc:
        raise AuthRefusedError(
            f"Daemon does not permit connections to {_target(host, port)}: {exc}"
        ) from None
    for i, plist in enumerate(lists):
        if not plist.names_exactly(h, p):
            who = "Daemon does not permit" if i == 0 else "Client is not permitted"
            raise AuthRefusedError(f"{who} connections to {_target(h, p)}")
    try:
        ipaddress.ip_address(h)
        return h, p
    except ValueError:
        pass
    try:
        infos = (resolver or _default_resolver)(h, p)
    except (OSError, UnicodeError) as exc:
        raise ConnectError(f"cannot resolve {_show(h)}: {exc}") from None
    for info in infos:
        family, sockaddr = info[0], info[4]
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        addr = str(sockaddr[0]).split("%", 1)[0]
        ip = ipaddress.ip_address(addr)
        if (h == "localhost" or h.endswith(".localhost")) and not ip.is_loopback:
            raise AuthRefusedError(f"{_show(h)} resolved to non-loopback address {addr}")
        return ip.compressed, p
    raise ConnectError(f"cannot resolve {_show(h)}: no IPv4 or IPv6 address")

"""``--snoop``: log every relayed byte (official ``-s``, only when ``ENABLE_SNOOP=true``).

PRIVACY: snooping writes the tunnel's bytes to the log. With end-to-end encryption those
bytes are ciphertext, but without it (``--no-et`` clients, npt ``--no-encrypt-rvd-traffic``,
legacy sessions) the log receives plaintext: passwords typed into telnet-like services, HTTP
cookies, file contents. It is a debugging aid for a relay you own, never for production;
the relay logs a warning at start when it is on.

Implementation: an adapter with the relay pump interface (``Pump(loop, sock_a, sock_b,
on_done, **kw)``) that wraps each socket so ``recv_into`` logs what it read, then runs the
pure copy pump (splice never brings bytes into user space, so it cannot be snooped).
Lines are ``A -> B : <text>`` / ``B -> A : <text>`` with non-printable bytes shown as ``*``.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

from .. import _compat

IMPLEMENTATION = "snoop"
SPLICE = False

log = logging.getLogger("noports.srvd.snoop")

_PRINTABLE = bytes(range(0x20, 0x7F))
_TABLE = bytes(b if b in _PRINTABLE else ord("*") for b in range(256))


def render(data: bytes | bytearray | memoryview) -> str:
    """Bytes as text with every non-printable byte replaced by ``*``."""
    return bytes(data).translate(_TABLE).decode("ascii")


class _SnoopSocket:
    """The subset of ``socket.socket`` the pump uses, logging what ``recv_into`` reads."""

    __slots__ = ("_sock", "_label")

    def __init__(self, sock: socket.socket, label: str) -> None:
        self._sock = sock
        self._label = label

    def fileno(self) -> int:
        return self._sock.fileno()

    def recv_into(self, buf: Any, nbytes: int = 0) -> int:
        n = self._sock.recv_into(buf, nbytes)
        if n:
            log.info("%s : %s", self._label, render(memoryview(buf)[:n]))
        return n

    def send(self, data: Any) -> int:
        return self._sock.send(data)

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def setsockopt(self, *args: Any) -> None:
        self._sock.setsockopt(*args)

    def close(self) -> None:
        self._sock.close()


def Pump(  # noqa: N802 - the pump interface's constructor name
    loop: Any,
    sock_a: socket.socket,
    sock_b: socket.socket,
    on_done: Any,
    *,
    head_ab: bytes = b"",
    head_ba: bytes = b"",
    **kw: Any,
) -> Any:
    """A pure copy pump whose reads are logged (same signature as the relay's pumps)."""
    if head_ab:
        log.info("A -> B : %s", render(head_ab))
    if head_ba:
        log.info("B -> A : %s", render(head_ba))
    pure = _compat.speedups("pump", "py")
    return pure.Pump(
        loop,
        _SnoopSocket(sock_a, "A -> B"),
        _SnoopSocket(sock_b, "B -> A"),
        on_done,
        head_ab=head_ab,
        head_ba=head_ba,
        **kw,
    )


def trim_spare_pipes(keep: int = 0) -> int:
    """Pump-module parity (the splice twin keeps spare pipes); the copy pump has none."""
    return 0


def spare_pipes() -> int:
    return 0

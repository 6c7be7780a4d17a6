"""systemd service notifications (``Type=notify``): readiness, status, stopping, watchdog.

The protocol is one datagram per message to the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(``@name`` is the abstract namespace), see sd_notify(3). Without that variable (not started by
systemd) every call is a no-op. The watchdog ping is sent from the event loop itself, so a
stalled loop stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

log = logging.getLogger("noports.systemd")


def notify(*lines: str) -> bool:
    """Send ``lines`` (e.g. ``READY=1``) to systemd; False when not under systemd or on error."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr or not lines:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(addr)
            s.sendall("\n".join(lines).encode())
        return True
    except OSError as exc:
        log.debug("sd_notify to %r failed: %s", addr, exc)
        return False


def watchdog_interval() -> float | None:
    """Half of ``$WATCHDOG_USEC`` in seconds, when the watchdog is meant for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        n = int(usec)
    except ValueError:
        return None
    return n / 2e6 if n > 0 else None


async def watchdog() -> None:
    """Ping ``WATCHDOG=1`` from the event loop until cancelled (no-op without a watchdog)."""
    every = watchdog_interval()
    if every is None:
        return
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            notify("WATCHDOG=1")
            await asyncio.sleep(every)

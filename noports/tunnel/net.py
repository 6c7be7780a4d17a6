"""Socket helpers shared by both tunnel ends: connect with a deadline, relay auth, listen.

Everything returns plain non-blocking ``socket.socket`` objects, because the transfer loop
works on raw sockets (see ``bridge``).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ..errors import ConnectError, PeerTimeoutError

log = logging.getLogger("noports.tunnel")

RELAY_CONNECT_TIMEOUT = 10.0


async def connect_tcp(
    host: str, port: int, timeout: float = RELAY_CONNECT_TIMEOUT
) -> socket.socket:
    """Connect to ``host:port`` trying each resolved address in turn, within ``timeout``."""
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout
        )
    except (TimeoutError, asyncio.TimeoutError):
        raise PeerTimeoutError(f"resolving {host} timed out") from None
    except OSError as exc:
        raise ConnectError(f"cannot resolve {host}: {exc}") from exc
    last: BaseException | None = None
    for family, stype, proto, _, addr in infos:
        sock = socket.socket(family, stype, proto)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout)
        except (TimeoutError, asyncio.TimeoutError):
            sock.close()
            last = PeerTimeoutError(f"connecting to {host}:{port} timed out")
            continue
        except OSError as exc:
            sock.close()
            last = exc
            continue
        except BaseException:
            sock.close()
            raise
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        return sock
    if isinstance(last, PeerTimeoutError):
        raise last
    raise ConnectError(f"cannot connect to {host}:{port}: {last}") from last


def auth_bytes(auth_line: str | bytes | None) -> bytes:
    """The auth line as sent: the line itself plus exactly one ``\\n`` (empty if None)."""
    if not auth_line:
        return b""
    raw = auth_line.encode("utf-8") if isinstance(auth_line, str) else bytes(auth_line)
    return raw.rstrip(b"\r\n") + b"\n"


async def connect_relay(
    host: str,
    port: int,
    auth_line: str | bytes | None,
    *,
    timeout: float = RELAY_CONNECT_TIMEOUT,
    attempts: int = 1,
    retry_delay: float = 1.0,
) -> socket.socket:
    """A relay socket whose first bytes, already sent, are the auth line (if any)."""
    loop = asyncio.get_running_loop()
    line = auth_bytes(auth_line)
    for attempt in range(1, attempts + 1):
        try:
            sock = await connect_tcp(host, port, timeout)
        except (ConnectError, PeerTimeoutError):
            if attempt == attempts:
                raise
            log.info("relay connect attempt %d failed; retrying", attempt)
            await asyncio.sleep(retry_delay)
            continue
        if line:
            try:
                await asyncio.wait_for(loop.sock_sendall(sock, line), timeout)
            except BaseException:
                sock.close()
                raise
        return sock
    raise AssertionError("unreachable")


def listen(host: str, port: int, backlog: int = 128) -> socket.socket:
    """A non-blocking listening socket on ``host:port`` (first resolved address)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, stype, proto, _, addr = infos[0]
    sock = socket.socket(family, stype, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def client_bind_host(local_host: str | None) -> str:
    """Where a client end listens: loopback unless told otherwise.

    The official client binds 0.0.0.0 (spec 12.1 item 8), exposing the tunnel to the LAN;
    we bind 127.0.0.1 when the host is unset or the srv default ``localhost``.
    """
    if not local_host or local_host == "localhost":
        return "127.0.0.1"
    return local_host

"""Socket helpers shared by both tunnel ends: connect with a deadline, relay auth, listen.

Everything returns plain non-blocking ``socket.socket`` objects, because the transfer loop
works on raw sockets (see ``bridge``).
"""

from __future__ import annotations

import asyncio
import logging
import socket

from ..crypto import escr
from ..crypto.escr import EscrAuth
from ..errors import AuthRefusedError, ConnectError, PeerTimeoutError

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


def auth_bytes(auth_line: str | bytes | EscrAuth | None) -> bytes:
    """The auth line as sent: the line itself plus exactly one ``\\n`` (empty if None)."""
    if not auth_line or isinstance(auth_line, EscrAuth):
        return b""
    raw = auth_line.encode("utf-8") if isinstance(auth_line, str) else bytes(auth_line)
    return raw.rstrip(b"\r\n") + b"\n"


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def escr_handshake(sock: socket.socket, auth: EscrAuth, timeout: float) -> None:
    """Answer the relay's ESCR challenge on ``sock``; return once it said ``ok``.

    Reads exactly through each line's newline (peeking first), so tunnel bytes the relay
    forwards right after ``ok`` stay in the socket for the bridge.
    """
    loop = asyncio.get_running_loop()
    prover = auth.prover()

    async def run() -> escr.Event:
        while True:
            await _readable(loop, sock)
            try:
                peek = sock.recv(prover.want() or 1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                continue
            if not peek:
                return prover.eof()
            nl = peek.find(b"\n")
            data = sock.recv(nl + 1 if nl >= 0 else len(peek))
            ev = prover.feed(data)
            if ev.step is escr.Step.SEND:
                await loop.sock_sendall(sock, ev.data)
            elif ev.step is not escr.Step.NEED_MORE:
                return ev

    try:
        ev = await asyncio.wait_for(run(), timeout)
    except (TimeoutError, asyncio.TimeoutError):
        raise PeerTimeoutError(
            "relay authentication (escr) timed out: no challenge or verdict from the relay "
            "(a relay without escr waits for a payload line: try --ram payload)"
        ) from None
    except OSError as exc:
        raise ConnectError(f"relay connection failed during authentication: {exc}") from exc
    if ev.step is not escr.Step.OK:
        raise AuthRefusedError(f"relay refused authentication (escr): {ev.reason}")


async def connect_relay(
    host: str,
    port: int,
    auth_line: str | bytes | EscrAuth | None,
    *,
    timeout: float = RELAY_CONNECT_TIMEOUT,
    attempts: int = 1,
    retry_delay: float = 1.0,
) -> socket.socket:
    """A relay socket whose first bytes, already sent, are the auth line (if any).

    With an :class:`~noports.crypto.escr.EscrAuth` the socket has instead answered its own
    ESCR challenge and the relay has said ``ok``.
    """
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
        try:
            if isinstance(auth_line, EscrAuth):
                await escr_handshake(sock, auth_line, timeout)
            elif line:
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

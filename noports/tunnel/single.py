"""Single mode (spec 5.2): one local connection, one relay socket, bridged.

Client end: listen, accept the first local connection, stop listening, connect the relay
(auth line first), bridge. Daemon end: connect the local service, then the relay (auth line
first; whatever the service already sent, e.g. an ssh banner, waits in the kernel behind
it), bridge. Both ends use the same bridge; only the direction labels differ.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from ..crypto.escr import EscrAuth
from ..errors import PeerTimeoutError
from .bridge import BridgeStats, bridge
from .keys import TunnelCrypto, mode_name
from .net import RELAY_CONNECT_TIMEOUT, client_bind_host, connect_relay, connect_tcp, listen

log = logging.getLogger("noports.tunnel")


class SingleClient:
    """A listening client end. ``port`` is bound when ``open_client_single`` returns."""

    def __init__(
        self,
        listener: socket.socket,
        task_factory: Callable[[SingleClient], asyncio.Task[BridgeStats]],
    ) -> None:
        self.listener: socket.socket | None = listener
        self.host, self.port = listener.getsockname()[:2]
        self._task = task_factory(self)

    async def wait(self) -> BridgeStats:
        """Until the tunnel has ended; raises what ended it abnormally."""
        return await self._task

    async def close(self) -> None:
        """Stop listening and tear down the tunnel if it is running."""
        self._close_listener()
        if not self._task.done():
            self._task.cancel()
            await asyncio.wait([self._task])
        if not self._task.cancelled():
            self._task.exception()  # retrieved: close() reports nothing

    def _close_listener(self) -> None:
        if self.listener is not None:
            self.listener.close()
            self.listener = None


async def open_client_single(
    relay_host: str,
    relay_port: int,
    *,
    auth_line: str | bytes | EscrAuth | None = None,
    crypto: TunnelCrypto = None,
    local_host: str | None = "127.0.0.1",
    local_port: int = 0,
    timeout: float = 60.0,
    relay_timeout: float = RELAY_CONNECT_TIMEOUT,
    impl: str | None = None,
) -> SingleClient:
    """Listen on ``local_host:local_port`` (0 = any free port) and return at once.

    In the background: wait up to ``timeout`` s for one local connection
    (``PeerTimeoutError`` otherwise), then connect the relay and bridge it.
    """
    lsock = listen(client_bind_host(local_host), local_port, backlog=1)
    loop = asyncio.get_running_loop()

    async def run(client: SingleClient) -> BridgeStats:
        try:
            try:
                local, peer = await asyncio.wait_for(loop.sock_accept(lsock), timeout)
            except (TimeoutError, asyncio.TimeoutError):
                raise PeerTimeoutError(f"no local connection within {timeout:g} s") from None
        finally:
            client._close_listener()
        log.info("local connection from %s:%s", *peer[:2])
        try:
            relay = await connect_relay(relay_host, relay_port, auth_line, timeout=relay_timeout)
        except BaseException:
            local.close()
            raise
        log.info("bridging client end (%s)", mode_name(crypto))
        return await bridge(local, relay, crypto, is_client=True, impl=impl)

    return SingleClient(lsock, lambda c: loop.create_task(run(c)))


async def run_daemon_single(
    relay_host: str,
    relay_port: int,
    *,
    auth_line: str | bytes | EscrAuth | None = None,
    crypto: TunnelCrypto = None,
    local_host: str = "localhost",
    local_port: int = 22,
    timeout: float = RELAY_CONNECT_TIMEOUT,
    impl: str | None = None,
    on_ready: Callable[[], None] | None = None,
) -> BridgeStats:
    """Daemon end: local service first, then the relay; returns when the bridge ends.

    ``timeout`` bounds each connect. ``on_ready`` is called once both sockets are up.
    """
    local = await connect_tcp(local_host, local_port, timeout)
    try:
        relay = await connect_relay(relay_host, relay_port, auth_line, timeout=timeout)
    except BaseException:
        local.close()
        raise
    if on_ready is not None:
        on_ready()
    log.info("bridging daemon end (%s)", mode_name(crypto))
    return await bridge(local, relay, crypto, is_client=False, impl=impl)

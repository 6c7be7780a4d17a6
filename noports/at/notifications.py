"""Receiving notifications: decryption, and a monitor that survives restarts.

Why the monitor is more than ``monitor:0``: an atServer keeps no per-client delivery state
(spec §4). A client that reconnects must ask again with ``monitor:<lastEpochMillis>`` to get
what arrived while it was away, and the server replays everything strictly newer than
that time. So the monitor

* runs on its own authenticated connection, and confirms registration with a ``noop``
  round trip (commands run in order) before it reports itself started;
* sends ``noop:0`` every ``heartbeat`` seconds; a missing ``data:ok`` means a dead
  connection, even when TCP has not noticed;
* reconnects with exponential backoff and jitter (0.25 s doubling to 30 s), resuming at the
  newest ``epochMillis`` it has seen (notifications and the stats heartbeat carry the
  server's clock) minus a safety margin, and drops replays by notification id, so nothing
  is lost and nothing is delivered twice;
* ignores the 15-second stats heartbeat (id ``-1``) and consumes ``shared_key``
  notifications itself (it learns the key, as atsdk does);
* stops with the error when authentication is refused (keys revoked or wrong): retrying
  cannot help.

Before the first notification or stats heartbeat, a resume point for ``since=None``
comes from the local clock; a client clock ahead of the server's by more than the margin
could then miss notifications sent during the very first outage.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..crypto import aes
from ..crypto.encoding import b64d
from ..errors import (
    ApkamDeniedError,
    ApkamRevokedError,
    AtError,
    ClientAuthFailedError,
    ConnectError,
    NoPortsError,
    PeerTimeoutError,
    ProtocolError,
)
from . import commands
from .commands import Metadata
from .protocol import Notification
from .sharedkeys import SharedKeys

if TYPE_CHECKING:
    from .connection import AtConnection


class MonitorClient(Protocol):
    """What a Monitor uses of its client (``AtClient`` implements it)."""

    @property
    def atsign(self) -> str: ...

    @property
    def shared_keys(self) -> SharedKeys: ...

    async def open_connection(self) -> AtConnection: ...

    def seen_notification(self, n: Notification) -> None: ...


log = logging.getLogger("noports.at.monitor")

RESUME_MARGIN_MS = 2_000
_SEEN_MAX = 20_000
CLOSE_RECANCEL_S = 1.0  # close(): cancel the loop again if it has not ended by then
_FATAL = (ClientAuthFailedError, ApkamDeniedError, ApkamRevokedError)


async def decrypt_value(client: MonitorClient, sender: str, data: str, meta: Metadata) -> str:
    """Decrypt data ``sender`` shared with us; a stale cached key is refreshed once."""
    iv = b64d(meta.iv_nonce, what="ivNonce", length=16) if meta.iv_nonce else aes.ZERO_IV
    key = await client.shared_keys.incoming(sender, meta)
    try:
        return aes.decrypt_b64(key, data, iv)
    except ProtocolError:
        client.shared_keys.forget_incoming(sender)
        fresh = await client.shared_keys.incoming(sender, None, refresh=True)
        if fresh == key:
            raise
        return aes.decrypt_b64(fresh, data, iv)


class MonitorClosed(ConnectError):
    """The monitor was closed (or stopped on a fatal error); no more notifications."""


class Monitor:
    """Reconnecting notification stream; see the module docstring. Iterate it, or ``next()``."""

    def __init__(
        self,
        client: MonitorClient,
        regex: str | None,
        since: int | None,
        *,
        self_notifications: bool = False,
        heartbeat: float = 30.0,
        decrypt: bool = True,
        max_backoff: float = 30.0,
        queue_size: int = 1000,
    ) -> None:
        self.client = client
        self.regex = regex
        self.self_notifications = self_notifications
        # build once so a bad regex fails here, not in an endless reconnect loop
        commands.monitor(regex, since=0, self_notifications=self_notifications)
        self.heartbeat = heartbeat
        self.decrypt = decrypt
        self.max_backoff = max_backoff
        self.last_epoch_millis: int | None = since
        self.replay_all = since is not None
        self.reconnects = 0
        self.stats_seen = 0  # stats heartbeats received (and not delivered)
        self.connection: AtConnection | None = None
        self._q: asyncio.Queue[Notification | BaseException] = asyncio.Queue(queue_size)
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._closing = False
        self._fatal: BaseException | None = None
        self._on_close: list[Callable[[], object]] = []

    # -- consumer side ---------------------------------------------------------------------

    def start(self) -> Monitor:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="at-monitor")
        return self

    async def started(self, timeout: float | None = None) -> None:
        """Wait until the server has registered the monitor (at least once)."""
        self.start()
        waiter = asyncio.ensure_future(self._started.wait())
        assert self._task is not None
        try:
            done, _ = await asyncio.wait(
                {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            waiter.cancel()
        if self._started.is_set():
            return
        if self._fatal is not None:
            raise self._fatal
        if self._task.done():
            raise MonitorClosed("monitor stopped before it started")
        raise PeerTimeoutError(f"monitor did not start within {timeout}s")

    async def next(self, timeout: float | None = None) -> Notification:
        """The next notification; PeerTimeoutError after ``timeout``, MonitorClosed at the end."""
        self.start()
        if self._closing and self._q.empty():
            raise MonitorClosed("monitor is closed")
        try:
            item = (
                await asyncio.wait_for(self._q.get(), timeout)
                if timeout is not None
                else await self._q.get()
            )
        except asyncio.TimeoutError:
            raise PeerTimeoutError("no notification within the timeout") from None
        if isinstance(item, BaseException):
            self._q.put_nowait(item)  # keep it for later callers
            raise item
        return item

    def __aiter__(self) -> Monitor:
        return self

    async def __anext__(self) -> Notification:
        try:
            return await self.next()
        except MonitorClosed:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> Monitor:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def on_close(self, cb: Callable[[], object]) -> None:
        self._on_close.append(cb)

    async def close(self) -> None:
        if self._closing and self._task is None:
            return
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            # Python 3.11's wait_for returns a result that lands with the cancellation and
            # drops the cancellation (the key look-ups of _handle use it): cancel again until
            # the task has ended, and _run also checks _closing after every notification
            task.cancel()
            while not task.done():
                await asyncio.wait((task,), timeout=CLOSE_RECANCEL_S)
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                task.result()
        if self.connection is not None:
            await self.connection.close()
        self._end(MonitorClosed("monitor is closed"))
        for cb in self._on_close:
            cb()

    def _end(self, exc: BaseException) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self._q.put_nowait(exc)

    # -- the loop --------------------------------------------------------------------------

    def _resume_point(self) -> int | None:
        if self.last_epoch_millis is None:
            return None
        if self.replay_all and self.last_epoch_millis == 0:
            return 0
        return max(0, self.last_epoch_millis - RESUME_MARGIN_MS)

    async def _run(self) -> None:
        backoff = 0.25
        while not self._closing:
            conn: AtConnection | None = None
            try:
                conn = self.connection = await self.client.open_connection()
                since = self._resume_point()
                await conn.send(
                    commands.monitor(
                        self.regex, since=since, self_notifications=self.self_notifications
                    )
                )
                await conn.execute(commands.noop(0), timeout=max(self.heartbeat, 5.0))
                if self.last_epoch_millis is None:
                    # live only: remember "now" so a reconnect replays the gap
                    self.last_epoch_millis = int(time.time() * 1000)
                self.replay_all = False
                log.debug("monitor registered (since=%s)", since)
                self._started.set()
                backoff = 0.25
                hb = asyncio.get_running_loop().create_task(self._heartbeats(conn))
                try:
                    while not self._closing:
                        await self._handle(await conn.next_notification())
                finally:
                    hb.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await hb
            except asyncio.CancelledError:
                raise
            except _FATAL as exc:
                log.error("monitor authentication refused: %s", exc)
                self._fatal = exc
                self._end(exc)
                return
            except (NoPortsError, OSError) as exc:
                if not self._closing:
                    log.info("monitor connection lost (%s); reconnecting in %.2fs", exc, backoff)
            finally:
                if conn is not None:
                    await conn.close()
            if self._closing:
                break
            self.reconnects += 1
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, self.max_backoff)

    async def _heartbeats(self, conn: AtConnection) -> None:
        while not conn.closed:
            await asyncio.sleep(self.heartbeat)
            try:
                await conn.execute(commands.noop(0), timeout=max(self.heartbeat, 5.0))
            except (NoPortsError, OSError) as exc:
                log.info("monitor heartbeat failed: %s", exc)
                await conn.close()
                return

    async def _handle(self, n: Notification) -> None:
        if n.epoch_millis and (
            self.last_epoch_millis is None or n.epoch_millis > self.last_epoch_millis
        ):
            self.last_epoch_millis = n.epoch_millis
        if n.is_stats:
            self.stats_seen += 1
            return
        if n.id in self._seen:
            return
        self._seen[n.id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        me = self.client.atsign
        if n.key.startswith(f"{me}:shared_key@"):
            self.client.seen_notification(n)
            return
        if (
            self.decrypt
            and n.is_encrypted
            and n.value is not None
            and n.operation == "update"
            and n.from_atsign
            and n.from_atsign != me
        ):
            try:
                plain = await decrypt_value(self.client, n.from_atsign, n.value, n.metadata)
            except (AtError, ProtocolError) as exc:
                log.warning(
                    "dropping notification %s from %s: cannot decrypt (%s)",
                    n.id,
                    n.from_atsign,
                    exc,
                )
                return
            n = n.replace(value=plain, decrypted=True)
        await self._q.put(n)

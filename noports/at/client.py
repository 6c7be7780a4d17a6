"""The high-level atProtocol client: keys, encryption and notifications over a connection.

Stable API (the onboarding code and the NoPorts programs build on it)::

    client = await AtClient.connect(atsign, keys=None, keys_file=None, root=None,
                                    ca_file=None, *, ssl_ctx=None, address=None, timeout=10.0)
    await client.execute(command) -> str                       # raw verb, AtError on error
    await client.put(key, value, *, shared_with=None, public=False, ttl=None, ttb=None,
                     ttr=None, ccd=None) -> int                # commit id
    await client.get(key, *, shared_by=None, shared_with=None, public=False) -> str
    await client.delete(key, *, shared_with=None, public=False) -> int
    await client.scan(regex=None, *, show_hidden=False) -> list[str]
    await client.public_key(atsign, *, refresh=False) -> RSAPublicKey
    await client.notify(to, key, value, *, namespace=None, ttl_ms=None, ttln_ms=None,
                        encrypted=True, id=None, ...) -> str   # notification id
    await client.notify_status(id) -> str ; await client.notify_remove(id)
    async for n in client.monitor(regex, since=None): ...     # decrypted Notification
    await client.verify_signed(envelope_text, signer) -> dict  # payload; refetches key once
    await client.send_signed(to, key, payload, *, namespace, ...) -> str
    await client.request(to, key, payload, *, namespace, reply_key, timeout=10.0) -> dict
    await client.close()

``key`` is the key name including its namespace (``ssh_request.dev1.sshnp``); the client
adds ``@to:``/``public:`` and ``@me``. Values are encrypted the way official clients expect:
shared data with the per-pair key (:mod:`noports.at.sharedkeys`), self data with the
self-encryption key, each with a random ``ivNonce``; public data is signed
(``dataSignature``) but not encrypted.

The main connection is re-opened (and re-authenticated) transparently when it was found
closed *before* a command is sent; a command that was sent when the connection died is
never replayed, because not every verb is idempotent.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import time
from typing import Any

from ..crypto import aes, rsa
from ..crypto.atkeys import AtKeys, default_keys_path
from ..crypto.encoding import b64d, b64e, loads_object
from ..crypto.envelope import envelope_json, verify_envelope
from ..errors import (
    ConnectError,
    KeyFileError,
    KeyNotFoundError,
    NoPortsError,
    PeerTimeoutError,
    ProtocolError,
    SignatureError,
)
from . import commands
from .commands import Metadata
from .config import RootAddress, root_address, ssl_context
from .connection import (
    DEFAULT_COMMAND_TIMEOUT,
    DEFAULT_CONNECT_TIMEOUT,
    AtConnection,
    find_atserver,
)
from .notifications import Monitor, decrypt_value
from .protocol import Notification
from .sharedkeys import SharedKeys

log = logging.getLogger("noports.at.client")

PUBLIC_KEY_TTL = 3600.0  # seconds a fetched public key is trusted before re-fetching


class AtClient:
    """An authenticated client for one atSign. Make it with :meth:`connect`."""

    def __init__(
        self,
        keys: AtKeys,
        conn: AtConnection,
        *,
        address: tuple[str, int],
        ssl_ctx: ssl.SSLContext,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> None:
        self.keys = keys
        self.atsign = commands.atsign(keys.atsign)
        self.address = address
        self.ssl_ctx = ssl_ctx
        self.timeout = timeout
        self.command_timeout = command_timeout
        self.shared_keys = SharedKeys(self)
        self.public_key_ttl = PUBLIC_KEY_TTL
        self._conn = conn
        self._reconnect_lock = asyncio.Lock()
        self._pubkeys: dict[str, tuple[rsa.PublicKey, float]] = {}
        self._monitors: set[Monitor] = set()
        self._closed = False
        self._spare: asyncio.Future[AtConnection] | None = None

    @classmethod
    async def connect(
        cls,
        atsign: str,
        keys: AtKeys | None = None,
        keys_file: str | os.PathLike[str] | None = None,
        root: str | RootAddress | None = None,
        ca_file: str | None = None,
        *,
        ssl_ctx: ssl.SSLContext | None = None,
        address: tuple[str, int] | None = None,
        timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        spare: bool = False,
    ) -> AtClient:
        """Find the atServer (root lookup unless ``address``), connect with TLS, PKAM-authenticate.

        Keys come from ``keys``, else ``keys_file``, else ``~/.atsign/keys/@x_key.atKeys``.
        ``spare=True`` opens a second authenticated connection at the same time, kept for
        the first :meth:`open_connection` (a program that will start a monitor at once:
        its TLS handshake and PKAM then overlap the main connection's).
        """
        a = commands.atsign(atsign)
        if keys is None:
            path = keys_file if keys_file is not None else default_keys_path(a)
            keys = AtKeys.load(path, a, strict_mode=True)  # like ssh: refuse open key files
        if commands.atsign(keys.atsign) != a:
            raise KeyFileError(f"keys are for {keys.atsign}, not {a}")
        ctx = ssl_ctx if ssl_ctx is not None else ssl_context(ca_file)
        if address is None:
            address = await find_atserver(
                a,
                root=root_address(root) if not isinstance(root, RootAddress) else root,
                ssl_ctx=ctx,
                timeout=timeout,
            )
        extra = (
            asyncio.ensure_future(cls._open(keys, address, ctx, timeout, command_timeout))
            if spare
            else None
        )
        try:
            conn = await cls._open(keys, address, ctx, timeout, command_timeout)
        except BaseException:
            if extra is not None:
                await _discard(extra)
            raise
        client = cls(
            keys,
            conn,
            address=address,
            ssl_ctx=ctx,
            timeout=timeout,
            command_timeout=command_timeout,
        )
        client._spare = extra
        return client

    @staticmethod
    async def _open(
        keys: AtKeys,
        address: tuple[str, int],
        ctx: ssl.SSLContext,
        timeout: float,
        command_timeout: float,
    ) -> AtConnection:
        conn = await AtConnection.open(
            address[0], address[1], ctx, connect_timeout=timeout, command_timeout=command_timeout
        )
        try:
            await conn.authenticate(keys)
        except BaseException:
            await conn.close()
            raise
        return conn

    async def open_connection(self) -> AtConnection:
        """A new authenticated connection to our atServer (monitors use their own); the
        first call takes the spare one when :meth:`connect` opened it and it still works."""
        spare, self._spare = self._spare, None
        if spare is not None:
            try:
                conn = await spare
            except (NoPortsError, OSError) as exc:
                log.debug("spare connection failed (%s); opening another", exc)
            else:
                if not conn.closed:
                    return conn
        return await self._open(
            self.keys, self.address, self.ssl_ctx, self.timeout, self.command_timeout
        )

    async def connection(self) -> AtConnection:
        """The main connection, re-opened if it was closed (never mid-command)."""
        if self._closed:
            raise ConnectError("client is closed")
        if self._conn.closed:
            async with self._reconnect_lock:
                if self._conn.closed:
                    log.info("reconnecting %s to %s:%d", self.atsign, *self.address)
                    self._conn = await self.open_connection()
        return self._conn

    async def execute(self, command: str, *, timeout: float | None = None) -> str:
        """Run one verb on the main connection; returns the ``data:`` text."""
        conn = await self.connection()
        return await conn.execute(command, timeout=timeout)

    async def close(self) -> None:
        self._closed = True
        spare, self._spare = self._spare, None
        if spare is not None:
            await _discard(spare)
        for m in list(self._monitors):
            await m.close()
        await self._conn.close()

    def adopt_caches(self, other: AtClient) -> None:
        """Share ``other``'s public-key and shared-key caches (the same atSign and keys: a
        resident program's successive clients keep what earlier ones looked up)."""
        if other.atsign != self.atsign:
            raise ValueError(f"caches of {other.atsign} cannot serve {self.atsign}")
        self._pubkeys = other._pubkeys
        self.shared_keys.adopt(other.shared_keys)

    async def __aenter__(self) -> AtClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- keys and values -------------------------------------------------------------------

    def _key(self, key: str, *, shared_with: str | None, public: bool) -> str:
        sw = commands.atsign(shared_with) if shared_with else None
        if sw == self.atsign:
            sw = None  # data "shared with myself" is self data
        return commands.key_string(key, self.atsign, shared_with=sw, public=public)

    async def put(
        self,
        key: str,
        value: str,
        *,
        shared_with: str | None = None,
        public: bool = False,
        ttl: int | None = None,
        ttb: int | None = None,
        ttr: int | None = None,
        ccd: bool | None = None,
    ) -> int:
        """Store a value; shared values are encrypted for ``shared_with``. Returns the commit id."""
        wire_key = self._key(key, shared_with=shared_with, public=public)
        base = Metadata(ttl=ttl, ttb=ttb, ttr=ttr, ccd=ccd)
        if public:
            sig = rsa.sign(self.keys.encrypt_private, value.encode("utf-8"))
            meta = base.merged(Metadata(data_signature=sig, is_encrypted=False))
            text = value
            if "\n" in text:
                raise commands.CommandError("public values may not contain a newline")
        else:
            iv = aes.new_iv()
            iv_b64 = b64e(iv)
            if wire_key.startswith("@"):
                out = await self.shared_keys.outgoing(shared_with or "")
                text = aes.encrypt_b64(out.key_b64, value, iv)
                meta = base.merged(out.metadata(iv_b64))
            else:
                text = aes.encrypt_b64(self.keys.self_encryption_key, value, iv)
                meta = base.merged(Metadata(is_encrypted=True, iv_nonce=iv_b64))
        return _commit_id(await self.execute(commands.update(wire_key, text, meta)))

    async def get(
        self,
        key: str,
        *,
        shared_by: str | None = None,
        shared_with: str | None = None,
        public: bool = False,
    ) -> str:
        """Read and decrypt a value.

        ``shared_by=@bob``: bob's data shared with me (or bob's public data with ``public``).
        Otherwise my own: self data, ``shared_with=@bob`` for what I shared with bob, or
        ``public``. Raises KeyNotFoundError when it does not exist.
        """
        other = commands.atsign(shared_by) if shared_by else self.atsign
        if other != self.atsign:
            full = commands.key_string(key, other)
            if public:
                obj = loads_object(
                    await self.execute(commands.plookup(full, "all")), what="plookup"
                )
                return _data(obj)
            obj = loads_object(await self.execute(commands.lookup(full, "all")), what="lookup")
            meta = _meta(obj)
            data = _data(obj)
            if not _encrypted(meta, data):
                return data
            return await self._decrypt_from(other, data, meta)
        wire_key = self._key(key, shared_with=shared_with, public=public)
        obj = loads_object(await self.execute(commands.llookup(wire_key, "all")), what="llookup")
        meta, data = _meta(obj), _data(obj)
        if public or not _encrypted(meta, data):
            return data
        if wire_key.startswith("@"):
            out = await self.shared_keys.outgoing(shared_with or "")
            return aes.decrypt_b64(out.key_b64, data, _iv(meta))
        return aes.decrypt_b64(self.keys.self_encryption_key, data, _iv(meta))

    async def _decrypt_from(self, other: str, data: str, meta: Metadata) -> str:
        return await decrypt_value(self, other, data, meta)

    async def delete(
        self, key: str, *, shared_with: str | None = None, public: bool = False
    ) -> int:
        return _commit_id(
            await self.execute(
                commands.delete(self._key(key, shared_with=shared_with, public=public))
            )
        )

    async def scan(self, regex: str | None = None, *, show_hidden: bool = False) -> list[str]:
        text = await self.execute(commands.scan(regex, show_hidden=show_hidden))
        try:
            got = json.loads(text) if text.strip() else []
        except ValueError as exc:
            raise ProtocolError("scan reply is not a JSON list") from exc
        if not isinstance(got, list):
            raise ProtocolError("scan reply is not a JSON list")
        return [str(k) for k in got]

    # -- public keys -----------------------------------------------------------------------

    async def public_key(self, atsign: str, *, refresh: bool = False) -> rsa.PublicKey:
        """``public:publickey@x`` (cached for ``public_key_ttl`` s; ``refresh`` bypasses caches)."""
        a = commands.atsign(atsign)
        if a == self.atsign:
            return self.keys.encrypt_public
        now = time.monotonic()
        hit = self._pubkeys.get(a)
        if hit is not None and not refresh and now - hit[1] < self.public_key_ttl:
            return hit[0]
        text = await self.execute(commands.plookup(f"publickey{a}", bypass_cache=refresh))
        if not text or text == "null":
            raise KeyNotFoundError(f"{a} has no public key (not onboarded?)")
        key = rsa.public_from_b64(text)
        self._pubkeys[a] = (key, now)
        return key

    async def verify_signed(
        self, envelope: str | bytes | dict[str, Any], signer: str
    ) -> dict[str, Any]:
        """Check a signed envelope from ``signer`` and return its payload.

        A failure with the cached key re-fetches the key once (bypassing caches): the signer
        may have re-onboarded. A second failure raises SignatureError.
        """
        key = await self.public_key(signer)
        try:
            return verify_envelope(envelope, key)
        except SignatureError:
            fresh = await self.public_key(signer, refresh=True)
            if rsa.public_to_b64(fresh) == rsa.public_to_b64(key):
                raise
            return verify_envelope(envelope, fresh)

    # -- notifications ---------------------------------------------------------------------

    async def notify(
        self,
        to: str,
        key: str,
        value: str | None,
        *,
        namespace: str | None = None,
        ttl_ms: int | None = None,
        ttln_ms: int | None = None,
        ttr_ms: int | None = None,
        ccd: bool | None = None,
        encrypted: bool = True,
        id: str | None = None,
        operation: str = "update",
        priority: str | None = None,
        strategy: str | None = None,
        latest_n: int | None = None,
        notifier: str | None = None,
    ) -> str:
        """Send a notification to ``to`` about ``key[.namespace]``; returns its id.

        The value is encrypted end to end (shared key, random ivNonce, sharedKeyEnc and
        pubKeyCS for Dart receivers) unless ``encrypted=False``.
        """
        name = f"{key}.{namespace}" if namespace else key
        recipient = commands.atsign(to)
        wire_key = commands.key_string(name, self.atsign, shared_with=recipient)
        meta = Metadata(ttl=ttl_ms, ttr=ttr_ms, ccd=ccd)
        text = value
        if value is not None and encrypted:
            out = await self.shared_keys.outgoing(recipient)
            iv = aes.new_iv()
            text = aes.encrypt_b64(out.key_b64, value, iv)
            meta = meta.merged(out.metadata(b64e(iv)))
        elif value is not None:
            meta = meta.merged(Metadata(is_encrypted=False))
            if "\n" in value:
                raise commands.CommandError(
                    "unencrypted notification values may not contain a newline"
                )
        nid = id or commands.random_uuid()
        reply = await self.execute(
            commands.notify(
                wire_key,
                text,
                id=nid,
                operation=operation,
                priority=priority,
                strategy=strategy,
                latest_n=latest_n,
                notifier=notifier,
                ttln=ttln_ms,
                metadata=meta,
            )
        )
        return reply.strip() or nid

    async def notify_status(self, notification_id: str) -> str:
        return (await self.execute(commands.notify_status(notification_id))).strip()

    async def notify_remove(self, notification_id: str) -> None:
        await self.execute(commands.notify_remove(notification_id))

    def monitor(
        self,
        regex: str | None = None,
        since: int | None = None,
        *,
        self_notifications: bool = False,
        heartbeat: float = 30.0,
        decrypt: bool = True,
    ) -> Monitor:
        """A reconnecting monitor on its own connection; iterate it for Notifications.

        ``since`` = epoch ms to replay from (0 = everything stored); None = only new ones.
        Use ``async with client.monitor(...) as m`` or call ``await m.close()``.
        """
        m = Monitor(
            self,
            regex,
            since,
            self_notifications=self_notifications,
            heartbeat=heartbeat,
            decrypt=decrypt,
        )
        self._monitors.add(m)
        m.on_close(lambda: self._monitors.discard(m))
        return m

    # -- signed request / response ---------------------------------------------------------

    async def send_signed(
        self,
        to: str,
        key: str,
        payload: dict[str, Any],
        *,
        namespace: str | None = None,
        ttl_ms: int | None = 10_000,
        ttln_ms: int | None = 60_000,
        id: str | None = None,
    ) -> str:
        """Sign ``payload`` (NoPorts envelope) and notify it, encrypted, to ``to``."""
        text = envelope_json(payload, self.keys.encrypt_private)
        return await self.notify(
            to, key, text, namespace=namespace, ttl_ms=ttl_ms, ttln_ms=ttln_ms, id=id
        )

    async def request(
        self,
        to: str,
        key: str,
        payload: dict[str, Any],
        *,
        namespace: str,
        reply_key: str,
        timeout: float = 10.0,
        ttl_ms: int | None = 10_000,
        ttln_ms: int | None = 60_000,
    ) -> dict[str, Any]:
        """Send a signed request and wait for the signed reply notified back as
        ``<reply_key>.<namespace>`` by ``to``; returns the verified reply payload.

        The monitor is registered (confirmed by a ``noop`` round trip) before the request
        goes out, so a fast reply cannot be missed. Raises PeerTimeoutError, SignatureError,
        or ProtocolError when the reply is not a signed envelope (the peer's error text is
        in the message).
        """
        peer = commands.atsign(to)
        want = f"{reply_key}.{namespace}"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with self.monitor(_regex_escape(want)) as mon:
            await mon.started(timeout)
            await self.send_signed(
                peer, key, payload, namespace=namespace, ttl_ms=ttl_ms, ttln_ms=ttln_ms
            )
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise PeerTimeoutError(
                        f"{peer} did not answer {key}.{namespace} within {timeout:g}s"
                    )
                try:
                    n = await mon.next(timeout=left)
                except PeerTimeoutError:
                    raise PeerTimeoutError(
                        f"{peer} did not answer {key}.{namespace} within {timeout:g}s"
                    ) from None
                if n.from_atsign != peer or n.short_key != want or n.value is None:
                    continue
                try:
                    return await self.verify_signed(n.value, peer)
                except ProtocolError as exc:
                    raise ProtocolError(
                        f"{peer} answered without a signed envelope: {n.value[:200]!r}"
                    ) from exc

    # used by Monitor
    def seen_notification(self, n: Notification) -> None:
        """A shared_key notification carries a key for us: learn it at once (as atsdk does)."""
        if n.value and n.key.startswith(f"{self.atsign}:shared_key@") and n.operation == "update":
            try:
                self.shared_keys.learn(n.from_atsign or n.key.rsplit("@", 1)[1], n.value)
            except ProtocolError:
                log.warning("a shared key notification from %s did not unwrap", n.from_atsign)


async def _discard(task: asyncio.Future[AtConnection]) -> None:
    """Stop an unused connection attempt, or close the connection it made."""
    if not task.done():
        task.cancel()
    await asyncio.wait([task])  # an outer cancellation still propagates
    if task.cancelled() or task.exception() is not None:
        return
    await task.result().close()


def _regex_escape(s: str) -> str:
    import re

    return re.escape(s).replace("\\-", "-")


def _commit_id(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        return -1


def _meta(obj: dict[str, Any]) -> Metadata:
    m = obj.get("metaData")
    if m is None:
        m = obj.get("metadata")
    return Metadata.from_json(m if isinstance(m, dict) else None)


def _data(obj: dict[str, Any]) -> str:
    d = obj.get("data")
    if d is None:
        raise KeyNotFoundError(f"{obj.get('key', 'key')} has no value")
    return d if isinstance(d, str) else json.dumps(d)


def _encrypted(meta: Metadata, data: str) -> bool:
    """Self and shared data are encrypted unless the metadata says otherwise (Dart rule)."""
    return meta.is_encrypted is not False


def _iv(meta: Metadata) -> bytes:
    return b64d(meta.iv_nonce, what="ivNonce", length=16) if meta.iv_nonce else aes.ZERO_IV

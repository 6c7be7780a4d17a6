"""Per-pair shared AES keys, made and found exactly as the official clients do (spec §2).

Why this matters: an official peer decrypts what we send only if the key sits where it
looks, wrapped the way it unwraps. For @alice sending to @bob:

* one AES-256 key K (base64 text, 44 characters) serves all of alice's data for bob;
* "my copy" ``shared_key.bob@alice`` = RSA-PKCS#1-v1.5(alice's own encryption public key,
  the *base64 text* of K);
* "their copy" ``@bob:shared_key@alice`` = the same under bob's public key, stored with a
  ttr so autoNotify makes bob's server cache it as ``cached:@bob:shared_key@alice``; it
  also travels as ``sharedKeyEnc`` metadata, with ``pubKeyCS`` = MD5 hex of bob's public
  key text, so a Dart receiver needs no lookup.

Receiving (bob reading alice's data) tries, like Dart: the ``sharedKeyEnc`` metadata
(when ``pubKeyCS`` matches our key), the in-memory cache, ``llookup:cached:@bob:shared_key@alice``,
then ``lookup:shared_key@alice``. A value that does not decrypt with a cached key drops
that key and looks again (the sender may have rotated it).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Protocol

from ..crypto import aes, rsa
from ..crypto.atkeys import AtKeys
from ..crypto.encoding import b64d, loads_object
from ..errors import KeyNotFoundError, LocalError, ProtocolError
from . import commands
from .commands import Metadata


class KeyClient(Protocol):
    """What the shared-key cache uses of its client (``AtClient`` implements it)."""

    @property
    def atsign(self) -> str: ...

    @property
    def keys(self) -> AtKeys: ...

    @property
    def public_key_ttl(self) -> float: ...

    async def execute(self, command: str, *, timeout: float | None = None) -> str: ...

    async def public_key(self, atsign: str, *, refresh: bool = False) -> rsa.PublicKey: ...


log = logging.getLogger("noports.at.sharedkeys")

# Dart writes "their copy" with ttr 3,888,000 ms (45 days); atsdk uses 86,400,000.
THEIR_COPY_TTR_MS = 3_888_000


def pub_key_checksum(public_key_b64: str) -> str:
    """``pubKeyCS``: MD5 hex of the public key's base64 text (an identifier, not security)."""
    return hashlib.md5(public_key_b64.encode("utf-8"), usedforsecurity=False).hexdigest()


class OutgoingKey:
    """What encrypting for one recipient needs: K, and their copy for ``sharedKeyEnc``."""

    __slots__ = ("key_b64", "their_copy", "their_pub_cs", "checked_at")

    def __init__(self, key_b64: str, their_copy: str, their_pub_cs: str, checked_at: float) -> None:
        self.key_b64 = key_b64
        self.their_copy = their_copy
        self.their_pub_cs = their_pub_cs
        self.checked_at = checked_at  # monotonic time the recipient's public key was checked

    def metadata(self, iv_b64: str) -> Metadata:
        return Metadata(
            is_encrypted=True,
            shared_key_enc=self.their_copy,
            pub_key_cs=self.their_pub_cs,
            iv_nonce=iv_b64,
        )


class SharedKeys:
    """The shared-key cache of one AtClient (both directions)."""

    def __init__(self, client: KeyClient) -> None:
        self.client = client
        self._out: dict[str, OutgoingKey] = {}
        self._in: dict[str, str] = {}
        self._unwrapped: dict[str, tuple[str, str]] = {}  # other -> (wrapped, K): skip RSA
        self._locks: dict[str, asyncio.Lock] = {}

    def adopt(self, other: SharedKeys) -> None:
        """Use ``other``'s cache entries (same atSign; see ``AtClient.adopt_caches``)."""
        self._out = other._out
        self._in = other._in
        self._unwrapped = other._unwrapped

    def _lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    # -- sending ---------------------------------------------------------------------------

    def _fresh(self, hit: OutgoingKey | None) -> bool:
        return hit is not None and time.monotonic() - hit.checked_at < self.client.public_key_ttl

    async def outgoing(self, other: str) -> OutgoingKey:
        """The key for data we share with ``other``: reuse ours, or make and publish one.

        The entry is re-validated after ``client.public_key_ttl``: if the recipient's public
        key changed (re-onboarded), their copy is re-wrapped for the new key.
        """
        other = commands.atsign(other)
        hit = self._out.get(other)
        if hit is not None and self._fresh(hit):
            return hit
        async with self._lock("out" + other):
            hit = self._out.get(other)
            if hit is not None and self._fresh(hit):
                return hit
            me = self.client.atsign
            keys = self.client.keys
            their_pub = await self.client.public_key(other)
            their_b64 = rsa.public_to_b64(their_pub)
            cs = pub_key_checksum(their_b64)
            my_copy_key = commands.key_string(f"shared_key.{other[1:]}", me)
            their_copy_key = commands.key_string("shared_key", me, shared_with=other)
            try:
                mine = await self.client.execute(commands.llookup(my_copy_key))
            except KeyNotFoundError:
                mine = None
            if mine is not None and mine not in ("", "null"):
                key_b64 = rsa.decrypt(keys.encrypt_private, mine).decode("ascii")
                their_copy = await self._their_copy(their_copy_key, key_b64, their_pub, cs)
            else:
                key_b64 = aes.new_key_b64()
                their_copy = rsa.encrypt(their_pub, key_b64.encode("ascii"))
                # like Dart: remove any stale "their copy" before publishing a new pair
                await self.client.execute(commands.delete(their_copy_key))
                await self.client.execute(
                    commands.update(
                        my_copy_key, rsa.encrypt(keys.encrypt_public, key_b64.encode("ascii"))
                    )
                )
                await self.client.execute(
                    commands.update(
                        their_copy_key, their_copy, Metadata(ttr=THEIR_COPY_TTR_MS, pub_key_cs=cs)
                    )
                )
                log.info("created a shared key for %s", other)
            out = self._out[other] = OutgoingKey(key_b64, their_copy, cs, time.monotonic())
            return out

    async def _their_copy(self, name: str, key_b64: str, their_pub: rsa.PublicKey, cs: str) -> str:
        """Their copy of an existing K, re-made if missing or made for an older public key."""
        try:
            raw = await self.client.execute(commands.llookup(name, "all"))
            obj = _json(raw)
            value = obj.get("data")
            meta = Metadata.from_json(obj.get("metaData") or obj.get("metadata"))
            if isinstance(value, str) and value and (meta.pub_key_cs in (None, cs)):
                return value
        except KeyNotFoundError:
            pass
        copy = rsa.encrypt(their_pub, key_b64.encode("ascii"))
        await self.client.execute(
            commands.update(name, copy, Metadata(ttr=THEIR_COPY_TTR_MS, pub_key_cs=cs))
        )
        return copy

    def forget_outgoing(self, other: str) -> None:
        self._out.pop(commands.atsign(other), None)

    # -- receiving -------------------------------------------------------------------------

    def learn(self, other: str, encrypted_for_me: str) -> str:
        """Unwrap a key ``other`` sent us (sharedKeyEnc, a shared_key notification) and cache
        it. The same wrapped text is unwrapped only once: an RSA private-key operation per
        notification would dominate a busy receiver's CPU."""
        other = commands.atsign(other)
        seen = self._unwrapped.get(other)
        if seen is not None and seen[0] == encrypted_for_me:
            self._in[other] = seen[1]
            return seen[1]
        try:
            key_b64 = rsa.decrypt(self.client.keys.encrypt_private, encrypted_for_me).decode(
                "ascii"
            )
        except UnicodeDecodeError as exc:
            raise ProtocolError("unwrapped shared key is not base64 text") from exc
        aes_check(key_b64)
        self._in[other] = key_b64
        self._unwrapped[other] = (encrypted_for_me, key_b64)
        return key_b64

    async def incoming(
        self, other: str, metadata: Metadata | None = None, *, refresh: bool = False
    ) -> str:
        """The key ``other`` uses for data shared with us (base64 K)."""
        other = commands.atsign(other)
        if other == self.client.atsign:
            raise LocalError("no shared key with oneself; self data uses the self key")
        my_cs = pub_key_checksum(self.client.keys.encrypt_public_b64)
        if (
            metadata is not None
            and metadata.shared_key_enc
            and metadata.pub_key_cs in (None, my_cs)
        ):
            try:
                return self.learn(other, metadata.shared_key_enc)
            except ProtocolError:
                log.debug("sharedKeyEnc from %s did not unwrap; looking the key up", other)
        if not refresh and other in self._in:
            return self._in[other]
        async with self._lock("in" + other):
            if not refresh and other in self._in:
                return self._in[other]
            me = self.client.atsign
            wrapped: str | None = None
            if not refresh:
                try:
                    wrapped = await self.client.execute(
                        commands.llookup(
                            commands.key_string("shared_key", other, shared_with=me, cached=True)
                        )
                    )
                except KeyNotFoundError:
                    wrapped = None
            if not wrapped or wrapped == "null":
                wrapped = await self.client.execute(
                    commands.lookup(f"shared_key{other}", bypass_cache=refresh)
                )
            if not wrapped or wrapped == "null":
                raise KeyNotFoundError(f"{other} has not shared a key with {me}")
            return self.learn(other, wrapped)

    def forget_incoming(self, other: str) -> None:
        self._in.pop(commands.atsign(other), None)
        self._unwrapped.pop(commands.atsign(other), None)


def aes_check(key_b64: str) -> None:
    b64d(key_b64, what="shared AES key", length=32)


def _json(text: str) -> dict[str, Any]:
    return loads_object(text, what="lookup reply")

"""The legacy data-plane cipher: raw AES-256-CTR streams, as the official tools speak it.

Spec noports-protocol 1.4: no framing, no MAC, no padding; the 16-byte IV is the initial
counter block and is incremented as one 128-bit big-endian integer per block; each direction
is one continuous keystream whatever the TCP chunking. OpenSSL's CTR mode (through
``cryptography``) has exactly these semantics, so this module never touches AES itself: it
only decides *which* key and IV each direction uses and hands out cipher contexts whose
``update_into`` the transfer loop calls in place.

Two keyings exist:

* **legacy** (snapshot): one key and IV, used by both directions, each starting at the IV.
  That is keystream reuse (the XOR of the two directions leaks the XOR of the plaintexts);
  we speak it only for interop.
* **twin keys** (spec 10): ``RV_AES_C2D``/``RV_IV_C2D`` for client-to-daemon and
  ``RV_AES_D2C``/``RV_IV_D2C`` for daemon-to-client. Without D2C keys, behaviour falls back
  to legacy (same key both ways), exactly as official peers do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import ConfigError, ProtocolError
from ..record import Frozen, set_field
from .encoding import b64d, b64e

KEY_LEN = 32
IV_LEN = 16

C2D = "c2d"
D2C = "d2c"


def _exact_update_into() -> bool:
    """cryptography < 42 wants ``update_into``'s buffer 15 bytes longer than the data even
    for CTR; the transfer loops hand it exactly the data's length."""
    ctx = Cipher(algorithms.AES(bytes(KEY_LEN)), modes.CTR(bytes(IV_LEN))).encryptor()
    try:
        ctx.update_into(b"x", bytearray(1))
    except ValueError:
        return False
    return True


def __getattr__(name: str) -> Any:
    # ``CTR_INTO: bool``, probed on first use, not at import (1-2 ms of a program's start-up,
    # and AEAD sessions never use CTR)
    if name == "CTR_INTO":
        value = globals()["CTR_INTO"] = _exact_update_into()
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _ctr_into() -> bool:
    into = globals().get("CTR_INTO")
    return __getattr__("CTR_INTO") if into is None else into


class AllocatingCTR:
    """``update_into`` over the allocating ``update`` (cryptography < 42)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Any) -> None:
        self._ctx = ctx

    def update(self, data: Any) -> bytes:
        return self._ctx.update(data)

    def update_into(self, data: Any, buf: Any) -> int:
        out = self._ctx.update(bytes(data))
        n = len(out)
        memoryview(buf)[:n] = out
        return n

    def finalize(self) -> bytes:
        return self._ctx.finalize()


def ctr_context(key: bytes, iv: bytes) -> Any:
    """A fresh AES-256-CTR context (encrypt == decrypt in CTR) starting at counter ``iv``."""
    if len(key) != KEY_LEN:
        raise ProtocolError(f"AES-256 key must be {KEY_LEN} bytes, got {len(key)}")
    if len(iv) != IV_LEN:
        raise ProtocolError(f"AES-CTR IV must be {IV_LEN} bytes, got {len(iv)}")
    ctx = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return ctx if _ctr_into() else AllocatingCTR(ctx)


class CtrKeys(Frozen):
    """Key material for one CTR tunnel (or one multi-mode data connection).

    ``key_d2c``/``iv_d2c`` are None in legacy mode, where both directions use the C2D pair.
    ``repr`` never shows key bytes, so a CtrKeys can appear in logs safely.
    """

    __slots__ = ("key_c2d", "iv_c2d", "key_d2c", "iv_d2c")
    key_c2d: bytes
    iv_c2d: bytes
    key_d2c: bytes | None
    iv_d2c: bytes | None

    def __init__(
        self,
        key_c2d: bytes,
        iv_c2d: bytes,
        key_d2c: bytes | None = None,
        iv_d2c: bytes | None = None,
    ) -> None:
        set_field(self, "key_c2d", key_c2d)
        set_field(self, "iv_c2d", iv_c2d)
        set_field(self, "key_d2c", key_d2c)
        set_field(self, "iv_d2c", iv_d2c)
        self.__post_init__()

    def __post_init__(self) -> None:
        for name in ("key_c2d", "key_d2c"):
            v = getattr(self, name)
            if v is not None and len(v) != KEY_LEN:
                raise ProtocolError(f"{name} must be {KEY_LEN} bytes, got {len(v)}")
        for name in ("iv_c2d", "iv_d2c"):
            v = getattr(self, name)
            if v is not None and len(v) != IV_LEN:
                raise ProtocolError(f"{name} must be {IV_LEN} bytes, got {len(v)}")
        if (self.key_d2c is None) != (self.iv_d2c is None):
            raise ProtocolError("twin keys need both the D2C key and the D2C IV")

    def __repr__(self) -> str:
        return f"CtrKeys(twin={self.twin})"

    @property
    def twin(self) -> bool:
        return self.key_d2c is not None

    def pair(self, direction: str) -> tuple[bytes, bytes]:
        """(key, iv) for ``direction`` ('c2d' or 'd2c')."""
        if direction == C2D or not self.twin:
            return self.key_c2d, self.iv_c2d
        if direction == D2C:
            assert self.key_d2c is not None and self.iv_d2c is not None
            return self.key_d2c, self.iv_d2c
        raise ValueError(f"unknown direction {direction!r}")

    def contexts(self, *, is_client: bool) -> tuple[Any, Any]:
        """(encryptor for what we send, decryptor for what we receive)."""
        send_dir, recv_dir = (C2D, D2C) if is_client else (D2C, C2D)
        return ctr_context(*self.pair(send_dir)), ctr_context(*self.pair(recv_dir))

    # ---- text forms -----------------------------------------------------------------

    @classmethod
    def from_b64(
        cls, key: str, iv: str, key_d2c: str | None = None, iv_d2c: str | None = None
    ) -> CtrKeys:
        return cls(
            b64d(key, what="AES key", length=KEY_LEN),
            b64d(iv, what="AES IV", length=IV_LEN),
            None if key_d2c is None else b64d(key_d2c, what="D2C AES key", length=KEY_LEN),
            None if iv_d2c is None else b64d(iv_d2c, what="D2C AES IV", length=IV_LEN),
        )

    @classmethod
    def generate(cls, *, twin: bool = True) -> CtrKeys:
        import os

        if twin:
            return cls(os.urandom(32), os.urandom(16), os.urandom(32), os.urandom(16))
        return cls(os.urandom(32), os.urandom(16))

    def connect_fields(self) -> list[str]:
        """The b64 fields of a multi-mode ``connect:`` message (2 legacy, 4 twin)."""
        out = [b64e(self.key_c2d), b64e(self.iv_c2d)]
        if self.twin:
            assert self.key_d2c is not None and self.iv_d2c is not None
            out += [b64e(self.key_d2c), b64e(self.iv_d2c)]
        return out

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> CtrKeys | None:
        """Keys from the srv environment contract, or None when no key variable is set.

        ``RV_AES``/``RV_IV`` (legacy) or ``RV_AES_C2D``/``RV_IV_C2D`` (+ ``RV_AES_D2C``/
        ``RV_IV_D2C``). A half-specified pair is a configuration error, never a fallback.
        """
        k = env.get("RV_AES_C2D") or env.get("RV_AES")
        iv = env.get("RV_IV_C2D") or env.get("RV_IV")
        kd, ivd = env.get("RV_AES_D2C"), env.get("RV_IV_D2C")
        if k is None and iv is None:
            return None
        if k is None:
            raise ConfigError("--rv-e2ee required, but RV_AES is not in environment")
        if iv is None:
            raise ConfigError("--rv-e2ee required, but RV_IV is not in environment")
        if (kd is None) != (ivd is None):
            raise ConfigError("twin keys need both RV_AES_D2C and RV_IV_D2C")
        try:
            return cls.from_b64(k, iv, kd, ivd)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc

"""AES-256-CTR with PKCS#7 padding, as the atPlatform encrypts values and key files.

The 16-byte IV is the whole initial counter block (128-bit big-endian increment). A missing
IV means the legacy all-zero IV (self data, .atKeys fields, APKAM key transport). The PKCS#7
padding before CTR is an interop quirk every official SDK has.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..errors import ProtocolError
from .encoding import b64d, b64e

ZERO_IV = bytes(16)


def new_key() -> bytes:
    return os.urandom(32)


def new_key_b64() -> str:
    return b64e(new_key())


def new_iv() -> bytes:
    return os.urandom(16)


def _ctr(key: bytes, iv: bytes):
    if len(key) != 32:
        raise ProtocolError(f"AES-256 key must be 32 bytes, got {len(key)}")
    if len(iv) != 16:
        raise ProtocolError(f"AES IV must be 16 bytes, got {len(iv)}")
    return Cipher(algorithms.AES(key), modes.CTR(iv))


def encrypt(key: bytes, plaintext: bytes, iv: bytes = ZERO_IV) -> bytes:
    pad = 16 - len(plaintext) % 16
    enc = _ctr(key, iv).encryptor()
    return enc.update(plaintext + bytes([pad]) * pad) + enc.finalize()


def decrypt(key: bytes, ciphertext: bytes, iv: bytes = ZERO_IV) -> bytes:
    dec = _ctr(key, iv).decryptor()
    padded = dec.update(ciphertext) + dec.finalize()
    if not padded:
        raise ProtocolError("AES ciphertext is empty")
    pad = padded[-1]
    if not 1 <= pad <= 16 or len(padded) < pad or padded[-pad:] != bytes([pad]) * pad:
        raise ProtocolError("AES plaintext has bad PKCS#7 padding (wrong key?)")
    return padded[:-pad]


def encrypt_b64(key_b64: str, plaintext: str, iv: bytes = ZERO_IV) -> str:
    """Encrypt a text value; key and ciphertext are base64, as on the wire."""
    return b64e(encrypt(b64d(key_b64, what="AES key", length=32), plaintext.encode("utf-8"), iv))


def decrypt_b64(key_b64: str, ciphertext_b64: str, iv: bytes = ZERO_IV) -> str:
    pt = decrypt(
        b64d(key_b64, what="AES key", length=32), b64d(ciphertext_b64, what="ciphertext"), iv
    )
    try:
        return pt.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError("decrypted value is not UTF-8 (wrong key?)") from exc

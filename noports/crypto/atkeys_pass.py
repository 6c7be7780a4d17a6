"""Password-protected atKeys files (``-P/--pass-phrase``), as the official at_auth writes them.

File: ``{"content": <b64>, "iv": <b64 16 bytes>, "hashingAlgoType": "argon2id"}`` (spec
noports-latest 6.3). Key = Argon2id v1.3 (time cost 2, memory 10000 KiB, parallelism 2,
32 bytes) of the passphrase, salted with the passphrase itself (each UTF-16 code unit cut to
one byte); cipher AES-256-CTR with ``iv`` as the initial counter over PKCS#7-padded
plaintext, which is the ordinary atKeys JSON. A wrong passphrase decrypts to garbage, which
is reported as such. Argon2id needs ``cryptography`` >= 44.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from typing import Any

from ..errors import EXIT_AUTH, ConfigError, KeyFileError


class PassPhraseError(KeyFileError):
    """A protected atKeys file without, or with the wrong, pass phrase."""

    exit_code = EXIT_AUTH

ARGON2_TIME_COST = 2
ARGON2_MEMORY_KIB = 10000
ARGON2_LANES = 2


def is_protected(d: dict[str, Any]) -> bool:
    """Does this parsed atKeys JSON hold a passphrase-protected file?"""
    return "iv" in d and "content" in d


def _salt(passphrase: str) -> bytes:
    units = passphrase.encode("utf-16-le")
    return bytes(units[i] for i in range(0, len(units), 2))


def derive_key(passphrase: str, algo: str = "argon2id") -> bytes:
    if not passphrase:
        raise ConfigError("the atKeys pass phrase is empty")
    if algo == "argon2id":
        try:
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
        except ImportError:  # pragma: no cover - cryptography < 44
            raise ConfigError(
                "password-protected atKeys need cryptography >= 44 (Argon2id)"
            ) from None
        salt = _salt(passphrase)
        if len(salt) < 8:  # the passphrase is also the salt; Argon2 needs 8 bytes of salt
            raise ConfigError("the atKeys pass phrase must be at least 8 characters long")
        kdf = Argon2id(
            salt=salt,
            length=32,
            iterations=ARGON2_TIME_COST,
            lanes=ARGON2_LANES,
            memory_cost=ARGON2_MEMORY_KIB,
        )
        return kdf.derive(passphrase.encode("utf-8"))
    raise KeyFileError(f"unsupported atKeys hashingAlgoType {algo!r} (only argon2id)")


def _ctr(key: bytes, iv: bytes, data: bytes) -> bytes:
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    c = Cipher(algorithms.AES(key), modes.CTR(iv)).encryptor()
    return c.update(data) + c.finalize()


def encrypt(plain_json: str, passphrase: str, algo: str = "argon2id") -> dict[str, str]:
    """The protected file's JSON object for an atKeys JSON text."""
    data = plain_json.encode("utf-8")
    pad = 16 - len(data) % 16
    iv = os.urandom(16)
    ct = _ctr(derive_key(passphrase, algo), iv, data + bytes([pad]) * pad)
    return {
        "content": base64.b64encode(ct).decode("ascii"),
        "iv": base64.b64encode(iv).decode("ascii"),
        "hashingAlgoType": algo,
    }


def decrypt(
    d: dict[str, Any], passphrase: str | None, *, path: str = "atKeys file"
) -> dict[str, Any]:
    """The atKeys JSON object inside a protected file; KeyFileError for a wrong passphrase."""
    if "v" in d:
        raise KeyFileError(
            f"{path}: this newer protected atKeys format (with 'v') is not supported"
        )
    if not passphrase:
        raise PassPhraseError(
            f"{path} is protected by a pass phrase: give it with -P/--pass-phrase "
            "(or the config file's atsign.passphrase)"
        )
    algo = str(d.get("hashingAlgoType") or "argon2id").lower()
    try:
        iv = base64.b64decode(str(d["iv"]), validate=True)
        ct = base64.b64decode(str(d["content"]), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise KeyFileError(f"{path}: protected content is not base64") from exc
    if len(iv) != 16 or not ct or len(ct) % 16:
        raise KeyFileError(f"{path}: protected content has a bad length")
    plain = _ctr(derive_key(passphrase, algo), iv, ct)
    pad = plain[-1]
    wrong = PassPhraseError(f"{path}: wrong pass phrase (the decrypted keys are not readable)")
    if not 1 <= pad <= 16 or plain[-pad:] != bytes([pad]) * pad:
        raise wrong
    try:
        out = json.loads(plain[:-pad].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise wrong from None
    if not isinstance(out, dict):
        raise wrong
    return out

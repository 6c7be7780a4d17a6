"""``.atKeys`` files in the official format (spec atprotocol section 3).

The four RSA keys are stored as base64 of AES-256-CTR (zero IV, PKCS#7) of their base64 DER
text, under ``selfEncryptionKey``; that key, ``apkamSymmetricKey`` and ``enrollmentId`` are
plain. Files are written 0600 in a 0700 directory and never through a symlink.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import KeyFileError, ProtocolError
from ..fsutil import read_secret, write_secret
from ..record import Record
from . import aes, rsa


def keyfile_atsign(atsign: str) -> str:
    """The atSign as key files name it: stripped and with its ``@``, case kept.

    Not :func:`noports.names.normalise_atsign`: ``~/.atsign/keys/@Alice_key.atKeys`` stays a
    different file from ``@alice_key.atKeys`` (pinned by ``tests/test_names.py``).
    """
    a = atsign.strip()
    if not a:
        raise KeyFileError("empty atSign")
    return a if a.startswith("@") else "@" + a


def default_keys_path(atsign: str, home: str | os.PathLike[str] | None = None) -> Path:
    base = Path(home) if home is not None else Path.home()
    return base / ".atsign" / "keys" / f"{keyfile_atsign(atsign)}_key.atKeys"


class AtKeys(Record):
    __slots__ = (
        "atsign",
        "pkam_private",
        "pkam_public",
        "encrypt_private",
        "encrypt_public",
        "self_encryption_key",
        "apkam_symmetric_key",
        "enrollment_id",
        "extra",
    )
    atsign: str
    pkam_private: rsa.PrivateKey
    pkam_public: rsa.PublicKey
    encrypt_private: rsa.PrivateKey
    encrypt_public: rsa.PublicKey
    self_encryption_key: str  # base64 AES-256
    apkam_symmetric_key: str | None
    enrollment_id: str | None
    extra: dict[str, str]  # unknown fields, kept on save

    def __init__(
        self,
        atsign: str,
        pkam_private: rsa.PrivateKey,
        pkam_public: rsa.PublicKey,
        encrypt_private: rsa.PrivateKey,
        encrypt_public: rsa.PublicKey,
        self_encryption_key: str,
        apkam_symmetric_key: str | None = None,
        enrollment_id: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.atsign = atsign
        self.pkam_private = pkam_private
        self.pkam_public = pkam_public
        self.encrypt_private = encrypt_private
        self.encrypt_public = encrypt_public
        self.self_encryption_key = self_encryption_key
        self.apkam_symmetric_key = apkam_symmetric_key
        self.enrollment_id = enrollment_id
        self.extra = {} if extra is None else extra

    @classmethod
    def generate(cls, atsign: str) -> AtKeys:
        pk = rsa.generate()
        ek = rsa.generate()
        return cls(
            atsign=keyfile_atsign(atsign),
            pkam_private=pk,
            pkam_public=pk.public_key(),
            encrypt_private=ek,
            encrypt_public=ek.public_key(),
            self_encryption_key=aes.new_key_b64(),
            apkam_symmetric_key=aes.new_key_b64(),
        )

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, str]:
        sk = self.self_encryption_key
        d: dict[str, str] = {
            "aesPkamPublicKey": aes.encrypt_b64(sk, rsa.public_to_b64(self.pkam_public)),
            "aesPkamPrivateKey": aes.encrypt_b64(sk, rsa.private_to_b64(self.pkam_private)),
            "aesEncryptPublicKey": aes.encrypt_b64(sk, rsa.public_to_b64(self.encrypt_public)),
            "aesEncryptPrivateKey": aes.encrypt_b64(sk, rsa.private_to_b64(self.encrypt_private)),
            "selfEncryptionKey": sk,
            self.atsign: sk,
        }
        if self.apkam_symmetric_key:
            d["apkamSymmetricKey"] = self.apkam_symmetric_key
        if self.enrollment_id:
            d["enrollmentId"] = self.enrollment_id
        for k, v in self.extra.items():
            d.setdefault(k, v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object], atsign: str | None = None) -> AtKeys:
        try:
            sk = str(d["selfEncryptionKey"])

            def dec(name: str) -> str:
                return aes.decrypt_b64(sk, str(d[name]))

            pkam_priv = rsa.private_from_b64(dec("aesPkamPrivateKey"), trusted=True)
            pkam_pub = rsa.public_from_b64(dec("aesPkamPublicKey"))
            enc_priv = rsa.private_from_b64(dec("aesEncryptPrivateKey"), trusted=True)
            enc_pub = rsa.public_from_b64(dec("aesEncryptPublicKey"))
        except KeyError as exc:
            raise KeyFileError(f"atKeys file has no {exc.args[0]} field") from exc
        except ProtocolError as exc:
            raise KeyFileError(f"atKeys file cannot be decoded: {exc}") from exc
        if atsign is None:
            ats = [k for k in d if k.startswith("@")]
            atsign = ats[0] if ats else "@unknown"
        known = {
            "aesPkamPublicKey",
            "aesPkamPrivateKey",
            "aesEncryptPublicKey",
            "aesEncryptPrivateKey",
            "selfEncryptionKey",
            "apkamSymmetricKey",
            "enrollmentId",
        }
        extra = {k: str(v) for k, v in d.items() if k not in known and not k.startswith("@")}
        return cls(
            atsign=keyfile_atsign(atsign),
            pkam_private=pkam_priv,
            pkam_public=pkam_pub,
            encrypt_private=enc_priv,
            encrypt_public=enc_pub,
            self_encryption_key=sk,
            apkam_symmetric_key=(
                str(d["apkamSymmetricKey"]) if d.get("apkamSymmetricKey") else None
            ),
            enrollment_id=(str(d["enrollmentId"]) if d.get("enrollmentId") else None),
            extra=extra,
        )

    def save(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        overwrite: bool = True,
        pass_phrase: str | None = None,
    ) -> Path:
        """Write the keys (0600); with ``pass_phrase`` in the official protected format."""
        p = Path(path) if path is not None else default_keys_path(self.atsign)
        text = json.dumps(self.to_dict())
        if pass_phrase:
            from . import atkeys_pass

            text = json.dumps(atkeys_pass.encrypt(text, pass_phrase))
        return write_secret(p, text.encode("utf-8"), overwrite=overwrite)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        atsign: str | None = None,
        *,
        strict_mode: bool = False,
        pass_phrase: str | None = None,
    ) -> AtKeys:
        """Load a .atKeys file. ``strict_mode`` refuses group/world-readable files; a
        passphrase-protected file needs ``pass_phrase``."""
        raw = read_secret(path, strict_mode=strict_mode)
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise KeyFileError(f"{path} is not a JSON .atKeys file") from exc
        if not isinstance(d, dict):
            raise KeyFileError(f"{path} is not a JSON .atKeys file")
        from . import atkeys_pass

        if atkeys_pass.is_protected(d):
            d = atkeys_pass.decrypt(d, pass_phrase, path=str(path))
        if atsign is None:
            name = Path(path).name
            if name.endswith("_key.atKeys") and name.startswith("@"):
                atsign = name[: -len("_key.atKeys")]
        return cls.from_dict(d, atsign)

    @property
    def encrypt_public_b64(self) -> str:
        return rsa.public_to_b64(self.encrypt_public)

    @property
    def pkam_public_b64(self) -> str:
        return rsa.public_to_b64(self.pkam_public)

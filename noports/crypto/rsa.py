"""RSA keys as the atPlatform exchanges them: base64 DER (SPKI public, PKCS#8 private).

Signatures are RSASSA-PKCS1-v1_5 with SHA-256; key transport is RSAES-PKCS1-v1_5 (no OAEP,
for interop). Everything goes through ``cryptography`` (OpenSSL).
"""

from __future__ import annotations

import cryptography
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ..errors import ProtocolError, SignatureError
from .encoding import b64d, b64e

PublicKey = rsa.RSAPublicKey
PrivateKey = rsa.RSAPrivateKey

_HASHES = {"sha256": hashes.SHA256, "sha512": hashes.SHA512}


def generate(bits: int = 2048) -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_to_b64(key: PublicKey) -> str:
    return b64e(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def private_to_b64(key: PrivateKey) -> str:
    return b64e(
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def public_from_b64(text: str) -> PublicKey:
    der = b64d(text.strip(), what="public key")
    try:
        key = serialization.load_der_public_key(der)
    except ValueError as exc:
        raise ProtocolError("public key is not DER SubjectPublicKeyInfo") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ProtocolError("public key is not RSA")
    return key


# cryptography < 39 (Debian 12 ships 38) has no such keyword: keys are always validated there.
_SKIP_VALIDATION_KW = int(cryptography.__version__.split(".")[0]) >= 39


def private_from_b64(text: str, *, trusted: bool = False) -> PrivateKey:
    """Load a base64 PKCS#8 RSA key. ``trusted=True`` (our own 0600 key files only) skips
    OpenSSL's full RSA consistency check, which costs 100-200 ms per key at every program
    start; never pass it for key material that came from a peer."""
    der = b64d(text.strip(), what="private key")
    kw = {"unsafe_skip_rsa_key_validation": trusted} if _SKIP_VALIDATION_KW else {}
    try:
        key = serialization.load_der_private_key(der, password=None, **kw)
    except (ValueError, TypeError) as exc:
        raise ProtocolError("private key is not DER PKCS#8") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProtocolError("private key is not RSA")
    return key


def sign(key: PrivateKey, data: bytes, hashing: str = "sha256") -> str:
    """Base64 RSASSA-PKCS1-v1_5 signature of ``data``."""
    return b64e(key.sign(data, padding.PKCS1v15(), _HASHES[hashing]()))


def verify(key: PublicKey, data: bytes, signature_b64: str, hashing: str = "sha256") -> None:
    """Raise SignatureError unless ``signature_b64`` signs ``data``."""
    try:
        sig = b64d(signature_b64, what="signature")
    except ProtocolError as exc:
        raise SignatureError(str(exc)) from exc
    algo = _HASHES.get(hashing)
    if algo is None:
        raise SignatureError(f"unsupported hashing algorithm {hashing!r}")
    try:
        key.verify(sig, data, padding.PKCS1v15(), algo())
    except InvalidSignature as exc:
        raise SignatureError("signature does not verify") from exc


def encrypt(key: PublicKey, data: bytes) -> str:
    """Base64 RSAES-PKCS1-v1_5 ciphertext (atPlatform key transport)."""
    return b64e(key.encrypt(data, padding.PKCS1v15()))


def decrypt(key: PrivateKey, ciphertext_b64: str) -> bytes:
    ct = b64d(ciphertext_b64, what="RSA ciphertext")
    try:
        return key.decrypt(ct, padding.PKCS1v15())
    except ValueError as exc:
        raise ProtocolError("RSA decryption failed") from exc

"""The session's ephemeral RSA-2048 key, started at program start (DESIGN section 4, set-up).

Generating the key takes 50-250 ms of CPU, and OpenSSL runs it without the GIL. ``npt`` and
``sshnp`` call :func:`prestart` first thing in ``main``, before importing the rest of the
program (asyncio, the atProtocol client, the tunnel: about 100 ms of imports), so the key is
made on the second core while the interpreter imports, parses flags and connects.

:func:`take` hands the key over once (a key serves one session only); later sessions
(``npt -K``) make their own. :func:`settle` waits for a running generation: call it before
``fork`` (``-x``), so no thread is inside OpenSSL when the process forks; the child then
takes the finished key and the parent never uses it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# only the RSA module of cryptography (~9 ms to import), not ``noports.crypto.rsa``, which
# imports serialization (~35 ms with its ssh module); and no concurrent.futures (logging,
# ~8 ms) until the key is taken: the key starts that much sooner
from cryptography.hazmat.primitives.asymmetric import rsa

if TYPE_CHECKING:
    from concurrent.futures import Future

# arguments that mean no session key will be needed (no encryption, or no session at all)
_NOT_NEEDED = frozenset(
    {
        "--no-et",
        "--no-encrypt-rvd-traffic",
        "--help",
        "--version",
        "ssh-config",
        "--list-devices",
        "--ls",
        "--require-aead",  # our daemons only: an X25519 key instead (below)
    }
)


class _Early:
    """One prestarted generation: its thread, its outcome, and the future it resolves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.outcome: tuple[bool, Any] | None = None  # (ok, key or exception)
        self.future: Future[rsa.RSAPrivateKey] | None = None
        self.thread = threading.Thread(target=self._work, name="ephemeral-rsa-early")

    def _work(self) -> None:
        try:
            # the same key as noports.crypto.rsa.generate()
            outcome: tuple[bool, Any] = (
                True,
                rsa.generate_private_key(public_exponent=65537, key_size=2048),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the key
            outcome = (False, exc)
        with self.lock:
            self.outcome, fut = outcome, self.future
        if fut is not None:
            _resolve(fut, outcome)


def _resolve(fut: Future[rsa.RSAPrivateKey], outcome: tuple[bool, Any]) -> None:
    if outcome[0]:
        fut.set_result(outcome[1])
    else:
        fut.set_exception(outcome[1])


_early: _Early | None = None


def prestart(argv: Sequence[str] = ()) -> None:
    """Start generating the key in a thread (skipped when ``argv`` says it is not needed;
    a wrong guess only costs or saves CPU, never changes behaviour)."""
    global _early
    if _NOT_NEEDED.intersection(argv):
        return
    e = _Early()
    # not a daemon thread: at exit the interpreter waits for it. A daemon thread still inside
    # OpenSSL at exit is unwound by pthread_exit through Rust frames, and the process aborts
    # ("FATAL: exception not rethrown"). So a usage error waits for the key (<= 250 ms).
    try:
        e.thread.start()
    except RuntimeError:  # no thread to spare: the session makes its key later, as before
        return
    _early = e


def take() -> Future[rsa.RSAPrivateKey] | None:
    """The prestarted key's future, once; None when there is none (or it was taken)."""
    global _early
    e, _early = _early, None
    if e is None:
        return None
    from concurrent.futures import Future

    fut: Future[rsa.RSAPrivateKey] = Future()
    fut.set_running_or_notify_cancel()
    with e.lock:
        outcome = e.outcome
        if outcome is None:
            e.future = fut  # the thread resolves it
    if outcome is not None:
        _resolve(fut, outcome)
    return fut


def settle(timeout: float = 10.0) -> None:
    """Wait until a prestarted generation has finished (call before ``os.fork``)."""
    e = _early
    if e is not None:
        e.thread.join(timeout)


# ---------------------------------------------------------------------------------------
# X25519: the fast ephemeral key exchange between our own programs (DESIGN section 4, set-up)
#
# A client that knows its daemon is ours (``--require-aead``: the feature check confirmed the
# noports AEAD mode before the request) sends an X25519 public key instead of making an
# RSA-2048 key (50-250 ms of CPU): ``noportsKex: "x25519"`` and ``noportsKexPK`` (32 bytes,
# base64) in the signed request. The daemon answers with its own ephemeral X25519 public key
# (``noportsKexPK`` in the signed response) and every key field (``sessionAESKey``,
# ``noportsAeadSecret``, ...) sealed with AES-256-GCM under
# HKDF-SHA256(X25519 shared secret, salt = the two public keys, info = "noports kex x25519 v1"
# + session id): a random 12-byte nonce, the field name as associated data, base64 of nonce
# and ciphertext. Both envelopes are signed, so neither key can be swapped in transit. RSA
# stays the exchange with official peers.

KEX_X25519 = "x25519"
_KEX_INFO = b"noports kex x25519 v1 "


def x25519_private() -> Any:
    """A fresh ephemeral X25519 private key (tens of microseconds)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    return X25519PrivateKey.generate()


def x25519_public_raw(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def x25519_field_key(private: Any, peer_raw: bytes, session_id: str, *, client: bool) -> Any:
    """The AES-256-GCM object that seals (daemon) or opens (client) the key fields."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    own = x25519_public_raw(private)
    shared = private.exchange(X25519PublicKey.from_public_bytes(peer_raw))
    if shared == bytes(32):
        raise ValueError("X25519 peer key is a low-order point")
    salt = own + peer_raw if client else peer_raw + own  # client key first
    key = HKDF(
        algorithm=hashes.SHA256(),
        length=32,
        salt=salt,
        info=_KEX_INFO + session_id.encode(),
    ).derive(shared)
    return AESGCM(key)


def seal_field(aead: Any, name: str, raw: bytes) -> str:
    import base64
    import os

    nonce = os.urandom(12)
    return base64.b64encode(nonce + aead.encrypt(nonce, raw, name.encode())).decode("ascii")


def open_field(aead: Any, name: str, text: str) -> bytes:
    """Raises ``ValueError`` for bad base64 or a field that does not authenticate."""
    import base64
    import binascii

    from cryptography.exceptions import InvalidTag

    try:
        blob = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{name} is not base64") from exc
    if len(blob) < 12 + 16:
        raise ValueError(f"{name} is too short")
    try:
        return aead.decrypt(blob[:12], blob[12:], name.encode())
    except InvalidTag:
        raise ValueError(f"{name} does not authenticate under the X25519 session key") from None

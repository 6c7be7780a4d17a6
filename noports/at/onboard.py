"""Onboarding and APKAM: first activation with the server's secret, OTP-gated enrollment of
further devices, and the approver side (list / approve / deny / revoke), spec atprotocol 1.11.

Library API (``at_activate`` is a thin CLI over it; a future ``noports quickstart`` reuses it)::

    done = await onboard("@alice", secret, root=None, ca_file=None, app_name="noports",
                         device_name=<host>, keys_path=None, overwrite=False)   # -> Onboarded
    code = await get_otp(keys, ttl_ms=None, root=None, ca_file=None)            # -> "ABC123"
    pending = await request_enrollment("@alice", otp, app_name=..., device_name=...,
                                       namespaces={"sshnp": "rw"}, root=None, ca_file=None)
    keys = await pending.wait(timeout=300.0, interval=3.0)                      # -> AtKeys
    done = await enroll("@alice", otp, ..., keys_path=None, on_pending=cb)      # all of the above
    async with await EnrollmentManager.connect(keys, root=None, ca_file=None) as mgr:
        await mgr.list(status="pending") ; await mgr.approve(eid)
        await mgr.deny(eid) ; await mgr.revoke(eid, force=False) ; await mgr.otp()

Ordering choices, and why:

* The keys file is checked (exists? symlink?) **before** anything is sent, so a refused
  write cannot strand a half-made enrollment, and it is written **before** the activation
  secret is deleted: the file is the only copy of the new private keys and the secret is the
  only way back in, so the way back in is never destroyed before the new one is on disk.
* The new device's pending APKAM private key lives only in this process until approval;
  the file is written once the keys arrive and the decrypted encryption key pair is checked
  against the atSign's published ``publickey`` (a wrong approver key fails loudly here
  instead of producing a file that cannot decrypt anything).
* Nothing secret is logged: the connection logs only verbs; this module logs ids and states.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..crypto import aes, rsa
from ..crypto.atkeys import AtKeys, default_keys_path
from ..errors import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    ApkamAuthError,
    ApkamDeniedError,
    ApkamRevokedError,
    AtError,
    AuthRefusedError,
    ClientAuthFailedError,
    ConfigError,
    ConnectError,
    EnrollmentExpiredError,
    InsecureFileError,
    InternalServerExceptionError,
    KeyFileError,
    PeerTimeoutError,
    ProtocolError,
    RemoteError,
    TooManyRequestsError,
)
from . import commands
from .config import RootAddress, ssl_context
from .connection import (
    DEFAULT_COMMAND_TIMEOUT,
    AtConnection,
    connect_atserver,
    connect_authenticated,
    find_atserver,
)

log = logging.getLogger("noports.at.onboard")

DEFAULT_APP_NAME = "noports"
DEFAULT_WAIT_TIMEOUT = 300.0
DEFAULT_POLL_INTERVAL = 3.0
STATUSES = ("pending", "approved", "denied", "revoked", "expired")

Root = str | RootAddress | None


class KeysFileExistsError(KeyFileError):
    """The target .atKeys file already exists and ``overwrite`` was not asked for."""

    exit_code = EXIT_USAGE


class EnrollmentNotFoundError(RemoteError):
    """The server has no such enrollment (or it expired)."""

    exit_code = EXIT_NOT_FOUND


# ---------------------------------------------------------------------------------------
# small helpers


def parse_namespaces(text: str) -> dict[str, str]:
    """``"sshnp:rw,sshrvd:r"`` -> ``{"sshnp": "rw", "sshrvd": "r"}``; raises ConfigError.

    Double quotes are dropped, as the official at_activate does (``'"sshnp":"rw"'``)."""
    out: dict[str, str] = {}
    for part in text.split(","):
        part = part.replace('"', "").strip()
        if not part:
            continue
        name, sep, access = part.partition(":")
        name, access = name.strip().lower(), (access.strip().lower() if sep else "rw")
        if not name or any(c in name for c in ":@ \t") or access not in ("r", "rw"):
            raise ConfigError(f"bad namespace spec {part!r}: use name:r or name:rw")
        if name in out:
            raise ConfigError(f"namespace {name!r} given twice")
        out[name] = access
    if not out:
        raise ConfigError("no namespaces given (e.g. --namespaces sshnp:rw,sshrvd:rw)")
    return out


def default_device_name() -> str:
    """The host name, reduced to the characters key names allow."""
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname().lower())
    return name or "device"


def keys_target(atsign: str, keys_path: str | os.PathLike[str] | None) -> Path:
    return Path(keys_path) if keys_path is not None else default_keys_path(atsign)


def check_keys_target(path: Path, *, overwrite: bool) -> None:
    """Fail early (before any server state changes) if ``path`` cannot be written safely."""
    if path.is_symlink():
        raise InsecureFileError(f"{path} is a symlink; refusing to write keys through it")
    if path.exists() and not overwrite:
        raise KeysFileExistsError(f"{path} already exists; refusing to overwrite it (use --force)")
    if path.parent.is_symlink():
        raise InsecureFileError(f"{path.parent} is a symlink; refusing to keep keys in it")


def _private_parents(path: Path) -> None:
    """Create missing ancestors of the keys directory 0700 (``mkdir -p`` would use the umask,
    so under ``umask 000`` ``~/.atsign`` would be world-writable and the keys dir renamable)."""
    missing: list[Path] = []
    p = path.parent
    while not p.exists() and not p.is_symlink():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(d, 0o700)


def save_keys(keys: AtKeys, path: Path, *, overwrite: bool, pass_phrase: str | None = None) -> Path:
    """Write the .atKeys file 0600 in a 0700 directory, never through a symlink (protected
    by ``pass_phrase`` in the official format when given)."""
    check_keys_target(path, overwrite=overwrite)
    _private_parents(path)
    return keys.save(path, overwrite=overwrite, pass_phrase=pass_phrase)


def _loads(text: str, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"{what} reply is not JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} reply is not a JSON object")
    return obj


def _ctx(ca_file: str | None, ssl_ctx: ssl.SSLContext | None) -> ssl.SSLContext:
    return ssl_ctx if ssl_ctx is not None else ssl_context(ca_file)


# ---------------------------------------------------------------------------------------
# first activation


@dataclass
class Onboarded:
    keys: AtKeys
    path: Path
    enrollment_id: str


async def onboard(
    atsign: str,
    secret: str,
    *,
    root: Root = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    app_name: str = DEFAULT_APP_NAME,
    device_name: str | None = None,
    keys_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    pass_phrase: str | None = None,
) -> Onboarded:
    """First activation of ``atsign`` with the activation (CRAM) secret; writes the keys file.

    Raises ClientAuthFailedError when the secret is refused (wrong, or already activated:
    activation deletes the secret), KeysFileExistsError / InsecureFileError for the target.
    """
    a = commands.atsign(atsign)
    if not secret or any(c.isspace() for c in secret):
        raise ConfigError("the activation secret is empty or contains whitespace")
    path = keys_target(a, keys_path)
    check_keys_target(path, overwrite=overwrite)
    ctx = _ctx(ca_file, ssl_ctx)
    address = await find_atserver(a, root=root, ssl_ctx=ctx, timeout=timeout)
    keys = AtKeys.generate(a)
    sym = keys.apkam_symmetric_key
    assert sym is not None
    conn = await AtConnection.open(*address, ctx, connect_timeout=timeout, command_timeout=timeout)
    try:
        try:
            await conn.authenticate_cram(a, secret)
        except ClientAuthFailedError as exc:
            raise ClientAuthFailedError(
                f"the activation secret for {a} was refused (wrong, or {a} is already activated)"
            ) from exc
        params = {
            "appName": app_name,
            "deviceName": device_name or default_device_name(),
            "apkamPublicKey": keys.pkam_public_b64,
            "encryptedDefaultEncryptionPrivateKey": aes.encrypt_b64(
                sym, rsa.private_to_b64(keys.encrypt_private)
            ),
            "encryptedDefaultSelfEncryptionKey": aes.encrypt_b64(sym, keys.self_encryption_key),
        }
        reply = _loads(await conn.execute(commands.enroll("request", params)), "enroll:request")
    finally:
        await conn.close()
    eid = str(reply.get("enrollmentId") or "")
    if reply.get("status") != "approved" or not eid:
        raise ProtocolError(f"first enrollment was not auto-approved: {reply.get('status')!r}")
    keys.enrollment_id = eid
    log.info("%s: first enrollment %s approved", a, eid)
    conn = await AtConnection.open(*address, ctx, connect_timeout=timeout, command_timeout=timeout)
    try:
        await conn.authenticate(keys)  # proves the new keys work before anything is destroyed
        written = save_keys(keys, path, overwrite=overwrite, pass_phrase=pass_phrase)
        await conn.execute(commands.update(f"public:publickey{a}", keys.encrypt_public_b64))
        await conn.execute(commands.delete("privatekey:at_secret"))
    finally:
        await conn.close()
    log.info("%s: activated; keys in %s", a, written)
    return Onboarded(keys, written, eid)


# ---------------------------------------------------------------------------------------
# a new device: OTP-gated enrollment


@dataclass
class PendingEnrollment:
    """A request the server accepted; holds the new APKAM key pair until approval."""

    atsign: str
    enrollment_id: str
    apkam_private: rsa.PrivateKey
    apkam_symmetric_key: str
    encrypt_public_b64: str
    address: tuple[str, int]
    ssl_ctx: ssl.SSLContext = field(repr=False)
    timeout: float = DEFAULT_COMMAND_TIMEOUT

    async def wait(
        self,
        *,
        timeout: float = DEFAULT_WAIT_TIMEOUT,
        interval: float = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> AtKeys:
        """Retry ``pkam:enrollmentId`` until approved, then fetch and decrypt the keys.

        Raises ApkamDeniedError / ApkamRevokedError / EnrollmentExpiredError when the
        request is refused, PeerTimeoutError when ``timeout`` passes first.
        """
        deadline = clock() + timeout
        conn: AtConnection | None = None
        try:
            while True:
                try:
                    if conn is None or conn.closed:
                        conn = await AtConnection.open(
                            *self.address,
                            self.ssl_ctx,
                            connect_timeout=self.timeout,
                            command_timeout=self.timeout,
                        )
                    await conn.authenticate_pkam(
                        self.atsign, self.apkam_private, enrollment_id=self.enrollment_id
                    )
                    break
                except ApkamAuthError:
                    pass  # AT0026: still pending
                except (ConnectError, PeerTimeoutError) as exc:
                    # the request is stored server-side: a restart or a blip is not the end
                    log.info("waiting for approval: %s; retrying", exc)
                    if conn is not None:
                        await conn.close()
                    conn = None
                except ApkamDeniedError as exc:
                    raise ApkamDeniedError(
                        f"enrollment {self.enrollment_id} was denied by {self.atsign}"
                    ) from exc
                except ApkamRevokedError as exc:
                    raise ApkamRevokedError(
                        f"enrollment {self.enrollment_id} was revoked by {self.atsign}"
                    ) from exc
                except TooManyRequestsError as exc:  # AT0028: expired or unknown
                    raise EnrollmentExpiredError(
                        f"enrollment {self.enrollment_id} expired or no longer exists"
                    ) from exc
                left = deadline - clock()
                if left <= 0:
                    raise PeerTimeoutError(
                        f"enrollment {self.enrollment_id} was not approved within {timeout:g}s"
                    )
                await asyncio.sleep(min(interval, left))
            return await self._fetch_keys(conn)
        finally:
            if conn is not None:
                await conn.close()

    async def _fetch_keys(self, conn: AtConnection) -> AtKeys:
        sym, a, eid = self.apkam_symmetric_key, self.atsign, self.enrollment_id

        async def get(suffix: str) -> str:
            body = _loads(
                await conn.execute(commands.keys_get(f"{eid}.{suffix}.__manage{a}")), "keys:get"
            )
            value = body.get("value")
            if not isinstance(value, str) or not value:
                raise ProtocolError(f"keys:get {suffix} has no value")
            try:
                return aes.decrypt_b64(sym, value)
            except ProtocolError as exc:
                raise ProtocolError(f"cannot decrypt {suffix} with our APKAM key: {exc}") from exc

        enc_private = rsa.private_from_b64(await get("default_enc_private_key"))
        self_key = await get("default_self_enc_key")
        enc_public = enc_private.public_key()
        if rsa.public_to_b64(enc_public) != self.encrypt_public_b64:
            raise ProtocolError(
                f"the encryption key the approver sent does not match public:publickey{a}"
            )
        aes.encrypt_b64(self_key, "check")  # a malformed self key fails here, not later
        pub = self.apkam_private.public_key()
        return AtKeys(
            atsign=a,
            pkam_private=self.apkam_private,
            pkam_public=pub,
            encrypt_private=enc_private,
            encrypt_public=enc_public,
            self_encryption_key=self_key,
            apkam_symmetric_key=sym,
            enrollment_id=eid,
        )


async def request_enrollment(
    atsign: str,
    otp: str,
    *,
    app_name: str,
    device_name: str,
    namespaces: Mapping[str, str],
    root: Root = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    apkam_keys_expiry_ms: int | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
) -> PendingEnrollment:
    """Send the unauthenticated, OTP-gated ``enroll:request``; returns the pending request.

    Raises AuthRefusedError when the OTP is refused (wrong, used or expired).
    """
    a = commands.atsign(atsign)
    if not otp or any(c.isspace() or c in ":@" for c in otp):
        raise ConfigError("the OTP is empty or contains whitespace, ':' or '@'")
    ctx = _ctx(ca_file, ssl_ctx)
    address = await find_atserver(a, root=root, ssl_ctx=ctx, timeout=timeout)
    apkam = rsa.generate()
    sym = aes.new_key_b64()
    conn = await AtConnection.open(*address, ctx, connect_timeout=timeout, command_timeout=timeout)
    try:
        enc_pub_b64 = (await conn.execute(commands.lookup(f"publickey{a}"))).strip()
        enc_pub = rsa.public_from_b64(enc_pub_b64)
        await conn.from_(a)
        params: dict[str, Any] = {
            "appName": app_name,
            "deviceName": device_name,
            "namespaces": dict(namespaces),
            "otp": otp,
            "apkamPublicKey": rsa.public_to_b64(apkam.public_key()),
            "encryptedAPKAMSymmetricKey": rsa.encrypt(enc_pub, sym.encode("ascii")),
        }
        if apkam_keys_expiry_ms is not None:
            params["apkamKeysExpiryInMillis"] = int(apkam_keys_expiry_ms)
        try:
            text = await conn.execute(commands.enroll("request", params))
        except InternalServerExceptionError as exc:  # AT0011 "invalid otp"
            raise AuthRefusedError(f"{a} refused the OTP (wrong, already used or expired)") from exc
    finally:
        await conn.close()
    reply = _loads(text, "enroll:request")
    eid = str(reply.get("enrollmentId") or "")
    if not eid or reply.get("status") != "pending":
        raise ProtocolError(f"enroll:request answered status {reply.get('status')!r}")
    log.info("%s: enrollment %s pending", a, eid)
    return PendingEnrollment(a, eid, apkam, sym, enc_pub_b64, address, ctx, timeout)


async def enroll(
    atsign: str,
    otp: str,
    *,
    app_name: str,
    device_name: str,
    namespaces: Mapping[str, str],
    root: Root = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    keys_path: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    wait_timeout: float = DEFAULT_WAIT_TIMEOUT,
    interval: float = DEFAULT_POLL_INTERVAL,
    on_pending: Callable[[PendingEnrollment], None] | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
    apkam_keys_expiry_ms: int | None = None,
    pass_phrase: str | None = None,
) -> Onboarded:
    """Request, wait for approval, write the keys file (checked for safety before the request)."""
    a = commands.atsign(atsign)
    path = keys_target(a, keys_path)
    check_keys_target(path, overwrite=overwrite)
    pending = await request_enrollment(
        a,
        otp,
        app_name=app_name,
        device_name=device_name,
        namespaces=namespaces,
        root=root,
        ca_file=ca_file,
        ssl_ctx=ssl_ctx,
        apkam_keys_expiry_ms=apkam_keys_expiry_ms,
        timeout=timeout,
    )
    if on_pending is not None:
        on_pending(pending)
    keys = await pending.wait(timeout=wait_timeout, interval=interval)
    written = save_keys(keys, path, overwrite=overwrite, pass_phrase=pass_phrase)
    log.info("%s: enrollment %s approved; keys in %s", a, pending.enrollment_id, written)
    return Onboarded(keys, written, pending.enrollment_id)


# ---------------------------------------------------------------------------------------
# the approver side


@dataclass
class Enrollment:
    enrollment_id: str
    app_name: str | None
    device_name: str | None
    namespaces: dict[str, str]
    status: str
    encrypted_apkam_symmetric_key: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "enrollmentId": self.enrollment_id,
            "appName": self.app_name,
            "deviceName": self.device_name,
            "namespaces": self.namespaces,
            "status": self.status,
        }

    @classmethod
    def from_summary(cls, eid: str, d: Mapping[str, Any]) -> Enrollment:
        ns = d.get("namespace") or d.get("namespaces") or {}
        return cls(
            eid,
            _opt(d.get("appName")),
            _opt(d.get("deviceName")),
            {str(k): str(v) for k, v in ns.items()} if isinstance(ns, dict) else {},
            str(d.get("status") or "unknown"),
            _opt(d.get("encryptedAPKAMSymmetricKey")),
        )


def _opt(v: object) -> str | None:
    return None if v is None else str(v)


class EnrollmentManager:
    """A ``__manage``-capable connection: list, approve, deny, revoke enrollments; make OTPs."""

    def __init__(self, keys: AtKeys, conn: AtConnection) -> None:
        self.keys = keys
        self.conn = conn

    @classmethod
    async def connect(
        cls,
        keys: AtKeys,
        *,
        root: Root = None,
        ca_file: str | None = None,
        ssl_ctx: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_COMMAND_TIMEOUT,
    ) -> EnrollmentManager:
        conn = await connect_authenticated(
            keys,
            root=root,
            ca_file=ca_file,
            ssl_ctx=ssl_ctx,
            timeout=timeout,
            command_timeout=timeout,
        )
        return cls(keys, conn)

    async def close(self) -> None:
        await self.conn.close()

    async def __aenter__(self) -> EnrollmentManager:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def otp(self, ttl_ms: int | None = None) -> str:
        code = (await self.conn.execute(commands.otp_get(ttl_ms))).strip()
        if not code:
            raise ProtocolError("otp:get returned nothing")
        return code

    async def list(self, status: str | None = None) -> list[Enrollment]:
        params = {"enrollmentStatusFilter": [status]} if status else None
        body = _loads(await self.conn.execute(commands.enroll("list", params)), "enroll:list")
        out = []
        for key, summary in body.items():
            if isinstance(summary, dict):
                out.append(Enrollment.from_summary(key.split(".", 1)[0], summary))
        return out

    async def fetch(self, enrollment_id: str) -> Enrollment:
        body = await self._call("fetch", enrollment_id, {})
        return Enrollment.from_summary(enrollment_id, body)

    async def approve(self, enrollment_id: str) -> Enrollment:
        """Send our encryption private key and self key, encrypted with the requester's APKAM
        symmetric key (which only our encryption private key can decrypt)."""
        got = await self.fetch(enrollment_id)
        if got.status != "pending":
            raise AtError.for_code(
                "AT0030", f"enrollment {enrollment_id} is {got.status}, not pending"
            )
        if not got.encrypted_apkam_symmetric_key:
            raise ProtocolError(f"enrollment {enrollment_id} carries no encrypted APKAM key")
        try:
            sym = rsa.decrypt(self.keys.encrypt_private, got.encrypted_apkam_symmetric_key)
            sym_b64 = sym.decode("ascii")
            aes.encrypt_b64(sym_b64, "check")
        except (ProtocolError, UnicodeDecodeError) as exc:
            raise ProtocolError(
                f"cannot decrypt the APKAM key of enrollment {enrollment_id} "
                "(was it made for a different encryption key?)"
            ) from exc
        params = {
            "encryptedDefaultEncryptionPrivateKey": aes.encrypt_b64(
                sym_b64, rsa.private_to_b64(self.keys.encrypt_private)
            ),
            "encryptedDefaultSelfEncryptionKey": aes.encrypt_b64(
                sym_b64, self.keys.self_encryption_key
            ),
        }
        body = await self._call("approve", enrollment_id, params)
        got.status = str(body.get("status") or "approved")
        return got

    async def deny(self, enrollment_id: str) -> str:
        return str((await self._call("deny", enrollment_id, {})).get("status") or "denied")

    async def revoke(self, enrollment_id: str, *, force: bool = False) -> str:
        body = await self._call("revoke", enrollment_id, {}, force=force)
        return str(body.get("status") or "revoked")

    async def unrevoke(self, enrollment_id: str) -> str:
        return str((await self._call("unrevoke", enrollment_id, {})).get("status") or "approved")

    async def delete(self, enrollment_id: str) -> str:
        return str((await self._call("delete", enrollment_id, {})).get("status") or "deleted")

    async def spp(self, passcode: str, ttl_ms: int | None = None) -> str:
        """Set the semi-permanent passcode (``otp:put``); returns the server's answer."""
        return (await self.conn.execute(commands.otp_put(passcode, ttl_ms))).strip()

    async def _call(
        self, op: str, eid: str, extra: dict[str, Any], *, force: bool = False
    ) -> dict[str, Any]:
        if not eid or any(c.isspace() or c in ':"' for c in eid):
            raise ConfigError(f"bad enrollment id {eid!r}")
        params = {"enrollmentId": eid, **extra}
        try:
            text = await self.conn.execute(commands.enroll(op, params, force=force))
        except TooManyRequestsError as exc:  # AT0028: unknown or expired
            raise EnrollmentNotFoundError(
                f"{self.keys.atsign} has no enrollment {eid} (unknown or expired)"
            ) from exc
        return _loads(text, f"enroll:{op}")


async def get_otp(
    keys: AtKeys,
    *,
    ttl_ms: int | None = None,
    root: Root = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_COMMAND_TIMEOUT,
) -> str:
    """A one-time passcode for enrolling another device (needs a ``__manage`` enrollment)."""
    async with await EnrollmentManager.connect(
        keys, root=root, ca_file=ca_file, ssl_ctx=ssl_ctx, timeout=timeout
    ) as mgr:
        return await mgr.otp(ttl_ms)


async def public_key_published(
    atsign: str,
    *,
    root: Root = None,
    ca_file: str | None = None,
    ssl_ctx: ssl.SSLContext | None = None,
) -> str | None:
    """The atSign's ``public:publickey`` as an unauthenticated client sees it (None if absent)."""
    a = commands.atsign(atsign)
    conn = await connect_atserver(a, root=root, ca_file=ca_file, ssl_ctx=ssl_ctx)
    try:
        return (await conn.execute(commands.lookup(f"publickey{a}"))).strip() or None
    except AtError:
        return None
    finally:
        await conn.close()

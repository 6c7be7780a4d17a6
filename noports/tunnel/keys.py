"""Cipher settings of a tunnel: none, AES-CTR (legacy or twin keys), or AEAD records.

``TunnelCrypto`` is ``None`` (clear text), a ``CtrKeys`` (legacy/twin CTR) or an
``AeadKeys`` (the strong mode). In multi mode these are the *session* settings: the
control channel uses them directly and each data connection gets its own keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ..crypto import records
from ..crypto.encoding import b64d, b64e, loads_object
from ..crypto.stream import CtrKeys
from ..errors import ConfigError, ProtocolError
from ..record import Frozen, set_field


class AeadKeys(Frozen):
    """Strong-mode session settings: a 32-byte secret and the session id bound into AAD.

    ``suite`` is what *we* send with (None: AES-GCM if the CPU has AES instructions, else
    ChaCha20-Poly1305, or env ``NOPORTS_AEAD_SUITE``); we accept either from the peer.
    """

    __slots__ = ("secret", "session_id", "suite")
    secret: bytes
    session_id: str
    suite: int | None

    def __init__(self, secret: bytes, session_id: str = "", suite: int | None = None) -> None:
        set_field(self, "secret", secret)
        set_field(self, "session_id", session_id)
        set_field(self, "suite", suite)
        self.__post_init__()

    def __post_init__(self) -> None:
        if len(self.secret) != records.SECRET_LEN:
            raise ConfigError(f"AEAD session secret must be {records.SECRET_LEN} bytes")

    def __repr__(self) -> str:
        return f"AeadKeys(session_id={self.session_id!r}, suite={self.suite})"

    @classmethod
    def generate(cls, session_id: str = "", suite: int | None = None) -> AeadKeys:
        return cls(os.urandom(records.SECRET_LEN), session_id, suite)

    @property
    def secret_b64(self) -> str:
        return b64e(self.secret)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AeadKeys | None:
        """``RV_AEAD_SECRET`` (b64, 32 bytes); session id from ``RV_SESSION_ID``, else the
        ``sessionId`` inside ``RV_AUTH``'s payload, else empty. None if no secret is set."""
        text = env.get("RV_AEAD_SECRET")
        if text is None:
            return None
        try:
            secret = b64d(text, what="RV_AEAD_SECRET", length=records.SECRET_LEN)
        except ProtocolError as exc:
            raise ConfigError(str(exc)) from exc
        sid = env.get("RV_SESSION_ID")
        if sid is None:
            sid = session_id_from_auth(env.get("RV_AUTH"))
        suite = env.get("NOPORTS_AEAD_SUITE")
        return cls(secret, sid, records.default_suite(suite) if suite else None)


def session_id_from_auth(auth_line: str | None) -> str:
    """The ``payload.sessionId`` of a relay auth line, or '' when there is none."""
    if not auth_line:
        return ""
    try:
        env = loads_object(auth_line.strip(), what="RV_AUTH")
    except ProtocolError:
        return ""
    payload = env.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("sessionId"), str):
        return payload["sessionId"]
    return ""


TunnelCrypto = CtrKeys | AeadKeys | None


def mode_name(crypto: TunnelCrypto) -> str:
    if crypto is None:
        return "clear"
    if isinstance(crypto, CtrKeys):
        return "twin" if crypto.twin else "legacy"
    return "aead"

"""The relay-auth fields of a session request (R1), read with their official defaults.

Spec noports-latest 2.1: ``relayAuthMode`` ("payload" when missing; an unknown name drops
the request), ``relayAuthAesKey`` (ESCR), ``only443``, ``preFetch`` (signing-key URIs the
relay may fetch ahead), ``multipleAcksOk``. Read from the raw value so this stays apart
from the rest of the request's parsing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..crypto import escr
from ..crypto.encoding import b64d
from ..errors import ProtocolError

MODES = ("payload", "escr")
MAX_PREFETCH = 4


@dataclass(frozen=True)
class RelayAuthFields:
    mode: str = "payload"
    aes_key: str | None = None
    only443: bool = False
    prefetch: tuple[str, ...] = ()
    multiple_acks_ok: bool = False


def relay_auth_fields(value: str | None, *, legacy: bool) -> RelayAuthFields:
    """Raises ProtocolError for an unknown mode or an ESCR request without a usable key."""
    if legacy or not value:
        return RelayAuthFields()
    try:
        p = json.loads(value)
    except (ValueError, RecursionError):
        return RelayAuthFields()  # the request parser has refused it already
    if not isinstance(p, dict):
        return RelayAuthFields()
    mode = p.get("relayAuthMode")
    mode = "payload" if mode is None else mode
    if not isinstance(mode, str) or mode.lower() not in MODES:
        raise ProtocolError(f"unknown relayAuthMode {str(mode)[:40]!r}")
    mode = mode.lower()
    key = p.get("relayAuthAesKey")
    key = key if isinstance(key, str) and key else None
    if mode == "escr":
        try:
            b64d(key or "", what="relayAuthAesKey", length=32)
        except ProtocolError:
            raise ProtocolError("relayAuthAesKey must be base64 of 32 bytes for escr") from None
    pre = p.get("preFetch")
    uris: list[str] = []
    if isinstance(pre, list):
        for u in pre[:MAX_PREFETCH]:
            if isinstance(u, str) and len(u) < 300 and escr.valid_key_uri(u):
                uris.append(u)
    return RelayAuthFields(mode, key, p.get("only443") is True, tuple(uris),
                           p.get("multipleAcksOk") is True)

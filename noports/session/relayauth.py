"""Relay authentication mode of a session, as the client and the daemon carry it.

Spec noports-latest 2.1-2.3, 3.1. The client chooses ``relayAuthMode`` (``escr`` by default
between our programs, ``payload`` for official peers that need it, ``--ram``), makes a fresh
``relayAuthAesKey`` for ESCR, and sends both to the relay (R1) and to the daemon (inside the
signed session request). Each side signs its ESCR answers with its PKAM key, whose public half
it publishes at ``public:_apsk.<enrollmentId|primary>.a.__e@<atSign>``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..crypto import aes, escr, rsa
from ..crypto.encoding import b64d
from ..errors import KeyNotFoundError, NoPortsError, ProtocolError

if TYPE_CHECKING:
    from ..at.client import AtClient

log = logging.getLogger("noports.session")

MODES = ("payload", "escr")
_R1_ORDER = ("relayAuthMode", "relayAuthAesKey", "only443", "multipleAcksOk", "preFetch",
             "sendJsonResponse")


def new_aes_key() -> str:
    return aes.new_key_b64()


def signing_uri(client: AtClient) -> str:
    return escr.apsk_uri(client.atsign, client.keys.enrollment_id)


def add_relay_request_fields(
    body: dict[str, Any], *, mode: str, aes_key: str | None, only443: bool,
    prefetch: list[str],
) -> dict[str, Any]:
    """R1 with the relay-auth fields, in the official order after ``clientNonce``."""
    out = dict(body)
    out["relayAuthMode"] = mode
    out["relayAuthAesKey"] = aes_key if mode == "escr" else None
    out["only443"] = only443
    out.setdefault("multipleAcksOk", True)
    out["preFetch"] = prefetch if mode == "escr" else []
    out.setdefault("sendJsonResponse", True)
    head = {k: v for k, v in out.items() if k not in _R1_ORDER}
    return head | {k: out[k] for k in _R1_ORDER if k in out}


def add_request_fields(payload: dict[str, Any], *, mode: str, aes_key: str | None
                       ) -> dict[str, Any]:
    """A session request with ``relayAuthMode``/``relayAuthAesKey`` right after
    ``authenticateToRvd`` (the official field order; the payload is signed as ordered)."""
    vals = {"relayAuthMode": mode, "relayAuthAesKey": aes_key if mode == "escr" else None}
    if "relayAuthMode" in payload:
        return {**payload, **vals}
    out: dict[str, Any] = {}
    for k, v in payload.items():
        out[k] = v
        if k == "authenticateToRvd":
            out.update(vals)
    if "relayAuthMode" not in out:
        out.update(vals)
    return out


def request_mode(raw: dict[str, Any]) -> tuple[str, str | None]:
    """(mode, aes key) a daemon reads from a verified request; missing mode = payload."""
    mode = raw.get("relayAuthMode")
    mode = "payload" if mode is None else mode
    if not isinstance(mode, str) or mode.lower() not in MODES:
        raise ProtocolError(f"unknown relayAuthMode {str(mode)[:40]!r}")
    mode = mode.lower()
    key = raw.get("relayAuthAesKey")
    if mode == "escr":
        if not isinstance(key, str):
            raise ProtocolError("relayAuthMode escr without a relayAuthAesKey")
        b64d(key, what="relayAuthAesKey", length=32)
        return mode, key
    return mode, None


def escr_auth(sid: str, aes_key: str, uri: str, key: rsa.PrivateKey, side_a: bool
              ) -> escr.EscrAuth:
    return escr.EscrAuth(sid, aes_key, uri, key, side_a)


async def publish_signing_key(client: AtClient) -> str:
    """Publish our PKAM public key at our ``_apsk`` URI unless it is there already
    (as the official ``ApkamSigning.publishPublicSigningKey``); returns the URI."""
    uri = signing_uri(client)
    name = uri[len("public:") : uri.rfind("@")]
    want = rsa.public_to_b64(client.keys.pkam_public)
    try:
        if (await client.get(name, public=True)).strip() == want:
            return uri
    except KeyNotFoundError:
        pass
    except (NoPortsError, OSError) as exc:
        log.debug("signing key look-up failed (%s); publishing", exc)
    await client.put(name, want, public=True)
    log.info("published the relay signing key at %s", uri)
    return uri

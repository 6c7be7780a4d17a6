"""Messages between the srvd control process and its data workers.

One ``socketpair`` per worker carries length-prefixed JSON objects (4-byte big-endian length,
then UTF-8 JSON). Both ends are trusted (the control process made the pair and started the
worker), but a corrupt or oversized frame still ends the link instead of being guessed at.

control -> worker: ``config`` (first, once), ``create`` {id, spec}, ``cancel`` {sid},
``stats`` {id}, ``close``, ``looked_up`` {rid, value} (answer to ``lookup``).
worker -> control: ``ready`` {pid, pump, fd_limit}, ``created`` {id, sid, port_a, port_b,
rvd_nonce}, ``error`` {id, error, kind}, ``closed`` {sid, outcome, stats...}, ``stats`` {id, ...},
``lookup`` {rid, key} (an ESCR signing key the worker needs: the control process plookups it).

Public keys travel as base64 DER (SubjectPublicKeyInfo), exactly as atServers publish them.
"""

from __future__ import annotations

import asyncio
import json
import struct
from typing import Any

from ..errors import ProtocolError
from ..relay import SessionSpec

MAX_FRAME = 1 << 20
_LEN = struct.Struct(">I")


def encode(msg: dict[str, Any]) -> bytes:
    body = json.dumps(msg, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"ipc message of {len(body)} bytes is over the {MAX_FRAME} cap")
    return _LEN.pack(len(body)) + body


async def read(reader: asyncio.StreamReader) -> dict[str, Any] | None:
    """The next message, or None at a clean EOF between frames."""
    try:
        head = await reader.readexactly(_LEN.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("ipc link ended inside a frame header") from None
        return None
    (n,) = _LEN.unpack(head)
    if n > MAX_FRAME:
        raise ProtocolError(f"ipc frame of {n} bytes is over the {MAX_FRAME} cap")
    try:
        body = await reader.readexactly(n)
    except asyncio.IncompleteReadError:
        raise ProtocolError("ipc link ended inside a frame") from None
    try:
        msg = json.loads(body)
    except ValueError as exc:
        raise ProtocolError("ipc frame is not JSON") from exc
    if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
        raise ProtocolError("ipc frame is not an object with an 'op'")
    return msg


def spec_to_wire(spec: SessionSpec) -> dict[str, Any]:
    from ..crypto import rsa

    return {
        "sid": spec.session_id,
        "a": spec.atsign_a,
        "b": spec.atsign_b,
        "cn": spec.client_nonce,
        "auth_a": spec.auth_a,
        "auth_b": spec.auth_b,
        "pk_a": rsa.public_to_b64(spec.public_key_a) if spec.public_key_a is not None else None,
        "pk_b": rsa.public_to_b64(spec.public_key_b) if spec.public_key_b is not None else None,
        "mode": spec.auth_mode,
        "aes": spec.relay_auth_aes_key,
        "only443": spec.only443,
        "pre": spec.prefetched,
    }


def spec_from_wire(d: dict[str, Any]) -> SessionSpec:
    from ..crypto import rsa

    def key(name: str) -> Any:
        v = d.get(name)
        return rsa.public_from_b64(v) if isinstance(v, str) else None

    return SessionSpec(
        session_id=str(d["sid"]),
        atsign_a=str(d["a"]),
        atsign_b=str(d["b"]),
        client_nonce=str(d["cn"]),
        auth_a=bool(d["auth_a"]),
        auth_b=bool(d["auth_b"]),
        public_key_a=key("pk_a"),
        public_key_b=key("pk_b"),
        auth_mode=str(d.get("mode") or "payload"),
        relay_auth_aes_key=d["aes"] if isinstance(d.get("aes"), str) else None,
        only443=bool(d.get("only443")),
        prefetched={str(k): str(v) for k, v in d["pre"].items()}
        if isinstance(d.get("pre"), dict) else None,
    )

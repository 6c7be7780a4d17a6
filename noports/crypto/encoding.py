"""Encodings that must match the official tools byte for byte."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from ..errors import ProtocolError


def canonical_json(obj: Any) -> str:
    """Dart ``jsonEncode`` equivalent: compact, insertion order, non-ASCII raw.

    Floats are refused: Dart and Python render them differently, so a signed payload that
    contains one would not verify across languages.
    """
    _reject_floats(obj)
    return _CANONICAL.encode(obj)


# ``json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`` without
# building an encoder per call (the same output: dumps makes this very encoder each time).
_CANONICAL = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_bytes(obj: Any) -> bytes:
    return canonical_json(obj).encode("utf-8")


def _reject_floats(obj: Any) -> None:
    if isinstance(obj, float):
        raise ValueError("floats are not allowed in signed JSON")
    if isinstance(obj, dict):
        for v in obj.values():
            _reject_floats(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _reject_floats(v)


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: str | bytes, *, what: str = "value", length: int | None = None) -> bytes:
    """Strict standard-alphabet base64 decode with a clear error."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolError(f"{what} is not valid base64") from exc
    if length is not None and len(raw) != length:
        raise ProtocolError(f"{what} must decode to {length} bytes, got {len(raw)}")
    return raw


def loads_object(text: str | bytes, *, what: str = "JSON") -> dict[str, Any]:
    """Parse a JSON object (order kept), rejecting anything else with ProtocolError."""
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"{what} is not valid JSON") from exc
    if not isinstance(obj, dict):
        raise ProtocolError(f"{what} is not a JSON object")
    return obj

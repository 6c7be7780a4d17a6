"""Live monitor registry: which connections want which notifications (no I/O).

A monitor is a sink (anything with ``push(text)``) plus its filter: the atSign it serves, a
compiled regex matched (search semantics) against the key or the sender without ``@``,
whether it wants self notifications, and an optional namespace predicate for APKAM
connections. ``publish`` writes in call order, so delivery order is the order of ``notify``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from .store import Notification
from .userregex import ClientPattern

LIVE_META = ("encKeyName", "encAlgo", "ivNonce", "skeEncKeyName", "skeEncAlgo", "sharedKeyEnc")
REPLAY_META = ("encKeyName", "encAlgo", "ivNonce", "skeEncKeyName", "skeEncAlgo")


_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class Sink(Protocol):
    def push(self, text: str) -> None: ...


@dataclass(eq=False)
class Monitor:
    sink: Sink
    atsign: str
    regex: ClientPattern | None
    self_notifications: bool
    allowed: Callable[[Notification], bool] | None = None

    def wants(self, n: Notification) -> bool:
        if n.kind == "self" and not self.self_notifications:
            return False
        if self.allowed is not None and not self.allowed(n):
            return False
        if self.regex is None:
            return True
        return self.regex.search(n.key) or self.regex.search(n.from_atsign.lstrip("@"))


def body(
    n: Notification, *, replay: bool, dart_time: Callable[[int | None], str | None]
) -> dict[str, Any]:
    """The notification JSON object with the Dart server's field names and order."""
    meta: dict[str, Any] = {k: n.meta.get(k) for k in (REPLAY_META if replay else LIVE_META)}
    if replay:
        meta["availableAt"] = dart_time(n.epoch_ms)
        meta["expiresAt"] = dart_time(n.expires_at)
    for extra in ("pubKeyCS", "ttr", "ccd"):
        if extra in n.meta and n.meta[extra] is not None:
            meta[extra] = n.meta[extra]
    return {
        "id": n.id,
        "from": n.from_atsign,
        "to": n.to_atsign,
        "key": n.key,
        "value": n.value,
        "operation": n.operation,
        "epochMillis": n.epoch_ms,
        "messageType": "MessageType.text" if n.message_type == "text" else "MessageType.key",
        "isEncrypted": n.is_encrypted,
        "metadata": meta,
    }


def render(n: Notification, *, replay: bool, dart_time: Callable[[int | None], str | None]) -> str:
    """``notification: {json}\\n`` as the Dart server writes it."""
    return "notification: " + _ENCODE(body(n, replay=replay, dart_time=dart_time)) + "\n"


class Hub:
    def __init__(self) -> None:
        self._by_atsign: dict[str, list[Monitor]] = {}
        self.delivered = 0  # notifications pushed to live monitors (read by --metrics)

    def register(self, m: Monitor) -> None:
        self._by_atsign.setdefault(m.atsign, []).append(m)

    def unregister(self, sink: Sink) -> None:
        for atsign, lst in list(self._by_atsign.items()):
            kept = [m for m in lst if m.sink is not sink]
            if kept:
                self._by_atsign[atsign] = kept
            else:
                del self._by_atsign[atsign]

    def monitors(self, atsign: str | None = None) -> list[Monitor]:
        if atsign is not None:
            return list(self._by_atsign.get(atsign, ()))
        return [m for lst in self._by_atsign.values() for m in lst]

    def publish(self, n: Notification, dart_time: Callable[[int | None], str | None]) -> int:
        """Push ``n`` to every interested live monitor of its owner; returns how many."""
        lst = self._by_atsign.get(n.owner)
        if not lst:
            return 0
        text: str | None = None
        count = 0
        for m in lst:
            if m.wants(n):
                if text is None:
                    text = render(n, replay=False, dart_time=dart_time)
                m.sink.push(text)
                count += 1
        self.delivered += count
        return count

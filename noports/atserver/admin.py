"""Administration on a data dir: add, list, remove atSigns and report status.

These open the same SQLite database (WAL), so they work while the server runs; the server
reads the atSign table on every ``from:`` and root lookup. Everything else about an atSign
(keys, enrollments, notifications) goes through the protocol.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..crypto.atkeys import AtKeys
from ..errors import ConfigError, KeyFileError
from .engine import wall_ms
from .keys import Record, normalise_atsign
from .net import DB_FILE, STATE_FILE
from .store import Store

# Bare words the shared root/atServer port reads as verbs, so they cannot be atSign names.
RESERVED = {"scan", "info", "monitor", "noop", "stats", "notify", "enroll", "otp", "exit", "null"}


def _open(data_dir: Path) -> Store:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    return Store(data_dir / DB_FILE)


def _put(store: Store, atsign: str, key: str, value: str, now: int) -> None:
    store.put(atsign, Record(key, value, {}, now, now, None, None, None, 0, atsign))
    store.next_commit(atsign)


def add(data_dir: Path, atsign: str, keys_file: Path | None = None) -> str | None:
    """Register ``atsign``. Returns the CRAM activation secret, or None when keys were installed."""
    a = normalise_atsign(atsign)
    if a[1:] in RESERVED:
        raise ConfigError(f"{a} is reserved (it reads as a verb on the shared root port)")
    keys: AtKeys | None = None
    if keys_file is not None:
        keys = AtKeys.load(keys_file, a)
        if keys.atsign.lower() != a:
            raise KeyFileError(f"{keys_file} holds keys for {keys.atsign}, not {a}")
    store = _open(data_dir)
    try:
        now = wall_ms()
        if not store.add_atsign(a, now):
            raise ConfigError(f"{a} is already registered")
        if keys is not None:
            _put(store, a, "privatekey:at_pkam_publickey", keys.pkam_public_b64, now)
            _put(store, a, f"public:publickey{a}", keys.encrypt_public_b64, now)
            return None
        secret = secrets.token_hex(64)
        _put(store, a, "privatekey:at_secret", secret, now)
        return secret
    finally:
        store.close()


def list_atsigns(data_dir: Path) -> list[str]:
    store = _open(data_dir)
    try:
        return store.atsigns()
    finally:
        store.close()


def remove(data_dir: Path, atsign: str) -> bool:
    store = _open(data_dir)
    try:
        return store.remove_atsign(normalise_atsign(atsign))
    finally:
        store.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status(data_dir: Path) -> dict[str, Any]:
    state: dict[str, Any] = {}
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        pass
    running = bool(state.get("pid")) and _alive(int(state["pid"]))
    store = _open(data_dir)
    try:
        queued, received = store.count_queued(wall_ms())
        return {
            "running": running,
            "pid": state.get("pid") if running else None,
            "root": state.get("root") if running else None,
            "ca_file": str(data_dir / "tls" / "ca.pem"),
            "data_dir": str(data_dir),
            "atsigns": len(store.atsigns()),
            "queued_notifications": queued,
            "stored_notifications": received,
        }
    finally:
        store.close()

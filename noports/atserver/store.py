"""SQLite (WAL) persistence for atSigns, keys, notifications and enrollments.

One file, ``server.db`` in the data dir. WAL lets the admin CLI (another process) add or remove
atSigns while the server runs. Writes are small autocommitted statements with
``synchronous=NORMAL``: durable across a process crash, cheap enough for thousands of
notifications per second. Times are epoch milliseconds passed in by the caller (injected clock).
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .keys import Record

SCHEMA = """
CREATE TABLE IF NOT EXISTS atsigns (
    atsign TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    commit_id INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS keys (
    atsign TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    meta TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    expires_at INTEGER,
    available_at INTEGER,
    refresh_at INTEGER,
    version INTEGER NOT NULL DEFAULT 0,
    created_by TEXT,
    PRIMARY KEY (atsign, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS notifications (
    seq INTEGER PRIMARY KEY,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,            -- sent | received | self
    id TEXT NOT NULL,
    from_atsign TEXT NOT NULL,
    to_atsign TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    operation TEXT NOT NULL,
    message_type TEXT NOT NULL,
    epoch_ms INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    status TEXT NOT NULL,          -- queued | delivered | errored
    is_encrypted INTEGER NOT NULL,
    meta TEXT NOT NULL,
    strategy TEXT NOT NULL DEFAULT 'all',
    notifier TEXT NOT NULL DEFAULT 'SYSTEM',
    priority TEXT NOT NULL DEFAULT 'low',
    UNIQUE (owner, kind, id)
);
CREATE INDEX IF NOT EXISTS notif_owner ON notifications (owner, kind, epoch_ms);
CREATE INDEX IF NOT EXISTS notif_queued ON notifications (to_atsign) WHERE status = 'queued';
CREATE TABLE IF NOT EXISTS sent_status (   -- sender's record of notifications delivered here
    owner TEXT NOT NULL,
    id TEXT NOT NULL,
    to_atsign TEXT NOT NULL,
    status TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (owner, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS enrollments (
    atsign TEXT NOT NULL,
    id TEXT NOT NULL,
    record TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (atsign, id)
) WITHOUT ROWID;
"""


_dumps = json.JSONEncoder(separators=(",", ":")).encode


@dataclass
class Notification:
    """A stored notification (either the sender's ``sent`` copy or the recipient's)."""

    owner: str
    kind: str
    id: str
    from_atsign: str
    to_atsign: str
    key: str
    value: str | None
    operation: str
    message_type: str
    epoch_ms: int
    expires_at: int
    status: str
    is_encrypted: bool
    meta: dict[str, Any]
    strategy: str = "all"
    notifier: str = "SYSTEM"
    priority: str = "low"
    seq: int = 0


_NCOLS = (
    "owner, kind, id, from_atsign, to_atsign, key, value, operation, message_type, epoch_ms, "
    "expires_at, status, is_encrypted, meta, strategy, notifier, priority, seq"
)


def _notif(row: tuple[Any, ...]) -> Notification:
    r = list(row)
    r[12] = bool(r[12])
    r[13] = json.loads(r[13])
    return Notification(*r)


def _private_file(path: Path) -> None:
    """Create the database 0600 (sqlite gives its -wal/-shm files the same mode); tighten an
    existing one. It holds every hosted atSign's keys and notifications."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        try:
            if extra.stat().st_mode & 0o077:
                os.chmod(extra, 0o600)
        except OSError:
            pass


class Store:
    """All persistent state. Not thread-safe: the server uses it from its event loop only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        _private_file(self.path)
        self.db = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=10.0, check_same_thread=False
        )
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=10000")
        self.db.executescript(SCHEMA)
        self._known: set[str] = set()  # hosted atSigns seen recently (see has_atsign)

    def start_checkpointer(self, interval: float = 2.0) -> None:
        """Move WAL checkpoints off the event loop: a thread with its own connection runs a
        PASSIVE checkpoint (never blocks writers) every ``interval`` seconds, so no request
        pays for copying pages and fsyncing the database file."""
        self.db.execute("PRAGMA wal_autocheckpoint=0")
        self._stop = threading.Event()

        def loop() -> None:
            conn = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None)
            try:
                while not self._stop.wait(interval):
                    try:
                        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                    except sqlite3.Error:
                        pass
            finally:
                conn.close()

        self._checkpointer = threading.Thread(target=loop, name="wal-checkpoint", daemon=True)
        self._checkpointer.start()

    def close(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
            self._checkpointer.join(5)
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.db.close()

    # -- batching: the server wraps each burst of requests in one transaction ------------

    def begin(self) -> None:
        if not self.db.in_transaction:
            self.db.execute("BEGIN")

    def commit(self) -> None:
        if self.db.in_transaction:
            self.db.execute("COMMIT")

    # -- atSigns -----------------------------------------------------------------------

    def has_atsign(self, atsign: str) -> bool:
        """Is ``atsign`` hosted? Positive answers are cached until ``forget_atsigns()``.

        The admin CLI adds and removes atSigns from another process; additions are seen at
        once (a miss always asks the database), removals after the next ``forget_atsigns``.
        """
        if atsign in self._known:
            return True
        if self.db.execute("SELECT 1 FROM atsigns WHERE atsign=?", (atsign,)).fetchone() is None:
            return False
        self._known.add(atsign)
        return True

    def forget_atsigns(self) -> None:
        self._known.clear()

    def add_atsign(self, atsign: str, now: int) -> bool:
        cur = self.db.execute(
            "INSERT OR IGNORE INTO atsigns (atsign, created_at) VALUES (?, ?)", (atsign, now)
        )
        return cur.rowcount == 1

    def remove_atsign(self, atsign: str) -> bool:
        with self.db:
            self.db.execute("BEGIN")
            n = self.db.execute("DELETE FROM atsigns WHERE atsign=?", (atsign,)).rowcount
            self._known.discard(atsign)
            self.db.execute("DELETE FROM sent_status WHERE owner=?", (atsign,))
            self.db.execute("DELETE FROM keys WHERE atsign=?", (atsign,))
            self.db.execute("DELETE FROM notifications WHERE owner=?", (atsign,))
            self.db.execute("DELETE FROM enrollments WHERE atsign=?", (atsign,))
        return n > 0

    def atsigns(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT atsign FROM atsigns ORDER BY atsign")]

    def next_commit(self, atsign: str) -> int:
        self.db.execute("UPDATE atsigns SET commit_id = commit_id + 1 WHERE atsign=?", (atsign,))
        return self.commit_id(atsign)

    def commit_id(self, atsign: str) -> int:
        row = self.db.execute("SELECT commit_id FROM atsigns WHERE atsign=?", (atsign,)).fetchone()
        return int(row[0]) if row else 0

    # -- keys --------------------------------------------------------------------------

    def get(self, atsign: str, key: str) -> Record | None:
        row = self.db.execute(
            "SELECT key, value, meta, created_at, updated_at, expires_at, available_at, refresh_at,"
            " version, created_by FROM keys WHERE atsign=? AND key=?",
            (atsign, key),
        ).fetchone()
        if row is None:
            return None
        return Record(row[0], row[1], json.loads(row[2]), *row[3:])

    def put(self, atsign: str, rec: Record) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO keys (atsign, key, value, meta, created_at, updated_at, expires_at,"  # noqa: E501
            " available_at, refresh_at, version, created_by) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                atsign,
                rec.key,
                rec.value,
                json.dumps(rec.meta),
                rec.created_at,
                rec.updated_at,
                rec.expires_at,
                rec.available_at,
                rec.refresh_at,
                rec.version,
                rec.created_by,
            ),
        )

    def delete(self, atsign: str, key: str) -> bool:
        return (
            self.db.execute("DELETE FROM keys WHERE atsign=? AND key=?", (atsign, key)).rowcount > 0
        )

    def key_names(self, atsign: str, now: int) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT key FROM keys WHERE atsign=? AND (expires_at IS NULL OR expires_at > ?)"
                " AND (available_at IS NULL OR available_at <= ?) ORDER BY key",
                (atsign, now, now),
            )
        ]

    def purge_keys(self, before: int) -> int:
        return self.db.execute(
            "DELETE FROM keys WHERE expires_at IS NOT NULL AND expires_at < ?", (before,)
        ).rowcount

    # -- notifications -------------------------------------------------------------------

    def add_notification(self, n: Notification) -> int:
        cur = self.db.execute(
            "INSERT OR REPLACE INTO notifications (owner, kind, id, from_atsign, to_atsign, key, value,"  # noqa: E501
            " operation, message_type, epoch_ms, expires_at, status, is_encrypted, meta, strategy,"
            " notifier, priority) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                n.owner,
                n.kind,
                n.id,
                n.from_atsign,
                n.to_atsign,
                n.key,
                n.value,
                n.operation,
                n.message_type,
                n.epoch_ms,
                n.expires_at,
                n.status,
                int(n.is_encrypted),
                _dumps(n.meta) if n.meta else "{}",
                n.strategy,
                n.notifier,
                n.priority,
            ),
        )
        n.seq = int(cur.lastrowid or 0)
        return n.seq

    def add_sent_status(
        self, owner: str, nid: str, to_atsign: str, status: str, expires_at: int
    ) -> None:
        """One small row per locally delivered notification: enough for notify:status."""
        self.db.execute(
            "INSERT OR REPLACE INTO sent_status (owner, id, to_atsign, status, expires_at)"
            " VALUES (?,?,?,?,?)",
            (owner, nid, to_atsign, status, expires_at),
        )

    def sent_status(self, owner: str | None, nid: str) -> tuple[str, int] | None:
        """(status, expires_at) of a notification ``owner`` sent, delivered or still queued."""
        if owner is None:
            row = self.db.execute(
                "SELECT status, expires_at FROM sent_status WHERE id=?", (nid,)
            ).fetchone()
        else:
            row = self.db.execute(
                "SELECT status, expires_at FROM sent_status WHERE owner=? AND id=?", (owner, nid)
            ).fetchone()
        if row is None:
            n = self.get_notification(owner, "sent", nid)
            return (n.status, n.expires_at) if n else None
        return str(row[0]), int(row[1])

    def get_notification(self, owner: str | None, kind: str, nid: str) -> Notification | None:
        if owner is None:
            row = self.db.execute(
                f"SELECT {_NCOLS} FROM notifications WHERE kind=? AND id=?", (kind, nid)
            ).fetchone()
        else:
            row = self.db.execute(
                f"SELECT {_NCOLS} FROM notifications WHERE owner=? AND kind=? AND id=?",
                (owner, kind, nid),
            ).fetchone()
        return _notif(row) if row else None

    def mark_delivered(self, n: Notification) -> None:
        """A queued notification reached its recipient: move it to the slim status table."""
        self.db.execute(
            "DELETE FROM notifications WHERE owner=? AND kind='sent' AND id=?", (n.owner, n.id)
        )
        self.add_sent_status(n.owner, n.id, n.to_atsign, "delivered", n.expires_at)

    def remove_notification(self, owner: str, kind: str, nid: str) -> bool:
        return (
            self.db.execute(
                "DELETE FROM notifications WHERE owner=? AND kind=? AND id=?", (owner, kind, nid)
            ).rowcount
            > 0
        )

    def received_since(
        self, owner: str, since: int, now: int, kinds: tuple[str, ...]
    ) -> Iterator[Notification]:
        """Unexpired received (and optionally self) notifications after ``since``, oldest first."""
        marks = ",".join("?" * len(kinds))
        cur = self.db.execute(
            f"SELECT {_NCOLS} FROM notifications WHERE owner=? AND kind IN ({marks}) AND epoch_ms > ?"  # noqa: E501
            " AND expires_at > ? ORDER BY epoch_ms, seq",
            (owner, *kinds, since, now),
        )
        for row in cur:
            yield _notif(row)

    def queued_for(self, to_atsign: str | None, now: int) -> list[Notification]:
        """Sent notifications still waiting for their recipient (``None``: for anyone)."""
        if to_atsign is None:
            q = (
                f"SELECT {_NCOLS} FROM notifications WHERE kind='sent' AND status='queued'"
                " AND expires_at > ? ORDER BY seq"
            )
            rows = self.db.execute(q, (now,))
        else:
            q = (
                f"SELECT {_NCOLS} FROM notifications WHERE kind='sent' AND status='queued'"
                " AND to_atsign=? AND expires_at > ? ORDER BY seq"
            )
            rows = self.db.execute(q, (to_atsign, now))
        return [_notif(r) for r in rows]

    def trim_latest(self, owner: str, to_atsign: str, notifier: str, keep: int) -> None:
        """Strategy ``latest``: keep only the newest ``keep`` queued notifications per notifier."""
        self.db.execute(
            "DELETE FROM notifications WHERE seq IN (SELECT seq FROM notifications WHERE owner=? AND"  # noqa: E501
            " kind='sent' AND status='queued' AND to_atsign=? AND notifier=? ORDER BY seq DESC"
            " LIMIT -1 OFFSET ?)",
            (owner, to_atsign, notifier, keep),
        )

    def count_queued(self, now: int) -> tuple[int, int]:
        """(sent notifications waiting for an unknown recipient, unexpired received ones)."""
        q = self.db.execute(
            "SELECT COUNT(*) FROM notifications WHERE kind='sent' AND status='queued'"
            " AND expires_at > ?",
            (now,),
        ).fetchone()[0]
        r = self.db.execute(
            "SELECT COUNT(*) FROM notifications WHERE kind IN ('received','self')"
            " AND expires_at > ?",
            (now,),
        ).fetchone()[0]
        return int(q), int(r)

    def purge_notifications(self, before: int) -> int:
        self.db.execute("DELETE FROM sent_status WHERE expires_at < ?", (before,))
        return self.db.execute("DELETE FROM notifications WHERE expires_at < ?", (before,)).rowcount

    # -- enrollments -------------------------------------------------------------------

    def put_enrollment(
        self,
        atsign: str,
        eid: str,
        record: dict[str, Any],
        status: str,
        now: int,
        expires_at: int | None,
    ) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO enrollments (atsign, id, record, status, created_at, expires_at)"  # noqa: E501
            " VALUES (?,?,?,?,?,?)",
            (atsign, eid, json.dumps(record), status, now, expires_at),
        )

    def get_enrollment(
        self, atsign: str, eid: str
    ) -> tuple[dict[str, Any], str, int | None] | None:
        row = self.db.execute(
            "SELECT record, status, expires_at FROM enrollments WHERE atsign=? AND id=?",
            (atsign, eid),
        ).fetchone()
        return (json.loads(row[0]), row[1], row[2]) if row else None

    def enrollments(self, atsign: str) -> list[tuple[str, dict[str, Any], str, int | None]]:
        return [
            (r[0], json.loads(r[1]), r[2], r[3])
            for r in self.db.execute(
                "SELECT id, record, status, expires_at FROM enrollments WHERE atsign=? ORDER BY created_at",  # noqa: E501
                (atsign,),
            )
        ]

    def delete_enrollment(self, atsign: str, eid: str) -> bool:
        return (
            self.db.execute(
                "DELETE FROM enrollments WHERE atsign=? AND id=?", (atsign, eid)
            ).rowcount
            > 0
        )

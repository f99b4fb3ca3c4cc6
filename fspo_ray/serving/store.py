"""Per-user profile store: preferences added from feedback, used when a request sends none.

A small interface with an embedded SQLite default (a file that outlives replica restarts, on
one node); on a multi-node cluster, `store.kind: postgres` (store_postgres.py) or `custom`.
Deletion really deletes: SQLite's secure_delete zeroes freed pages and the WAL is truncated.
"""

from __future__ import annotations

import importlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from fspo_ray.episodes import Preference
from fspo_ray.errors import FspoError
from fspo_ray.serving.pseudonyms import user_key


class ProfileStore(Protocol):
    def add_preferences(self, user_id: str, prefs: Sequence[Preference], max_keep: int) -> int:
        """Append prefs (oldest first), keep the newest `max_keep`; returns how many are stored."""

    def get_preferences(self, user_id: str, limit: int | None = None) -> list[Preference]:
        """The user's preferences, oldest first; with `limit`, the newest `limit` of them."""

    def delete_user(self, user_id: str) -> int:
        """Remove everything held for the user; returns preferences removed. Records a deletion event."""

    def deletions_since(self, seq: int, retain_s: float) -> tuple[int, list[str]]:
        """User keys deleted after event `seq`, and the newest seq; events older than retain_s are pruned."""

    # Optional: `delete_preference(user_id, index) -> bool` removes one preference (0 = oldest) and
    # records a deletion event; a custom store without it gets delete_one_preference's fallback.

    def ping(self) -> None:
        """Raise if the store cannot serve."""

    def close(self) -> None: ...


class InMemoryProfileStore:
    """Per process, lost on restart: for tests and single-replica demos."""

    def __init__(self, path: str | None = None):
        self._prefs: dict[str, list[Preference]] = {}
        self._events: list[tuple[int, str, float]] = []
        self._seq = 0
        self._lock = threading.Lock()

    def add_preferences(self, user_id: str, prefs: Sequence[Preference], max_keep: int) -> int:
        with self._lock:
            rows = (self._prefs.get(user_id, []) + list(prefs))[-max_keep:]
            self._prefs[user_id] = rows
            return len(rows)

    def get_preferences(self, user_id: str, limit: int | None = None) -> list[Preference]:
        with self._lock:
            rows = list(self._prefs.get(user_id, []))
        return rows[-limit:] if limit else rows

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            n = len(self._prefs.pop(user_id, []))
            self._seq += 1
            self._events.append((self._seq, user_key(user_id), time.time()))
            return n

    def delete_preference(self, user_id: str, index: int) -> bool:
        with self._lock:
            rows = self._prefs.get(user_id, [])
            if not 0 <= index < len(rows):
                return False
            del rows[index]
            self._seq += 1
            self._events.append((self._seq, user_key(user_id), time.time()))
            return True

    def deletions_since(self, seq: int, retain_s: float) -> tuple[int, list[str]]:
        with self._lock:
            cutoff = time.time() - retain_s
            self._events = [e for e in self._events if e[2] >= cutoff]
            return self._seq, [k for s, k, _ in self._events if s > seq]

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


class SQLiteProfileStore:
    """One SQLite file shared by every ingress replica on a node; WAL mode for concurrent readers."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS preferences ("
        " id INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL,"
        " question TEXT NOT NULL, chosen TEXT NOT NULL, rejected TEXT NOT NULL, created_at REAL NOT NULL)",
        "CREATE INDEX IF NOT EXISTS preferences_user ON preferences (user_id, id)",
        # Deletion events carry a pseudonym only, and are pruned once no cache can hold the user.
        "CREATE TABLE IF NOT EXISTS deletions (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_key TEXT NOT NULL, at REAL NOT NULL)",
    )

    def __init__(self, path: str):
        p = Path(path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(p), timeout=10.0, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA secure_delete=ON")
            self._db.execute("PRAGMA busy_timeout=10000")
            for stmt in self.SCHEMA:
                self._db.execute(stmt)
        except (OSError, sqlite3.Error) as e:
            raise FspoError(f"store.path: cannot open the profile store at {p}: {e}") from None
        self.path = p
        self._lock = threading.Lock()

    def add_preferences(self, user_id: str, prefs: Sequence[Preference], max_keep: int) -> int:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT INTO preferences (user_id, question, chosen, rejected, created_at) VALUES (?, ?, ?, ?, ?)",
                    [(user_id, p.question, p.chosen, p.rejected, now) for p in prefs],
                )
                self._db.execute(
                    "DELETE FROM preferences WHERE user_id = ? AND id NOT IN "
                    "(SELECT id FROM preferences WHERE user_id = ? ORDER BY id DESC LIMIT ?)",
                    (user_id, user_id, max_keep),
                )
                (n,) = self._db.execute("SELECT COUNT(*) FROM preferences WHERE user_id = ?", (user_id,)).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return n

    def get_preferences(self, user_id: str, limit: int | None = None) -> list[Preference]:
        with self._lock:
            rows = self._db.execute(
                "SELECT question, chosen, rejected FROM preferences WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                (user_id, -1 if limit is None else limit),
            ).fetchall()
        return [Preference(*r) for r in reversed(rows)]

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute("DELETE FROM preferences WHERE user_id = ?", (user_id,)).rowcount
                self._db.execute("INSERT INTO deletions (user_key, at) VALUES (?, ?)", (user_key(user_id), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            # Copy the zeroed pages into the main file and empty the WAL, which still holds the old ones.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return n

    def delete_preference(self, user_id: str, index: int) -> bool:
        """Remove the user's preference at `index` (0 = oldest); its cached personas go with the deletion event."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                n = self._db.execute(
                    "DELETE FROM preferences WHERE id = (SELECT id FROM preferences WHERE user_id = ? "
                    "ORDER BY id LIMIT 1 OFFSET ?)", (user_id, index)).rowcount
                if n:
                    self._db.execute("INSERT INTO deletions (user_key, at) VALUES (?, ?)", (user_key(user_id), time.time()))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # as delete_user: the text leaves the WAL too
        return bool(n)

    def deletions_since(self, seq: int, retain_s: float) -> tuple[int, list[str]]:
        with self._lock:
            rows = self._db.execute("SELECT seq, user_key FROM deletions WHERE seq > ? ORDER BY seq", (seq,)).fetchall()
            # AUTOINCREMENT's counter: monotonic even after the events themselves are pruned.
            row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'deletions'").fetchone()
            last = row[0] if row else 0
            self._db.execute("DELETE FROM deletions WHERE at < ?", (time.time() - retain_s,))
        return max(last, seq), [k for _, k in rows]

    def ping(self) -> None:
        with self._lock:
            self._db.execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()


def delete_one_preference(store: ProfileStore, user_id: str, index: int, max_keep: int) -> bool:
    """One preference removed; a store without delete_preference is rewritten (delete, then re-add the rest)."""
    if hasattr(store, "delete_preference"):
        return store.delete_preference(user_id, index)
    prefs = store.get_preferences(user_id)
    if not 0 <= index < len(prefs):
        return False
    store.delete_user(user_id)
    rest = prefs[:index] + prefs[index + 1:]
    if rest:
        store.add_preferences(user_id, rest, max_keep)
    return True


def make_store(kind: str, path: str, class_path: str | None = None) -> ProfileStore:
    if kind == "sqlite":
        return SQLiteProfileStore(path)
    elif kind == "memory":
        return InMemoryProfileStore()
    elif kind == "postgres":
        from fspo_ray.serving.store_postgres import PostgresProfileStore

        return PostgresProfileStore(path)
    elif kind == "custom":
        module, _, attr = (class_path or "").partition(":")
        try:
            cls = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise FspoError(f"store.class_path: cannot import {class_path!r}: {e}") from None
        return cls(path)
    raise ValueError(f"unknown store kind {kind!r}; expected one of ('sqlite', 'postgres', 'memory', 'custom')")

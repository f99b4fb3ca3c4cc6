"""The profile store on PostgreSQL: one database every ingress replica on every node shares.

SQLite's file lives on one node's disk: a lost node loses its profiles, and replicas on other
nodes never see them. This store keeps the same interface, limits and deletion semantics on a
server the cluster reaches over the network (`store.kind: postgres`, `store.path` a libpq
connection string without a password; libpq reads the password from PGPASSWORD or ~/.pgpass).
Unlike SQLite's secure_delete, PostgreSQL does not zero freed space: deleted text leaves every
query at once, but stays in the table's free space and the WAL until overwritten (encrypt the
server's volume; docs/operators.md).

Concurrency across replicas: a user's writes are serialised by a transaction-scoped advisory
lock on the user, so `max_keep` holds exactly; deletion events take one global advisory lock,
so their sequence numbers commit in order and a reader never steps over one still in flight.
A dropped connection fails the call that saw it (the ingress answers 503) and the next call
reconnects.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from fspo_ray.episodes import Preference
from fspo_ray.errors import FspoError
from fspo_ray.serving.pseudonyms import user_key

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS fspo_preferences ("
    " id BIGSERIAL PRIMARY KEY, user_id TEXT NOT NULL,"
    " question TEXT NOT NULL, chosen TEXT NOT NULL, rejected TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL)",
    "CREATE INDEX IF NOT EXISTS fspo_preferences_user ON fspo_preferences (user_id, id)",
    # Deletion events carry a pseudonym only, and are pruned once no cache can hold the user.
    "CREATE TABLE IF NOT EXISTS fspo_deletions (seq BIGSERIAL PRIMARY KEY, user_key TEXT NOT NULL,"
    " at DOUBLE PRECISION NOT NULL)",
)
# Advisory lock keys (any bigint; namespaced by the two-int form): schema creation, deletion events.
LOCK_NS = 0x46535044  # "FSPD"
LOCK_SCHEMA, LOCK_DELETIONS = 1, 2


class PostgresProfileStore:
    """ProfileStore on a PostgreSQL server (psycopg 3)."""

    def __init__(self, dsn: str, connect_timeout_s: float = 10.0):
        try:
            import psycopg
        except ImportError:
            raise FspoError("store.kind 'postgres' needs psycopg: pip install 'fspo-ray[postgres]'") from None
        self._psycopg = psycopg
        self._dsn = dsn
        self._timeout = max(1, int(connect_timeout_s))
        self._lock = threading.Lock()
        self._conn = None
        try:
            with self._lock:
                conn = self._connection()
                with conn.transaction():
                    conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_SCHEMA))
                    for stmt in SCHEMA:
                        conn.execute(stmt)
        except psycopg.Error as e:
            raise FspoError(f"store.path: cannot open the PostgreSQL profile store: {_one_line(e)}") from None

    def _connection(self):
        """The open connection, or a new one after a failure (called with the lock held)."""
        if self._conn is None or self._conn.closed or self._conn.broken:
            # autocommit: each statement outside `transaction()` commits on its own.
            self._conn = self._psycopg.connect(self._dsn, autocommit=True, connect_timeout=self._timeout)
        return self._conn

    def add_preferences(self, user_id: str, prefs: Sequence[Preference], max_keep: int) -> int:
        now = time.time()
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user_id,))
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO fspo_preferences (user_id, question, chosen, rejected, created_at)"
                        " VALUES (%s, %s, %s, %s, %s)",
                        [(user_id, p.question, p.chosen, p.rejected, now) for p in prefs],
                    )
                conn.execute(
                    "DELETE FROM fspo_preferences WHERE user_id = %s AND id NOT IN "
                    "(SELECT id FROM fspo_preferences WHERE user_id = %s ORDER BY id DESC LIMIT %s)",
                    (user_id, user_id, max_keep),
                )
                (n,) = conn.execute("SELECT COUNT(*) FROM fspo_preferences WHERE user_id = %s", (user_id,)).fetchone()
        return n

    def get_preferences(self, user_id: str, limit: int | None = None) -> list[Preference]:
        with self._lock:
            rows = self._connection().execute(
                "SELECT question, chosen, rejected FROM fspo_preferences WHERE user_id = %s ORDER BY id DESC LIMIT %s",
                (user_id, limit),  # LIMIT NULL: all
            ).fetchall()
        return [Preference(*r) for r in reversed(rows)]

    def _deleted(self, conn, user_id: str) -> None:
        """Record a deletion event (inside the caller's transaction), in sequence order."""
        conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NS, LOCK_DELETIONS))
        conn.execute("INSERT INTO fspo_deletions (user_key, at) VALUES (%s, %s)", (user_key(user_id), time.time()))

    def delete_user(self, user_id: str) -> int:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user_id,))
                n = conn.execute("DELETE FROM fspo_preferences WHERE user_id = %s", (user_id,)).rowcount
                self._deleted(conn, user_id)
        return n

    def delete_preference(self, user_id: str, index: int) -> bool:
        """Remove the user's preference at `index` (0 = oldest), recording a deletion event."""
        if index < 0:
            return False
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (user_id,))
                n = conn.execute(
                    "DELETE FROM fspo_preferences WHERE id = (SELECT id FROM fspo_preferences WHERE user_id = %s "
                    "ORDER BY id LIMIT 1 OFFSET %s)", (user_id, index),
                ).rowcount
                if n:
                    self._deleted(conn, user_id)
        return bool(n)

    def deletions_since(self, seq: int, retain_s: float) -> tuple[int, list[str]]:
        with self._lock:
            conn = self._connection()
            with conn.transaction():
                # Shared against the writers' exclusive lock: no event is in flight while we read, so
                # the sequence's value is the newest committed event even after events are pruned.
                conn.execute("SELECT pg_advisory_xact_lock_shared(%s, %s)", (LOCK_NS, LOCK_DELETIONS))
                rows = conn.execute(
                    "SELECT seq, user_key FROM fspo_deletions WHERE seq > %s ORDER BY seq", (seq,)
                ).fetchall()
                last, called = conn.execute("SELECT last_value, is_called FROM fspo_deletions_seq_seq").fetchone()
                conn.execute("DELETE FROM fspo_deletions WHERE at < %s", (time.time() - retain_s,))
        return max(last if called else 0, seq), [k for _, k in rows]

    def ping(self) -> None:
        with self._lock:
            self._connection().execute("SELECT 1").fetchone()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())

"""The daemon's SQLite database: WAL, foreign keys, busy timeout, migrations on open."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from banger.store.migrations import MIGRATIONS, Migration

BUSY_TIMEOUT_MS = 5000


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        # One connection shared by the event loop and worker threads; the lock serialises them.
        self._lock = threading.RLock()

    def open(self, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        conn = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        conn.row_factory = sqlite3.Row
        _set_wal(conn)
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA synchronous=NORMAL")
        self._conn = conn
        migrate(conn, migrations)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("store is not open")
        return self._conn

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE … COMMIT, rolled back on error)."""
        with self._lock:
            conn = self.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self.conn.execute(sql, args))

    def query_one(self, sql: str, args: Sequence[Any] = ()) -> sqlite3.Row | None:
        rows = self.query(sql, args)
        return rows[0] if rows else None

    def execute(self, sql: str, args: Sequence[Any] = ()) -> int:
        """Run one statement in its own transaction; returns the number of changed rows."""
        with self.tx() as conn:
            return conn.execute(sql, args).rowcount


def _set_wal(conn: sqlite3.Connection) -> None:
    """Switch to WAL. SQLite answers `database is locked` at once, without its busy handler, while
    another connection opens the same fresh file: retry for the busy timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def applied_versions(conn: sqlite3.Connection) -> list[int]:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT"
    )
    return [r[0] for r in conn.execute("SELECT version FROM schema_migrations ORDER BY version")]


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply every migration newer than the database, each in its own transaction.

    The applied versions are read inside each migration's `BEGIN IMMEDIATE` transaction (which
    holds SQLite's write lock), so two processes opening a fresh database at once never both
    apply one: the second sees the first's row and skips it.
    """
    versions = [m.version for m in migrations]
    if versions != sorted(set(versions)):
        raise RuntimeError("migrations must have unique, increasing version numbers")
    newest_known = max(versions, default=0)
    applied = []
    steps: list[Migration | None] = [*migrations] or [None]  # None: only the version check
    for m in steps:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = set(applied_versions(conn))
            if done and max(done) > newest_known:
                raise RuntimeError(
                    f"database schema version {max(done)} is newer than this banger knows "
                    f"({newest_known}); upgrade banger"
                )
            if m is not None and m.version not in done:
                for statement in _split_sql(m.sql):
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())),
                )
                applied.append(m.version)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    return applied


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit our transaction)."""
    statements, buf = [], ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                statements.append(buf.strip())
            buf = ""
    if buf.strip():
        raise RuntimeError(f"incomplete SQL statement in migration: {buf.strip()[:80]}")
    return statements

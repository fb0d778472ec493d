from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from banger.store.db import Store, migrate
from banger.store.migrations import MIGRATIONS, Migration


def test_empty_database_upgrades_to_head(tmp_path: Path) -> None:
    store = Store(tmp_path / "b.db")
    store.open()
    rows = store.query("SELECT version, name FROM schema_migrations ORDER BY version")
    assert [r["version"] for r in rows] == [m.version for m in MIGRATIONS]
    assert store.query_one("PRAGMA journal_mode")[0] == "wal"  # type: ignore[index]
    assert store.query_one("PRAGMA foreign_keys")[0] == 1  # type: ignore[index]
    assert store.query_one("PRAGMA busy_timeout")[0] == 5000  # type: ignore[index]
    store.close()
    # reopening applies nothing twice
    again = Store(tmp_path / "b.db")
    again.open()
    assert len(again.query("SELECT * FROM schema_migrations")) == len(MIGRATIONS)
    again.close()


def test_only_newer_migrations_apply_and_a_failing_one_rolls_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "m.db", isolation_level=None)
    base = [Migration(1, "one", "CREATE TABLE a (x INTEGER) STRICT;")]
    assert migrate(conn, base) == [1]
    broken = [
        *base,
        Migration(2, "two", "CREATE TABLE b (y INTEGER);\nINSERT INTO nope VALUES (1);"),
    ]
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, broken)
    # table b was rolled back with the failed migration; version 2 is not recorded
    assert conn.execute("SELECT name FROM sqlite_master WHERE name='b'").fetchone() is None
    fixed = [*base, Migration(2, "two", "CREATE TABLE b (y INTEGER);")]
    assert migrate(conn, fixed) == [2]


def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "n.db", isolation_level=None)
    migrate(conn, [Migration(1, "a", "SELECT 1;"), Migration(2, "b", "SELECT 1;")])
    with pytest.raises(RuntimeError, match="upgrade banger"):
        migrate(conn, [Migration(1, "a", "SELECT 1;")])


def test_transactions_roll_back_on_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    store.open()
    with pytest.raises(ValueError), store.tx() as conn:
        conn.execute("INSERT INTO daemon_meta (key, value) VALUES ('k', 'v')")
        raise ValueError("boom")
    assert store.query("SELECT * FROM daemon_meta") == []

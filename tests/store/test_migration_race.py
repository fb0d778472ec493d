"""Two processes opening one fresh database at once (two daemons, or a daemon and a test) both
succeed: each migration's applied versions are read inside its BEGIN IMMEDIATE transaction."""

from __future__ import annotations

import multiprocessing
import sqlite3
from multiprocessing.synchronize import Barrier
from pathlib import Path

from banger.store.db import Store
from banger.store.migrations import MIGRATIONS

ROUNDS = 8
PROCESSES = 4


def _open_at_once(db: str, barrier: Barrier, results: multiprocessing.Queue[str]) -> None:
    try:
        barrier.wait(timeout=60)
        store = Store(Path(db))
        store.open()
        store.close()
        results.put("ok")
    except Exception as e:  # reported to the parent, which asserts on it
        results.put(f"{type(e).__name__}: {e}")


def test_concurrent_migrations_of_a_fresh_database_all_succeed(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    for round_no in range(ROUNDS):
        db = tmp_path / f"race-{round_no}.db"
        barrier = ctx.Barrier(PROCESSES)
        results: multiprocessing.Queue[str] = ctx.Queue()
        procs = [
            ctx.Process(target=_open_at_once, args=(str(db), barrier, results))
            for _ in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
            assert p.exitcode == 0
        assert outcomes == ["ok"] * PROCESSES, outcomes
        conn = sqlite3.connect(db)
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in rows] == [m.version for m in MIGRATIONS]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"images", "vms", "vm_network", "vm_workspaces"} <= tables
        conn.close()

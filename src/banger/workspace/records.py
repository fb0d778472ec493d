"""The VM ↔ workspace records (store table `vm_workspaces`, migration 6)."""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel

from banger.store.db import Store
from banger.workspace.plan import PrepareOptions


class WorkspaceRecord(BaseModel):
    vm_id: str
    guest_path: str
    host_path: str
    repo_name: str
    head_commit: str | None
    base_commit: str | None
    mode: str
    options: PrepareOptions
    prepared_at: str


def save(store: Store, rec: WorkspaceRecord) -> None:
    with store.tx() as conn:
        conn.execute(
            "INSERT OR REPLACE INTO vm_workspaces (vm_id, guest_path, host_path, repo_name,"
            " head_commit, base_commit, mode, options_json, prepared_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                rec.vm_id,
                rec.guest_path,
                rec.host_path,
                rec.repo_name,
                rec.head_commit,
                rec.base_commit,
                rec.mode,
                rec.options.model_dump_json(),
                rec.prepared_at,
            ),
        )


def _row(row: Any) -> WorkspaceRecord:
    return WorkspaceRecord(
        vm_id=row["vm_id"],
        guest_path=row["guest_path"],
        host_path=row["host_path"],
        repo_name=row["repo_name"],
        head_commit=row["head_commit"],
        base_commit=row["base_commit"],
        mode=row["mode"],
        options=PrepareOptions.model_validate(json.loads(row["options_json"])),
        prepared_at=row["prepared_at"],
    )


def find(store: Store, vm_id: str, guest_path: str | None = None) -> WorkspaceRecord | None:
    """The workspace at `guest_path`, or the most recently prepared one when it is None."""
    if guest_path is None:
        row = store.query_one(
            "SELECT * FROM vm_workspaces WHERE vm_id = ? ORDER BY prepared_at DESC LIMIT 1",
            (vm_id,),
        )
    else:
        row = store.query_one(
            "SELECT * FROM vm_workspaces WHERE vm_id = ? AND guest_path = ?", (vm_id, guest_path)
        )
    return _row(row) if row is not None else None


def list_for(store: Store, vm_id: str) -> list[WorkspaceRecord]:
    rows = store.query(
        "SELECT * FROM vm_workspaces WHERE vm_id = ? ORDER BY prepared_at DESC", (vm_id,)
    )
    return [_row(r) for r in rows]


def forget_vm(store: Store, vm_id: str) -> None:
    store.execute("DELETE FROM vm_workspaces WHERE vm_id = ?", (vm_id,))


def now() -> str:
    # Sub-second precision so "most recent" is well defined for back-to-back prepares.
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}Z"

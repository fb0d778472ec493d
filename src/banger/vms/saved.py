"""Saved machines of VMs, on record: checkpoints, the suspend image, warm-create templates.

The driver writes the files (vmm: `save` -> SavedMachine); this module keeps the rows that say
which exist, and their crash rule: a row is written `pending` BEFORE any file and turned `ready`
only after the files are complete and synced, so a daemon killed half way leaves a pending row
whose directory the next start removes (`pending()`), never a checkpoint that looks whole.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from banger.errors import AlreadyExists, InvalidInput, NotFound
from banger.store.db import Store
from banger.vmm.base import SavedMachine

# `vm suspend` keeps its image under this tag; user tags cannot start with '@'.
SUSPEND_TAG = "@suspend"
# In a suspend image's dir while a start of it runs (vms/suspend.py): found by a daemon start,
# the start was cut after the guest ran again.
WAKING_MARK = "WAKING"
MAX_TAG_LEN = 63
_TAG_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")

Kind = Literal["checkpoint", "suspend"]


def validate_tag(tag: str) -> str:
    """A checkpoint tag: 1-63 of a-z 0-9 . _ -, starting with a letter or digit."""
    if not tag:
        raise InvalidInput("a snapshot tag is required")
    if len(tag) > MAX_TAG_LEN:
        raise InvalidInput(f"snapshot tag is {len(tag)} characters; max is {MAX_TAG_LEN}")
    if not _TAG_RE.match(tag) or tag in (".", ".."):
        raise InvalidInput(
            f"snapshot tag {tag[:MAX_TAG_LEN]!r} is not allowed: use lowercase a-z, 0-9, '.', "
            "'_', '-', starting with a letter or digit"
        )
    return tag


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def size_on_disk(root: Path) -> int:
    """Bytes allocated under `root` (sparse files count what they use), following no links."""
    total = 0
    stack = [root]
    while stack:
        path = stack.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        total += st.st_blocks * 512
        if stat.S_ISDIR(st.st_mode):
            stack.extend(path / name for name in os.listdir(path))
    return total


@dataclass(frozen=True)
class SnapshotRecord:
    vm_id: str
    tag: str
    kind: Kind
    state: Literal["pending", "ready"]
    dir: Path
    saved: SavedMachine | None
    size_bytes: int
    paused_ms: int | None
    created_at: str


class SnapshotRepository:
    """Rows of `vm_snapshots` (migration 8)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def begin(self, vm_id: str, tag: str, kind: Kind, dir: Path) -> SnapshotRecord:
        """Record a checkpoint about to be written (pending). AlreadyExists when the tag is used."""
        created = _now()
        try:
            self._store.execute(
                "INSERT INTO vm_snapshots (vm_id, tag, kind, state, dir, created_at)"
                " VALUES (?, ?, ?, 'pending', ?, ?)",
                (vm_id, tag, kind, str(dir), created),
            )
        except sqlite3.IntegrityError:  # the (vm_id, tag) primary key
            raise AlreadyExists(f"snapshot {tag!r} already exists") from None
        return SnapshotRecord(vm_id, tag, kind, "pending", dir, None, 0, None, created)

    def finish(self, vm_id: str, tag: str, saved: SavedMachine, size_bytes: int) -> None:
        paused_ms = round(saved.paused_seconds * 1000)
        self._store.execute(
            "UPDATE vm_snapshots SET state = 'ready', saved = ?, size_bytes = ?, paused_ms = ?"
            " WHERE vm_id = ? AND tag = ?",
            (json.dumps(saved.to_json()), size_bytes, paused_ms, vm_id, tag),
        )

    def get(self, vm_id: str, tag: str) -> SnapshotRecord:
        row = self._store.query_one(
            "SELECT * FROM vm_snapshots WHERE vm_id = ? AND tag = ?", (vm_id, tag)
        )
        if row is None or row["state"] != "ready":
            raise NotFound(f"no snapshot {tag!r}")
        return _snapshot(row)

    def list(self, vm_id: str) -> list[SnapshotRecord]:
        rows = self._store.query(
            "SELECT * FROM vm_snapshots WHERE vm_id = ? AND state = 'ready'"
            " ORDER BY created_at, tag",
            (vm_id,),
        )
        return [_snapshot(r) for r in rows]

    def delete(self, vm_id: str, tag: str) -> None:
        self._store.execute("DELETE FROM vm_snapshots WHERE vm_id = ? AND tag = ?", (vm_id, tag))

    def pending(self) -> builtins.list[SnapshotRecord]:
        """Checkpoints a crash interrupted: their dirs are to be removed, then their rows."""
        return [
            _snapshot(r)
            for r in self._store.query("SELECT * FROM vm_snapshots WHERE state = 'pending'")
        ]


def _snapshot(r: sqlite3.Row) -> SnapshotRecord:
    saved = r["saved"]
    return SnapshotRecord(
        vm_id=r["vm_id"],
        tag=r["tag"],
        kind=r["kind"],
        state=r["state"],
        dir=Path(r["dir"]),
        saved=SavedMachine.from_json(json.loads(saved)) if saved else None,
        size_bytes=int(r["size_bytes"]),
        paused_ms=r["paused_ms"],
        created_at=r["created_at"],
    )


# --- warm-create templates --------------------------------------------------------------------


@dataclass(frozen=True)
class Combination:
    """What makes two creates boot the same machine (and so share a template)."""

    image_id: str
    # Changes whenever the image's files change (e.g. its rootfs digest or mtime+size).
    image_version: str
    kernel: str
    # Changes whenever the kernel's files change.
    kernel_version: str
    init_mode: str
    vcpus: int
    memory_mib: int
    disk_size_bytes: int
    driver: str

    def key(self) -> str:
        text = json.dumps(self.__dict__, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def describe(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


@dataclass(frozen=True)
class TemplateRecord:
    key: str
    image_id: str
    kernel: str
    driver: str
    combination: str
    state: Literal["pending", "ready"]
    dir: Path
    saved: SavedMachine | None
    size_bytes: int
    created_at: str
    uses: int


class TemplateRepository:
    """Rows of `vm_templates` (migration 8)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def begin(self, combo: Combination, dir: Path) -> TemplateRecord | None:
        """Claim the template of `combo` (pending); None when one exists or is being made."""
        created = _now()
        n = self._store.execute(
            "INSERT OR IGNORE INTO vm_templates"
            " (key, image_id, kernel, driver, combination, state, dir, created_at)"
            " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
            (combo.key(), combo.image_id, combo.kernel, combo.driver, combo.describe(),
             str(dir), created),
        )  # fmt: skip
        if n == 0:
            return None
        return TemplateRecord(
            combo.key(), combo.image_id, combo.kernel, combo.driver, combo.describe(),
            "pending", dir, None, 0, created, 0,
        )  # fmt: skip

    def finish(self, key: str, saved: SavedMachine, size_bytes: int) -> None:
        self._store.execute(
            "UPDATE vm_templates SET state = 'ready', saved = ?, size_bytes = ? WHERE key = ?",
            (json.dumps(saved.to_json()), size_bytes, key),
        )

    def ready(self, combo: Combination) -> TemplateRecord | None:
        row = self._store.query_one(
            "SELECT * FROM vm_templates WHERE key = ? AND state = 'ready'", (combo.key(),)
        )
        return _template(row) if row is not None else None

    def used(self, key: str) -> None:
        self._store.execute("UPDATE vm_templates SET uses = uses + 1 WHERE key = ?", (key,))

    def of_image(self, image_id: str) -> list[TemplateRecord]:
        rows = self._store.query("SELECT * FROM vm_templates WHERE image_id = ?", (image_id,))
        return [_template(r) for r in rows]

    def all(self) -> Iterator[TemplateRecord]:
        for row in self._store.query("SELECT * FROM vm_templates ORDER BY created_at"):
            yield _template(row)

    def delete(self, key: str) -> None:
        self._store.execute("DELETE FROM vm_templates WHERE key = ?", (key,))


def _template(r: sqlite3.Row) -> TemplateRecord:
    saved = r["saved"]
    return TemplateRecord(
        key=r["key"],
        image_id=r["image_id"],
        kernel=r["kernel"],
        driver=r["driver"],
        combination=r["combination"],
        state=r["state"],
        dir=Path(r["dir"]),
        saved=SavedMachine.from_json(json.loads(saved)) if saved else None,
        size_bytes=int(r["size_bytes"]),
        created_at=r["created_at"],
        uses=int(r["uses"]),
    )

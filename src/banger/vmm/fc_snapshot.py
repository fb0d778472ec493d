"""Firecracker snapshot files on the host: the saved-machine record and diff-layer merging.

A saved machine is a directory the driver lays out (`vmstate`, `memory`, and for a checkpoint
`root.img` / `work.img`) with `saved.json` describing it, written last: a directory without it
is incomplete (`read_record` refuses it). Firecracker writes a Diff snapshot's
memory as a sparse file holding only the pages dirtied since the process's previous snapshot; it
is not loadable alone (docs/snapshotting/snapshot-support.md, "Creating diff snapshots"), so the
driver folds it into a copy of the base's memory right away, as `snapshot-editor edit-memory
rebase` does (src/snapshot-editor/src/edit_memory.rs: copy every data extent of the layer over
the base at the same offset). Every saved machine is therefore a complete, loadable one.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from banger.vmm.base import DriverError, SavedMachine

STATE_FILE = "vmstate"
MEMORY_FILE = "memory"
RECORD_FILE = "saved.json"


def merge_memory_layer(base: Path, layer: Path) -> int:
    """Copy the data extents of the sparse `layer` over `base` in place; bytes copied."""
    copied = 0
    with layer.open("rb") as src, base.open("r+b") as dst:
        size = os.fstat(src.fileno()).st_size
        if os.fstat(dst.fileno()).st_size != size:
            raise DriverError(
                f"diff memory {layer} ({size} bytes) does not match its base {base}: the guest's "
                "memory size changed"
            )
        pos = 0
        while pos < size:
            try:
                start = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError:
                break  # ENXIO: nothing but a hole after pos
            end = os.lseek(src.fileno(), start, os.SEEK_HOLE)
            off = start
            while off < end:
                n = os.copy_file_range(src.fileno(), dst.fileno(), end - off, off, off)
                if n == 0:
                    raise DriverError(f"short copy merging {layer} into {base} at {off}")
                off += n
            copied += end - start
            pos = end
        os.fsync(dst.fileno())
    return copied


def sync_tree(directory: Path) -> None:
    """fsync every file of a saved machine and the directory itself."""
    for path in directory.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_record(staged: Path, saved: SavedMachine) -> None:
    """`saved.json` (written last: it marks the directory complete), disks named relatively."""
    data: dict[str, Any] = asdict(saved)
    data["dir"] = str(saved.dir)
    data["disks"] = {role: path.name for role, path in saved.disks.items()}
    tmp = staged / f".{RECORD_FILE}.part"
    with tmp.open("w") as f:
        f.write(json.dumps(data, indent=2, sort_keys=True))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, staged / RECORD_FILE)


def read_record(directory: Path) -> SavedMachine:
    """The SavedMachine a save left in `directory` (after a daemon restart, say)."""
    try:
        data = json.loads((directory / RECORD_FILE).read_text())
    except (OSError, ValueError) as e:
        raise DriverError(f"{directory} holds no readable saved machine: {e}") from None
    return SavedMachine(
        driver=str(data["driver"]),
        dir=directory,
        disks={role: directory / name for role, name in data.get("disks", {}).items()},
        memory_mib=int(data.get("memory_mib", 0)),
        paused_seconds=float(data.get("paused_seconds", 0.0)),
        details=dict(data.get("details", {})),
    )


def allocated_bytes(directory: Path) -> int:
    """Blocks a saved machine's files occupy (holes excluded; extents a reflink shares with the
    VM's disks are counted too, as `du` counts them)."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())

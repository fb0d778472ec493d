"""Which qcow2 layers are in use, so a saved machine's frozen layers are only deleted when no
other layer is backed by them (vmm/qemu_snapshot.py `delete_saved`, `rebase_dependents`).

Layers live under three trees of the state dir: each VM's own (`vms/<id>/`: active disks and
its checkpoints), fork bases (`bases/<id>/`) and warm-create templates (`templates/<key>/`).
A VM made by a fork or a warm create has active layers backed by a base's or template's frozen
ones, and the VM it was forked from has too; so every tree is searched.
"""

from __future__ import annotations

import os
from pathlib import Path

from banger.paths import Paths


def all_layers(paths: Paths) -> list[Path]:
    """Every qcow2 file under the three trees (symlinks are not followed: banger makes none)."""
    out: list[Path] = []
    for root in (paths.vms_dir, paths.bases_dir, paths.templates_dir):
        for top, _dirs, files in os.walk(root, followlinks=False):
            out.extend(Path(top) / name for name in files if name.endswith(".qcow2"))
    return sorted(out)


def outside(layers: list[Path], directory: Path) -> list[Path]:
    """The layers not inside `directory` (those that may keep a deleted machine's layers)."""
    base = directory.resolve()
    return [p for p in layers if not p.resolve().is_relative_to(base)]

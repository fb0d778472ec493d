"""Which qcow2 layers are in use, so a saved machine's frozen layers are only deleted when no
other layer is backed by them (vmm/qemu_snapshot.py `delete_saved`, `rebase_dependents`).

Layers live under three trees of the state dir: each VM's own (`vms/<id>/`: active disks and
its checkpoints), fork bases (`bases/<id>/`) and warm-create templates (`templates/<key>/`).
A VM made by a fork or a warm create has active layers backed by a base's or template's frozen
ones, and the VM it was forked from has too; so every tree is searched.
"""

from __future__ import annotations

import os
import shutil
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


async def remove_saved_dir(directory: Path, layers_in_use: list[Path]) -> bool:
    """Remove a saved machine's directory that has no complete record (a checkpoint or suspend
    cut short), except its qcow2 layers that a layer of `layers_in_use` reads through (a
    checkpoint that failed after the disk swap: the VM's active layers are backed by them);
    those stay, with the layers-only mark. True when the directory is gone."""
    from banger.vmm.qemu_snapshot import LAYERS_ONLY_MARK, backing_of

    if not os.path.lexists(directory):
        return True
    if directory.is_symlink() or not directory.is_dir():
        directory.unlink()
        return True
    own = {p.resolve() for p in directory.glob("*.qcow2")}
    keep: set[Path] = set()
    if own:
        for layer in layers_in_use:
            if layer.resolve() in own or not layer.exists():
                continue
            below = await backing_of(layer)
            if below is not None and below.resolve() in own:
                keep.add(below.resolve())
    if not keep:
        shutil.rmtree(directory)
        return True
    for entry in directory.iterdir():
        if entry.resolve() in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    (directory / LAYERS_ONLY_MARK).write_text("frozen disk layers other layers are backed by\n")
    return False

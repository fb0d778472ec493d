"""Which qcow2 layers are in use, so a saved machine's frozen layers are only deleted when no
other layer is backed by them (vmm/qemu_snapshot.py `delete_saved`, `rebase_dependents`).

Layers live under three trees of the state dir: each VM's own (`vms/<id>/`: active disks and
its checkpoints), fork bases (`bases/<id>/`) and warm-create templates (`templates/<key>/`).
A VM made by a fork or a warm create has active layers backed by a base's or template's frozen
ones, and the VM it was forked from has too; so every tree is searched. Those frozen layers are
in turn backed by the first VM's own files (its `work.ext4`, older layers): deleting that VM
keeps exactly those files as "remains" until no other layer reads through them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
from pathlib import Path

from banger import fsutil
from banger.paths import Paths

log = logging.getLogger("banger.vms")


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


# --- remains: a deleted VM's (or base's) files that other VMs' disks are backed by --------------

REMAINS_MARK = "REMAINS"


_QCOW2_MAGIC = b"QFI\xfb"
_MAX_CHAIN = 256


def backing_file(layer: Path) -> Path | None:
    """The backing file named in a qcow2 header (None for raw files and unreadable ones). Read
    directly: no subprocess per layer, and the header is banger's (guests write data clusters)."""
    try:
        with open(layer, "rb") as f:
            head = f.read(20)
            if len(head) < 20 or head[:4] != _QCOW2_MAGIC:
                return None
            offset = int.from_bytes(head[8:16], "big")
            size = int.from_bytes(head[16:20], "big")
            if offset == 0 or not 0 < size <= 4096:
                return None
            f.seek(offset)
            name = f.read(size).decode(errors="replace")
    except OSError:
        return None
    path = Path(name)
    return path if path.is_absolute() else layer.parent / path


def backing_chain(layer: Path) -> list[Path]:
    """The files `layer` reads through (its backing chain, nearest first; not itself)."""
    chain: list[Path] = []
    node = backing_file(layer)
    while node is not None and len(chain) < _MAX_CHAIN and node not in chain:
        chain.append(node)
        node = backing_file(node)
    return chain


def backers_in(directory: Path, paths: Paths) -> set[Path]:
    """Files inside `directory` that some qcow2 layer outside it reads through."""
    base = directory.resolve()
    keep: set[Path] = set()
    for layer in outside(all_layers(paths), directory):
        for node in backing_chain(layer):
            if node.resolve().is_relative_to(base):
                keep.add(node.resolve())
    return keep


def layers_reading(target: Path, paths: Paths) -> list[Path]:
    """Every qcow2 layer banger keeps whose backing chain goes through `target`."""
    wanted = target.resolve()
    return [
        layer
        for layer in all_layers(paths)
        if any(node.resolve() == wanted for node in backing_chain(layer))
    ]


async def remove_keeping_backers(directory: Path, paths: Paths) -> bool:
    """Remove `directory`, except the files other VMs' disks are backed by (a fork's child, a
    warm-created VM): those stay, with a REMAINS note, until `sweep` finds them unused. True
    when the directory is gone."""
    if not directory.is_dir() or directory.is_symlink():
        return fsutil.remove_entry(directory)
    keep = await asyncio.to_thread(backers_in, directory, paths)
    if not keep:
        return await asyncio.to_thread(fsutil.remove_entry, directory)

    def prune() -> None:
        for top, dirs, files in os.walk(directory, topdown=False, followlinks=False):
            for name in files:
                path = Path(top) / name
                if path.resolve() not in keep and name != REMAINS_MARK:
                    path.unlink(missing_ok=True)
            for name in dirs:
                with contextlib.suppress(OSError):  # not empty: it holds a kept file
                    (Path(top) / name).rmdir()
        note = "disk layers other VMs are backed by; banger removes them when none is left\n"
        (directory / REMAINS_MARK).write_text(note)

    await asyncio.to_thread(prune)
    log.info("kept disk layers others depend on", extra={"path": str(directory), "n": len(keep)})
    return False


def is_remains(directory: Path) -> bool:
    return (directory / REMAINS_MARK).is_file() and not directory.is_symlink()


async def sweep(paths: Paths) -> None:
    """Remove remains nothing reads through any more (deleted VMs' dirs, fork bases: both carry
    the REMAINS note; a directory without it is someone's work in progress, never touched)."""
    removed = True
    while removed:  # removing a base can free the remains below it: until nothing changes
        removed = False
        for parent in (paths.vms_dir, paths.bases_dir, paths.templates_dir):
            if parent.is_dir() and not parent.is_symlink():
                for d in sorted(parent.iterdir()):
                    if is_remains(d) and await remove_keeping_backers(d, paths):
                        removed = True


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

"""Remains (vms/layers.py): deleting a VM keeps exactly the files other VMs' disks read through,
and the sweep removes them once nothing does. Real qcow2 chains made by qemu-img."""

from __future__ import annotations

import subprocess
from pathlib import Path

from banger.paths import Paths
from banger.vms import layers


def _paths(tmp_path: Path) -> Paths:
    p = Paths(
        config_dir=tmp_path / "c",
        state_dir=tmp_path / "s",
        cache_dir=tmp_path / "k",
        runtime_dir=tmp_path / "r",
    )
    p.ensure()
    return p


def _qcow2(path: Path, backing: Path, fmt: str) -> None:
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", fmt, "-b", str(backing), str(path)],
        check=True,
    )


async def test_a_deleted_vm_keeps_what_a_fork_reads_through_until_the_fork_goes(
    tmp_path: Path,
) -> None:
    paths = _paths(tmp_path)
    parent = paths.vms_dir / "parent"
    parent.mkdir()
    raw = parent / "work.ext4"
    with open(raw, "wb") as f:
        f.truncate(4 << 20)
    (parent / "console.log").write_text("boot\n")
    (parent / "snapshots").mkdir()
    # The parent's active layer is over its raw disk; a fork froze it into a base.
    base = paths.bases_dir / "b1"
    base.mkdir()
    _qcow2(base / "work.qcow2", raw, "raw")
    _qcow2(parent / "work.qcow2", base / "work.qcow2", "qcow2")
    (base / layers.REMAINS_MARK).write_text("base\n")
    child = paths.vms_dir / "child"
    child.mkdir()
    _qcow2(child / "work.qcow2", base / "work.qcow2", "qcow2")

    assert await layers.remove_keeping_backers(parent, paths) is False
    left = sorted(p.name for p in parent.iterdir())
    assert left == [layers.REMAINS_MARK, "work.ext4"]  # the rest went, raw stays for the fork
    await layers.sweep(paths)
    assert (base / "work.qcow2").exists() and raw.exists()  # the child still reads both

    assert await layers.remove_keeping_backers(child, paths) is True
    await layers.sweep(paths)
    assert not base.exists() and not parent.exists()


async def test_the_sweep_leaves_directories_without_the_remains_note(tmp_path: Path) -> None:
    paths = _paths(tmp_path)
    in_progress = paths.vms_dir / "creating"
    in_progress.mkdir()
    (in_progress / "work.ext4").write_bytes(b"")
    await layers.sweep(paths)
    assert (in_progress / "work.ext4").exists()

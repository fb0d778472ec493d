"""Per-VM disks besides the root (vmm/plan.py makes that): a sparse ext4 work disk mounted at
/root in the guest (grown offline by `vm set --disk-size`).

A VM booted by QEMU (qcow2 root) writes /root into `work.qcow2`, an overlay over `work.ext4`,
so the work disk joins the copy-on-write chain that checkpoints and forks freeze
(vmm/qemu_snapshot.py); `work.ext4` is then only a base, never written while the overlay exists.
Firecracker VMs (raw root) write `work.ext4` directly."""

from __future__ import annotations

import os
from pathlib import Path

from banger.guest.payload import WORK_LABEL
from banger.proc import run
from banger.vmm.base import DiskSpec
from banger.vmm.plan import create_root_overlay

WORK_RAW = "work.ext4"
WORK_OVERLAY = "work.qcow2"

MIN_WORK_DISK = 64 << 20


async def create_work_disk(out: Path, size_bytes: int) -> None:
    """A sparse ext4 (lazy inode tables: fast to make, allocates as the guest writes)."""
    if size_bytes < MIN_WORK_DISK:
        raise ValueError(f"work disk must be at least {MIN_WORK_DISK >> 20} MiB")
    with open(out, "wb") as f:
        f.truncate(size_bytes)
    await run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            WORK_LABEL,
            "-m",
            "0",
            "-E",
            "lazy_itable_init=1,lazy_journal_init=1,root_owner=0:0",
            str(out),
        ],  # fmt: skip
        what="mkfs.ext4 (work disk)",
        timeout=120,
    )


def work_disk(vdir: Path) -> DiskSpec:
    """The work disk a boot attaches: the qcow2 overlay when the VM has one, else the raw file.
    A fork's child has no raw file of its own: its work disk is always the qcow2 layer over the
    fork base's frozen one (the restore creates it)."""
    overlay = vdir / WORK_OVERLAY
    if overlay.exists() or not (vdir / WORK_RAW).exists():
        return DiskSpec(overlay, "qcow2")
    return DiskSpec(vdir / WORK_RAW, "raw")


async def ensure_work_overlay(vdir: Path) -> None:
    """Give a QEMU VM its work overlay (new VMs at their first boot, older VMs at their next)."""
    if not (vdir / WORK_OVERLAY).exists():
        tmp = vdir / f".{WORK_OVERLAY}.tmp"
        tmp.unlink(missing_ok=True)
        await create_root_overlay(vdir / WORK_RAW, tmp)
        os.replace(tmp, vdir / WORK_OVERLAY)


async def grow_work_disk(vdir: Path, size_bytes: int) -> None:
    """Grow the work disk and its filesystem (offline); shrinking is refused by the caller.

    With an overlay, its writes are first committed into `work.ext4` (the caller refuses this
    while checkpoints are backed by the overlay's chain), the raw file grows, and a new empty
    overlay of the new size takes the old one's place."""
    path = vdir / WORK_RAW
    overlay = vdir / WORK_OVERLAY
    if not path.exists() and overlay.exists():
        await flatten_work_disk(vdir)
    current = path.stat().st_size
    if size_bytes <= current:
        return
    had_overlay = overlay.exists()
    if had_overlay:
        await run(
            # -b: the whole chain down to work.ext4 (frozen layers of deleted checkpoints too).
            ["qemu-img", "commit", "-q", "-f", "qcow2", "-b", str(path.resolve()), str(overlay)],
            what="qemu-img commit (work overlay into work.ext4)",
            timeout=600,
        )
        overlay.unlink()
    with open(path, "r+b") as f:
        f.truncate(size_bytes)
    await run(["e2fsck", "-f", "-y", str(path)], what="e2fsck (work disk)", check=False)
    await run(["resize2fs", str(path)], what="resize2fs (work disk)", timeout=300)
    if had_overlay:
        await ensure_work_overlay(vdir)


async def flatten_work_disk(vdir: Path) -> None:
    """A fork's child (no `work.ext4` of its own: its overlay reads through the fork base) gets
    the whole chain copied into its own raw `work.ext4`, then a new empty overlay over it: the
    child no longer depends on the base for /root (offline only)."""
    tmp = vdir / f".{WORK_RAW}.tmp"
    tmp.unlink(missing_ok=True)
    layer = str(vdir / WORK_OVERLAY)
    await run(
        ["qemu-img", "convert", "-q", "-f", "qcow2", "-O", "raw", layer, str(tmp)],
        what="qemu-img convert (a fork child's work disk into its own work.ext4)",
        timeout=600,
    )
    os.replace(tmp, vdir / WORK_RAW)
    (vdir / WORK_OVERLAY).unlink()
    await ensure_work_overlay(vdir)


def allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0

"""Per-VM disks besides the root (vmm/plan.py makes that): a sparse
ext4 work disk mounted at /root in the guest (grown offline by `vm set --disk-size`)."""

from __future__ import annotations

import os
from pathlib import Path

from banger.guest.payload import WORK_LABEL
from banger.proc import run

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


async def grow_work_disk(path: Path, size_bytes: int) -> None:
    """Grow the file and its filesystem (offline); shrinking is refused by the caller."""
    current = path.stat().st_size
    if size_bytes <= current:
        return
    with open(path, "r+b") as f:
        f.truncate(size_bytes)
    await run(["e2fsck", "-f", "-y", str(path)], what="e2fsck (work disk)", check=False)
    await run(["resize2fs", str(path)], what="resize2fs (work disk)", timeout=300)


def allocated_bytes(path: Path) -> int:
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return 0

"""Raw ext4 images from a directory tree with `mkfs.ext4 -d` (sparse file, sized from content)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from banger.proc import run_sync
from banger.units import format_bytes

MiB = 1 << 20
# Room for a workspace and package installs on small images; sparse, so it costs no disk.
SIZE_FLOOR = 1024 * MiB
GROWTH = 1.5
MKFS_TIMEOUT = 900


class SizeTooSmall(ValueError):
    pass


@dataclass(frozen=True)
class Usage:
    bytes: int
    inodes: int


def tree_usage(tree: Path) -> Usage:
    """Allocated bytes (hardlinks once) and inode count of `tree`."""
    seen: set[tuple[int, int]] = set()
    total = 0
    inodes = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            inodes += 1
            # Directories and small files still take a block in the image.
            total += max(st.st_blocks * 512, 4096)
    return Usage(total, inodes + 1)


def choose_size(usage: Usage, requested: int | None) -> int:
    needed = int(usage.bytes * 1.1) + 16 * MiB
    if requested is not None:
        if requested < needed:
            raise SizeTooSmall(
                f"--size {format_bytes(requested)} is too small for {format_bytes(usage.bytes)} "
                f"of content; use at least {format_bytes(needed)} or leave --size out"
            )
        size = requested
    else:
        size = max(SIZE_FLOOR, int(usage.bytes * GROWTH))
    return (size + 4 * MiB - 1) // (4 * MiB) * (4 * MiB)


def make_ext4(tree: Path, out: Path, size_bytes: int, usage: Usage, label: str = "rootfs") -> None:
    """Create `out` as a sparse ext4 of `size_bytes` holding `tree` (owners/modes/xattrs kept)."""
    with out.open("wb") as f:
        f.truncate(size_bytes)
    # Default inode ratio is one per 16 KiB; images with many small files need more.
    inodes = max(usage.inodes * 2 + 1024, size_bytes // 16384)
    run_sync(
        [
            "mkfs.ext4",
            "-F",
            "-q",
            "-L",
            label,
            "-N",
            str(inodes),
            "-E",
            "root_owner=0:0",
            "-d",
            str(tree),
            str(out),
        ],
        timeout=MKFS_TIMEOUT,
        what="mkfs.ext4",
    )

"""Per-VM raw disk files for Firecracker (it has no qcow2): a reflink clone, else a sparse copy.

A reflink (FICLONE) shares every block with the base image until the VM writes it: instant and
free, on XFS/btrfs/bcachefs. Elsewhere (ext4, as here) a sparse copy skips holes and zero runs,
so a 2 GiB image with 200 MiB used copies 200 MiB. The method used is returned so the VM record
(and `vm show`) can say which one the VM got.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
from pathlib import Path
from typing import Literal

from banger.proc import run

CopyMethod = Literal["reflink", "sparse"]
FICLONE = 0x40049409  # _IOW(0x94, 9, int) from linux/fs.h

# errnos meaning "this filesystem (pair) cannot clone": fall back to copying.
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EPERM}


def try_reflink(src: Path, dst: Path) -> bool:
    """Clone `src` into a new `dst`; False (and no `dst`) when the filesystem cannot."""
    with src.open("rb") as fs:
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.ioctl(fd, FICLONE, fs.fileno())
        except OSError as e:
            os.close(fd)
            dst.unlink()
            if e.errno in _NO_CLONE:
                return False
            raise
        os.close(fd)
    return True


async def clone_raw(
    src: Path, dst: Path, *, size_bytes: int | None = None, allow_reflink: bool = True
) -> CopyMethod:
    """Make `dst` a private raw copy of `src` (staged next to it, renamed into place).

    `size_bytes`, when larger than the source, extends the file (sparse); growing the filesystem
    inside is the caller's business.
    """
    if not src.is_file():
        raise FileNotFoundError(f"base disk {src} does not exist")
    if dst.exists():
        raise FileExistsError(f"{dst} already exists; remove it first")
    staged = dst.with_name(f".{dst.name}.part")
    with contextlib.suppress(FileNotFoundError):
        staged.unlink()
    method: CopyMethod = "sparse"
    try:
        if allow_reflink and await asyncio.to_thread(try_reflink, src, staged):
            method = "reflink"
        else:
            await run(
                ["cp", "--sparse=always", "--reflink=never", "--", str(src), str(staged)],
                what=f"sparse copy of {src}",
            )
        if size_bytes is not None and size_bytes > staged.stat().st_size:
            os.truncate(staged, size_bytes)
        os.chmod(staged, 0o600)
        os.rename(staged, dst)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
        raise
    return method


def allocated_bytes(path: Path) -> int:
    """Bytes the file really occupies on disk (a sparse or cloned file reports less)."""
    return os.stat(path).st_blocks * 512

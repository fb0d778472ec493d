"""Per-VM raw disks: reflink where the filesystem clones, else a sparse copy; the method is told."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.vmm.rawdisk import allocated_bytes, clone_raw, try_reflink

MiB = 1 << 20


def sparse_image(path: Path, size: int = 64 * MiB) -> bytes:
    """A mostly-empty image: a little data at the start and near the end, zeros between."""
    head = os.urandom(MiB)
    with path.open("wb") as f:
        f.write(head)
        f.write(b"\0" * (4 * MiB))  # an allocated run of zeros: sparse copy drops it
        f.truncate(size)
        f.seek(size - MiB)
        f.write(head)
    return head


def fs_type(path: Path) -> str:
    return subprocess.run(
        ["stat", "-f", "-c", "%T", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


async def test_sparse_copy_where_reflink_is_unsupported(tmp_path: Path) -> None:
    src = tmp_path / "base.ext4"
    sparse_image(src)
    dst = tmp_path / "vm.img"
    if try_reflink(src, tmp_path / "probe"):
        pytest.skip(f"{fs_type(tmp_path)} clones; the sparse path is tested where it cannot")
    assert not (tmp_path / "probe").exists()
    method = await clone_raw(src, dst)
    assert method == "sparse"
    assert dst.read_bytes() == src.read_bytes()
    assert allocated_bytes(dst) < 4 * MiB  # only the 2 MiB of data, not the zeros
    assert oct(dst.stat().st_mode & 0o777) == "0o600"
    assert not list(tmp_path.glob(".*.part"))
    # The copy is private: writing it leaves the base alone.
    with dst.open("r+b") as f:
        f.write(b"changed")
    assert src.read_bytes()[:7] != b"changed"


async def test_grow_and_refuse_to_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "base.ext4"
    sparse_image(src, 8 * MiB)
    dst = tmp_path / "vm.img"
    await clone_raw(src, dst, size_bytes=32 * MiB)
    assert dst.stat().st_size == 32 * MiB
    assert dst.read_bytes()[: 8 * MiB] == src.read_bytes()
    with pytest.raises(FileExistsError):
        await clone_raw(src, dst)
    with pytest.raises(FileNotFoundError):
        await clone_raw(tmp_path / "absent", tmp_path / "other.img")
    assert not (tmp_path / "other.img").exists()


@pytest.fixture
def xfs_mount() -> Iterator[Path]:
    """A real reflink-capable filesystem: a loop-mounted XFS (needs root and mkfs.xfs)."""
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        pytest.skip("needs root and mkfs.xfs (xfsprogs) for a loop-mounted XFS")
    d = Path(tempfile.mkdtemp(prefix="bgxfs-", dir="/tmp"))
    img, mnt = d / "fs.img", d / "mnt"
    mnt.mkdir()
    with img.open("wb") as f:
        f.truncate(512 * MiB)
    subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(d)
        pytest.skip(f"cannot loop-mount XFS here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        shutil.rmtree(d, ignore_errors=True)


async def test_reflink_on_a_cloning_filesystem(xfs_mount: Path) -> None:
    src = xfs_mount / "base.ext4"
    sparse_image(src)
    before = shutil.disk_usage(xfs_mount).used
    dst = xfs_mount / "vm.img"
    assert await clone_raw(src, dst) == "reflink"
    assert dst.read_bytes() == src.read_bytes()
    # Shared blocks: the clone costs (almost) no space.
    assert shutil.disk_usage(xfs_mount).used - before < MiB
    with dst.open("r+b") as f:
        f.write(b"changed")
    assert src.read_bytes()[:7] != b"changed"
    # Asked not to clone, the same filesystem gets a sparse copy.
    assert await clone_raw(src, xfs_mount / "copy.img", allow_reflink=False) == "sparse"

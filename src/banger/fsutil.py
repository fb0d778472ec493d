"""Durable publish and safe removal: the file-system half of crash recovery.

Publishing is stage → fsync → rename → fsync the parent: after a power cut the renamed entry is
either absent or complete, never a name pointing at unwritten blocks, and it is on disk before the
database row that points at it is written. Removal never follows a symlink and never descends
into a mount point (a leaked bind mount of /dev or /proc under staging would otherwise make
`rmtree` delete the host's files).
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

log = logging.getLogger("banger.fsutil")


def fsync_path(path: Path) -> None:
    """fsync one file or directory (without following a final symlink)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under `root` (symlinks are not followed), the
    deepest first, then `root` itself."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames + dirnames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                fsync_path(p)
    fsync_path(root)


def publish(staged: Path, final: Path) -> None:
    """Make `staged` (a file or directory) durable, rename it to `final`, make the rename
    durable. Both must be on one filesystem (staging lives in the state dir for that)."""
    if staged.is_dir() and not staged.is_symlink():
        fsync_tree(staged)
    else:
        fsync_path(staged)
    os.rename(staged, final)
    fsync_path(final.parent)


def write_durable(path: Path, data: bytes, mode: int = 0o666) -> None:
    """Write `path` whole or not at all: a temp file beside it, fsync, rename, fsync the dir.
    `mode` is filtered by the umask, as for any new file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_path(path.parent)


def mounts_under(path: Path) -> list[str]:
    """Mount points strictly below `path` (from /proc/self/mountinfo)."""
    prefix = os.path.realpath(path) + "/"
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    # Field 5 is the mount point (octal escapes for spaces and the like).
    points = [line.split()[4].encode().decode("unicode_escape") for line in lines]
    return [p for p in points if p.startswith(prefix)]


def remove_entry(path: Path) -> bool:
    """Remove one directory entry: a symlink or file is unlinked (its target is untouched), a
    directory is deleted recursively without following links in it. A directory with something
    mounted below it is left alone and logged. True when the entry is gone."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(st.st_mode):
        path.unlink(missing_ok=True)
        return True
    mounts = mounts_under(path)
    if mounts:
        log.error(
            "not deleting %s: mounts below it (%s); unmount them and delete it by hand",
            path,
            ", ".join(mounts[:5]),
        )
        return False
    # shutil.rmtree works on file descriptors here (Linux): a symlink inside is unlinked, never
    # followed, even if one is swapped in while it runs.
    shutil.rmtree(path, ignore_errors=True)
    if os.path.lexists(path):
        log.warning("cleanup: could not remove all of %s; delete it by hand", path)
        return False
    return True


def remove_tree_best_effort(path: Path, what: str) -> None:
    """Cleanup that must not fail its caller (it runs after the real error, or on the way out):
    whatever cannot be removed is logged as a warning (the log line carries the request's op id),
    never silently left behind. A missing tree is fine."""

    def report(_func: object, failed: str, exc_info: tuple[type, BaseException, object]) -> None:
        if not isinstance(exc_info[1], FileNotFoundError):
            log.warning("cleanup of %s: cannot remove %s: %s", what, failed, exc_info[1])

    shutil.rmtree(path, onerror=report)

"""`vm workspace export --output FILE`: where the patch lands, and what is never replaced."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

from banger.cli.workspace import write_atomically


def test_a_fifo_is_written_through_not_replaced(tmp_path: Path) -> None:
    # Stands for /dev/null or /dev/stdout: a rename over them replaced the device node itself.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_atomically(fifo, b"diff --git a/x b/x\n")
    reader.join(timeout=10)
    assert got == [b"diff --git a/x b/x\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]  # no staging file left behind


def test_modes_follow_the_existing_file_or_the_umask(tmp_path: Path) -> None:
    old = tmp_path / "old.patch"
    old.write_bytes(b"old")
    old.chmod(0o640)
    write_atomically(old, b"new")
    assert old.read_bytes() == b"new"
    assert stat.S_IMODE(old.stat().st_mode) == 0o640  # was 0600, mkstemp's mode

    prev = os.umask(0o022)
    try:
        write_atomically(tmp_path / "fresh.patch", b"p")
    finally:
        os.umask(prev)
    assert stat.S_IMODE((tmp_path / "fresh.patch").stat().st_mode) == 0o644


def test_through_a_symlink_the_target_is_written(tmp_path: Path) -> None:
    target = tmp_path / "real.patch"
    target.write_bytes(b"")
    (tmp_path / "link.patch").symlink_to(target)
    write_atomically(tmp_path / "link.patch", b"p")
    assert target.read_bytes() == b"p"
    assert (tmp_path / "link.patch").is_symlink()

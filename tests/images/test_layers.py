"""The layer applier on its own: hostile members, chroot-style resolution, whiteout edge cases."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from banger.images.layers import HostileLayer, Layer, LayerError, apply_layers
from tests.images.ocifix import Entry, compress, stat_inode, tar_bytes


def _layer(tmp_path: Path, name: str, entries: list[Entry], kind: str = "tar") -> Layer:
    path = tmp_path / f"{name}.blob"
    path.write_bytes(compress(tar_bytes(entries), kind))
    return Layer(path, f"sha256:{name}")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory beside the tree: nothing may ever be written here."""
    d = tmp_path / "outside"
    d.mkdir()
    return d


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (Entry("/etc/passwd", data=b"x"), "absolute name"),
        (Entry("../escape", data=b"x"), "contains '..'"),
        (Entry("a/../../escape", data=b"x"), "contains '..'"),
        (Entry("bin/link", "hardlink", link="../../etc/passwd"), "contains '..'"),
        (Entry("bin/link", "hardlink", link="/etc/passwd"), "absolute hardlink target"),
        (Entry("bin/link", "hardlink", link="no/such/file"), "does not exist in the image"),
    ],
)
def test_hostile_members_rejected_naming_layer_and_member(
    tmp_path: Path, outside: Path, entry: Entry, reason: str
) -> None:
    tree = tmp_path / "tree"
    first = _layer(tmp_path, "first", [Entry("bin/", "dir"), Entry("bin/ok", data=b"1")])
    evil = _layer(tmp_path, "evil", [entry], "gzip")
    with pytest.raises(HostileLayer) as ei:
        apply_layers(tree, [first, evil])
    msg = str(ei.value)
    assert "layer sha256:evil" in msg and repr(entry.name) in msg and reason in msg
    assert list(outside.iterdir()) == []


def test_planted_symlinks_cannot_redirect_later_layers(tmp_path: Path, outside: Path) -> None:
    tree = tmp_path / "tree"
    lower = _layer(
        tmp_path,
        "lower",
        [
            # Absolute and relative symlinks aimed at the host directory beside the tree.
            Entry("etc", "symlink", link=str(outside)),
            Entry("rel", "symlink", link="../../../../../../" + str(outside).lstrip("/")),
            Entry("loop", "symlink", link="loop"),
        ],
    )
    upper = _layer(
        tmp_path,
        "upper",
        [Entry("etc/passwd", data=b"in-tree"), Entry("rel/shadow", data=b"in-tree-too")],
        "zstd",
    )
    apply_layers(tree, [lower, upper])
    assert list(outside.iterdir()) == []
    # Both landed inside the tree, where the guest would see them through the links.
    inside = tree / str(outside).lstrip("/")
    assert (inside / "passwd").read_bytes() == b"in-tree"
    assert (inside / "shadow").read_bytes() == b"in-tree-too"
    assert os.readlink(tree / "etc") == str(outside)

    loop = _layer(tmp_path, "loopy", [Entry("loop/x", data=b"x")])
    with pytest.raises(HostileLayer, match="too many levels"):
        apply_layers(tree, [loop])


def test_whiteout_through_symlink_stays_inside(tmp_path: Path, outside: Path) -> None:
    (outside / "victim").write_text("keep me")
    tree = tmp_path / "tree"
    lower = _layer(tmp_path, "lower", [Entry("d", "symlink", link=str(outside))])
    upper = _layer(tmp_path, "upper", [Entry("d/.wh.victim", data=b""), Entry("d/.wh..wh..opq")])
    apply_layers(tree, [lower, upper])
    assert (outside / "victim").read_text() == "keep me"


def test_corrupt_layer_names_layer(tmp_path: Path) -> None:
    blob = tmp_path / "bad.blob"
    blob.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(LayerError, match="layer sha256:bad"):
        apply_layers(tmp_path / "tree", [Layer(blob, "sha256:bad")])


def test_modes_and_readonly_dirs(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    lower = _layer(
        tmp_path,
        "lower",
        [
            Entry("ro/", "dir", mode=0o555),
            Entry("ro/f", data=b"1", mode=0o4711, uid=7, gid=8),
            Entry("sticky/", "dir", mode=0o1777),
        ],
    )
    # A later layer still adds into the read-only dir.
    upper = _layer(tmp_path, "upper", [Entry("ro/g", data=b"2", mode=0o444)])
    apply_layers(tree, [lower, upper])
    st = os.lstat(tree / "ro" / "f")
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o4711, 7, 8)
    assert stat.S_IMODE(os.lstat(tree / "ro").st_mode) == 0o555
    assert stat.S_IMODE(os.lstat(tree / "sticky").st_mode) == 0o1777
    assert (tree / "ro" / "g").read_bytes() == b"2"
    assert os.lstat(tree / "ro" / "f").st_mtime == 1_700_000_000


def _gnu_tar_sparse(tmp_path: Path, fmt: str) -> Path:
    """A 1 GiB sparse file with data at its start, middle and end, archived by GNU tar."""
    src = tmp_path / "src"
    src.mkdir()
    with (src / "big").open("wb") as f:
        f.truncate(1 << 30)
        for offset, data in ((0, b"head"), (512 << 20, b"middle"), ((1 << 30) - 4, b"tail")):
            f.seek(offset)
            f.write(data)
    out = tmp_path / f"{fmt}.tar"
    args = ["--format=gnu"] if fmt == "gnu" else ["--format=pax", f"--sparse-version={fmt}"]
    subprocess.run(
        ["tar", "-C", str(src), "--sparse", *args, "-cf", str(out), "big"],
        check=True,
        capture_output=True,
    )
    assert out.stat().st_size < 64 << 10  # the archive itself is tiny
    return out


@pytest.mark.parametrize("fmt", ["gnu", "0.0", "0.1", "1.0"])
def test_sparse_members_are_written_sparse(tmp_path: Path, fmt: str) -> None:
    tar = _gnu_tar_sparse(tmp_path, fmt)
    blob = tmp_path / "layer.blob"
    blob.write_bytes(compress(tar.read_bytes(), "gzip"))
    tree = tmp_path / "tree"
    stats = apply_layers(tree, [Layer(blob, f"sha256:{fmt}")])
    big = tree / "big"
    st = os.stat(big)
    assert st.st_size == 1 << 30
    # Three data blocks, not a gigabyte.
    assert st.st_blocks * 512 <= 64 << 10
    with big.open("rb") as f:
        assert f.read(4) == b"head"
        f.seek(512 << 20)
        assert f.read(6) == b"middle"
        f.seek((1 << 30) - 4)
        assert f.read(4) == b"tail"
        f.seek(1 << 20)
        assert f.read(4096) == bytes(4096)
    # The limit counts the apparent size; the scratch budget only what was written.
    assert stats.bytes == 1 << 30 and stats.data_bytes <= 64 << 10


def test_sparse_member_stays_sparse_in_the_ext4(tmp_path: Path) -> None:
    from banger.images import build

    tar = _gnu_tar_sparse(tmp_path, "1.0")
    spec = {
        "layers": [{"path": str(tar), "name": "sha256:sparse", "compression": "tar"}],
        "tree": str(tmp_path / "tree"),
        "out": str(tmp_path / "rootfs.ext4"),
        "size_bytes": None,
        "image": "sparse",
    }
    result = build.run(spec)
    img = tmp_path / "rootfs.ext4"
    assert result["content_bytes"] < 1 << 20
    assert img.stat().st_blocks * 512 < 64 << 20
    info = stat_inode(img, "/big")
    assert info["type"] == "regular" and "Size: 1073741824" in info["raw"]


def test_directory_modes_survive_umask_and_implicit_parents(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    layer = _layer(
        tmp_path,
        "l",
        [Entry("implicit/child/", "dir", mode=0o750, mtime=1_650_000_000)],
    )
    old = os.umask(0o077)
    try:
        apply_layers(tree, [layer])
    finally:
        os.umask(old)
    # A parent the tar never named gets what tar would give it.
    assert stat.S_IMODE(os.lstat(tree / "implicit").st_mode) == 0o755
    child = os.lstat(tree / "implicit" / "child")
    assert stat.S_IMODE(child.st_mode) == 0o750 and child.st_mtime == 1_650_000_000


def test_hardlinks_symlinks_and_devices_keep_attributes(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    layer = _layer(
        tmp_path,
        "l",
        [
            Entry("bin/busybox", data=b"bb", mode=0o4755, uid=0, gid=0),
            Entry("bin/sh", "hardlink", link="bin/busybox"),
            Entry("bin/ash", "symlink", link="/bin/busybox", uid=5, gid=6, mtime=1_600_000_001),
            Entry("dev/tty", "char", mode=0o620, uid=0, gid=5, major=5, minor=0),
            Entry("run/p", "fifo", mode=0o640, xattrs={"user.banger": "fifo"}),
            Entry("etc/f", data=b"x", xattrs={"user.banger": "v"}),
        ],
        "zstd",
    )
    apply_layers(tree, [layer])
    bb, sh = os.lstat(tree / "bin/busybox"), os.lstat(tree / "bin/sh")
    assert bb.st_ino == sh.st_ino and stat.S_IMODE(bb.st_mode) == 0o4755
    ash = os.lstat(tree / "bin/ash")
    assert (ash.st_uid, ash.st_gid, ash.st_mtime) == (5, 6, 1_600_000_001)
    tty = os.lstat(tree / "dev/tty")
    assert stat.S_ISCHR(tty.st_mode) and stat.S_IMODE(tty.st_mode) == 0o620 and tty.st_gid == 5
    assert stat.S_IMODE(os.lstat(tree / "run/p").st_mode) == 0o640
    assert os.getxattr(tree / "etc/f", "user.banger") == b"v"


def test_non_utf8_names_are_kept_byte_exact(tmp_path: Path) -> None:
    # An old latin-1 package: the name is the bytes b"caf\xe9", not valid UTF-8.
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, encoding="latin-1") as tf:
        ti = tarfile.TarInfo("doc/caf\xe9")
        ti.size = 2
        tf.addfile(ti, io.BytesIO(b"ok"))
    blob = tmp_path / "latin1.blob"
    blob.write_bytes(buf.getvalue())
    tree = tmp_path / "tree"
    apply_layers(tree, [Layer(blob, "sha256:latin1")])
    assert os.listdir(os.fsencode(tree / "doc")) == [b"caf\xe9"]

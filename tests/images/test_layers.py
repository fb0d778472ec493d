"""The layer applier on its own: hostile members, chroot-style resolution, whiteout edge cases."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from banger.images.layers import HostileLayer, Layer, LayerError, apply_layers
from tests.images.ocifix import Entry, compress, tar_bytes


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

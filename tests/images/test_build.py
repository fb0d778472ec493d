"""The build child on its own: scratch budget fallback and size checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banger.images import build
from banger.images.ext4 import SIZE_FLOOR
from tests.images.ocifix import Entry, cat, compress, tar_bytes


def _spec(tmp_path: Path, data: bytes, **extra: object) -> dict[str, object]:
    blob = tmp_path / "layer.blob"
    blob.write_bytes(compress(tar_bytes([Entry("zeros", data=data)]), "gzip"))
    return {
        "layers": [{"path": str(blob), "name": "sha256:zeros", "compression": "gzip"}],
        "tree": str(tmp_path / "scratch" / "tree"),
        "out": str(tmp_path / "rootfs.ext4"),
        "size_bytes": None,
        **extra,
    }


def test_budget_overflow_falls_back_to_disk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytes(8 << 20)  # compresses ~1000:1, so the tmpfs estimate is far too low
    spec = _spec(tmp_path, data, fallback_tree=str(tmp_path / "disk"), tree_budget=1 << 20)
    result = build.run(spec)
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert "fallback" in events
    assert not (tmp_path / "scratch" / "tree").exists()
    assert cat(tmp_path / "rootfs.ext4", "/zeros") == data
    assert result["size_bytes"] == SIZE_FLOOR


def test_size_too_small_is_refused(tmp_path: Path) -> None:
    spec = _spec(tmp_path, b"x" * (2 << 20), size_bytes=4 << 20)
    with pytest.raises(ValueError, match="too small"):
        build.run(spec)
    assert not (tmp_path / "rootfs.ext4").exists()


def test_unsupported_xattr_on_scratch_falls_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No filesystem knows the "bogus." namespace (ENOTSUP), like user.* on tmpfs before 6.6.
    blob = tmp_path / "layer.blob"
    entries = [Entry("f", data=b"1", xattrs={"bogus.attr": "v"})]
    blob.write_bytes(compress(tar_bytes(entries), "gzip"))
    spec = {
        "layers": [{"path": str(blob), "name": "sha256:x", "compression": "gzip"}],
        "tree": str(tmp_path / "scratch" / "tree"),
        "out": str(tmp_path / "rootfs.ext4"),
        "size_bytes": None,
        "fallback_tree": str(tmp_path / "disk"),
        "tree_budget": 1 << 30,
    }
    result = build.run(spec)
    events = [json.loads(line)["event"] for line in capsys.readouterr().out.splitlines()]
    assert "fallback" in events
    # On the disk the same xattr is reported, not fatal.
    assert result["xattr_failures"] and "bogus.attr" in result["xattr_failures"][0]
    assert cat(tmp_path / "rootfs.ext4", "/f") == b"1"

"""Host-side snapshot files: folding a sparse diff layer into its base, and the saved record."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.vmm.base import DriverError, SavedMachine
from banger.vmm.fc_snapshot import merge_memory_layer, read_record, write_record

PAGE = 4096


def sparse(path: Path, size: int, pages: dict[int, bytes]) -> None:
    with path.open("wb") as f:
        f.truncate(size)
        for i, data in pages.items():
            f.seek(i * PAGE)
            f.write(data.ljust(PAGE, b"\0"))


def test_merge_copies_only_the_layers_data_over_the_base(tmp_path: Path) -> None:
    base, layer = tmp_path / "base", tmp_path / "layer"
    sparse(base, 64 * PAGE, {0: b"base-0", 5: b"base-5", 9: b"base-9"})
    sparse(layer, 64 * PAGE, {5: b"layer-5", 40: b"layer-40"})
    copied = merge_memory_layer(base, layer)
    assert copied >= 2 * PAGE  # at least the two data pages (filesystems may round extents)
    data = base.read_bytes()

    def page(i: int) -> bytes:
        return data[i * PAGE : (i + 1) * PAGE].rstrip(b"\0")

    assert [page(i) for i in (0, 5, 9, 40, 41)] == [
        b"base-0",
        b"layer-5",
        b"base-9",
        b"layer-40",
        b"",
    ]


def test_merge_refuses_a_layer_of_another_size(tmp_path: Path) -> None:
    sparse(tmp_path / "base", 8 * PAGE, {})
    sparse(tmp_path / "layer", 16 * PAGE, {1: b"x"})
    with pytest.raises(DriverError, match="memory size changed"):
        merge_memory_layer(tmp_path / "base", tmp_path / "layer")


def test_record_round_trips_with_paths_relative_to_the_final_directory(tmp_path: Path) -> None:
    staged, final = tmp_path / ".cp.part", tmp_path / "cp"
    staged.mkdir()
    saved = SavedMachine(
        driver="firecracker",
        dir=final,
        disks={"root": final / "root.img"},
        memory_mib=256,
        paused_seconds=0.25,
        details={"vm_id": "a"},
    )
    write_record(staged, saved)
    staged.rename(final)
    assert read_record(final) == saved
    (final / "saved.json").write_text("{")
    with pytest.raises(DriverError, match="no readable saved machine"):
        read_record(final)

"""Records of saved machines: tags, the pending -> ready rule, templates keyed by combination."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.errors import AlreadyExists, InvalidInput, NotFound
from banger.store.db import Store
from banger.vmm.base import SavedMachine
from banger.vms.saved import (
    Combination,
    SnapshotRepository,
    TemplateRepository,
    size_on_disk,
    validate_tag,
)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "state.db")
    s.open()
    s.execute(
        "INSERT INTO vms (id, name, state, image_id, image_name, kernel, vcpus, memory_mib,"
        " disk_size, init_mode, network, created_at, updated_at)"
        " VALUES ('v1', 'dev', 'running', 'i1', 'img', 'k', 1, 512, 1, 'auto', 'user', 'x', 'x')"
    )
    return s


def _saved(tmp_path: Path) -> SavedMachine:
    return SavedMachine(
        "qemu", tmp_path / "snap", {"root": tmp_path / "snap/root.qcow2"}, 512, 0.25, {"a": 1}
    )


def test_a_checkpoint_is_invisible_until_finished(store: Store, tmp_path: Path) -> None:
    repo = SnapshotRepository(store)
    repo.begin("v1", "before", "checkpoint", tmp_path / "snap")
    assert repo.list("v1") == []
    with pytest.raises(NotFound, match="no snapshot 'before'"):
        repo.get("v1", "before")
    assert [p.tag for p in repo.pending()] == ["before"]
    repo.finish("v1", "before", _saved(tmp_path), 4096)
    got = repo.get("v1", "before")
    assert got.saved == _saved(tmp_path)
    assert (got.size_bytes, got.paused_ms, got.state) == (4096, 250, "ready")
    assert repo.pending() == []


def test_a_tag_is_taken_once_per_vm(store: Store, tmp_path: Path) -> None:
    repo = SnapshotRepository(store)
    repo.begin("v1", "t", "checkpoint", tmp_path)
    with pytest.raises(AlreadyExists, match="snapshot 't' already exists"):
        repo.begin("v1", "t", "checkpoint", tmp_path)


def test_deleting_the_vm_drops_its_snapshot_rows(store: Store, tmp_path: Path) -> None:
    repo = SnapshotRepository(store)
    repo.begin("v1", "t", "checkpoint", tmp_path)
    repo.finish("v1", "t", _saved(tmp_path), 1)
    store.execute("DELETE FROM vms WHERE id = 'v1'")
    assert repo.list("v1") == []


@pytest.mark.parametrize("tag", ["", "A", "-x", ".", "..", "a/b", "a b", "@suspend", "x" * 64, "é"])
def test_bad_tags_are_refused(tag: str) -> None:
    with pytest.raises(InvalidInput):
        validate_tag(tag)


def test_good_tags_pass() -> None:
    for tag in ("a", "before-upgrade", "v1.2_rc", "x" * 63):
        assert validate_tag(tag) == tag


COMBO = Combination("i1", "sha256:aa", "debian-6.1", "k1", "auto", 1, 512, 8 << 30, "qemu")


def test_one_template_per_combination(store: Store, tmp_path: Path) -> None:
    repo = TemplateRepository(store)
    first = repo.begin(COMBO, tmp_path / "t")
    assert first is not None and first.key == COMBO.key()
    assert repo.begin(COMBO, tmp_path / "t2") is None  # someone is already making it
    assert repo.ready(COMBO) is None  # pending is not usable
    repo.finish(first.key, _saved(tmp_path), 10)
    ready = repo.ready(COMBO)
    assert ready is not None and ready.saved == _saved(tmp_path)
    repo.used(first.key)
    assert [t.uses for t in repo.of_image("i1")] == [1]


def test_a_changed_image_or_kernel_is_another_combination() -> None:
    from dataclasses import replace

    assert replace(COMBO, image_version="sha256:bb").key() != COMBO.key()
    assert replace(COMBO, kernel_version="k2").key() != COMBO.key()
    assert replace(COMBO, memory_mib=1024).key() != COMBO.key()
    assert replace(COMBO).key() == COMBO.key()


def test_size_on_disk_counts_allocated_bytes_not_apparent(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with open(tmp_path / "d/sparse", "wb") as f:
        f.truncate(1 << 30)
    (tmp_path / "d/data").write_bytes(b"x" * 65536)
    (tmp_path / "d/link").symlink_to("/usr")
    size = size_on_disk(tmp_path / "d")
    assert 65536 <= size < 1 << 20

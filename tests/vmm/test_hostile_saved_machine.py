"""Hostile saved-machine records (`saved.json`): a damaged or hand-edited record must never make
the QEMU driver open a file outside the saved directory, nor load a machine it cannot restore.

Each case writes one record into a fresh directory holding a valid-looking state file and
layers, and asserts that `load_saved` refuses it with a message naming what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from banger.vmm import qemu_snapshot as snap
from banger.vmm.base import DriverError

GOOD: dict[str, Any] = {
    "version": 1,
    "driver": "qemu",
    "disks": {"root": "root.qcow2", "work": "work.qcow2"},
    "memory_mib": 256,
    "paused_seconds": 0.1,
    "details": {"kind": "checkpoint", "vcpus": 1, "shape": "disks=3,net=virtio-net"},
}


@dataclass(frozen=True)
class Case:
    id: str
    change: dict[str, Any]
    says: str


CASES = [
    Case("parent-dir-disk", {"disks": {"root": "../../etc/shadow"}}, "bad disk entry 'root'"),
    Case("absolute-disk", {"disks": {"work": "/dev/sda"}}, "bad disk entry 'work'"),
    Case("dotfile-disk", {"disks": {"root": ".saved.json.tmp"}}, "bad disk entry"),
    Case("newline-disk", {"disks": {"root": "a\nb"}}, "bad disk entry"),
    Case("unknown-role", {"disks": {"seed": "seed.img"}}, "bad disk entry 'seed'"),
    Case("disk-not-a-string", {"disks": {"root": 7}}, "bad disk entry"),
    Case("disks-not-an-object", {"disks": ["root.qcow2"]}, "disks and details must be objects"),
    Case("other-driver", {"driver": "firecracker"}, "saved by the 'firecracker' driver"),
    Case("future-version", {"version": 2}, "not a version 1"),
    Case("zero-memory", {"memory_mib": 0}, "memory_mib must be a positive integer"),
    Case("string-memory", {"memory_mib": "256"}, "memory_mib must be a positive integer"),
    Case("unknown-kind", {"details": {"kind": "template"}}, "kind must be suspend or checkpoint"),
    Case("not-an-object", {"__replace__": ["a", "list"]}, "not a version 1"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_record_is_refused(case: Case, tmp_path: Path) -> None:
    record: Any = dict(GOOD)
    if "__replace__" in case.change:
        record = case.change["__replace__"]
    else:
        record.update(case.change)
    (tmp_path / snap.META_FILE).write_text(json.dumps(record))
    for name in (snap.STATE_FILE, "root.qcow2", "work.qcow2"):
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(DriverError, match=case.says.replace("(", r"\(").replace(".", r"\.")):
        snap.load_saved(tmp_path)


def test_the_good_record_loads(tmp_path: Path) -> None:
    (tmp_path / snap.META_FILE).write_text(json.dumps(GOOD))
    for name in (snap.STATE_FILE, "root.qcow2", "work.qcow2"):
        (tmp_path / name).write_bytes(b"x")
    saved = snap.load_saved(tmp_path)
    assert saved.disks == {"root": tmp_path / "root.qcow2", "work": tmp_path / "work.qcow2"}


def test_garbage_json_is_named(tmp_path: Path) -> None:
    (tmp_path / snap.META_FILE).write_text("{not json")
    with pytest.raises(DriverError, match=r"cannot read .*saved\.json"):
        snap.load_saved(tmp_path)

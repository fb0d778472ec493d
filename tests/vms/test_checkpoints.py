"""Checkpoints (`vm snapshot create|list|restore|delete`, vms/checkpoints.py) over the in-memory
driver: refusals, what the list shows, a restore from every state a VM can be in, delete, the
crash cleanup of pending rows, tags that try to be paths."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from banger.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    NotRunning,
    OperationFailed,
)
from banger.proc import run
from banger.vmm.base import DriverError
from banger.vmm.qemu_snapshot import LAYERS_ONLY_MARK
from banger.vms.saved import size_on_disk
from banger.vms.service import VMService
from banger.vms.spec import VMRecord
from banger.vms.startup import cleanup_pending_saves
from banger.vms.states import Event
from tests.vms.memdriver import MemDriver
from tests.vms.world import CTX, World, req


async def _running(world: World, name: str = "box") -> tuple[VMService, VMRecord]:
    svc = await world.service()
    vm = await svc.create(req(name), CTX)
    assert vm.state == "running"
    return svc, vm


def _pid(svc: VMService, vm: VMRecord) -> int:
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    return handle.pid


def _snapshot_dirs(vm: VMRecord) -> list[str]:
    d = vm.dir / "snapshots"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _rows(world: World, vm_id: str) -> list[tuple[str, str]]:
    rows = world.store.query("SELECT tag, state FROM vm_snapshots WHERE vm_id = ?", (vm_id,))
    return [(r["tag"], r["state"]) for r in rows]


# --- create --------------------------------------------------------------------------------------


async def test_a_checkpoint_of_a_running_vm_is_listed_with_its_size_and_pause(world: World) -> None:
    svc, vm = await _running(world)
    world.driver.memory[_pid(svc, vm)]["/tmp/x"] = "1"
    made = await svc.snapshot_create("box", "pre-deploy", CTX)
    assert made["vm"] == "box" and made["tag"] == "pre-deploy" and made["kind"] == "checkpoint"
    assert made["paused_ms"] == 1
    d = vm.dir / "snapshots" / "pre-deploy"
    assert (d / "seed.ext4").read_bytes() == (vm.dir / "seed.ext4").read_bytes()
    assert made["size_bytes"] == size_on_disk(d) > 0
    assert await svc.snapshot_list("box") == [made]
    assert svc.repo.get(vm.id).state == "running"
    assert _rows(world, vm.id) == [("pre-deploy", "ready")]


async def test_a_paused_vm_can_be_checkpointed_and_stays_paused(world: World) -> None:
    svc, vm = await _running(world)
    await world.driver.pause(svc.repo.handle(vm.id))  # type: ignore[arg-type]
    svc.lifecycle.apply(vm.id, Event.PAUSE, "paused")
    await svc.snapshot_create("box", "frozen", CTX)
    assert svc.repo.get(vm.id).state == "paused"
    assert _pid(svc, vm) in world.driver.paused


async def test_checkpointing_a_vm_that_does_not_run_is_refused(world: World) -> None:
    svc = await world.service()
    vm = await svc.create(req("idle", start=False), CTX)
    with pytest.raises(NotRunning, match="vm idle is not running .state created"):
        await svc.snapshot_create("idle", "t1", CTX)
    await svc.start_vm("idle", CTX)
    await svc.stop_vm("idle")
    with pytest.raises(NotRunning, match="state stopped"):
        await svc.snapshot_create("idle", "t1", CTX)
    assert _rows(world, vm.id) == [] and _snapshot_dirs(vm) == []


async def test_a_tag_in_use_is_refused_and_the_first_checkpoint_stays(world: World) -> None:
    svc, vm = await _running(world)
    first = await svc.snapshot_create("box", "t1", CTX)
    with pytest.raises(AlreadyExists, match="snapshot 't1' already exists"):
        await svc.snapshot_create("box", "t1", CTX)
    assert await svc.snapshot_list("box") == [first]
    assert (vm.dir / "snapshots" / "t1" / "saved.json").is_file()


@pytest.mark.parametrize(
    "tag",
    ["", "../escape", "a/b", "/etc", ".", "..", ".hidden", "UPPER", "@suspend", "x" * 64, "a~1"],
)
async def test_tags_that_are_not_plain_names_are_refused(world: World, tag: str) -> None:
    svc, vm = await _running(world)
    with pytest.raises(InvalidInput, match="snapshot tag"):
        await svc.snapshot_create("box", tag, CTX)
    with pytest.raises(InvalidInput, match="snapshot tag"):
        await svc.snapshot_restore("box", tag, CTX)
    with pytest.raises(InvalidInput, match="snapshot tag"):
        await svc.snapshot_delete("box", tag)
    assert _rows(world, vm.id) == [] and _snapshot_dirs(vm) == []
    assert not (vm.dir.parent / "escape").exists()


async def test_a_driver_without_checkpoints_is_named_in_the_refusal(tmp_path: Path) -> None:
    from tests.vms.world import make_world

    w = make_world(tmp_path, None)
    w.driver = MemDriver(snapshots=False)
    try:
        svc = await w.service()
        vm = await svc.create(req("plain"), CTX)
        with pytest.raises(InvalidInput, match="the mem driver, which cannot take or restore"):
            await svc.snapshot_create("plain", "t1", CTX)
        assert _rows(w, vm.id) == [] and _snapshot_dirs(vm) == []
    finally:
        for svc in w.services:
            await svc.stop()
        w.store.close()


async def test_a_failed_save_leaves_no_row_no_dir_and_the_vm_running(world: World) -> None:
    svc, vm = await _running(world)
    world.driver.fail["save"] = DriverError("migration failed: disk full")
    with pytest.raises(OperationFailed, match="checkpoint 't1' of vm box failed: .*disk full"):
        await svc.snapshot_create("box", "t1", CTX)
    assert _rows(world, vm.id) == [] and _snapshot_dirs(vm) == []
    assert svc.repo.get(vm.id).state == "running"
    # The tag is free again.
    await svc.snapshot_create("box", "t1", CTX)
    assert _rows(world, vm.id) == [("t1", "ready")]


async def test_a_failure_after_the_save_removes_what_it_wrote(world: World) -> None:
    svc, vm = await _running(world)
    (vm.dir / "seed.ext4").unlink()  # the seed copy fails after the driver saved
    with pytest.raises(FileNotFoundError):
        await svc.snapshot_create("box", "t1", CTX)
    assert _rows(world, vm.id) == [] and _snapshot_dirs(vm) == []


async def test_the_list_is_oldest_first_and_other_vms_checkpoints_are_not_in_it(
    world: World,
) -> None:
    svc, vm = await _running(world)
    await svc.create(req("other"), CTX)
    await svc.snapshot_create("other", "theirs", CTX)
    await svc.snapshot_create("box", "b", CTX)
    world.store.execute(
        "UPDATE vm_snapshots SET created_at = '2020-01-01T00:00:00Z' WHERE tag = 'b'"
    )
    await svc.snapshot_create("box", "a", CTX)
    listed = await svc.snapshot_list("box")
    assert [s["tag"] for s in listed] == ["b", "a"]
    assert all(s["size_bytes"] > 0 for s in listed)
    with pytest.raises(NotFound):
        await svc.snapshot_list("nobody")


# --- restore -------------------------------------------------------------------------------------


async def _checkpointed(world: World) -> tuple[VMService, VMRecord, bytes]:
    """A running VM with a checkpoint `t1` of memory {"/tmp/note": "then"} and its disks."""
    svc, vm = await _running(world)
    world.driver.memory[_pid(svc, vm)]["/tmp/note"] = "then"
    spec = world.driver.specs[_pid(svc, vm)]
    root = spec.root_disk.path
    await svc.snapshot_create("box", "t1", CTX)
    then = root.read_bytes()
    # After the checkpoint: memory and disk change, the seed is rebuilt (a cold start would).
    world.driver.memory[_pid(svc, vm)]["/tmp/note"] = "now"
    root.write_bytes(b"changed after the checkpoint")
    (vm.dir / "seed.ext4").write_bytes(b"another seed")
    return svc, vm, then


async def _assert_rolled_back(world: World, svc: VMService, vm: VMRecord, then: bytes) -> None:
    back = svc.repo.get(vm.id)
    assert back.state == "running"
    pid = _pid(svc, back)
    assert world.driver.memory[pid] == {"/tmp/note": "then"}
    assert world.driver.specs[pid].root_disk.path.read_bytes() == then
    saved_seed = (vm.dir / "snapshots" / "t1" / "seed.ext4").read_bytes()
    assert (vm.dir / "seed.ext4").read_bytes() == saved_seed
    # The wake set the guest's clock (it woke at the moment of the checkpoint).
    assert [c.split(" ", 1)[0] for c in world.driver.commands[pid]] == ["time"]
    assert world.driver.running() == [pid]


async def test_restore_of_a_running_vm_stops_it_and_rolls_memory_and_disks_back(
    world: World,
) -> None:
    svc, vm, then = await _checkpointed(world)
    old = _pid(svc, vm)
    got = await svc.snapshot_restore("box", "t1", CTX)
    assert got.state == "running"
    assert not world.driver.alive[old]
    await _assert_rolled_back(world, svc, vm, then)


async def test_restore_of_a_paused_vm(world: World) -> None:
    svc, vm, then = await _checkpointed(world)
    await world.driver.pause(svc.repo.handle(vm.id))  # type: ignore[arg-type]
    svc.lifecycle.apply(vm.id, Event.PAUSE, "paused")
    await svc.snapshot_restore("box", "t1", CTX)
    await _assert_rolled_back(world, svc, vm, then)


async def test_restore_of_a_stopped_vm(world: World) -> None:
    svc, vm, then = await _checkpointed(world)
    await svc.stop_vm("box")
    await svc.snapshot_restore("box", "t1", CTX)
    await _assert_rolled_back(world, svc, vm, then)


async def test_restore_of_a_vm_in_error(world: World) -> None:
    svc, vm, then = await _checkpointed(world)
    world.driver.fail["launch"] = DriverError("no such kernel")
    await svc.stop_vm("box")
    with pytest.raises(OperationFailed):
        await svc.start_vm("box", CTX)
    assert svc.repo.get(vm.id).state == "error"
    await svc.snapshot_restore("box", "t1", CTX)
    await _assert_rolled_back(world, svc, vm, then)


async def test_the_same_checkpoint_restores_twice(world: World) -> None:
    svc, vm, then = await _checkpointed(world)
    await svc.snapshot_restore("box", "t1", CTX)
    world.driver.memory[_pid(svc, vm)]["/tmp/note"] = "again"
    await svc.snapshot_restore("box", "t1", CTX)
    await _assert_rolled_back(world, svc, vm, then)


async def test_restore_is_refused_when_the_vm_was_resized_since(world: World) -> None:
    svc, vm, _ = await _checkpointed(world)
    await svc.stop_vm("box")
    await svc.set_vm("box", None, 512, None)
    with pytest.raises(Conflict, match="taken with 1 vCPUs and 256 MiB; vm box now has 1 and 512"):
        await svc.snapshot_restore("box", "t1", CTX)
    assert svc.repo.get(vm.id).state == "stopped"


async def test_restore_of_a_suspended_vm_is_refused(world: World) -> None:
    svc, vm, _ = await _checkpointed(world)
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    await world.driver.save(handle, world.driver.specs[handle.pid], vm.dir / "sus", False)
    svc.lifecycle.apply(vm.id, Event.SUSPEND, "suspended")
    with pytest.raises(Conflict, match="suspended"):
        await svc.snapshot_restore("box", "t1", CTX)
    assert svc.repo.get(vm.id).state == "suspended"


async def test_restore_of_an_unknown_tag_says_which_vm_has_none(world: World) -> None:
    svc, vm = await _running(world)
    with pytest.raises(NotFound, match="vm box has no snapshot 'nope'"):
        await svc.snapshot_restore("box", "nope", CTX)
    assert svc.repo.get(vm.id).state == "running"


async def test_a_failed_restore_leaves_the_vm_in_error_and_the_checkpoint_usable(
    world: World,
) -> None:
    svc, vm, then = await _checkpointed(world)
    world.driver.fail["restore"] = DriverError("state file truncated")
    with pytest.raises(OperationFailed, match="state file truncated"):
        await svc.snapshot_restore("box", "t1", CTX)
    assert svc.repo.get(vm.id).state == "error"
    assert world.driver.running() == []
    await svc.snapshot_restore("box", "t1", CTX)
    await _assert_rolled_back(world, svc, vm, then)


# --- delete --------------------------------------------------------------------------------------


async def test_delete_removes_the_row_and_the_files(world: World) -> None:
    svc, vm = await _running(world)
    await svc.snapshot_create("box", "t1", CTX)
    await svc.snapshot_create("box", "t2", CTX)
    gone = await svc.snapshot_delete("box", "t1")
    assert (gone.vm, gone.tag, gone.layers_kept) == ("box", "t1", False)
    assert [s["tag"] for s in await svc.snapshot_list("box")] == ["t2"]
    assert _snapshot_dirs(vm) == ["t2"]
    with pytest.raises(NotFound, match="vm box has no snapshot 't1'"):
        await svc.snapshot_delete("box", "t1")
    # The tag can be taken again.
    await svc.snapshot_create("box", "t1", CTX)


async def test_deleting_the_vm_leaves_no_checkpoint_row_or_file(world: World) -> None:
    svc, vm = await _running(world)
    await svc.snapshot_create("box", "t1", CTX)
    await svc.snapshot_create("box", "t2", CTX)
    await svc.delete("box")
    assert _rows(world, vm.id) == []
    assert not vm.dir.exists()


async def test_growing_the_disk_is_refused_while_checkpoints_exist(world: World) -> None:
    svc, vm = await _running(world)
    await svc.snapshot_create("box", "t1", CTX)
    await svc.stop_vm("box")
    with pytest.raises(Conflict, match=r"has snapshots \(t1\).*delete them first"):
        await svc.set_vm("box", None, None, "200M")
    await svc.snapshot_delete("box", "t1")
    grown = await svc.set_vm("box", None, None, "200M")
    assert grown.disk_size_bytes == 200 << 20


# --- crash cleanup -------------------------------------------------------------------------------


async def test_a_daemon_start_removes_what_a_pending_checkpoint_left(world: World) -> None:
    svc, vm = await _running(world)
    d = vm.dir / "snapshots" / "half"
    svc.saved.begin(vm.id, "half", "checkpoint", d)
    d.mkdir(parents=True)
    (d / "state.mig").write_bytes(b"partial")
    await svc.stop()
    svc2 = await world.service()
    assert _rows(world, vm.id) == [] and _snapshot_dirs(vm) == []
    assert svc2.repo.get(vm.id).state == "running"  # re-adopted
    await svc2.snapshot_create("box", "half", CTX)
    assert _rows(world, vm.id) == [("half", "ready")]


async def _qcow2(path: Path, backing: Path | None = None) -> None:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
    if backing is not None:
        argv += ["-F", "qcow2", "-b", str(backing), "-u"]
    await run([*argv, str(path), "16M"], what="qemu-img create", timeout=60)


async def test_a_pending_checkpoint_keeps_the_frozen_layers_the_vm_is_backed_by(
    world: World,
) -> None:
    """Killed after the disk swap: the VM's active layer reads through the pending
    checkpoint's frozen one. That layer stays (layers-only), the rest goes, the row goes, and
    the tag is usable again (in another directory)."""
    svc, vm = await _running(world)
    d = vm.dir / "snapshots" / "swapped"
    svc.saved.begin(vm.id, "swapped", "checkpoint", d)
    d.mkdir(parents=True)
    await _qcow2(d / "work.qcow2")
    await _qcow2(d / "root.qcow2")
    (d / "state.mig").write_bytes(b"partial")
    active = vm.dir / "active-test.qcow2"
    await _qcow2(active, d / "work.qcow2")
    assert await cleanup_pending_saves(svc.saved, world.paths) == 1
    assert sorted(p.name for p in d.iterdir()) == [LAYERS_ONLY_MARK, "work.qcow2"]
    assert _rows(world, vm.id) == []
    made = await svc.snapshot_create("box", "swapped", CTX)
    assert made["tag"] == "swapped"
    assert _snapshot_dirs(vm) == ["swapped", "swapped~1"]
    # Once nothing reads through them, the next cleanup of that dir removes it all.
    active.unlink()
    shutil.rmtree(d)


async def test_cleanup_is_generic_over_kinds(world: World) -> None:
    svc, vm = await _running(world)
    d = vm.dir / "suspend-partial"
    svc.saved.begin(vm.id, "@suspend", "suspend", d)
    d.mkdir()
    (d / "state.mig").write_bytes(b"x")
    assert await cleanup_pending_saves(svc.saved, world.paths) == 1
    assert not d.exists() and _rows(world, vm.id) == []
    assert await cleanup_pending_saves(svc.saved, world.paths) == 0


async def test_a_concurrent_create_and_restore_are_serialised(world: World) -> None:
    svc, vm, then = await _checkpointed(world)
    made, _ = await asyncio.gather(
        svc.snapshot_create("box", "t2", CTX), svc.snapshot_restore("box", "t1", CTX)
    )
    assert made["tag"] == "t2"
    assert svc.repo.get(vm.id).state == "running"


@pytest.mark.parametrize("field", ["dir", "disk"])
async def test_a_record_that_points_outside_its_checkpoint_is_refused_not_followed(
    world: World, field: str
) -> None:
    """docs/security.md: a vm_snapshots row edited to name another file (its dir, or a disk
    layer outside the dir) is never handed to a driver; delete forgets it and touches nothing."""
    import json

    svc, vm = await _running(world)
    await svc.snapshot_create("box", "t1", CTX)
    victim = world.root / "victim.qcow2"
    victim.write_bytes(b"precious")
    row = world.store.query_one("SELECT saved FROM vm_snapshots WHERE tag = 't1'", ())
    assert row is not None
    saved = json.loads(row["saved"])
    if field == "dir":
        saved["dir"] = str(world.root)
    else:
        saved["disks"]["root"] = str(victim)
    world.store.execute("UPDATE vm_snapshots SET saved = ? WHERE tag = 't1'", (json.dumps(saved),))
    pid = _pid(svc, vm)
    with pytest.raises(OperationFailed, match="is damaged: its record names files outside"):
        await svc.snapshot_restore("box", "t1", CTX)
    assert svc.repo.get(vm.id).state == "running" and _pid(svc, vm) == pid
    gone = await svc.snapshot_delete("box", "t1")
    assert not gone.layers_kept and await svc.snapshot_list("box") == []
    assert victim.read_bytes() == b"precious" and world.root.is_dir()

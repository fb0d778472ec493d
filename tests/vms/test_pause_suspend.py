"""Pause, resume and suspend (vms/suspend.py) over the in-memory driver: every state rule and
refusal, the failure paths, stop/delete/restart of a suspended VM, and what a daemon start makes
of a suspend (or a start, or a stop) that a crash cut at each point."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from banger.errors import Conflict, InvalidInput, NotRunning, OperationFailed
from banger.vmm.base import Capability, DriverError
from banger.vms.saved import SUSPEND_TAG, WAKING_MARK
from banger.vms.service import VMService
from banger.vms.spec import VMRecord
from banger.vms.states import Event
from banger.vms.suspend import DISCARDED, SUSPEND_DIR
from tests.vms.memdriver import MemDriver
from tests.vms.world import CTX, World, req


class NoPause(MemDriver):
    """A driver without Capability.PAUSE (and so, here, without suspend either)."""

    def __init__(self) -> None:
        super().__init__(snapshots=False)

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset()


async def _running(world: World, name: str = "box") -> tuple[VMService, VMRecord]:
    svc = await world.service()
    vm = await svc.create(req(name), CTX)
    assert vm.state == "running"
    return svc, vm


def _pid(svc: VMService, vm: VMRecord) -> int:
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    return handle.pid


def _rows(world: World, vm_id: str) -> list[tuple[str, str, str]]:
    rows = world.store.query("SELECT tag, kind, state FROM vm_snapshots WHERE vm_id = ?", (vm_id,))
    return [(r["tag"], r["kind"], r["state"]) for r in rows]


async def _suspended(world: World, name: str = "box") -> tuple[VMService, VMRecord, int]:
    """A running VM with a tmpfs file in its "RAM", suspended. Returns its old pid."""
    svc, vm = await _running(world, name)
    pid = _pid(svc, vm)
    world.driver.memory[pid]["/dev/shm/note"] = "kept"
    out = await svc.suspend_vm(name, CTX)
    assert out.state == "suspended"
    return svc, out, pid


# --- pause / resume ------------------------------------------------------------------------------


async def test_pause_and_resume_keep_the_same_vmm(world: World) -> None:
    svc, vm = await _running(world)
    pid = _pid(svc, vm)
    paused = await svc.pause_vm("box")
    assert paused.state == "paused" and paused.pid == pid
    assert world.driver.paused == {pid}
    running = await svc.resume_vm("box")
    assert running.state == "running" and running.pid == pid
    assert world.driver.paused == set()


async def test_pause_refusals(world: World) -> None:
    svc = await world.service()
    await svc.create(req("off", start=False), CTX)
    with pytest.raises(NotRunning, match="vm off is not running"):
        await svc.pause_vm("off")
    with pytest.raises(Conflict, match="vm off is created, not paused"):
        await svc.resume_vm("off")
    await svc.create(req("on"), CTX)
    with pytest.raises(Conflict, match="vm on is running, not paused"):
        await svc.resume_vm("on")
    await svc.pause_vm("on")
    with pytest.raises(Conflict, match="vm on is already paused"):
        await svc.pause_vm("on")
    with pytest.raises(Conflict, match="vm on is paused: resume it instead"):
        await svc.start_vm("on", CTX)


def test_the_cli_hints_point_at_resume_and_start() -> None:
    from banger.cli.hints import hint_for

    assert hint_for("vm.ssh", "conflict", "vm on is paused: resume it") == "banger vm resume on"
    assert hint_for("vm.start", "conflict", "vm on is paused: resume it") == "banger vm resume on"
    # `vm set` of a paused VM: not a resume hint (it says to stop first).
    assert hint_for("vm.set", "conflict", "vm on is paused; stop it first") is None
    msg = "vm on is suspended (saved to disk), not paused: start it to resume"
    assert hint_for("vm.resume", "conflict", msg) == "banger vm start on"
    assert hint_for("vm.ssh", "not_running", "vm on is suspended") == "banger vm start on"


async def test_a_driver_without_pause_is_refused_clearly(world: World) -> None:
    world.driver = NoPause()
    svc, vm = await _running(world)
    with pytest.raises(InvalidInput, match="vm box: the mem driver cannot pause"):
        await svc.pause_vm("box")
    with pytest.raises(InvalidInput, match="vm box: the mem driver cannot suspend"):
        await svc.suspend_vm("box", CTX)
    assert svc.repo.get(vm.id).state == "running"
    assert _rows(world, vm.id) == []


async def test_a_failed_pause_leaves_the_vm_running(world: World) -> None:
    svc, vm = await _running(world)
    world.driver.fail["pause"] = DriverError("QMP stop timed out")
    with pytest.raises(OperationFailed, match="pausing vm box failed: QMP stop timed out"):
        await svc.pause_vm("box")
    assert svc.repo.get(vm.id).state == "running"


async def test_the_guest_of_a_paused_vm_is_a_conflict_that_says_so(world: World) -> None:
    svc, _ = await _running(world)
    await svc.pause_vm("box")
    with pytest.raises(Conflict, match="vm box is paused"):
        await svc.ssh_target("box")


async def test_stop_and_delete_of_a_paused_vm_work(world: World) -> None:
    svc, vm = await _running(world)
    pid = _pid(svc, vm)
    await svc.pause_vm("box")
    stopped = await svc.stop_vm("box")
    assert stopped.state == "stopped" and pid not in world.driver.paused
    assert world.driver.running() == []
    await svc.start_vm("box", CTX)
    await svc.pause_vm("box")
    await svc.delete("box")
    assert svc.repo.all() == [] and world.driver.running() == []


async def test_a_paused_vm_stays_paused_through_a_daemon_restart(world: World) -> None:
    svc, vm = await _running(world)
    pid = _pid(svc, vm)
    await svc.pause_vm("box")
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "paused"
    assert world.driver.alive[pid] and world.driver.paused == {pid}
    # The runtime dir (its sockets) was kept: the VMM is still ours.
    assert (world.paths.runtime_dir / "vms" / vm.id).exists()
    assert (await again.resume_vm("box")).state == "running"


async def test_a_paused_vm_whose_vmm_died_is_stopped(world: World) -> None:
    svc, vm = await _running(world)
    await svc.pause_vm("box")
    world.driver.die(_pid(svc, vm))
    assert (await svc.get("box")).state == "stopped"


# --- suspend -------------------------------------------------------------------------------------


async def test_suspend_saves_the_machine_and_the_vmm_exits(world: World) -> None:
    svc, vm, pid = await _suspended(world)
    assert not world.driver.alive[pid]
    assert _rows(world, vm.id) == [(SUSPEND_TAG, "suspend", "ready")]
    assert (vm.dir / SUSPEND_DIR / "saved.json").is_file()
    assert not (world.paths.runtime_dir / "vms" / vm.id).exists()
    shown = await svc.get("box")
    assert shown.state == "suspended" and shown.pid is None
    # It is listed with its checkpoints, kind suspend, with its size.
    [snap] = await svc.snapshot_list("box")
    assert snap["kind"] == "suspend" and snap["size_bytes"] > 0


async def test_start_of_a_suspended_vm_wakes_it_and_removes_the_image(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    woke = await svc.start_vm("box", CTX)
    assert woke.state == "running"
    pid = _pid(svc, woke)
    assert world.driver.memory[pid] == {"/dev/shm/note": "kept"}
    assert world.driver.restored[pid].details["kind"] == "suspend"
    # The clock was set through the guest agent.
    assert [c.split(" ", 1)[0] for c in world.driver.commands[pid]] == ["time"]
    assert _rows(world, vm.id) == []
    assert not (vm.dir / SUSPEND_DIR).exists()


async def test_suspend_from_paused(world: World) -> None:
    svc, vm = await _running(world)
    await svc.pause_vm("box")
    assert (await svc.suspend_vm("box", CTX)).state == "suspended"
    assert (await svc.start_vm("box", CTX)).state == "running"


async def test_suspend_refusals(world: World) -> None:
    svc = await world.service()
    await svc.create(req("off", start=False), CTX)
    with pytest.raises(NotRunning, match="vm off is not running"):
        await svc.suspend_vm("off", CTX)
    await svc.create(req("box"), CTX)
    await svc.suspend_vm("box", CTX)
    with pytest.raises(Conflict, match="vm box is already suspended"):
        await svc.suspend_vm("box", CTX)
    with pytest.raises(NotRunning, match="vm box is not running"):
        await svc.pause_vm("box")
    with pytest.raises(Conflict, match="vm box is suspended .*start it to resume"):
        await svc.resume_vm("box")
    with pytest.raises(NotRunning, match="vm box is suspended"):
        await svc.ssh_target("box")
    with pytest.raises(Conflict, match="vm box is suspended"):
        await svc.set_vm("box", 2, None, None)
    # Checkpoints: none of a suspended VM (it is not running), no restore over its saved state.
    with pytest.raises(NotRunning, match="vm box is not running \\(state suspended\\)"):
        await svc.snapshot_create("box", "t1", CTX)


async def test_a_failed_save_leaves_the_vm_running_and_nothing_on_disk(world: World) -> None:
    svc, vm = await _running(world)
    pid = _pid(svc, vm)
    world.driver.fail["save"] = DriverError("migration failed: disk full")
    with pytest.raises(OperationFailed, match="suspending vm box failed: migration failed"):
        await svc.suspend_vm("box", CTX)
    assert svc.repo.get(vm.id).state == "running" and world.driver.alive[pid]
    assert _rows(world, vm.id) == []
    assert not (vm.dir / SUSPEND_DIR).exists()
    # And it can be suspended afterwards.
    assert (await svc.suspend_vm("box", CTX)).state == "suspended"


async def test_a_failed_restore_leaves_the_vm_suspended_with_its_image(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    world.driver.fail["restore"] = DriverError("state.mig is truncated")
    with pytest.raises(OperationFailed, match="state.mig is truncated"):
        await svc.start_vm("box", CTX)
    assert svc.repo.get(vm.id).state == "suspended"
    assert _rows(world, vm.id) == [(SUSPEND_TAG, "suspend", "ready")]
    assert world.driver.running() == []
    # The next start works.
    woke = await svc.start_vm("box", CTX)
    assert world.driver.memory[_pid(svc, woke)] == {"/dev/shm/note": "kept"}


async def test_stop_of_a_suspended_vm_discards_the_image(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    stopped = await svc.stop_vm("box")
    assert stopped.state == "stopped"
    assert _rows(world, vm.id) == [] and not (vm.dir / SUSPEND_DIR).exists()
    # The next start is a cold boot (a launch, not a restore), with empty RAM.
    woke = await svc.start_vm("box", CTX)
    pid = _pid(svc, woke)
    assert pid not in world.driver.restored and world.driver.memory[pid] == {}
    assert DISCARDED == "discarded the saved state (suspend image)"


async def test_restart_of_a_suspended_vm_is_a_cold_boot(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    woke = await svc.restart_vm("box", CTX)
    assert woke.state == "running" and _pid(svc, woke) not in world.driver.restored
    assert _rows(world, vm.id) == []


async def test_delete_of_a_suspended_vm_leaves_no_file(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    await svc.delete("box")
    assert not vm.dir.exists() and _rows(world, vm.id) == []
    # Prune keeps suspended VMs (their saved state is worth something).
    await svc.create(req("other"), CTX)
    await svc.suspend_vm("other", CTX)
    assert await svc.prune() == []


async def test_a_suspended_vm_stays_suspended_through_a_daemon_restart(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "suspended"
    woke = await again.start_vm("box", CTX)
    assert world.driver.memory[_pid(again, woke)] == {"/dev/shm/note": "kept"}


async def test_a_damaged_record_is_refused_never_followed(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    world.store.execute("UPDATE vm_snapshots SET dir = ? WHERE vm_id = ?", (str(world.root), vm.id))
    with pytest.raises(OperationFailed, match="suspend image of vm box is damaged"):
        await svc.start_vm("box", CTX)
    assert svc.repo.get(vm.id).state == "suspended"
    # Stop discards the record without touching what it names.
    await svc.stop_vm("box")
    assert world.root.exists() and _rows(world, vm.id) == []


# --- crashes (what the next daemon start makes of each cut) ---------------------------------------


async def test_restart_after_a_cut_before_the_save(world: World) -> None:
    """Pending row, no file, VMM alive: the VM runs on (thawed), the row is gone."""
    svc, vm = await _running(world)
    pid = _pid(svc, vm)
    svc.saved.begin(vm.id, SUSPEND_TAG, "suspend", vm.dir / SUSPEND_DIR)
    world.driver.paused.add(pid)  # the save had stopped the vCPUs
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "running" and world.driver.alive[pid]
    assert world.driver.paused == set()
    assert _rows(world, vm.id) == []


async def test_restart_after_a_cut_after_the_save(world: World) -> None:
    """Pending row, files written, VMM exited: stopped, no file left."""
    svc, vm = await _running(world)
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    dest = vm.dir / SUSPEND_DIR
    svc.saved.begin(vm.id, SUSPEND_TAG, "suspend", dest)
    await world.driver.save(handle, world.driver.specs[handle.pid], dest, keep_running=False)
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "stopped"
    assert _rows(world, vm.id) == [] and not dest.exists()


async def test_restart_after_a_cut_after_the_image_was_ready(world: World) -> None:
    """Ready row, VMM exited, state not yet changed: the VM is suspended, and wakes."""
    svc, vm = await _running(world)
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    world.driver.memory[handle.pid]["x"] = "y"
    dest = vm.dir / SUSPEND_DIR
    svc.saved.begin(vm.id, SUSPEND_TAG, "suspend", dest)
    saved = await world.driver.save(
        handle, world.driver.specs[handle.pid], dest, keep_running=False
    )
    svc.saved.finish(vm.id, SUSPEND_TAG, saved, 1)
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "suspended"
    woke = await again.start_vm("box", CTX)
    assert world.driver.memory[_pid(again, woke)] == {"x": "y"}


async def test_restart_after_a_start_cut_after_its_wake(world: World) -> None:
    """Running again, the image's files not deleted (a failure): its row goes at once (it can
    never make the VM `suspended` again), the files at the next daemon start."""
    svc, vm, _ = await _suspended(world)
    rec = svc.saved.get(vm.id, SUSPEND_TAG)
    world.driver.fail["delete_saved"] = OSError("cut")
    await svc.start_vm("box", CTX)
    assert _rows(world, vm.id) == [] and rec.dir.exists()
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "running"
    assert _rows(world, vm.id) == [] and not rec.dir.exists()


async def test_restart_after_a_stop_cut_after_the_image_went(world: World) -> None:
    """Suspended without an image: stopped."""
    svc, vm, _ = await _suspended(world)
    svc.saved.delete(vm.id, SUSPEND_TAG)
    await svc.stop()
    again = await world.service()
    vm2 = await again.get("box")
    assert vm2.state == "stopped"
    assert (await again.start_vm("box", CTX)).state == "running"


async def test_restart_after_a_stop_cut_after_the_files_went_but_not_the_row(
    world: World,
) -> None:
    """A stop deletes the image's files, then its row: cut between the two, the VM is stopped
    (a start would otherwise try to load files that are gone) and the row goes."""
    svc, vm, _ = await _suspended(world)
    shutil.rmtree(vm.dir / "suspend")
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "stopped"
    assert again.saved.list(vm.id) == []
    assert (await again.start_vm("box", CTX)).state == "running"


async def test_restart_after_a_start_cut_while_the_guest_ran_discards_the_image(
    world: World,
) -> None:
    """Cut between the restore (the guest runs and writes its disks) and the state change: the
    image is older than the disks, so it is discarded, never loaded again."""
    svc, vm, _ = await _suspended(world)
    rec = svc.saved.get(vm.id, SUSPEND_TAG)
    (rec.dir / WAKING_MARK).write_text("cut\n")  # what the start leaves when the daemon dies
    await svc.stop()
    again = await world.service()
    out = await again.get("box")
    assert out.state == "stopped"
    assert _rows(world, vm.id) == [] and not rec.dir.exists()
    assert (await again.start_vm("box", CTX)).state == "running"  # a cold boot


async def test_a_failed_start_leaves_no_waking_mark(world: World) -> None:
    svc, vm, _ = await _suspended(world)
    rec = svc.saved.get(vm.id, SUSPEND_TAG)
    world.driver.fail["restore"] = OperationFailed("cannot load")
    with pytest.raises(OperationFailed):
        await svc.start_vm("box", CTX)
    assert not (rec.dir / WAKING_MARK).exists()
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "suspended"


def test_the_table_has_the_discard() -> None:
    from banger.vms.states import TRANSITIONS

    assert TRANSITIONS[("suspended", Event.DISCARDED)] == "stopped"
    assert ("running", Event.DISCARDED) not in TRANSITIONS


async def test_a_suspend_cancelled_before_its_save_leaves_the_vm_running(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that goes away mid-suspend: the VM runs on, no row, no file."""
    import asyncio

    from banger.vms.service import TEST_HOLD_ENV
    from tests.waiting import async_wait_until

    svc, vm = await _running(world)
    monkeypatch.setenv(TEST_HOLD_ENV, "suspend")
    task = asyncio.create_task(svc.suspend_vm("box", CTX))
    flag = world.paths.runtime_dir / "test-hold-suspend"
    await async_wait_until(flag.exists, 10, "the suspend to reach its hold point")
    assert _rows(world, vm.id) == [(SUSPEND_TAG, "suspend", "pending")]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert svc.repo.get(vm.id).state == "running" and world.driver.alive[_pid(svc, vm)]
    assert _rows(world, vm.id) == [] and not (vm.dir / SUSPEND_DIR).exists()


async def test_a_pending_row_naming_a_dir_elsewhere_is_dropped_never_followed(
    world: World, tmp_path: Path
) -> None:
    svc, vm = await _running(world)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("mine")
    svc.saved.begin(vm.id, SUSPEND_TAG, "suspend", victim)
    await svc.stop()
    again = await world.service()
    assert (victim / "keep").read_text() == "mine"
    assert _rows(world, vm.id) == []
    assert (await again.get("box")).state == "running"


async def test_a_running_vm_left_frozen_by_a_cut_save_runs_after_a_daemon_start(
    world: World,
) -> None:
    """A checkpoint, fork or template save cut by a crash can leave the vCPUs stopped with the
    record still `running` (Firecracker pauses for the whole save): the next start thaws it."""
    svc, vm = await _running(world)
    pid = _pid(svc, vm)
    world.driver.paused.add(pid)
    await svc.stop()
    again = await world.service()
    assert (await again.get("box")).state == "running"
    assert pid not in world.driver.paused and _pid(again, vm) == pid

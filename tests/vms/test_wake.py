"""The boot pipeline's wake path (vms/boot.py) over the in-memory driver: a saved machine comes
back running, with its memory, its clock set or a new identity taken, and a failure before the
guest runs again leaves a suspended VM suspended."""

from __future__ import annotations

import dataclasses

import pytest

from banger.errors import Conflict, OperationFailed
from banger.guest.identity import GuestIdentity
from banger.vms.boot import Progress, Wake
from banger.vms.service import VMService
from banger.vms.states import Event
from tests.vms.world import CTX, World, req


async def _suspended(world: World, name: str) -> tuple[VMService, Wake]:
    svc = await world.service()
    vm = await svc.create(req(name), CTX)
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    world.driver.memory[handle.pid]["/tmp/note"] = "kept"
    spec = world.driver.specs[handle.pid]
    saved = await world.driver.save(handle, spec, vm.dir / "suspend", keep_running=False)
    svc.lifecycle.apply(vm.id, Event.SUSPEND, "suspended")
    return svc, Wake(saved, kind="resume")


async def test_a_suspended_vm_wakes_running_with_its_memory_and_its_clock_set(world: World) -> None:
    svc, wake = await _suspended(world, "sleepy")
    vm = svc.repo.get(svc._find("sleepy").id)
    assert vm.state == "suspended"
    woke = await svc.boot.wake(vm, Progress(CTX, 3), wake)
    assert woke.state == "running"
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    assert world.driver.memory[handle.pid] == {"/tmp/note": "kept"}
    sent = world.driver.commands[handle.pid]
    assert len(sent) == 1 and sent[0].startswith("time ")


async def test_a_wake_with_an_identity_sends_it_all(world: World) -> None:
    svc, wake = await _suspended(world, "parent")
    ident = GuestIdentity(
        hostname="child",
        machine_id="0" * 32,
        host_key_private="-----BEGIN OPENSSH PRIVATE KEY-----\nx\n",
        host_key_public="ssh-ed25519 AAAA child",
    )
    vm = svc.repo.get(svc._find("parent").id)
    woke = await svc.boot.wake(vm, Progress(CTX, 3), Wake(wake.saved, identity=ident, kind="fork"))
    handle = svc.repo.handle(woke.id)
    assert handle is not None
    sent = world.driver.commands[handle.pid]
    assert [line.split(" ", 1)[0] for line in sent] == [
        "hostname", "machineid", "hostkey", "time",
    ]  # fmt: skip


async def test_a_failed_restore_leaves_the_vm_suspended(world: World) -> None:
    svc, wake = await _suspended(world, "stuck")
    vm = svc.repo.get(svc._find("stuck").id)
    world.driver.fail["restore"] = OperationFailed("no such file")
    try:
        await svc.boot.wake(vm, Progress(CTX, 3), wake)
    except OperationFailed:
        pass
    else:
        raise AssertionError("the wake should have failed")
    assert svc.repo.get(vm.id).state == "suspended"
    assert world.driver.running() == []


async def test_an_identity_the_guest_refuses_fails_the_wake_with_its_words(world: World) -> None:
    svc, wake = await _suspended(world, "refuser")
    vm = svc.repo.get(svc._find("refuser").id)
    world.driver.fail["agent"] = RuntimeError("date: invalid date")
    try:
        await svc.boot.wake(vm, Progress(CTX, 3), wake)
    except OperationFailed as e:
        assert "invalid date" in e.message
    else:
        raise AssertionError("the wake should have failed")
    # The guest ran again (its disks moved on): the suspend image is no longer the VM's state.
    assert svc.repo.get(vm.id).state == "error"
    assert world.driver.running() == []


async def test_a_machine_saved_by_another_vmm_is_refused_and_stays_suspended(
    world: World,
) -> None:
    svc, wake = await _suspended(world, "moved")
    vm = svc.repo.get(svc._find("moved").id)
    elsewhere = dataclasses.replace(wake.saved, driver="firecracker")
    with pytest.raises(Conflict, match="made by the firecracker VMM"):
        await svc.boot.wake(vm, Progress(CTX, 3), Wake(elsewhere, kind="resume"))
    assert svc.repo.get(vm.id).state == "suspended"
    assert not world.driver.restored

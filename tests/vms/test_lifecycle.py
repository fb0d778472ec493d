"""The VM lifecycle without QEMU: the real VMService, repository, state machine and boot pipeline
over an in-memory `Driver` (tests/vms/memdriver.py). Disks, host keys and the store are real
(qemu-img, mkfs.ext4, ssh-keygen, SQLite in a temp dir); the seed disk, the client key and the
SSH banner wait are injected (`GuestTools`), as is the network service where a test needs one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from banger.errors import (
    AlreadyExists,
    Conflict,
    InvalidInput,
    NotFound,
    NotRunning,
    OperationFailed,
)
from banger.vmm.base import GuestChannel
from banger.vms import recovery
from banger.vms.spec import VMRecord
from banger.vms.states import TRANSITIONS, Event, Lifecycle
from tests.vms.memdriver import MemDriver, check_protocol
from tests.vms.world import (
    CLEAN,
    CTX,
    FakeKernel,
    World,
    req,
)

# --- the table ----------------------------------------------------------------------------------


def test_the_double_is_a_driver() -> None:
    check_protocol(MemDriver())


@pytest.mark.parametrize("state", ["created", "running", "paused", "suspended", "stopped", "error"])
@pytest.mark.parametrize("event", list(Event))
def test_every_state_event_pair_is_a_transition_or_a_refusal_naming_the_state(
    state: Any, event: Event, tmp_path: Path
) -> None:
    vm = VMRecord(
        id="abc", name="box", state=state, image_id="i", image_name="i", kernel="k", vcpus=1,
        memory_mib=256, disk_size_bytes=1, init_mode="auto", network="user", created_at="t",
        updated_at="t", dir=tmp_path, console_log=tmp_path / "c",
    )  # fmt: skip
    target = TRANSITIONS.get((state, event))
    if target is not None:
        assert Lifecycle.check(vm, event) == target
        return
    with pytest.raises((Conflict, NotRunning)) as e:
        Lifecycle.check(vm, event)
    assert "vm box is" in e.value.message and state in e.value.message


def test_snapshot_states_are_in_the_table() -> None:
    assert TRANSITIONS[("running", Event.PAUSE)] == "paused"
    assert TRANSITIONS[("paused", Event.RESUME)] == "running"
    assert TRANSITIONS[("running", Event.SUSPEND)] == "suspended"
    assert TRANSITIONS[("suspended", Event.RESTORE)] == "running"
    assert ("suspended", Event.LAUNCHED) not in TRANSITIONS  # a cold boot would lose the RAM


# --- verbs --------------------------------------------------------------------------------------


async def test_create_start_stop_restart_kill_delete(world: World) -> None:
    svc = await world.service()
    vm = await svc.create(req("box"), CTX)
    assert vm.state == "running" and vm.pid in world.driver.running() and vm.error is None
    assert vm.root_disk == "qcow2 overlay" and vm.vmm == "mem"
    assert world.guest.seeds[-1].hostname == "box" and world.guest.seeds[-1].vsockd is None
    assert (vm.dir / "work.ext4").exists() and (vm.dir / "seed.ext4").exists()
    assert "box.vm ssh-ed25519" in svc.known_hosts.read_text()
    assert recovery.marked(vm.dir, recovery.CREATING) is None

    with pytest.raises(Conflict, match="vm box is already running"):
        await svc.start_vm("box", CTX)
    with pytest.raises(AlreadyExists, match="vm 'box' already exists"):
        await svc.create(req("box"), CTX)

    stopped = await svc.stop_vm("box")
    assert stopped.state == "stopped" and stopped.pid is None
    assert world.leftovers(vm.id) == CLEAN
    with pytest.raises(NotRunning, match=r"vm box is not running \(state stopped\)"):
        await svc.stop_vm("box")
    with pytest.raises(NotRunning, match="vm box is stopped"):
        await svc.ssh_target("box")

    started = await svc.start_vm("bo", CTX)  # a unique prefix
    assert started.state == "running" and started.pid != vm.pid
    restarted = await svc.restart_vm("box", CTX)
    assert restarted.state == "running" and restarted.pid != started.pid
    assert world.driver.running() == [restarted.pid]

    same = await svc.kill_vm("box", "USR1")  # the VMM survives it
    assert same.state == "running" and same.pid == restarted.pid
    with pytest.raises(InvalidInput, match="signal 'STOP' is not allowed"):
        await svc.kill_vm("box", "STOP")
    killed = await svc.kill_vm("box", "SIGKILL")
    assert killed.state == "stopped" and world.driver.running() == []

    await svc.start_vm("box", CTX)
    gone = await svc.delete("box")
    assert gone.name == "box" and world.driver.running() == []
    assert not vm.dir.exists() and "box.vm" not in svc.known_hosts.read_text()
    with pytest.raises(NotFound, match="vm 'box' not found"):
        await svc.get("box")
    assert await svc.list() == []


async def test_create_without_start_then_set(world: World) -> None:
    svc = await world.service()
    vm = await svc.create(req("idle", start=False), CTX)
    assert vm.state == "created" and world.driver.running() == []
    changed = await svc.set_vm("idle", vcpus=2, memory_mib=300, disk_size=None)
    assert (changed.vcpus, changed.memory_mib, changed.state) == (2, 300, "created")
    with pytest.raises(InvalidInput, match="disk size can only grow"):
        await svc.set_vm("idle", None, None, "64M")
    with pytest.raises(InvalidInput, match="nothing to change"):
        await svc.set_vm("idle", None, None, None)
    await svc.start_vm("idle", CTX)
    with pytest.raises(Conflict, match="vm idle is running; stop it first"):
        await svc.set_vm("idle", vcpus=1, memory_mib=None, disk_size=None)
    assert world.driver.specs[world.driver.running()[0]].vcpus == 2


async def test_a_stop_the_guest_ignores_is_forced(world: World) -> None:
    svc = await world.service()
    vm = await svc.create(req("deaf"), CTX)
    world.driver.stubborn = True
    stopped = await svc.stop_vm("deaf", timeout=0.01)
    assert stopped.state == "stopped" and world.leftovers(vm.id) == CLEAN


async def test_a_vmm_that_dies_is_reported_stopped_or_error_with_the_console_reason(
    world: World,
) -> None:
    svc = await world.service()
    a = await svc.create(req("a"), CTX)
    b = await svc.create(req("b"), CTX)
    assert a.pid is not None and b.pid is not None
    world.driver.die(a.pid)
    assert (await svc.get("a")).state == "stopped"
    with open(b.console_log, "a") as f:
        f.write("banger-guest: ERROR --init systemd: the image has no systemd\n")
    world.driver.die(b.pid)
    dead = await svc.get("b")
    assert dead.state == "error" and "has no systemd" in (dead.error or "")
    assert world.leftovers(a.id) == CLEAN and world.leftovers(b.id) == CLEAN


# --- failures at every stage --------------------------------------------------------------------


def fail_resolve(w: World) -> None:
    del w.kernels.kernels["debian-6.1"]


def fail_network(w: World) -> None:
    assert w.network is not None
    w.network.fail_attach = OSError("ip tuntap add: Operation not permitted")


def fail_seed(w: World) -> None:
    w.guest.fail_seed = OSError("mkfs.ext4: No space left on device")


def fail_launch(w: World) -> None:
    from banger.vmm.base import DriverError

    w.driver.fail["launch"] = DriverError("qemu exited at once: could not open disk")


def fail_wait_guest(w: World) -> None:
    from banger.vmm.base import DriverError

    w.driver.fail["wait_ready"] = DriverError("guest init failed: ERROR no work disk")


def fail_wait_ssh(w: World) -> None:
    w.guest.fail_ssh = TimeoutError("no SSH banner from 127.0.0.1:2222 within 60s")


STAGE_FAILURES: list[tuple[str, Callable[[World], None], type[Exception], str]] = [
    ("resolve", fail_resolve, NotFound, "kernel 'debian-6.1' of vm v no longer exists"),
    ("network", fail_network, OperationFailed, "Operation not permitted"),
    ("seed", fail_seed, OperationFailed, "No space left on device"),
    ("launch", fail_launch, OperationFailed, "could not open disk"),
    ("wait_guest", fail_wait_guest, OperationFailed, "ERROR no work disk"),
    ("wait_ssh", fail_wait_ssh, OperationFailed, "no SSH banner"),
]


@pytest.mark.parametrize(("stage", "breaker", "kind", "reason"), STAGE_FAILURES)
async def test_a_failure_at_any_boot_stage_leaves_error_with_the_reason_and_nothing_running(
    bridged: World,
    stage: str,
    breaker: Callable[[World], None],
    kind: type[Exception],
    reason: str,
) -> None:
    svc = await bridged.service()
    await svc.create(req("v", start=False), CTX)
    breaker(bridged)
    with pytest.raises(kind) as e:
        await svc.start_vm("v", CTX)
    assert reason in str(e.value)
    if kind is OperationFailed:
        assert str(e.value).startswith("vm v failed to boot: ")
    vm = await svc.get("v")
    assert vm.state == "error" and reason in (vm.error or "") and vm.pid is None
    assert bridged.leftovers(vm.id) == CLEAN
    assert recovery.marked(vm.dir, recovery.CREATING) is None
    # The record stays (it says why); the VM boots once the cause is gone.
    if stage == "resolve":
        bridged.kernels.kernels["debian-6.1"] = FakeKernel(
            "debian-6.1", bridged.root / "kernel/initrd.img", None, bridged.root / "kernel/vmlinuz"
        )
    bridged.guest.fail_seed = bridged.guest.fail_ssh = None
    assert bridged.network is not None
    bridged.network.fail_attach = None
    again = await svc.start_vm("v", CTX)
    assert again.state == "running" and again.error is None and again.ip == "10.9.0.2"


async def test_a_failed_publish_only_warns(
    bridged: World, caplog: pytest.LogCaptureFixture
) -> None:
    svc = await bridged.service()
    assert bridged.network is not None
    bridged.network.fail_publish = OSError("ssh_config: read-only file system")
    with caplog.at_level("WARNING", logger="banger.vms"):
        vm = await svc.create(req("pub"), CTX)
    assert vm.state == "running" and "publishing the vm failed" in caplog.text


async def test_a_create_that_fails_before_the_vm_exists_leaves_nothing(world: World) -> None:
    svc = await world.service()
    with pytest.raises(NotFound, match="image 'nope' not found"):
        await svc.create(req("x", image="nope"), CTX)
    with pytest.raises(InvalidInput, match="kernel bare has no initramfs"):
        await svc.create(req("x", kernel="bare"), CTX)
    assert await svc.list() == []
    assert list(world.paths.vms_dir.iterdir()) == [] == list(world.paths.staging_dir.iterdir())


# --- cancellation -------------------------------------------------------------------------------


async def test_cancelling_a_create_mid_boot_leaves_nothing(bridged: World) -> None:
    svc = await bridged.service()
    bridged.driver.hold_ready()
    op = svc.begin_create(req("gone"), "op-1")
    await asyncio.wait_for(bridged.driver.waiting.wait(), 30)
    assert op.stage == "wait_guest" and not op.done
    vm_id = next(p.name for p in bridged.paths.vms_dir.iterdir())
    assert bridged.leftovers(vm_id)["vmms"]  # it runs while the guest boots
    await svc.cancel_create("op-1")
    assert op.done and op.cancelled and op.vm is None
    assert op.status(lambda e: {"code": "x", "message": str(e)})["error"]["code"] == "cancelled"
    assert await svc.list() == [] and list(bridged.paths.vms_dir.iterdir()) == []
    assert bridged.leftovers(vm_id) == CLEAN
    assert "gone.vm" not in svc.known_hosts.read_text()


async def test_cancelling_a_start_leaves_the_vm_stopped(bridged: World) -> None:
    svc = await bridged.service()
    vm = await svc.create(req("s", start=False), CTX)
    bridged.driver.hold_ready()
    task = asyncio.create_task(svc.start_vm("s", CTX))
    await asyncio.wait_for(bridged.driver.waiting.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = await svc.get("s")
    assert after.state == "stopped" and after.pid is None
    assert bridged.leftovers(vm.id) == CLEAN


async def test_an_async_create_failure_keeps_its_error(world: World) -> None:
    svc = await world.service()
    fail_launch(world)
    op = svc.begin_create(req("late"), "op-2")
    assert op.task is not None
    await op.task
    st = op.status(lambda e: {"code": type(e).__name__, "message": str(e)})
    assert st["done"] and st["stage"] == "failed"
    assert (
        st["error"]["code"] == "OperationFailed" and "could not open disk" in st["error"]["message"]
    )
    vm = await svc.get("late")
    assert vm.state == "error" and "could not open disk" in (vm.error or "")
    assert recovery.marked(vm.dir, recovery.CREATING) is None and world.leftovers(vm.id) == CLEAN


# --- daemon restart -----------------------------------------------------------------------------


async def test_a_new_service_readopts_live_vms_and_marks_dead_ones(bridged: World) -> None:
    first = await bridged.service()
    live = await first.create(req("live"), CTX)
    dead = await first.create(req("dead"), CTX)
    crashed = await first.create(req("crashed"), CTX)
    idle = await first.create(req("idle", start=False), CTX)
    await first.stop()  # daemon shutdown: the VMs keep running
    assert set(bridged.driver.running()) == {live.pid, dead.pid, crashed.pid}
    assert dead.pid is not None and crashed.pid is not None
    bridged.driver.die(dead.pid)
    with open(crashed.console_log, "a") as f:
        f.write("Kernel panic - not syncing: VFS: Unable to mount root fs\n")
    bridged.driver.die(crashed.pid)

    second = await bridged.service()
    states = {vm.name: vm for vm in await second.list()}
    assert states["live"].state == "running" and states["live"].pid == live.pid
    assert states["dead"].state == "stopped" and states["dead"].pid is None
    assert states["crashed"].state == "error" and "Kernel panic" in (states["crashed"].error or "")
    assert states["idle"].state == "created"
    assert bridged.network is not None and bridged.network.reconciled == ["live"]
    assert not (bridged.paths.runtime_dir / "vms" / dead.id).exists()
    await second.stop_vm("live")
    assert bridged.driver.running() == [] and idle.id not in bridged.network.attached


async def test_a_restart_fails_a_create_it_interrupted(world: World) -> None:
    first = await world.service()
    vm = await first.create(req("cut", start=False), CTX)
    recovery.mark(vm.dir, recovery.CREATING, "wait_guest")  # as a crash mid-boot leaves it
    second = await world.service()
    cut = await second.get("cut")
    assert cut.state == "error"
    assert (cut.error or "").startswith(
        "interrupted: bangerd stopped while creating this VM (stage wait_guest)"
    )
    assert "`" not in (cut.error or "")  # no CLI command quoted (the CLI adds its own hint)
    assert recovery.marked(vm.dir, recovery.CREATING) is None


async def test_a_restart_finishes_an_interrupted_delete(world: World) -> None:
    first = await world.service()
    vm = await first.create(req("half"), CTX)
    await first.stop()
    recovery.mark(vm.dir, recovery.DELETING, "", durable=True)
    second = await world.service()
    assert await second.list() == [] and not vm.dir.exists()
    assert world.driver.running() == []


async def test_references_name_the_vms_using_an_image_or_kernel(world: World) -> None:
    svc = await world.service()
    await svc.create(req("user1", start=False), CTX)
    assert svc.references("image", "img1") == ["vm user1"]
    assert svc.references("kernel", "debian-6.1") == ["vm user1"]
    assert svc.references("image", "other") == [] == svc.references("thing", "img1")


async def test_a_vsock_driver_gets_the_agent_on_its_seed(world: World) -> None:
    world.driver.channel = GuestChannel("vsock", vsock_port=1024)
    svc = await world.service()
    await svc.create(req("fc"), CTX)
    seed = world.guest.seeds[-1]
    assert seed.vsockd == world.root / "vsockd" and seed.vsock_port == 1024

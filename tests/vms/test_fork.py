"""`vm fork` (vms/fork.py) over the in-memory driver: child names, refusals, the identity each
child is sent, a failed child leaves nothing, the parent goes on as it was, and a daemon start
removes what a crash left of a fork."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.errors import AlreadyExists, Conflict, InvalidInput, NotRunning
from banger.vmm.base import SavedMachine
from banger.vmm.plan import root_disk
from banger.vms import disks, recovery
from banger.vms.fork import MAX_CHILDREN, child_names, disk_placeholders
from banger.vms.service import VMService
from banger.vms.spec import VMRecord
from banger.vms.states import Event
from tests.vms.memdriver import MemDriver
from tests.vms.world import CTX, World, req


async def _parent(world: World, name: str = "parent") -> tuple[VMService, VMRecord, int]:
    svc = await world.service()
    vm = await svc.create(req(name), CTX)
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    world.driver.memory[handle.pid]["/tmp/note"] = "from the parent"
    return svc, vm, handle.pid


def _pinned(world: World) -> str:
    path = world.paths.ssh_dir / "known_hosts"
    return path.read_text() if path.exists() else ""


def test_names_are_new_alone_or_numbered() -> None:
    assert child_names("web", None) == ["web"]
    assert child_names("web", 1) == ["web-1"]
    assert child_names("web", 3) == ["web-1", "web-2", "web-3"]
    for bad in (0, MAX_CHILDREN + 1):
        with pytest.raises(InvalidInput, match=f"1 to {MAX_CHILDREN}"):
            child_names("web", bad)
    with pytest.raises(InvalidInput):
        child_names("Not A Name", None)


async def test_children_carry_the_parents_memory_and_take_their_own_identity(
    bridged: World,
) -> None:
    svc, parent, ppid = await _parent(bridged)
    result = await svc.fork("parent", "kid", 2, CTX)
    assert [c.name for c in result.children] == ["kid-1", "kid-2"]
    assert all(c.error is None and c.vm is not None for c in result.children)
    machine_ids = set()
    for child in result.children:
        assert child.vm is not None and child.vm.state == "running"
        handle = svc.repo.handle(child.vm.id)
        assert handle is not None
        assert bridged.driver.memory[handle.pid] == {"/tmp/note": "from the parent"}
        sent = bridged.driver.commands[handle.pid]
        verbs = [line.split(" ", 1)[0] for line in sent]
        assert verbs == ["hostname", "machineid", "addr", "hostkey", "time"]
        assert sent[0] == f"hostname {child.name}"
        assert sent[2] == "addr 10.9.0.2/24 10.9.0.1 52:54:00:00:00:02"  # the child's attach
        machine_ids.add(sent[1])
        pub = (child.vm.dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
        assert f"{child.name}.vm" in _pinned(bridged) and pub in _pinned(bridged)
        assert (child.vm.dir / "seed.ext4").read_bytes() == (parent.dir / "seed.ext4").read_bytes()
        assert not (child.vm.dir / recovery.FORKING).exists()
        assert disks.work_disk(child.vm.dir).format == "qcow2"
        assert child.vm.id in bridged.network.published_vms  # type: ignore[union-attr]
    assert len(machine_ids) == 2
    # The parent goes on: same process, running, its memory as it was.
    assert result.parent.state == "running" and svc.repo.handle(parent.id).pid == ppid  # type: ignore[union-attr]
    assert ppid in bridged.driver.running()
    # The base keeps only what some layer reads through (nothing here: the double copies).
    assert list(bridged.paths.bases_dir.iterdir()) == []


async def test_one_child_without_a_count_takes_the_name(world: World) -> None:
    svc, _, _ = await _parent(world)
    result = await svc.fork("parent", "solo", None, CTX)
    assert [c.name for c in result.children] == ["solo"]
    assert svc._find("solo").state == "running"


async def test_a_taken_name_refuses_the_whole_fork_before_any_work(world: World) -> None:
    svc, _, ppid = await _parent(world)
    await svc.create(req("kid-2"), CTX)
    with pytest.raises(AlreadyExists, match="'kid-2'"):
        await svc.fork("parent", "kid", 3, CTX)
    assert sorted(svc.repo.names()) == ["kid-2", "parent"]
    assert not world.paths.bases_dir.exists() or list(world.paths.bases_dir.iterdir()) == []
    assert ppid in world.driver.running()
    assert not svc._reserved


async def test_a_stopped_parent_cannot_be_forked(world: World) -> None:
    svc, _, _ = await _parent(world)
    await svc.stop_vm("parent")
    with pytest.raises(NotRunning, match="running or paused"):
        await svc.fork("parent", "kid", None, CTX)
    assert sorted(svc.repo.names()) == ["parent"]


async def test_a_driver_that_cannot_fork_is_refused(world: World) -> None:
    world.driver = MemDriver(snapshots=False)
    svc, _, _ = await _parent(world)
    with pytest.raises(Conflict, match="cannot fork"):
        await svc.fork("parent", "kid", None, CTX)
    assert sorted(svc.repo.names()) == ["parent"]


async def test_a_paused_parent_stays_paused(world: World) -> None:
    svc, parent, ppid = await _parent(world)
    handle = svc.repo.handle(parent.id)
    assert handle is not None
    await world.driver.pause(handle)
    svc.lifecycle.apply(parent.id, Event.PAUSE, "paused")
    result = await svc.fork("parent", "kid", None, CTX)
    assert result.children[0].error is None
    assert svc.repo.get(parent.id).state == "paused" and ppid in world.driver.paused


async def test_a_child_that_refuses_its_identity_is_removed_whole_the_others_kept(
    world: World,
) -> None:
    svc, parent, ppid = await _parent(world)
    world.driver.fail["agent"] = RuntimeError("hostnamectl: failed")
    result = await svc.fork("parent", "kid", 2, CTX)
    bad, good = result.children
    assert bad.vm is None and bad.error is not None and "hostnamectl: failed" in bad.error
    assert good.error is None and good.vm is not None and good.vm.state == "running"
    assert sorted(svc.repo.names()) == ["kid-2", "parent"]
    assert sorted(p.name for p in world.paths.vms_dir.iterdir()) == sorted([parent.id, good.vm.id])
    assert "kid-1.vm" not in _pinned(world) and "kid-2.vm" in _pinned(world)
    running = world.driver.running()
    assert sorted(running) == sorted([ppid, svc.repo.handle(good.vm.id).pid])  # type: ignore[union-attr]


async def test_a_failed_restore_leaves_no_child(world: World) -> None:
    svc, _, _ = await _parent(world)
    world.driver.fail["restore"] = RuntimeError("no such file")
    result = await svc.fork("parent", "kid", None, CTX)
    assert result.children[0].vm is None and "no such file" in (result.children[0].error or "")
    assert sorted(svc.repo.names()) == ["parent"]
    assert list(world.paths.staging_dir.iterdir()) == []


async def test_a_daemon_start_removes_a_half_made_child_and_finishes_the_base(
    world: World,
) -> None:
    svc, parent, ppid = await _parent(world)
    result = await svc.fork("parent", "kid", None, CTX)
    child = result.children[0].vm
    assert child is not None
    # As a crash during the child's wake leaves it: marked, and a base being made.
    recovery.mark(child.dir, recovery.FORKING, "parent")
    stale = world.paths.bases_dir / "0123456789ab"
    stale.mkdir(parents=True)
    (stale / "state.mig").write_bytes(b"x")
    await svc.stop()
    again = await world.service()
    assert sorted(again.repo.names()) == ["parent"]
    assert not child.dir.exists() and "kid.vm" not in _pinned(world)
    assert not stale.exists()
    assert again.repo.get(parent.id).state == "running" and ppid in world.driver.running()


def test_a_dir_without_a_raw_work_disk_boots_its_qcow2(tmp_path: object) -> None:
    from pathlib import Path

    vdir = Path(str(tmp_path))
    assert disks.work_disk(vdir).path == vdir / disks.WORK_OVERLAY
    (vdir / disks.WORK_RAW).touch()
    assert disks.work_disk(vdir).format == "raw"


async def test_growing_a_childs_work_disk_flattens_it_into_its_own(world: World) -> None:
    svc, parent, _ = await _parent(world)
    result = await svc.fork("parent", "kid", None, CTX)
    child = result.children[0].vm
    assert child is not None and not (child.dir / disks.WORK_RAW).exists()
    await svc.stop_vm("kid")
    grown = await svc.set_vm("kid", None, None, "160M")
    assert grown.disk_size_bytes == 160 << 20
    # Its own raw work disk now (the chain's content, grown), and a fresh overlay over it.
    assert (child.dir / disks.WORK_RAW).stat().st_size == 160 << 20
    assert disks.work_disk(child.dir).path == child.dir / disks.WORK_OVERLAY
    assert (parent.dir / disks.WORK_RAW).stat().st_size == 80 << 20


async def test_a_parent_whose_disk_children_read_through_cannot_grow_until_they_go(
    world: World,
) -> None:
    svc, parent, _ = await _parent(world)
    await svc.fork("parent", "kid", None, CTX)
    await svc.stop_vm("parent")
    before = (parent.dir / disks.WORK_RAW).read_bytes()
    with pytest.raises(Conflict, match="read through by 1 other disk"):
        await svc.set_vm("parent", None, None, "160M")
    assert (parent.dir / disks.WORK_RAW).read_bytes() == before  # the child's base is intact
    await svc.delete("kid")
    grown = await svc.set_vm("parent", None, None, "160M")
    assert grown.disk_size_bytes == 160 << 20


def test_a_child_of_a_raw_disk_machine_is_planned_with_raw_disks(tmp_path: Path) -> None:
    """Firecracker saves raw disks: the child's dir must say so, or its wake is planned for
    QEMU's qcow2 layers (and a Firecracker save cannot load there)."""
    base = tmp_path / "base"
    saved = SavedMachine(
        "firecracker", base, {"root": base / "root.img", "work": base / "work.ext4"}
    )
    child = tmp_path / "child"
    child.mkdir()
    disk_placeholders(child, saved)
    assert root_disk(child).format == "raw"
    assert disks.work_disk(child).path == child / disks.WORK_RAW
    qemu_child = tmp_path / "qemu-child"
    qemu_child.mkdir()
    layers = {"root": base / "root.qcow2", "work": base / "work.qcow2"}
    disk_placeholders(qemu_child, SavedMachine("qemu", base, layers))
    assert root_disk(qemu_child).format == "qcow2"
    assert disks.work_disk(qemu_child).path == qemu_child / disks.WORK_OVERLAY

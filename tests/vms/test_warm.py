"""Warm creates (vms/warm.py) over the in-memory world: the first create of a combination saves
a template, later ones wake from it under their own identity, anything that changes the machine
(sizing, the image's or kernel's files) boots cold, and templates go with their image."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from banger.errors import Conflict, OperationFailed
from banger.vms.service import CreateRequest, VMService
from tests.vms.world import CTX, FakeImage, World, req


@pytest.fixture(autouse=True)
def _warm_on(request: pytest.FixtureRequest) -> None:
    for name in ("world", "bridged"):
        if name in request.fixturenames:
            request.getfixturevalue(name).warm = True


def _ready_templates(svc: VMService) -> list[str]:
    return [rec.key for rec in svc.templates.all() if rec.state == "ready"]


async def _first(world: World) -> VMService:
    svc = await world.service()
    vm = await svc.create(req("first"), CTX)
    assert vm.boot == "cold"
    return svc


async def test_the_first_create_saves_a_template_and_the_second_wakes_from_it(
    world: World,
) -> None:
    svc = await _first(world)
    [rec] = [r for r in svc.templates.all() if r.state == "ready"]
    tdir = rec.dir
    assert tdir.parent == world.paths.templates_dir and tdir.name.startswith(rec.key)
    assert (tdir / "seed.ext4").is_file() and (tdir / "saved.json").is_file()
    first = svc.repo.handle(svc._find("first").id)
    assert first is not None and world.driver.alive[first.pid]  # the first VM runs on

    vm = await svc.create(req("second"), CTX)
    assert vm.boot == "warm" and vm.state == "running"
    handle = svc.repo.handle(vm.id)
    assert handle is not None and world.driver.restored[handle.pid].dir == tdir
    sent = world.driver.commands[handle.pid]
    assert [line.split(" ", 1)[0] for line in sent] == ["hostname", "machineid", "hostkey", "time"]
    assert sent[0] == "hostname second"
    own_key = (vm.dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    first_key = (svc.vm_dir(svc._find("first").id) / "ssh_host_ed25519_key.pub").read_text()
    assert own_key not in first_key
    # The template's seed (the guest has it mounted), not a rebuilt one.
    assert (vm.dir / "seed.ext4").read_bytes() == (tdir / "seed.ext4").read_bytes()
    assert [r.uses for r in svc.templates.all()] == [1]
    assert len(_ready_templates(svc)) == 1  # a warm create makes no template of its own


async def test_a_different_sizing_boots_cold_and_gets_its_own_template(world: World) -> None:
    svc = await _first(world)
    vm = await svc.create(
        CreateRequest(name="bigger", disk_size="80M", vcpus=1, memory_mib=512), CTX
    )
    assert vm.boot == "cold"
    assert len(_ready_templates(svc)) == 2


async def test_cold_true_boots_cold_even_with_a_template(world: World) -> None:
    svc = await _first(world)
    vm = await svc.create(req("chilly", cold=True), CTX)
    assert vm.boot == "cold"
    handle = svc.repo.handle(vm.id)
    assert handle is not None and handle.pid not in world.driver.restored
    assert [r.uses for r in svc.templates.all()] == [0]


async def test_cold_true_makes_no_template_either(world: World) -> None:
    svc = await world.service()
    assert (await svc.create(req("chilly", cold=True), CTX)).boot == "cold"
    assert list(svc.templates.all()) == []


async def test_warm_creates_off_in_the_config_boot_cold(world: World) -> None:
    world.warm = False
    svc = await world.service()
    await svc.create(req("one"), CTX)
    assert (await svc.create(req("two"), CTX)).boot == "cold"
    assert list(svc.templates.all()) == []


async def test_a_changed_image_never_uses_the_old_template(world: World) -> None:
    svc = await _first(world)
    [old] = _ready_templates(svc)
    rootfs = world.images.images["debian-bookworm"].rootfs
    # A re-pull writes a new file: new inode and mtime (the same name, the same size).
    fresh = rootfs.with_name("rootfs.new")
    with open(fresh, "wb") as f:
        f.truncate(16 << 20)
    os.replace(fresh, rootfs)
    vm = await svc.create(req("after-pull"), CTX)
    assert vm.boot == "cold"
    keys = _ready_templates(svc)
    assert old not in keys and len(keys) == 1  # the outdated one was removed
    assert not list(world.paths.templates_dir.glob(f"{old}-*/saved.json"))


async def test_a_changed_kernel_boots_cold(world: World) -> None:
    svc = await _first(world)
    kernel = world.kernels.kernels["debian-6.1"]
    kernel.boot_image.write_bytes(b"a re-imported kernel")
    vm = await svc.create(req("new-kernel"), CTX)
    assert vm.boot == "cold"


async def test_a_failed_warm_wake_falls_back_to_a_cold_boot(world: World) -> None:
    svc = await _first(world)
    world.driver.fail["restore"] = OperationFailed("the saved state does not load")
    seeds = len(world.guest.seeds)
    vm = await svc.create(req("fallback"), CTX)
    assert vm.boot == "cold" and vm.state == "running"
    handle = svc.repo.handle(vm.id)
    assert handle is not None and handle.pid not in world.driver.restored
    assert (vm.dir / "work.ext4").is_file()  # its own disks, as a cold create gives
    assert len(world.guest.seeds) == seeds + 1  # a seed built for it
    assert world.guest.seeds[-1].hostname == "fallback"


def _pinned(world: World, host: str) -> str:
    known = (world.paths.ssh_dir / "known_hosts").read_text().splitlines()
    [line] = [ln for ln in known if ln.split(" ", 1)[0] == host]
    return line.split()[2]


async def test_the_first_vm_takes_a_new_host_key_once_its_template_holds_the_old_one(
    world: World,
) -> None:
    svc = await _first(world)
    vm = svc._find("first")
    [rec] = svc.templates.all()
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    # The first VM was sent a new identity after the checkpoint: its new key is the one kept
    # in its dir and pinned; the key every warm VM can read (the template's) is served by none.
    [hostkey] = [ln for ln in world.driver.commands[handle.pid] if ln.startswith("hostkey ")]
    served = base64.b64decode(hostkey.split()[2]).decode().split()[1]
    own = (vm.dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert served == own == _pinned(world, "first.vm")
    template_seed_key = world.guest.seeds[0].host_key_public.split()[1]
    assert template_seed_key != own
    assert rec.state == "ready" and not list(world.paths.staging_dir.glob("rekey-*"))


async def test_a_failed_rekey_drops_the_template_and_the_vm_keeps_its_pinned_key(
    world: World,
) -> None:
    svc = await world.service()
    world.driver.fail["agent"] = OperationFailed("no space for the key")
    vm = await svc.create(req("first"), CTX)
    assert vm.state == "running" and vm.boot == "cold"
    assert [r for r in svc.templates.all() if r.state == "ready"] == []
    own = (vm.dir / "ssh_host_ed25519_key.pub").read_text().split()[1]
    assert own == _pinned(world, "first.vm") == world.guest.seeds[0].host_key_public.split()[1]
    # The next create boots cold (no template) and makes one.
    assert (await svc.create(req("second"), CTX)).boot == "cold"


async def test_a_failed_template_save_leaves_the_vm_running_and_no_template(
    world: World,
) -> None:
    svc = await world.service()
    world.driver.fail["save"] = OperationFailed("disk full")
    vm = await svc.create(req("first"), CTX)
    assert vm.state == "running" and vm.boot == "cold"
    assert list(svc.templates.all()) == []
    assert list(world.paths.templates_dir.iterdir()) == []


async def test_a_warm_vm_stops_starts_and_deletes_like_any_other(world: World) -> None:
    svc = await _first(world)
    vm = await svc.create(req("second"), CTX)
    assert vm.boot == "warm"
    await svc.stop_vm("second")
    again = await svc.start_vm("second", CTX)
    assert again.state == "running"
    handle = svc.repo.handle(vm.id)
    assert handle is not None and handle.pid not in world.driver.restored  # a cold boot
    await svc.delete("second")
    assert not vm.dir.exists()


async def test_image_templates_are_listed_and_removed(world: World) -> None:
    svc = await _first(world)
    [info] = svc.templates_of("img1")
    assert info.memory_mib == 256 and info.vcpus == 1 and info.uses == 0
    assert svc.templates_of("other") == []
    warm = await svc.create(req("second"), CTX)
    assert await svc.remove_templates("img1") == 1
    assert svc.templates_of(None) == []
    # The warm VM still has its disks and restarts; a later create boots cold and saves anew.
    await svc.stop_vm("second")
    assert (await svc.start_vm("second", CTX)).state == "running"
    assert warm.dir.is_dir()
    assert (await svc.create(req("third"), CTX)).boot == "cold"
    assert await svc.remove_templates(None) == 1


async def test_templates_of_deleted_images_go_at_the_next_lookup(world: World) -> None:
    svc = await _first(world)
    old = world.images.images["debian-bookworm"]
    # A re-pull under the same name: a new image record (new id) replaces the old one.
    world.images.images["debian-bookworm"] = FakeImage("img2", old.name, old.rootfs)
    vm = await svc.create(req("repulled"), CTX)
    assert vm.boot == "cold"
    assert [rec.image_id for rec in svc.templates.all()] == ["img2"]


async def test_a_pending_template_is_removed_at_the_next_start(world: World) -> None:
    svc = await world.service()
    from banger.vms import warm

    combo = warm.Combination("img1", "v", "k", "kv", "auto", 1, 256, 80 << 20, "mem/user")
    dest = world.paths.templates_dir / combo.key()
    assert svc.templates.begin(combo, dest) is not None
    dest.mkdir(parents=True)
    (dest / "state.mig").write_bytes(b"half")
    stray = world.paths.templates_dir / "nobody"
    stray.mkdir()
    await svc.stop()
    svc2 = await world.service()
    assert list(svc2.templates.all()) == []
    assert not dest.exists() and not stray.exists()


async def test_a_bridged_warm_vm_gets_its_own_address(bridged: World) -> None:
    svc = await bridged.service()
    await svc.create(req("first"), CTX)
    vm = await svc.create(req("second"), CTX)
    assert vm.boot == "warm"
    handle = svc.repo.handle(vm.id)
    assert handle is not None
    sent = bridged.driver.commands[handle.pid]
    assert bridged.network is not None
    ip = bridged.network.guest_ip(vm.id)
    assert (
        [line for line in sent if line.startswith("addr ")]
        == [line for line in sent if line.startswith(f"addr {ip}/")]
        != []
    )


async def test_growing_the_first_vms_disk_is_refused_while_warm_vms_read_through_it(
    world: World,
) -> None:
    svc = await _first(world)
    await svc.create(req("second"), CTX)
    await svc.stop_vm("first")
    with pytest.raises(Conflict, match="created warm from its template"):
        await svc.set_vm("first", None, None, "160M")
    await svc.delete("second")
    # Only the template (a cache) reads through it now: dropped, then the disk grows.
    grown = await svc.set_vm("first", None, None, "160M")
    assert grown.disk_size_bytes == 160 << 20
    assert _ready_templates(svc) == []


async def test_a_template_row_naming_files_elsewhere_is_dropped_never_followed(
    world: World, tmp_path: Path
) -> None:
    svc = await _first(world)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "seed.ext4").write_text("not banger's")
    world.store.execute("UPDATE vm_templates SET dir = ?", (str(outside),))
    vm = await svc.create(req("second"), CTX)
    assert vm.boot == "cold"  # the edited template was not used
    assert (outside / "seed.ext4").read_text() == "not banger's"
    assert (vm.dir / "seed.ext4").read_bytes() != b"not banger's"
    assert all(rec.dir.resolve() != outside.resolve() for rec in svc.templates.all())

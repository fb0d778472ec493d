"""Hostile inputs to the Firecracker snapshot surface: saved machines that do not fit the VM,
destinations that exist, and request bodies the spec does not allow. Each is refused with a
message naming the problem, before anything is started, replaced or sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from banger.vmm.base import DriverError, NetworkSpec, SavedMachine, VMSpec
from banger.vmm.fc_api import FirecrackerClient, SpecViolation
from banger.vmm.firecracker import FirecrackerDriver
from tests.vmm.firecracker.conftest import Backend
from tests.vmm.firecracker.fcutil import GuestFiles, make_spec
from tests.vmm.firecracker.test_snapshot import boot, fork_spec

Mutation = Callable[[SavedMachine, VMSpec, Path], tuple[SavedMachine, VMSpec]]


def details(**kw: Any) -> Mutation:
    return lambda s, spec, d: (replace(s, details={**s.details, **kw}), spec)


def drop_file(name: str) -> Mutation:
    def mutate(s: SavedMachine, spec: VMSpec, d: Path) -> tuple[SavedMachine, VMSpec]:
        (s.dir / name).unlink()
        return s, spec

    return mutate


RESTORE_CASES: list[tuple[str, Mutation, str]] = [
    ("other driver", lambda s, spec, d: (replace(s, driver="qemu"), spec), "qemu driver"),
    ("memory file gone", drop_file("memory"), "incomplete"),
    ("state file gone", drop_file("vmstate"), "incomplete"),
    ("frozen disk gone", drop_file("work.img"), "incomplete"),
    (
        "more memory",
        lambda s, spec, d: (s, replace(spec, memory_mib=512)),
        "restores with the size",
    ),
    ("more vcpus", lambda s, spec, d: (s, replace(spec, vcpus=2)), "restores with the size"),
    ("jailed snapshot", details(layout="jail"), "jail layout"),
    (
        "fork of a suspend",
        lambda s, spec, d: (replace(s, disks={}), fork_spec(spec, d, "kid", spec.network)),
        "suspended VM",
    ),
    (
        "fork of absolute paths",
        lambda s, spec, d: (
            replace(s, details={**s.details, "relative_paths": False}),
            fork_spec(spec, d, "kid", spec.network),
        ),
        "parent's disks",
    ),
    (
        "network device added",
        lambda s, spec, d: (s, replace(spec, network=NetworkSpec("tap", tap_device="lo"))),
        "keeps its devices",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"), [c[1:] for c in RESTORE_CASES], ids=[c[0] for c in RESTORE_CASES]
)
async def test_restore_refuses(
    fc: Backend,
    guest_files: GuestFiles,
    vm_dir: Path,
    tmp_path: Path,
    mutate: Mutation,
    message: str,
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    saved = await driver.save(handle, spec, tmp_path / "cp", keep_running=True)
    await driver.force_stop(handle)
    with spec.root_disk.path.open("r+b") as f:
        f.write(b"written after the checkpoint")  # restore must not replace it when refused
    root_before = spec.root_disk.path.read_bytes()
    (tmp_path / "kid").mkdir()
    saved, target = mutate(saved, spec, tmp_path / "kid")
    fc.reset_calls()
    with pytest.raises(DriverError, match=message):
        await driver.restore(target, saved)
    assert fc.calls() == []  # no process was started
    assert spec.root_disk.path.read_bytes() == root_before  # nothing replaced
    assert not (target.runtime_dir / "fc.sock").exists()


async def test_save_refuses_an_existing_destination_and_a_stopped_vm(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        (tmp_path / "taken").write_text("mine")
        (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
        for dest in (tmp_path / "taken", tmp_path / "link"):
            with pytest.raises(DriverError, match="already exists"):
                await driver.save(handle, spec, dest, keep_running=True)
        assert (tmp_path / "taken").read_text() == "mine"
        assert not (tmp_path / "elsewhere").exists()
        assert await driver.state(handle) == "Running"
    finally:
        await driver.force_stop(handle)
    with pytest.raises(DriverError, match="not running"):
        await driver.save(handle, spec, tmp_path / "new", keep_running=False)
    assert not (tmp_path / "new").exists()


BAD_BODIES: list[tuple[str, str, str, dict[str, Any], str]] = [
    (
        "unknown snapshot type",
        "PUT",
        "/snapshot/create",
        {"snapshot_type": "Incremental", "snapshot_path": "s", "mem_file_path": "m"},
        "snapshot_type",
    ),
    ("create without memory", "PUT", "/snapshot/create", {"snapshot_path": "s"}, "mem_file_path"),
    (
        "create with a stray field",
        "PUT",
        "/snapshot/create",
        {"snapshot_path": "s", "mem_file_path": "m", "version": "1.0"},
        "version",
    ),
    (
        "unknown memory backend",
        "PUT",
        "/snapshot/load",
        {"snapshot_path": "s", "mem_backend": {"backend_type": "Mmap", "backend_path": "m"}},
        "Mmap",
    ),
    (
        "resume_vm not a boolean",
        "PUT",
        "/snapshot/load",
        {"snapshot_path": "s", "mem_file_path": "m", "resume_vm": "yes"},
        "resume_vm",
    ),
    (
        "override without a TAP name",
        "PUT",
        "/snapshot/load",
        {"snapshot_path": "s", "mem_file_path": "m", "network_overrides": [{"iface_id": "eth0"}]},
        "host_dev_name",
    ),
    ("load without a state file", "PUT", "/snapshot/load", {"mem_file_path": "m"}, "snapshot_path"),
    ("unknown VM state", "PATCH", "/vm", {"state": "Stopped"}, "Stopped"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [c[1:] for c in BAD_BODIES],
    ids=[c[0] for c in BAD_BODIES],
)
def test_the_validator_refuses_malformed_snapshot_bodies(
    method: str, path: str, body: dict[str, Any], field: str
) -> None:
    client = FirecrackerClient("/nonexistent/fc.sock")
    with pytest.raises(SpecViolation, match=field):
        client.check(method, path, body)


async def test_a_load_firecracker_refuses_puts_the_vms_disks_back(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    assert spec.work_disk is not None
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    saved = await driver.save(handle, spec, tmp_path / "cp", keep_running=True)
    await driver.force_stop(handle)
    with spec.work_disk.path.open("r+b") as f:
        f.write(b"newer than the checkpoint")
    work_before = spec.work_disk.path.read_bytes()
    with (saved.dir / "memory").open("r+b") as f:
        f.truncate(4096)  # damaged: Firecracker's load fails and its process ends
    with pytest.raises(DriverError, match="could not restore") as err:
        await driver.restore(spec, saved)
    if fc.kind == "double":
        assert "memory size" in str(err.value)
    assert spec.work_disk.path.read_bytes() == work_before
    assert not list(vm_dir.glob(".*.before-restore")) and not list(vm_dir.glob(".*.restore"))
    assert not (spec.runtime_dir / "fc.sock").exists()


async def test_restore_over_a_running_vm_is_refused(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        saved = await driver.save(handle, spec, tmp_path / "cp", keep_running=True)
        with spec.root_disk.path.open("r+b") as f:
            f.write(b"live data")
        with pytest.raises(DriverError, match="stop it before restoring"):
            await driver.restore(spec, saved)
        assert spec.root_disk.path.read_bytes()[:9] == b"live data"
        assert await driver.state(handle) == "Running"
    finally:
        await driver.force_stop(handle)


async def test_a_failed_save_leaves_nothing_and_resumes_the_vm(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    assert spec.work_disk is not None
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    aside = vm_dir / "work.aside"
    try:
        spec.work_disk.path.rename(aside)  # the disk copy after the memory write fails
        with pytest.raises(DriverError, match="work.img does not exist"):
            await driver.save(handle, spec, tmp_path / "cp", keep_running=True)
        assert not (tmp_path / "cp").exists()
        assert await driver.state(handle) == "Running"
    finally:
        if aside.exists():
            aside.rename(spec.work_disk.path)
        await driver.force_stop(handle)

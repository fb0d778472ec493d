"""Suspend, checkpoint, restore and fork on the Firecracker driver (issue 14, driver level).

Run against the contract double (and the real binary where it can run). The double's guest keeps
a boot id and a value in its simulated RAM, reachable over the vsock control channel, so "the same
guest came back" and "memory went back to the checkpoint" are observable as they would be for a
user; the disks are real files compared byte for byte.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from banger.vmm.base import Capability, DriverError, NetworkSpec, SavedMachine, VMHandle, VMSpec
from banger.vmm.fc_snapshot import read_record
from banger.vmm.fc_spec import load_spec
from banger.vmm.firecracker import FirecrackerDriver, open_control
from tests.vmm.firecracker.conftest import Backend
from tests.vmm.firecracker.fcutil import GuestFiles, make_spec

READY_TIMEOUT = 60.0
MiB = 1 << 20


async def guest(handle: VMHandle, line: str) -> str:
    """One command to the double's guest over the vsock control channel; its answer."""
    reader, writer = await open_control(handle, timeout=10.0)
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 10.0)).decode().strip()
    finally:
        writer.close()


async def boot(driver: FirecrackerDriver, spec: VMSpec) -> VMHandle:
    handle = await driver.launch(spec)
    await driver.wait_ready(handle, READY_TIMEOUT, lambda: driver.is_alive(handle))
    return handle


def write_at(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


def read_at(path: Path, offset: int, n: int) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(n)


def api_calls(fc: Backend) -> list[tuple[str, str]]:
    return [(c["method"], c["path"]) for c in fc.calls()]


def assert_bodies_match_spec(fc: Backend) -> None:
    """Every body the driver sent validates against the shipped spec (the double checked too)."""
    spec = load_spec()
    for c in fc.calls():
        assert c["status"] < 300, c
        found = spec.find(c["method"], c["path"])
        assert found is not None, c
        op, _ = found
        if op.body_def and c["body"] is not None:
            assert spec.errors(op.body_def, c["body"]) == [], c


@pytest.fixture
def other_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="bgfk-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_capabilities_include_suspend_snapshot_fork() -> None:
    caps = FirecrackerDriver().capabilities
    assert {Capability.SUSPEND, Capability.SNAPSHOT, Capability.FORK, Capability.PAUSE} <= caps


async def test_suspend_then_restore_brings_back_the_same_guest(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        if fc.kind == "double":
            boot_id = await guest(handle, "boot-id")
            assert await guest(handle, "set before-suspend") == "ok"
        fc.reset_calls()
        saved = await driver.save(handle, spec, tmp_path / "suspend", keep_running=False)
        # The VMM is gone; the machine is in the directory; the disks stayed the VM's own.
        assert not driver.is_alive(handle)
        assert saved.disks == {}
        assert saved.memory_mib == spec.memory_mib
        assert (saved.dir / "vmstate").stat().st_size > 0
        assert (saved.dir / "memory").stat().st_size == spec.memory_mib * MiB
        assert read_record(saved.dir) == saved
        assert sorted(p.name for p in saved.dir.iterdir()) == ["memory", "saved.json", "vmstate"]
        if fc.kind == "double":
            assert api_calls(fc) == [
                ("GET", "/"),
                ("PATCH", "/vm"),
                ("PUT", "/snapshot/create"),
            ]
            assert fc.calls()[1]["body"] == {"state": "Paused"}

        fc.reset_calls()
        restored = await driver.restore(spec, saved)
        try:
            assert await driver.state(restored) == "Running"
            assert restored.details["restored_from"] == str(saved.dir)
            assert restored.details["forked"] is False
            if fc.kind == "double":
                assert await guest(restored, "boot-id") == boot_id
                assert await guest(restored, "get") == "value before-suspend"
                # A fresh process: nothing but the logger and metrics before the load.
                assert api_calls(fc)[:4] == [
                    ("GET", "/"),
                    ("PUT", "/logger"),
                    ("PUT", "/metrics"),
                    ("PUT", "/snapshot/load"),
                ]
                load = fc.calls()[3]["body"]
                assert load["resume_vm"] is True
                assert load["mem_backend"] == {
                    "backend_type": "File",
                    "backend_path": str(saved.dir / "memory"),
                }
                assert "network_overrides" not in load
            # Same disk paths as before: the drives still resolve to the VM's own files.
            cfg = await driver.inspect(restored)
            drives = {d["drive_id"]: d["path_on_host"] for d in cfg["drives"]}
            assert (spec.runtime_dir / drives["rootfs"]).resolve() == spec.root_disk.path
            assert_bodies_match_spec(fc)
        finally:
            await driver.force_stop(restored)
    finally:
        await driver.force_stop(handle)


async def test_checkpoint_keeps_running_and_restore_rolls_memory_and_disks_back(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    assert spec.work_disk is not None
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        if fc.kind == "double":
            assert await guest(handle, "set at-checkpoint") == "ok"
        write_at(spec.work_disk.path, 4096, b"work-at-checkpoint")
        root_before = spec.root_disk.path.read_bytes()
        fc.reset_calls()
        saved = await driver.save(handle, spec, tmp_path / "cp1", keep_running=True)
        calls = api_calls(fc)
        # Still running, and every file of the checkpoint is complete.
        assert driver.is_alive(handle)
        assert await driver.state(handle) == "Running"
        assert set(saved.disks) == {"root", "work"}
        assert saved.disks["root"].read_bytes() == root_before
        assert read_at(saved.disks["work"], 4096, 18) == b"work-at-checkpoint"
        assert saved.disks["work"].stat().st_size == spec.work_disk.path.stat().st_size
        assert (saved.dir / "memory").stat().st_size == spec.memory_mib * MiB
        assert saved.paused_seconds >= 0.0
        if fc.kind == "double":
            # Paused around the create, resumed after the disk copies: never a create while
            # running (Firecracker would refuse it).
            assert calls == [
                ("GET", "/"),
                ("PATCH", "/vm"),
                ("PUT", "/snapshot/create"),
                ("PATCH", "/vm"),
            ]
            states = [c["body"]["state"] for c in fc.calls() if c["path"] == "/vm"]
            assert states == ["Paused", "Resumed"]
            assert fc.calls()[2]["body"]["snapshot_type"] == "Full"

            # The guest moves on after the checkpoint: memory and both disks change.
            assert await guest(handle, "set after-checkpoint") == "ok"
        write_at(spec.work_disk.path, 4096, b"work-after-checkpt")
        write_at(spec.root_disk.path, 0, b"root-after")
        await driver.force_stop(handle)

        restored = await driver.restore(spec, saved)
        try:
            assert await driver.state(restored) == "Running"
            if fc.kind == "double":
                assert await guest(restored, "get") == "value at-checkpoint"
            # The VM's own disk paths hold the checkpoint's contents again.
            assert spec.root_disk.path.read_bytes() == root_before
            assert read_at(spec.work_disk.path, 4096, 18) == b"work-at-checkpoint"
            # ...as copies: the checkpoint itself stays intact for another restore.
            write_at(spec.work_disk.path, 4096, b"written-after-rest")
            assert read_at(saved.disks["work"], 4096, 18) == b"work-at-checkpoint"
            assert_bodies_match_spec(fc)
        finally:
            await driver.force_stop(restored)
    finally:
        await driver.force_stop(handle)


async def test_checkpoint_of_a_paused_vm_leaves_it_paused(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        await driver.pause(handle)
        await driver.save(handle, spec, tmp_path / "cp", keep_running=True)
        assert await driver.state(handle) == "Paused"
    finally:
        await driver.force_stop(handle)


def fork_spec(parent: VMSpec, child_dir: Path, name: str, network: NetworkSpec) -> VMSpec:
    """The child's own paths and identity (its disks are filled by restore)."""
    child = make_spec_paths(parent, child_dir)
    return replace(
        child,
        vm_id=f"{name}-0002",
        name=name,
        network=network,
    )


def make_spec_paths(parent: VMSpec, d: Path) -> VMSpec:
    assert parent.work_disk is not None
    return replace(
        parent,
        root_disk=replace(parent.root_disk, path=d / "root.img"),
        work_disk=replace(parent.work_disk, path=d / "work.img"),
        console_log=d / "console.log",
        runtime_dir=d / "run",
    )


@pytest.fixture
def taps() -> Iterator[list[str]]:
    names = [f"bgsn{uuid.uuid4().hex[:8]}" for _ in range(2)]
    for n in names:
        subprocess.run(["ip", "tuntap", "add", "dev", n, "mode", "tap"], check=True)
    yield names
    for n in names:
        subprocess.run(["ip", "link", "del", n], check=False)


async def test_fork_runs_on_its_own_disks_socket_and_tap(
    fc: Backend,
    guest_files: GuestFiles,
    vm_dir: Path,
    other_dir: Path,
    tmp_path: Path,
    taps: list[str],
) -> None:
    parent_tap, child_tap = taps
    net = NetworkSpec(kind="tap", tap_device=parent_tap, mac="06:00:ac:10:00:02")
    spec = make_spec(guest_files, vm_dir, network=net)
    driver = FirecrackerDriver()
    parent = await boot(driver, spec)
    try:
        if fc.kind == "double":
            assert await guest(parent, "set shared-past") == "ok"
            parent_boot = await guest(parent, "boot-id")
        saved = await driver.save(parent, spec, tmp_path / "cp", keep_running=True)

        child_spec = fork_spec(spec, other_dir, "child", replace(net, tap_device=child_tap))
        assert not child_spec.root_disk.path.exists()
        fc.reset_calls()
        child = await driver.restore(child_spec, saved)
        try:
            assert child.details["forked"] is True
            assert child.control_socket == str(other_dir / "run" / "v.sock")
            assert driver.is_alive(parent) and await driver.state(parent) == "Running"
            # The child's drives resolve to the child's own copies, not the parent's disks.
            cfg = await driver.inspect(child)
            drives = {d["drive_id"]: d["path_on_host"] for d in cfg["drives"]}
            rundir = child_spec.runtime_dir
            assert (rundir / drives["rootfs"]).resolve() == child_spec.root_disk.path
            assert child_spec.work_disk is not None
            assert (rundir / drives["work"]).resolve() == child_spec.work_disk.path
            (iface,) = cfg["network-interfaces"]
            assert iface["host_dev_name"] == child_tap
            if fc.kind == "double":
                load = next(c for c in fc.calls() if c["path"] == "/snapshot/load")["body"]
                assert load["network_overrides"] == [
                    {"iface_id": "eth0", "host_dev_name": child_tap}
                ]
                # The child carries the parent's memory; then each goes its own way.
                assert await guest(child, "boot-id") == parent_boot
                assert await guest(child, "get") == "value shared-past"
                assert await guest(child, "set child-only") == "ok"
                assert await guest(parent, "get") == "value shared-past"
            # Disk writes do not cross.
            write_at(child_spec.work_disk.path, 0, b"child-write")
            assert spec.work_disk is not None
            assert read_at(spec.work_disk.path, 0, 11) != b"child-write"
            assert_bodies_match_spec(fc)
        finally:
            await driver.force_stop(child)
    finally:
        await driver.force_stop(parent)


async def test_diff_checkpoint_merges_into_a_loadable_machine(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    spec.extra["track_dirty_pages"] = True
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        if fc.kind == "double":
            assert await guest(handle, "set first") == "ok"
        base = await driver.save(handle, spec, tmp_path / "full", keep_running=True)
        if fc.kind == "double":
            assert await guest(handle, "set second") == "ok"
        fc.reset_calls()
        layer = await driver.save(
            handle, spec, tmp_path / "diff", keep_running=True, diff_from=base
        )
        assert layer.details["snapshot_type"] == "Diff"
        assert not (layer.dir / "memory.diff").exists()
        assert (layer.dir / "memory").stat().st_size == spec.memory_mib * MiB
        if fc.kind == "double":
            create = next(c for c in fc.calls() if c["path"] == "/snapshot/create")["body"]
            assert create["snapshot_type"] == "Diff"
            # Only the dirtied page went into the layer; the base kept its own memory.
            assert await guest(handle, "set third") == "ok"
        await driver.force_stop(handle)
        restored = await driver.restore(spec, layer)
        try:
            if fc.kind == "double":
                assert await guest(restored, "get") == "value second"
                load = next(c for c in fc.calls() if c["path"] == "/snapshot/load")["body"]
                assert load["track_dirty_pages"] is True
        finally:
            await driver.force_stop(restored)
        restored = await driver.restore(spec, base)
        try:
            if fc.kind == "double":
                assert await guest(restored, "get") == "value first"
        finally:
            await driver.force_stop(restored)
    finally:
        await driver.force_stop(handle)


async def test_diff_needs_tracking_and_the_last_snapshot_as_base(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, tmp_path: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await boot(driver, spec)
    try:
        base = await driver.save(handle, spec, tmp_path / "a", keep_running=True)
        with pytest.raises(DriverError, match="without dirty-page tracking"):
            await driver.save(handle, spec, tmp_path / "b", keep_running=True, diff_from=base)
        handle.details["track_dirty_pages"] = True  # as if launched with it
        await driver.save(handle, spec, tmp_path / "c", keep_running=True)
        with pytest.raises(DriverError, match="since this VMM's last snapshot"):
            await driver.save(handle, spec, tmp_path / "d", keep_running=True, diff_from=base)
        assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()
    finally:
        await driver.force_stop(handle)


def saved_like(saved: SavedMachine, **details: Any) -> SavedMachine:
    return replace(saved, details={**saved.details, **details})


@pytest.fixture
def jailer_bin(fake_bin_dir: Path) -> Path:
    exe = fake_bin_dir / "jailer"
    here = Path(__file__).resolve().parent
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{here / "fake_jailer.py"}" "$@"\n')
    exe.chmod(0o755)
    return exe


async def test_jailed_suspend_restore_and_fork_go_through_the_jail(
    fc: Backend,
    guest_files: GuestFiles,
    vm_dir: Path,
    other_dir: Path,
    tmp_path: Path,
    jailer_bin: Path,
) -> None:
    from banger.vmm.firecracker import JailerSettings

    jailer = JailerSettings(binary=str(jailer_bin), uid=12345, gid=12346, chroot_base=vm_dir / "j")
    driver = FirecrackerDriver(jailer=jailer)
    spec = make_spec(guest_files, vm_dir, name="fc-jail")
    handle = await boot(driver, spec)
    try:
        if fc.kind == "double":
            assert await guest(handle, "set jailed") == "ok"
        fc.reset_calls()
        saved = await driver.save(handle, spec, tmp_path / "cp", keep_running=True)
        # Firecracker wrote into its jail (relative names); the files were moved out.
        create = next(c for c in fc.calls() if c["path"] == "/snapshot/create")["body"]
        assert (create["snapshot_path"], create["mem_file_path"]) == (
            "snapshot.vmstate",
            "snapshot.mem",
        )
        jail_root = Path(handle.details["jail_dir"]) / "root"
        assert not (jail_root / "snapshot.mem").exists()
        assert (saved.dir / "memory").stat().st_size == spec.memory_mib * MiB
        assert saved.details["layout"] == "jail"

        child_spec = fork_spec(spec, other_dir, "fc-jail-child", spec.network)
        child = await driver.restore(child_spec, saved)
        try:
            child_root = Path(child.details["jail_dir"]) / "root"
            assert child_root != jail_root
            assert (
                child_root / "rootfs.img"
            ).stat().st_ino == child_spec.root_disk.path.stat().st_ino
            if fc.kind == "double":
                assert await guest(child, "get") == "value jailed"
        finally:
            await driver.force_stop(child)
        # A driver without the jailer cannot resolve the jail's relative names: refused.
        with pytest.raises(DriverError, match="jail layout"):
            await FirecrackerDriver().restore(spec, saved)
    finally:
        await driver.force_stop(handle)

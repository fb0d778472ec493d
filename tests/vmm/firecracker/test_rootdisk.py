"""The VM service's seam to the drivers: which root disk a VM gets and which driver boots it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banger.config import Config
from banger.vmm.accel import KVMVerdict
from banger.vmm.base import DriverError
from banger.vmm.firecracker import FirecrackerDriver
from banger.vmm.qemu import QemuDriver
from banger.vms.rootdisk import boot_plan, describe_root_disk, make_root_disk
from tests.vmm.firecracker.fcutil import GuestFiles

KVM = KVMVerdict(True, "kvm_intel/kvm_amd loaded and /dev/kvm is usable")
PVM = KVMVerdict(False, "/dev/kvm is nested PVM (kvm_pvm): stock guest kernels hang under it")


@pytest.fixture
def on_path(fake_bin_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", f"{fake_bin_dir}:/usr/local/bin:/usr/bin:/bin")


async def test_firecracker_vm_gets_a_raw_copy_and_boots_the_vmlinux(
    on_path: None, guest_files: GuestFiles, tmp_path: Path
) -> None:
    config = Config()
    assert (
        await make_root_disk(config, guest_files.root, tmp_path, verdict=KVM) == "raw copy (sparse)"
    )
    assert (tmp_path / "root.img").read_bytes() == guest_files.root.read_bytes()
    assert json.loads((tmp_path / "root.json").read_text()) == {"format": "raw", "copy": "sparse"}
    assert not (tmp_path / "root.qcow2").exists()
    plan = boot_plan(
        config, "vm1", tmp_path, "debian-6.1", guest_files.bzimage, guest_files.vmlinux, verdict=KVM
    )
    assert isinstance(plan.driver, FirecrackerDriver)
    assert (plan.root.path, plan.root.format) == (tmp_path / "root.img", "raw")
    assert plan.kernel == guest_files.vmlinux
    with pytest.raises(DriverError, match="kernel 'debian-6.1' has no uncompressed ELF vmlinux"):
        boot_plan(config, "vm1", tmp_path, "debian-6.1", guest_files.bzimage, None, verdict=KVM)
    # Switched to QEMU later, the raw copy still boots (as raw).
    plan = boot_plan(
        Config(vmm="qemu"), "vm1", tmp_path, "k", guest_files.bzimage, None, verdict=KVM
    )
    assert isinstance(plan.driver, QemuDriver) and plan.root.format == "raw"


async def test_qemu_vm_keeps_its_overlay(
    on_path: None, guest_files: GuestFiles, tmp_path: Path
) -> None:
    assert (
        await make_root_disk(Config(), guest_files.root, tmp_path, verdict=PVM) == "qcow2 overlay"
    )
    assert describe_root_disk(tmp_path) == "qcow2 overlay"
    plan = boot_plan(
        Config(), "vm1", tmp_path, "k", guest_files.bzimage, guest_files.vmlinux, verdict=PVM
    )
    assert isinstance(plan.driver, QemuDriver)
    assert plan.root.format == "qcow2" and plan.kernel == guest_files.bzimage
    # Where Firecracker becomes the choice, a qcow2 VM stays on QEMU under `auto` ...
    plan = boot_plan(
        Config(), "vm1", tmp_path, "k", guest_files.bzimage, guest_files.vmlinux, verdict=KVM
    )
    assert isinstance(plan.driver, QemuDriver)
    # ... and is refused, naming the VM, when Firecracker is forced.
    with pytest.raises(DriverError, match="vm vm1 has a qcow2 root overlay"):
        boot_plan(
            Config(vmm="firecracker"), "vm1", tmp_path, "k", guest_files.bzimage, None, verdict=KVM
        )


async def test_forced_firecracker_without_kvm_is_refused_before_any_disk(
    on_path: None, guest_files: GuestFiles, tmp_path: Path
) -> None:
    with pytest.raises(DriverError, match="KVM cannot run guests here"):
        await make_root_disk(Config(vmm="firecracker"), guest_files.root, tmp_path, verdict=PVM)
    assert list(tmp_path.iterdir()) == []
    assert describe_root_disk(tmp_path) is None


async def test_auto_keeps_user_mode_networking_on_qemu(
    on_path: None, guest_files: GuestFiles, tmp_path: Path
) -> None:
    """Firecracker has no user-mode network: under `auto` such a VM stays on QEMU."""
    desc = await make_root_disk(Config(), guest_files.root, tmp_path, "user", verdict=KVM)
    assert desc == "qcow2 overlay"
    plan = boot_plan(
        Config(), "vm1", tmp_path, "k", guest_files.bzimage, guest_files.vmlinux, "user", KVM
    )
    assert isinstance(plan.driver, QemuDriver)

"""Shared pieces of the Firecracker suite (also used by the "daemon restart" helper process)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from banger.vmm.base import DiskSpec, NetworkSpec, VMSpec


@dataclass(frozen=True)
class GuestFiles:
    kernel_name: str
    bzimage: Path
    vmlinux: Path
    initrd: Path
    root: Path  # base image: tests clone it per VM


def make_spec(
    guest: GuestFiles,
    vm_dir: Path,
    *,
    name: str = "fc-test",
    network: NetworkSpec | None = None,
    kernel: Path | None = None,
    root_format: str = "raw",
) -> VMSpec:
    root = vm_dir / "root.img"
    if not root.exists():
        shutil.copy(guest.root, root)
    work = vm_dir / "work.img"
    if not work.exists():
        with open(work, "wb") as f:
            f.truncate(8 << 20)
    return VMSpec(
        vm_id=f"{name}-0001",
        name=name,
        kernel=kernel or guest.vmlinux,
        initrd=guest.initrd,
        cmdline="root=/dev/vda rootfstype=ext4 banger.init=/sbin/init",
        root_disk=DiskSpec(root, format=root_format),  # type: ignore[arg-type]
        work_disk=DiskSpec(work),
        vcpus=1,
        memory_mib=256,
        network=network or NetworkSpec(kind="none"),
        console_log=vm_dir / "console.log",
        runtime_dir=vm_dir / "run",
        extra={"kernel_name": guest.kernel_name},
    )

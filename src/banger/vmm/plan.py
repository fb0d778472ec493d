"""A VM's root disk and the driver that boots it: which VMM, which disk format, which kernel image.

QEMU VMs get a qcow2 overlay over the image's raw ext4 (O(1)). Firecracker only takes raw files,
so a VM created while Firecracker is the chosen VMM gets a private raw copy instead: a reflink
clone where the filesystem can, else a sparse copy (`vmm/rawdisk.py`). Which one it got is
written next to it (`root.json`) so `vm show` can say it. The VM service reaches this through
`DriverRegistry.make_root_disk` / `DriverRegistry.boot_plan`, never by importing a driver.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from banger.config import Config
from banger.proc import run
from banger.vmm.accel import KVMVerdict
from banger.vmm.base import DiskSpec, Driver, DriverError

ROOT_QCOW2 = "root.qcow2"
ROOT_RAW = "root.img"
ROOT_META = "root.json"

GetDriver = Callable[[str], Driver]


def _wants_firecracker(config: Config, network: str, verdict: KVMVerdict | None) -> bool:
    """Firecracker for this VM? Under `auto` not for a user-mode network, which it lacks."""
    from banger.vmm.select import choose_vmm

    choice = choose_vmm(config, verdict)
    if not choice.usable:
        raise DriverError(choice.reason)
    if choice.name != "firecracker":
        return False
    return config.vmm == "firecracker" or network != "user"


async def create_root_overlay(base: Path, out: Path) -> None:
    # -F raw is mandatory (no probing of a guest-writable image); the base path must be absolute.
    await run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(base.resolve()),
            str(out),
        ],
        what="qemu-img create (root overlay)",
        timeout=60,
    )


async def make_root_disk(
    config: Config,
    base: Path,
    vdir: Path,
    network: str = "tap",
    verdict: KVMVerdict | None = None,
) -> str:
    """Create `vdir`'s root disk over the image `base`; returns how (`describe_root_disk`).

    `network` is the VM's attachment kind ("user" | "tap"): Firecracker has TAP only.
    """
    if _wants_firecracker(config, network, verdict):
        from banger.vmm.rawdisk import clone_raw

        method = await clone_raw(base, vdir / ROOT_RAW)
        (vdir / ROOT_META).write_text(json.dumps({"format": "raw", "copy": method}) + "\n")
    else:
        await create_root_overlay(base, vdir / ROOT_QCOW2)
    return describe_root_disk(vdir) or ""


def root_disk(vdir: Path) -> DiskSpec:
    raw = vdir / ROOT_RAW
    if raw.exists():
        return DiskSpec(raw, "raw")
    return DiskSpec(vdir / ROOT_QCOW2, "qcow2")


def describe_root_disk(vdir: Path) -> str | None:
    """`qcow2 overlay`, `raw copy (reflink)` or `raw copy (sparse)`; None when there is none."""
    if (vdir / ROOT_RAW).exists():
        try:
            copy = json.loads((vdir / ROOT_META).read_text()).get("copy", "unknown")
        except (OSError, ValueError):
            copy = "unknown"
        return f"raw copy ({copy})"
    if (vdir / ROOT_QCOW2).exists():
        return "qcow2 overlay"
    return None


@dataclass(frozen=True)
class BootPlan:
    driver: Driver
    root: DiskSpec
    kernel: Path  # the image the VMM boots


def boot_plan(
    config: Config,
    vm_name: str,
    vdir: Path,
    kernel_name: str,
    boot_image: Path,
    vmlinux: Path | None,
    network: str = "tap",
    verdict: KVMVerdict | None = None,
    get_driver: GetDriver | None = None,
) -> BootPlan:
    """Which driver boots this VM now, with which root disk and kernel image.

    A VM whose root is a qcow2 overlay can only run on QEMU: with `vmm = "auto"` it keeps QEMU
    even where Firecracker is chosen for new VMs; with `vmm = "firecracker"` it is an error.
    Under `auto` a user-mode network keeps QEMU too; forced, the driver refuses it by name.
    `get_driver` is the daemon's registry (a fresh driver per call without one).
    """
    if get_driver is None:
        from banger.vmm.build import build_driver

        def get_driver(name: str) -> Driver:
            return build_driver(config, name)

    root = root_disk(vdir)
    if _wants_firecracker(config, network, verdict):
        if root.format != "raw":
            if config.vmm == "firecracker":
                raise DriverError(
                    f"vm {vm_name} has a qcow2 root overlay (it was created for QEMU), which "
                    'Firecracker cannot boot: recreate the VM, or set vmm = "auto"'
                )
            return BootPlan(get_driver("qemu"), root, boot_image)
        from banger.vmm.firecracker import firecracker_kernel

        return BootPlan(get_driver("firecracker"), root, firecracker_kernel(kernel_name, vmlinux))
    return BootPlan(get_driver("qemu"), root, boot_image)

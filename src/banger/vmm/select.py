"""Which VMM driver runs guests: `vmm = auto | qemu | firecracker` in config.

`auto` takes Firecracker only when its binary is present AND KVM really runs guests
(vmm/accel.kvm_verdict: a nested-PVM /dev/kvm does not count); otherwise QEMU.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass

from banger.config import Config
from banger.vmm.accel import KVMVerdict, kvm_verdict
from banger.vmm.base import Driver, DriverError


@dataclass(frozen=True)
class VMMChoice:
    name: str  # "qemu" | "firecracker"
    reason: str
    usable: bool = True  # False: the configured VMM cannot run here (reason says why)


def choose_vmm(
    config: Config,
    verdict: KVMVerdict | None = None,
    which: Callable[[str], str | None] = shutil.which,
) -> VMMChoice:
    """Decide (without starting anything) which VMM new VMs get, and why."""
    if config.vmm == "qemu":
        return VMMChoice("qemu", 'config says vmm = "qemu"')
    fc = which(config.firecracker_bin)
    v = verdict or kvm_verdict()
    if config.vmm == "firecracker":
        if fc is None:
            return VMMChoice(
                "firecracker",
                f'config says vmm = "firecracker" but {config.firecracker_bin!r} is not '
                'installed: install it (docs/firecracker.md) or set vmm = "auto"',
                usable=False,
            )
        if not v.usable:
            return VMMChoice(
                "firecracker",
                f'config says vmm = "firecracker" but KVM cannot run guests here ({v.reason}): '
                'set vmm = "auto" or "qemu"',
                usable=False,
            )
        return VMMChoice("firecracker", f'config says vmm = "firecracker"; {fc}, {v.reason}')
    if fc is None:
        return VMMChoice("qemu", f"auto: no {config.firecracker_bin!r} binary")
    if not v.usable:
        return VMMChoice("qemu", f"auto: {fc} present but {v.reason}")
    return VMMChoice("firecracker", f"auto: {fc} present and {v.reason}")


def select_driver(config: Config) -> Driver:
    """The driver for new boots (see `choose_vmm`)."""
    choice = choose_vmm(config)
    if not choice.usable:
        raise DriverError(choice.reason)
    return driver_by_name(config, choice.name)


def driver_by_name(config: Config, name: str) -> Driver:
    """A driver built from config alone (the daemon uses one DriverRegistry instead)."""
    from banger.vmm.build import build_driver

    return build_driver(config, name)

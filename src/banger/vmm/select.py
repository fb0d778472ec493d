"""Which VMM driver runs guests: `vmm = auto | qemu | firecracker` in config."""

from __future__ import annotations

from banger.config import Config
from banger.vmm.base import Driver, DriverError
from banger.vmm.qemu import QemuDriver


def select_driver(config: Config) -> Driver:
    """The driver for new boots. `auto` is QEMU until the Firecracker branch proves it can run."""
    if config.vmm == "firecracker":
        # The Firecracker issue adds its driver here (binary present and a KVM that runs guests).
        raise DriverError(
            'vmm = "firecracker" is not available in this build; set vmm = "qemu" or "auto"'
        )
    return QemuDriver(qemu_bin=config.qemu_bin, accel=config.accel)


def driver_by_name(config: Config, name: str) -> Driver:
    """The driver that launched a persisted handle (re-attach uses the same driver)."""
    if name == "qemu":
        return QemuDriver(qemu_bin=config.qemu_bin, accel=config.accel)
    raise DriverError(f"unknown VMM driver {name!r} in a persisted VM handle")

"""Build a driver by name from config: the one place a concrete driver is constructed."""

from __future__ import annotations

from typing import Any

from banger.config import Config
from banger.vmm.base import Driver, DriverError


def build_driver(config: Config, name: str, jail_launcher: Any = None) -> Driver:
    if name == "qemu":
        from banger.vmm.qemu import QemuDriver

        return QemuDriver(qemu_bin=config.qemu_bin, accel=config.accel)
    if name == "firecracker":
        from banger.vmm.firecracker import FirecrackerDriver

        return FirecrackerDriver.from_config(config, jail_launcher)
    raise DriverError(f"unknown VMM driver {name!r} in a persisted VM handle")

"""The daemon's drivers, built once: one instance per VMM for the daemon's life.

Callers get a driver by the name a persisted handle carries (`get`) or for a new boot
(`for_new_boot`, which applies `vmm = auto | qemu | firecracker`), and ask it for capabilities.
Nothing outside `vmm/` imports a concrete driver.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from banger.config import Config
from banger.vmm import plan
from banger.vmm.base import Driver, DriverError
from banger.vmm.select import VMMChoice, choose_vmm

DriverFactory = Callable[[Config, str], Driver]


def _build(config: Config, name: str) -> Driver:
    if name == "qemu":
        from banger.vmm.qemu import QemuDriver

        return QemuDriver(qemu_bin=config.qemu_bin, accel=config.accel)
    if name == "firecracker":
        from banger.vmm.firecracker import FirecrackerDriver

        return FirecrackerDriver.from_config(config)
    raise DriverError(f"unknown VMM driver {name!r} in a persisted VM handle")


class DriverRegistry:
    def __init__(self, config: Config, factory: DriverFactory = _build) -> None:
        self._config = config
        self._factory = factory
        self._drivers: dict[str, Driver] = {}

    def get(self, name: str) -> Driver:
        """The driver that launched a persisted handle (re-attach uses the same driver)."""
        driver = self._drivers.get(name)
        if driver is None:
            driver = self._drivers[name] = self._factory(self._config, name)
        return driver

    def choice(self) -> VMMChoice:
        """Which VMM new boots get and why (re-checked: a binary may have been installed)."""
        return choose_vmm(self._config)

    def for_new_boot(self) -> Driver:
        choice = self.choice()
        if not choice.usable:
            raise DriverError(choice.reason)
        return self.get(choice.name)

    async def make_root_disk(self, base: Path, vdir: Path, network: str) -> str:
        """A new VM's root disk in the format the VMM that will boot it takes (vmm/plan.py)."""
        return await plan.make_root_disk(self._config, base, vdir, network)

    def boot_plan(
        self,
        vm_name: str,
        vdir: Path,
        kernel_name: str,
        boot_image: Path,
        vmlinux: Path | None,
        network: str,
    ) -> plan.BootPlan:
        """Which of these drivers boots the VM now, with which root disk and kernel image."""
        return plan.boot_plan(
            self._config,
            vm_name,
            vdir,
            kernel_name,
            boot_image,
            vmlinux,
            network,
            get_driver=self.get,
        )

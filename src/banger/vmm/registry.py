"""The daemon's drivers, built once: one instance per VMM for the daemon's life.

Callers get a driver by the name a persisted handle carries (`get`) or for a new boot
(`for_new_boot`, which applies `vmm = auto | qemu | firecracker`), and ask it for capabilities.
Nothing outside `vmm/` imports a concrete driver.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.config import Config
from banger.vmm import plan
from banger.vmm.accel import KVMVerdict
from banger.vmm.base import Driver, DriverError
from banger.vmm.build import build_driver
from banger.vmm.select import VMMChoice, choose_vmm

__all__ = ["DriverRegistry", "FirecrackerBinary", "VMMChoice", "firecracker_binary", "vmm_choice"]

DriverFactory = Callable[[Config, str], Driver]


class DriverRegistry:
    def __init__(
        self, config: Config, factory: DriverFactory | None = None, *, jail_launcher: Any = None
    ) -> None:
        """`jail_launcher`: bangerd-root's client (a system install's owner daemon): Firecracker's
        jailer is started through it (vmm/firecracker.py JailLauncher)."""
        self._config = config
        self._factory: DriverFactory = factory or (
            lambda config, name: build_driver(config, name, jail_launcher)
        )
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


# --- host facts for `banger doctor` (so nothing outside vmm/ imports a concrete driver) ---------


@dataclass(frozen=True)
class FirecrackerBinary:
    """The configured Firecracker binary as found on this host."""

    configured: str  # config.firecracker_bin, as written
    path: str | None  # None: not found on PATH
    version: str | None  # what `--version` said (e.g. "1.16.1"); None when it gave nothing
    supported: bool  # a version was read and lies in `supported_range`
    supported_range: str


def firecracker_binary(config: Config) -> FirecrackerBinary:
    from banger.vmm import firecracker

    path = shutil.which(config.firecracker_bin)
    version = firecracker.binary_version(path) if path else None
    parsed = firecracker.parse_version(version or "")
    return FirecrackerBinary(
        configured=config.firecracker_bin,
        path=path,
        version=version if parsed is not None else None,
        supported=parsed is not None and firecracker.version_supported(parsed),
        supported_range=firecracker.SUPPORTED_RANGE,
    )


def vmm_choice(config: Config, verdict: KVMVerdict | None = None) -> VMMChoice:
    """Which VMM new VMs get, and why (nothing is started)."""
    return choose_vmm(config, verdict)

"""Driver selection: `auto` takes Firecracker only with its binary AND a KVM that runs guests."""

from __future__ import annotations

from pathlib import Path

import pytest

from banger.config import Config
from banger.vmm.accel import KVMVerdict, kvm_verdict
from banger.vmm.base import Driver, DriverError
from banger.vmm.firecracker import FirecrackerDriver
from banger.vmm.qemu import QemuDriver
from banger.vmm.select import choose_vmm, driver_by_name, select_driver

GOOD = KVMVerdict(True, "kvm_intel/kvm_amd loaded and /dev/kvm is usable")
PVM = KVMVerdict(False, "/dev/kvm is nested PVM (kvm_pvm): stock guest kernels hang under it")


def has(path: str | None) -> object:
    return lambda _name: path


@pytest.mark.parametrize(
    ("vmm", "binary", "verdict", "expected", "usable"),
    [
        ("auto", "/usr/bin/firecracker", GOOD, "firecracker", True),
        ("auto", "/usr/bin/firecracker", PVM, "qemu", True),
        ("auto", None, GOOD, "qemu", True),
        ("qemu", "/usr/bin/firecracker", GOOD, "qemu", True),
        ("firecracker", "/usr/bin/firecracker", GOOD, "firecracker", True),
        ("firecracker", None, GOOD, "firecracker", False),
        ("firecracker", "/usr/bin/firecracker", PVM, "firecracker", False),
    ],
)
def test_choose_vmm(
    vmm: str, binary: str | None, verdict: KVMVerdict, expected: str, usable: bool
) -> None:
    choice = choose_vmm(Config(vmm=vmm), verdict, has(binary))  # type: ignore[arg-type]
    assert (choice.name, choice.usable) == (expected, usable)
    if expected == "qemu" and vmm == "auto":
        assert ("no 'firecracker' binary" in choice.reason) == (binary is None)
        if binary:
            assert verdict.reason in choice.reason
    if not usable:
        assert "set vmm" in choice.reason or "install it" in choice.reason


def test_this_host_falls_back_to_qemu_even_with_a_firecracker_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "firecracker"
    fake.write_text("#!/bin/sh\necho 'Firecracker v1.16.1'\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    config = Config()
    driver = select_driver(config)
    if kvm_verdict().usable:
        assert isinstance(driver, FirecrackerDriver)
    else:
        assert isinstance(driver, QemuDriver)
        with pytest.raises(DriverError, match="KVM cannot run guests here"):
            select_driver(Config(vmm="firecracker"))


def test_driver_by_name_rebuilds_the_firecracker_driver_with_jailer_settings() -> None:
    config = Config(
        jailer_enabled=True,
        jailer_uid=10000,
        jailer_gid=10000,
        jailer_cgroups=["cpu.max=50000 100000"],
        firecracker_bin="/opt/fc/firecracker",
    )
    driver = driver_by_name(config, "firecracker")
    assert isinstance(driver, FirecrackerDriver) and isinstance(driver, Driver)
    assert driver.firecracker_bin == "/opt/fc/firecracker"
    assert driver.jailer is not None
    assert (driver.jailer.uid, driver.jailer.gid) == (10000, 10000)
    assert driver.jailer.cgroups == ("cpu.max=50000 100000",)
    assert driver_by_name(Config(), "firecracker").jailer is None  # type: ignore[attr-defined]
    with pytest.raises(DriverError, match="unknown VMM driver"):
        driver_by_name(config, "bhyve")

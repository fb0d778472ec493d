from __future__ import annotations

from pathlib import Path

import pytest

from banger.vmm.accel import kvm_verdict, resolve_accel


def _fake_sys(tmp_path: Path, *modules: str) -> Path:
    for m in modules:
        (tmp_path / "module" / m).mkdir(parents=True)
    (tmp_path / "module").mkdir(exist_ok=True)
    return tmp_path / "module"


def test_nested_pvm_is_not_usable(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    dev.touch()
    v = kvm_verdict(_fake_sys(tmp_path, "kvm", "kvm_pvm"), dev)
    assert not v.usable
    assert "PVM" in v.reason
    assert resolve_accel("auto", v) == "tcg"


def test_hardware_kvm_is_usable(tmp_path: Path) -> None:
    dev = tmp_path / "kvm"
    dev.touch()
    v = kvm_verdict(_fake_sys(tmp_path, "kvm", "kvm_intel"), dev)
    assert v.usable
    assert resolve_accel("auto", v) == "kvm"


def test_missing_dev_kvm(tmp_path: Path) -> None:
    v = kvm_verdict(_fake_sys(tmp_path), tmp_path / "absent")
    assert not v.usable
    assert resolve_accel("auto", v) == "tcg"
    assert resolve_accel("kvm", v) == "kvm"  # an explicit setting is obeyed (doctor warns)


def test_this_nested_pvm_host_gets_tcg() -> None:
    sysmod = Path("/sys/module")
    if not (sysmod / "kvm_pvm").exists() or (sysmod / "kvm_intel").exists():
        pytest.skip("this host is not a nested-PVM KVM host")
    assert resolve_accel("auto") == "tcg"

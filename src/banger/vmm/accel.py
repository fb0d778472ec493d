"""Can KVM really run a stock guest here? Decides the QEMU accelerator for `accel = "auto"`.

On nested PVM hosts (`kvm_pvm` loaded, no `kvm_intel`/`kvm_amd`) KVM initialises but stock
guest kernels hang after real mode, so `auto` must pick TCG there. This check reads sysfs and
/proc only: it never boots anything, so it cannot hang.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class KVMVerdict:
    usable: bool
    reason: str


def kvm_verdict(
    sys_module: Path = Path("/sys/module"), dev_kvm: Path = Path("/dev/kvm")
) -> KVMVerdict:
    if not dev_kvm.exists():
        return KVMVerdict(False, "/dev/kvm is absent (no hardware virtualisation exposed)")
    if not os.access(dev_kvm, os.R_OK | os.W_OK):
        return KVMVerdict(False, "/dev/kvm is not readable and writable by this user")
    has_pvm = (sys_module / "kvm_pvm").exists()
    has_hw = (sys_module / "kvm_intel").exists() or (sys_module / "kvm_amd").exists()
    if has_pvm and not has_hw:
        return KVMVerdict(
            False, "/dev/kvm is nested PVM (kvm_pvm): stock guest kernels hang under it"
        )
    if not has_hw:
        return KVMVerdict(False, "neither kvm_intel nor kvm_amd is loaded")
    return KVMVerdict(True, "kvm_intel/kvm_amd loaded and /dev/kvm is usable")


def resolve_accel(setting: str, verdict: KVMVerdict | None = None) -> str:
    """The accelerator QEMU gets: the setting itself, or for `auto` kvm only when it is usable."""
    if setting in ("kvm", "tcg"):
        return setting
    v = verdict or kvm_verdict()
    return "kvm" if v.usable else "tcg"

"""Fixtures for the Firecracker driver suite: guest artifacts and the two backends.

`fc` is parametrized: "double" runs the fake `firecracker` executable (the spec-generated
contract double) put first on PATH; "real" runs the real binary and is skipped unless
`firecracker` is installed and KVM really runs guests (vmm/accel.kvm_verdict), with that reason.
Both use the same real guest artifacts: an ELF vmlinux extracted from the host's Debian kernel,
banger's initramfs with its modules, and a tiny ext4 root whose busybox init reboots on
Ctrl-Alt-Del.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from banger.vmm.accel import kvm_verdict
from tests.vmm.firecracker.fcutil import GuestFiles

HERE = Path(__file__).resolve().parent
FAKE = HERE / "fake_firecracker.py"

INITTAB = """\
::sysinit:/bin/busybox echo banger-fc-guest-up
::ctrlaltdel:/bin/busybox reboot -f
::respawn:/bin/busybox sleep 3600
"""


def real_skip_reason() -> str | None:
    """Why the real-binary suite cannot run here (None when it can)."""
    reasons = []
    if shutil.which("firecracker") is None:
        reasons.append("no firecracker binary on PATH")
    verdict = kvm_verdict()
    if not verdict.usable:
        reasons.append(verdict.reason)
    return "; ".join(reasons) or None


def _newest_host_kernel() -> tuple[Path, Path]:
    kernels = sorted(Path("/boot").glob("vmlinuz-*"))
    for k in reversed(kernels):
        mods = Path("/lib/modules") / k.name.removeprefix("vmlinuz-")
        if mods.is_dir():
            return k, mods
    pytest.fail("no /boot/vmlinuz-* with /lib/modules/<version>: run scripts/setup-host.sh")


@pytest.fixture(scope="session")
def guest_files(tmp_path_factory: pytest.TempPathFactory) -> GuestFiles:
    from banger.guest.initramfs import build_initramfs
    from banger.kernels.modules import GUEST_MODULES, resolve_modules
    from banger.kernels.vmlinux import extract_vmlinux

    d = tmp_path_factory.mktemp("fc-guest")
    bzimage, modules = _newest_host_kernel()
    vmlinux = d / "vmlinux"
    extract_vmlinux(bzimage, vmlinux)
    initrd = d / "initrd.img"
    build_initramfs(initrd, modules=resolve_modules(modules, GUEST_MODULES))
    tree = d / "tree"
    for sub in ("bin", "sbin", "etc", "proc", "sys", "dev", "tmp"):
        (tree / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    (tree / "sbin/init").symlink_to("/bin/busybox")
    (tree / "etc/inittab").write_text(INITTAB)
    root = d / "root.ext4"
    with open(root, "wb") as f:
        f.truncate(32 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(root)], check=True, capture_output=True
    )
    return GuestFiles("debian-host", bzimage, vmlinux, initrd, root)


@dataclass
class Backend:
    kind: str  # "double" | "real"
    call_log: Path | None = None
    env: dict[str, str] = field(default_factory=dict)

    def calls(self) -> list[dict[str, Any]]:
        """The API calls the double received, in order (empty for the real binary)."""
        import json

        if self.call_log is None or not self.call_log.exists():
            return []
        return [json.loads(line) for line in self.call_log.read_text().splitlines()]

    def reset_calls(self) -> None:
        if self.call_log is not None and self.call_log.exists():
            self.call_log.unlink()


@pytest.fixture(scope="session")
def fake_bin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("fake-fc-bin")
    exe = d / "firecracker"
    # `exec` keeps the pid: the driver manages the Python process as it would Firecracker.
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    exe.chmod(0o755)
    return d


@pytest.fixture(params=["double", "real"])
def fc(request: pytest.FixtureRequest, fake_bin_dir: Path, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "real":
        reason = real_skip_reason()
        if reason:
            pytest.skip(
                f"real Firecracker suite needs firecracker and a KVM that runs guests: {reason}"
            )
        yield Backend("real")
        return
    mp = pytest.MonkeyPatch()
    log = tmp_path / "fc-calls.jsonl"
    mp.setenv("PATH", f"{fake_bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    mp.setenv("BANGER_FC_DOUBLE_LOG", str(log))
    try:
        yield Backend("double", call_log=log)
    finally:
        mp.undo()


@pytest.fixture
def vm_dir() -> Iterator[Path]:
    # Short path under /tmp: the API and vsock sockets live below it (sun_path ≤ 108 bytes).
    d = Path(tempfile.mkdtemp(prefix="bgfc-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)

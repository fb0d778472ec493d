"""The honest check: an imported distro kernel boots a VM with banger's generated initramfs.

Boots the vmlinux extracted from the host's Debian bzImage plus the generated initramfs under
QEMU TCG (microvm) with a tiny ext4 root whose init prints a marker and powers off.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from banger.kernels import localstore
from tests.kernels.conftest import KVER, needs_host_kernel

pytestmark = [pytest.mark.slow, needs_host_kernel]

MARKER = "BANGER-KERNEL-BOOTED"
ROOT_INIT = f"""#!/bin/busybox sh
/bin/busybox echo "{MARKER} $(/bin/busybox uname -r)"
/bin/busybox echo "MODULES $(/bin/busybox cut -d' ' -f1 /proc/modules | /bin/busybox tr '\\n' ' ')"
/bin/busybox echo "ROOT $(/bin/busybox grep ' / ' /proc/mounts)"
/bin/busybox poweroff -f
"""


def host_tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def tiny_root(tmp: Path, init: str) -> Path:
    tree = tmp / "tree"
    for d in ("bin", "sbin", "proc", "sys", "dev"):
        (tree / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    (tree / "sbin/init").write_text(init)
    (tree / "sbin/init").chmod(0o755)
    img = tmp / "root.ext4"
    with img.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img)], check=True, capture_output=True
    )
    return img


def boot(kernel: Path, initrd: Path, root: Path, console: Path, timeout: float = 120) -> None:
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max",
        "-m", "256", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 tsc_early_khz={host_tsc_khz()} tsc=reliable "
                   "root=/dev/vda rootfstype=ext4 banger.init=/sbin/init quiet",
        "-serial", f"file:{console}",
        "-drive", f"id=root,file={root},format=raw,if=none",
        "-device", "virtio-blk-device,drive=root",
    ]  # fmt: skip
    # QEMU exits 0 even when the guest fails: the console is what tells.
    subprocess.run(argv, capture_output=True, timeout=timeout, check=False)


def test_imported_kernel_boots_with_generated_initramfs(
    host_kernel_dir: Path, tmp_path: Path
) -> None:
    rec = localstore.read_record(host_kernel_dir)
    assert rec.vmlinux is not None and rec.initrd is not None and rec.initrd_generated
    console = tmp_path / "console.log"
    boot(rec.vmlinux, rec.initrd, tiny_root(tmp_path, ROOT_INIT), console)
    log = console.read_text(errors="replace")
    assert f"{MARKER} {KVER}" in log, log[-3000:]
    assert "banger-initramfs:" not in log.replace("banger-initramfs: warning", ""), log[-3000:]
    loaded = next(line for line in log.splitlines() if line.startswith("MODULES ")).split()[1:]
    for needed in ("virtio_blk", "ext4", "virtio_net", "virtio_console", "button", "evdev"):
        assert needed in loaded, (needed, loaded)
    assert "vmw_vsock_virtio_transport" in loaded
    assert "/dev/vda / ext4 rw" in log

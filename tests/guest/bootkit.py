"""Helpers for tests that boot the host's Debian kernel under QEMU TCG with banger's initramfs."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests import hostkernel

KVER = hostkernel.newest_version() or "missing"
KERNEL = Path(f"/boot/vmlinuz-{KVER}")
MODULES_ROOT = Path(f"/lib/modules/{KVER}")
BOOT_MODULES = [
    "virtio_ring", "virtio", "virtio_mmio", "virtio_blk", "crc32c_generic", "crc32c-intel",
    "jbd2", "mbcache", "crc16", "ext4", "failover", "net_failover", "virtio_net",
    "virtio_console", "button", "evdev",
]  # fmt: skip


def resolve_modules(names: Sequence[str] = BOOT_MODULES) -> list[Path]:
    """The kernels area's resolver when it exists; a small modules.dep walk otherwise."""
    try:
        from banger.kernels.modules import resolve_modules as real
    except ImportError:
        pass
    else:
        return real(MODULES_ROOT, names)
    deps: dict[str, list[str]] = {}
    for line in (MODULES_ROOT / "modules.dep").read_text().splitlines():
        target, _, rest = line.partition(":")
        deps[target] = rest.split()

    def key(path: str) -> str:
        return Path(path).name.split(".ko")[0].replace("-", "_")

    by_name = {key(p): p for p in deps}
    out: list[str] = []

    def visit(rel: str) -> None:
        # modules.dep lists a module's dependencies deepest-last: load them in reverse.
        for dep in reversed(deps[rel]):
            visit(dep)
        if rel not in out:
            out.append(rel)

    for name in names:
        rel = by_name.get(name.replace("-", "_"))
        if rel is not None:
            visit(rel)
    return [MODULES_ROOT / rel for rel in out]


def make_ext4(path: Path, tree: Path, size_mib: int = 16, label: str = "") -> None:
    with open(path, "wb") as f:
        f.truncate(size_mib << 20)
    argv = ["mkfs.ext4", "-q", "-F", "-d", str(tree)]
    if label:
        argv += ["-L", label]
    subprocess.run([*argv, str(path)], check=True, capture_output=True)


def host_tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no cpu MHz in /proc/cpuinfo")


def boot(
    initrd: Path,
    disks: Sequence[Path],
    cmdline: str,
    console: Path,
    timeout: float = 90,
) -> subprocess.CompletedProcess[bytes]:
    """Boot to completion (the guest powers off) and return QEMU's result."""
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max",
        "-m", "256", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
        "-kernel", str(KERNEL), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 tsc_early_khz={host_tsc_khz()} tsc=reliable {cmdline}",
        "-serial", f"file:{console}",
    ]  # fmt: skip
    for i, disk in enumerate(disks):
        argv += ["-drive", f"id=d{i},file={disk},format=raw,if=none"]
        argv += ["-device", f"virtio-blk-device,drive=d{i}"]
    return subprocess.run(argv, capture_output=True, timeout=timeout, check=False, env=os.environ)

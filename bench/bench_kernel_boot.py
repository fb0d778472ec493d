"""Kernel import costs and boot time of vmlinux vs bzImage under QEMU TCG, side by side.

    .venv/bin/python bench/bench_kernel_boot.py [--runs 3] [--version 6.1.0-56-amd64]

Imports the host's Debian kernel the way `banger kernel import --from-host` does (timed, with
its vmlinux extraction alone timed next to `xz -dc` of the same payload — the raw tool), then
boots a tiny ext4 root (init prints a marker and powers off) with the same generated initramfs,
alternating the ELF vmlinux and the original bzImage: wall time from QEMU start to exit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from banger.kernels import importer, localstore
from banger.kernels.vmlinux import extract_vmlinux

MARKER = "BENCH-BOOTED"
INIT = f"#!/bin/busybox sh\n/bin/busybox echo {MARKER}\n/bin/busybox poweroff -f\n"


def tsc_khz() -> int:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return int(float(line.split(":")[1]) * 1000)
    raise RuntimeError("no cpu MHz in /proc/cpuinfo")


def make_root(tmp: Path) -> Path:
    tree = tmp / "tree"
    for d in ("bin", "sbin", "proc", "sys", "dev"):
        (tree / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    (tree / "sbin/init").write_text(INIT)
    (tree / "sbin/init").chmod(0o755)
    img = tmp / "root.ext4"
    with img.open("wb") as f:
        f.truncate(16 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(tree), str(img)], check=True)
    return img


def boot(kernel: Path, initrd: Path, root: Path, console: Path) -> float:
    console.unlink(missing_ok=True)
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max",
        "-m", "256", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", f"console=ttyS0 panic=-1 tsc_early_khz={tsc_khz()} tsc=reliable quiet "
                   "root=/dev/vda banger.init=/sbin/init",
        "-serial", f"file:{console}",
        "-drive", f"id=r,file={root},format=raw,if=none", "-device", "virtio-blk-device,drive=r",
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(argv, capture_output=True, timeout=180, check=False)
    dt = time.perf_counter() - t0
    if MARKER not in console.read_text(errors="replace"):
        raise SystemExit(f"boot of {kernel.name} did not reach the marker; see {console}")
    return dt


def raw_xz(bz: Path) -> float:
    """`xz -dc` of the bzImage's payload window: what a shell extract-vmlinux would spend."""
    data = bz.read_bytes()
    setup = (data[0x1F1] + 1) * 512
    off, length = struct.unpack_from("<II", data, 0x248)
    t0 = time.perf_counter()
    subprocess.run(
        ["xz", "-dc", "--single-stream"],
        input=data[setup + off : setup + off + length],
        capture_output=True,
        check=False,
    )
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--version", default=None)
    a = ap.parse_args()
    version, bz, modules = importer.host_kernel(a.version)
    with tempfile.TemporaryDirectory(prefix="bench-kernel-") as t:
        tmp = Path(t)
        t0 = time.perf_counter()
        staged = localstore.staging_dir(tmp / "staging", "bench")
        prep = importer.import_files(staged, kernel=bz, initrd=None, modules=modules)
        t_import = time.perf_counter() - t0
        t0 = time.perf_counter()
        extract_vmlinux(bz, tmp / "vmlinux")
        t_extract = time.perf_counter() - t0
        t_xz = raw_xz(bz) if shutil.which("xz") else float("nan")
        print(f"host kernel {version} ({prep.fmt}), modules {modules}")
        print(f"import --from-host (copy, extract, initramfs): {t_import:.2f} s")
        print(
            f"vmlinux extraction: banger {t_extract:.2f} s vs xz -dc {t_xz:.2f} s "
            f"(ratio {t_extract / t_xz:.2f})"
        )
        root = make_root(tmp)
        initrd = staged / localstore.INITRD
        vmlinux = staged / localstore.KERNEL_ELF
        times: dict[str, list[float]] = {"vmlinux": [], "bzImage": []}
        for _ in range(a.runs):
            times["vmlinux"].append(boot(vmlinux, initrd, root, tmp / "c1.log"))
            times["bzImage"].append(boot(bz, initrd, root, tmp / "c2.log"))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, v in times.items():
            print(f"boot {k:8s} (QEMU start → guest poweroff): median {med[k]:.2f} s  "
                  f"runs {', '.join(f'{x:.2f}' for x in v)}")  # fmt: skip
        print(f"bzImage / vmlinux ratio: {med['bzImage'] / med['vmlinux']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

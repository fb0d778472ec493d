"""Per-VM raw disks for Firecracker: banger's clone_raw vs the raw tools, in one run.

    .venv/bin/python bench/bench_fc_disks.py [--runs 5] [--size-mib 2048] [--used-mib 200]

A sparse 2 GiB "image" with 200 MiB of data (like a published rootfs) is copied per VM:
- on the state filesystem (ext4 here, no reflink): banger's `clone_raw` (sparse) vs
  `cp --sparse=always`, and for reference QEMU's O(1) path `qemu-img create -f qcow2 -b`;
- on a loop-mounted XFS (when root and mkfs.xfs exist): `clone_raw` (reflink) vs
  `cp --reflink=always`.
Medians of --runs, ratios printed (banger / raw tool).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from banger.vmm.rawdisk import clone_raw

MiB = 1 << 20


def make_image(path: Path, size_mib: int, used_mib: int) -> None:
    chunk = os.urandom(MiB)
    with path.open("wb") as f:
        f.truncate(size_mib * MiB)
        step = max(1, size_mib // used_mib)
        for i in range(used_mib):
            f.seek(i * step * MiB)
            f.write(chunk)


def timed(runs: int, fn: Callable[[Path], None], work: Path) -> float:
    times = []
    for i in range(runs):
        dst = work / f"out{i}.img"
        t0 = time.perf_counter()
        fn(dst)
        times.append(time.perf_counter() - t0)
        dst.unlink()
    return statistics.median(times)


def row(name: str, banger: float, raw: float, raw_name: str) -> None:
    print(f"{name:<28} banger {banger * 1000:8.1f} ms   {raw_name:<22} {raw * 1000:8.1f} ms"
          f"   ratio {banger / raw:5.2f}")  # fmt: skip


def bench_dir(label: str, work: Path, args: argparse.Namespace, cp_flags: list[str]) -> None:
    src = work / "base.ext4"
    make_image(src, args.size_mib, args.used_mib)
    subprocess.run(["sync"], check=True)

    def banger(dst: Path) -> None:
        asyncio.run(clone_raw(src, dst))

    def raw(dst: Path) -> None:
        subprocess.run(["cp", *cp_flags, str(src), str(dst)], check=True)

    b = timed(args.runs, banger, work)
    r = timed(args.runs, raw, work)
    row(label, b, r, "cp " + " ".join(cp_flags))
    probe = work / "probe.img"
    print(f"{'':<28} method: {asyncio.run(clone_raw(src, probe))}")
    probe.unlink()
    if shutil.which("qemu-img"):

        def overlay(dst: Path) -> None:
            subprocess.run(
                ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(src), str(dst)],
                check=True,
            )

        ms = timed(args.runs, overlay, work) * 1000
        print(f"{'':<28} (QEMU's qcow2 overlay, O(1): {ms:.1f} ms)")
    src.unlink()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--size-mib", type=int, default=2048)
    p.add_argument("--used-mib", type=int, default=200)
    args = p.parse_args()
    print(f"image: {args.size_mib} MiB, {args.used_mib} MiB used; median of {args.runs} runs")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as d:
        bench_dir("state fs (sparse copy)", Path(d), args, ["--sparse=always", "--reflink=never"])
    if os.geteuid() != 0 or shutil.which("mkfs.xfs") is None:
        print("XFS reflink row skipped: needs root and xfsprogs")
        return
    with tempfile.TemporaryDirectory(dir="/tmp") as d:
        img, mnt = Path(d) / "xfs.img", Path(d) / "mnt"
        mnt.mkdir()
        with img.open("wb") as f:
            f.truncate((args.size_mib * 3 + 512) * MiB)
        subprocess.run(["mkfs.xfs", "-q", "-m", "reflink=1", str(img)], check=True)
        subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
        try:
            bench_dir("loop XFS (reflink)", mnt, args, ["--reflink=always"])
        finally:
            subprocess.run(["umount", str(mnt)], check=False)


if __name__ == "__main__":
    main()

"""QEMU driver snapshot mechanics under TCG, side by side in one run (docs/snapshots.md).

    .venv/bin/python bench/bench_qemu_snapshot.py [--mib 512] [--checkpoints 5] [--forks 4]

Boots the test guest of tests/vmm/test_qemu_snapshot.py (busybox init, tmpfs, qcow2 root over a
raw image, qcow2 work disk, control channel) through `QemuDriver` and measures:
- cold launch -> first control-channel answer;
- suspend (save keep_running=False) time and state size; restore -> first answer;
- checkpoints of the running VM after the guest wrote 10 MiB to /work each time: pause (p50,
  max), save call time, bytes allocated on disk per checkpoint (state + frozen layers);
- restore of a checkpoint (roll back) -> first answer;
- PSS of --forks forks started from a checkpoint (RAM from the stream: private copies), from
  the same checkpoint after `share_memory` (RAM file mapped copy-on-write), and from a template
  whose RAM was a shared file from boot.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.vmm import test_qemu_snapshot as t  # noqa: E402

from banger.vmm import qemu_snapshot as snap  # noqa: E402
from banger.vmm.base import VMHandle, VMSpec  # noqa: E402
from banger.vmm.qemu import QemuDriver, wait_control_ready  # noqa: E402


def allocated(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


async def main(args: argparse.Namespace) -> None:
    t.MEMORY_MIB = args.mib
    work = Path(tempfile.mkdtemp(prefix="bench-qsnap-", dir="/var/tmp"))
    driver = QemuDriver(accel="tcg")
    handles: list[VMHandle] = []
    specs: list[VMSpec] = []
    results: dict[str, object] = {"memory_mib": args.mib}

    async def boot(spec: VMSpec) -> VMHandle:
        h = await driver.launch(spec)
        handles.append(h)
        specs.append(spec)
        await wait_control_ready(h.control_socket, 240, alive=lambda: driver.is_alive(h))
        return h

    async def restore(spec: VMSpec, saved: snap.SavedMachine) -> VMHandle:
        h = await driver.restore(spec, saved)
        handles.append(h)
        specs.append(spec)
        return h

    try:
        files = work / "guest"
        files.mkdir()
        initrd, root, work_img = t.build_guest(files)
        vdir = work / "vm"
        await t.make_disks(vdir, root, work_img)
        spec = t.make_spec(vdir, initrd, "bench0001")

        start = time.monotonic()
        h = await boot(spec)
        await t.guest(h, "true")
        results["cold_launch_to_answer_s"] = round(time.monotonic() - start, 2)
        # Let the guest touch some RAM, as a real workload would (a 64 MiB tmpfs file).
        await t.guest(h, "dd if=/dev/urandom of=/tmp/blob bs=1M count=64 2>/dev/null")

        start = time.monotonic()
        sus = await driver.save(h, spec, work / "suspend", keep_running=False)
        results["suspend_s"] = round(time.monotonic() - start, 2)
        results["suspend_state_mib"] = round(allocated(sus.dir) / 2**20, 1)
        start = time.monotonic()
        h = await restore(spec, sus)
        await t.guest(h, "true")
        results["resume_to_answer_s"] = round(time.monotonic() - start, 2)
        shutil.rmtree(sus.dir)

        pauses, calls, sizes = [], [], []
        ckpts = []
        for i in range(args.checkpoints):
            await t.guest(h, f"dd if=/dev/urandom of=/work/b{i} bs=1M count=10 2>/dev/null; sync")
            start = time.monotonic()
            c = await driver.save(h, spec, work / f"ckpt{i}", keep_running=True)
            calls.append(time.monotonic() - start)
            pauses.append(c.paused_seconds)
            sizes.append(allocated(c.dir))
            ckpts.append(c)
        results["checkpoint_pause_s_p50"] = round(statistics.median(pauses), 3)
        results["checkpoint_pause_s_max"] = round(max(pauses), 3)
        results["checkpoint_call_s_p50"] = round(statistics.median(calls), 3)
        results["checkpoint_mib_after_10mib"] = [round(s / 2**20, 1) for s in sizes[1:]]
        layers = [allocated(c.dir) - allocated(c.dir / snap.STATE_FILE) for c in ckpts[1:]]
        results["checkpoint_layers_mib"] = [round(s / 2**20, 1) for s in layers]
        results["checkpoint_state_mib"] = round(
            allocated(ckpts[-1].dir / snap.STATE_FILE) / 2**20, 1
        )

        await driver.force_stop(h)
        start = time.monotonic()
        h = await restore(spec, ckpts[0])
        await t.guest(h, "true")
        results["rollback_to_answer_s"] = round(time.monotonic() - start, 2)
        await driver.force_stop(h)

        # Forks from a checkpoint: RAM comes from the stream, each child has its own copy.
        forks = []
        for i in range(args.forks):
            cdir = work / f"fork{i}"
            cdir.mkdir()
            start = time.monotonic()
            f = await restore(t.make_spec(cdir, initrd, f"benchf{i:03d}"), ckpts[-1])
            await t.guest(f, "true")
            forks.append((f, time.monotonic() - start))
        await asyncio.sleep(2)  # let them idle (no synchronisation depends on it)
        results["fork_to_answer_s"] = [round(s, 2) for _f, s in forks]
        results["fork_pss_mib_stream"] = [round(pss_kib(f.pid) / 1024) for f, _s in forks]
        for f, _s in forks:
            await driver.force_stop(f)

        # The same checkpoint after share_memory: RAM in memory.ram, mapped copy-on-write.
        start = time.monotonic()
        shared = await driver.share_memory(spec, ckpts[-1])
        results["share_memory_s"] = round(time.monotonic() - start, 2)
        forks = []
        for i in range(args.forks):
            cdir = work / f"sfork{i}"
            cdir.mkdir()
            start = time.monotonic()
            f = await restore(t.make_spec(cdir, initrd, f"benchs{i:03d}"), shared)
            await t.guest(f, "true")
            forks.append((f, time.monotonic() - start))
        await asyncio.sleep(2)
        results["shared_fork_to_answer_s"] = [round(s, 2) for _f, s in forks]
        results["shared_fork_pss_mib"] = [round(pss_kib(f.pid) / 1024) for f, _s in forks]
        for f, _s in forks:
            await driver.force_stop(f)

        # A template: RAM in a shared file; forks map it private (copy-on-write).
        tdir = work / "template"
        await t.make_disks(tdir, root, work_img)
        tspec = t.make_spec(tdir, initrd, "benchtpl0", memory_file=tdir / "ram")
        th = await boot(tspec)
        await t.guest(th, "dd if=/dev/urandom of=/tmp/blob bs=1M count=64 2>/dev/null")
        start = time.monotonic()
        tpl = await driver.save(th, tspec, work / "tpl", keep_running=False)
        results["template_save_s"] = round(time.monotonic() - start, 2)
        results["template_state_kib"] = round(allocated(tpl.dir / snap.STATE_FILE) / 1024)
        forks = []
        for i in range(args.forks):
            cdir = work / f"tfork{i}"
            cdir.mkdir()
            for name in ("root.qcow2", "work.qcow2"):
                await snap.create_layer(
                    cdir / name, tdir / name, await snap.virtual_size(tdir / name)
                )
            start = time.monotonic()
            fspec = t.make_spec(cdir, initrd, f"benchtf{i:02d}")
            f = await restore(fspec, tpl)
            await t.guest(f, "true")
            forks.append((f, time.monotonic() - start))
        await asyncio.sleep(2)
        results["template_fork_to_answer_s"] = [round(s, 2) for _f, s in forks]
        results["template_fork_pss_mib"] = [round(pss_kib(f.pid) / 1024) for f, _s in forks]
    finally:
        for h in handles:
            await driver.force_stop(h)
        for s in specs:
            shutil.rmtree(s.runtime_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    for key, value in results.items():
        print(f"{key:32} {value}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--checkpoints", type=int, default=5)
    ap.add_argument("--forks", type=int, default=4)
    asyncio.run(main(ap.parse_args()))

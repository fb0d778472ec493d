"""`banger vm create` → first SSH command, against a hand-rolled QEMU run of the same kernel,
initramfs and disks reaching the same SSH command; plus 20 stopped creates from one image.

    .venv/bin/python bench/bench_vm_create.py [--runs 3] [--stopped 20] [--cache-home DIR]

Everything runs in a private XDG environment with a real daemon. The image (offline
debian-bookworm) and kernel (host Debian kernel) are prepared first and not timed; point
--cache-home at an existing banger cache to skip the mmdebstrap build.

banger's path: `banger vm create --name X` (CLI → daemon: overlay, work disk, host key, seed
disk, QEMU, READY on the control port, SSH banner) then `banger vm ssh X -- true`.
Raw path: the disks (qcow2 overlay, work disk, seed disk) are made beforehand (untimed), then
qemu-system-x86_64 with the HOST-NOTES recipe, poll for the SSH banner, `ssh … true`.
Medians of --runs; ratio = banger / raw (goal ≤ 1.10).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from banger.guest.payload import GuestNetwork, SeedConfig, build_seed
from banger.guest.ssh import generate_host_key, pin_host_key
from banger.vmm.qemu import host_tsc_khz


class Env:
    def __init__(self, cache_home: Path | None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="bgb-", dir="/tmp"))
        self.env = dict(os.environ)
        self.env.update(
            {
                "XDG_CONFIG_HOME": str(self.root / "cfg"),
                "XDG_STATE_HOME": str(self.root / "st"),
                "XDG_CACHE_HOME": str(cache_home or self.root / "cache"),
                "XDG_RUNTIME_DIR": str(self.root / "run"),
                "NO_COLOR": "1",
                "BANGER_NETWORK": "user",
            }
        )
        (self.root / "run").mkdir(mode=0o700)
        (self.root / "cfg/banger").mkdir(parents=True)
        (self.root / "cfg/banger/config.toml").write_text(
            # Cold boots measured: no warm-create templates (bench/bench_warm.py has those).
            'warm_creates = false\n[vm_defaults]\nmemory_mib = 512\nvcpu = 1\ndisk_size = "2G"\n'
        )

    def close(self) -> None:
        """Delete every VM of this private environment, stop its daemon, remove its dirs."""
        for vm in json.loads(self.banger("vm", "list", "--json")):
            self.banger("vm", "delete", str(vm["name"]), timeout=600)
        self.banger("daemon", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def banger(self, *args: str, timeout: float = 1800) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "banger.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if p.returncode != 0:
            raise SystemExit(f"banger {' '.join(args)} failed:\n{p.stderr}")
        return p.stdout

    def rpc(self, method: str, params: dict[str, Any]) -> Any:
        from banger.rpc.client import Client

        with Client(self.root / "run/banger/bangerd.sock") as c:
            return c.call(method, params, timeout=600)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_banner(port: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.settimeout(2)
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"raw QEMU: no SSH banner on {port}")


def banger_run(env: Env, name: str) -> float:
    t0 = time.perf_counter()
    env.banger("vm", "create", "--name", name)
    env.banger("vm", "ssh", name, "--", "true")
    elapsed = time.perf_counter() - t0
    env.banger("vm", "delete", name)
    return elapsed


def raw_run(env: Env, kernel: dict[str, Any], image: dict[str, Any], work: Path, i: int) -> float:
    d = work / f"raw{i}"
    d.mkdir()
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", image["rootfs"],
         str(d / "root.qcow2")],
        check=True,
    )  # fmt: skip
    with open(d / "work.ext4", "wb") as f:
        f.truncate(2 << 30)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-L", "banger-work", "-E",
         "lazy_itable_init=1,lazy_journal_init=1", str(d / "work.ext4")],
        check=True,
    )  # fmt: skip
    key = env.root / "st/banger/ssh/id_ed25519"
    priv, pub = generate_host_key(d)
    kh = d / "known_hosts"
    pin_host_key(kh, "raw.vm", pub)
    build_seed(
        d / "seed.ext4",
        SeedConfig(
            vm_id=f"raw{i}",
            hostname="raw",
            authorized_keys=(key.with_name("id_ed25519.pub")).read_text(),
            host_key_private=priv,
            host_key_public=pub,
            init_mode="auto",
            network=GuestNetwork(kind="user"),
        ),
    )
    port = free_port()
    append = (
        "console=ttyS0 panic=-1 quiet cryptomgr.notests mitigations=off root=/dev/vda "
        "rootfstype=ext4 banger.seed=LABEL=banger-seed banger.init=/.banger/init "
        f"tsc_early_khz={host_tsc_khz()} tsc=reliable"
    )
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max",
        "-m", "512", "-smp", "1", "-nodefaults", "-no-user-config", "-no-reboot",
        "-display", "none", "-kernel", kernel["vmlinux"] or kernel["kernel"],
        "-initrd", kernel["initrd"], "-append", append,
        "-serial", f"file:{d / 'console.log'}",
        "-drive", f"id=r,file={d / 'root.qcow2'},format=qcow2,if=none",
        "-device", "virtio-blk-device,drive=r",
        "-drive", f"id=w,file={d / 'work.ext4'},format=raw,if=none",
        "-device", "virtio-blk-device,drive=w",
        "-drive", f"id=s,file={d / 'seed.ext4'},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=s",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=ctl,path={d / 'ctl.sock'},server=on,wait=off",
        "-device", "virtserialport,chardev=ctl,name=banger.ctl",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-device,netdev=n0",
    ]  # fmt: skip
    ssh = [
        "ssh", "-i", str(key), "-p", str(port), "-o", f"UserKnownHostsFile={kh}",
        "-o", "HostKeyAlias=raw.vm", "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
        "-o", "KexAlgorithms=curve25519-sha256", "root@127.0.0.1", "true",
    ]  # fmt: skip
    t0 = time.perf_counter()
    qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        wait_banner(port)
        subprocess.run(ssh, check=True, timeout=60)
        elapsed = time.perf_counter() - t0
    finally:
        qemu.kill()
        qemu.wait()
    shutil.rmtree(d)
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--stopped", type=int, default=20)
    ap.add_argument("--cache-home", type=Path, default=None)
    args = ap.parse_args()
    env = Env(args.cache_home)
    try:
        t0 = time.perf_counter()
        image = json.loads(env.banger("image", "pull", "debian-bookworm", "--json"))
        print(f"setup: debian-bookworm ready in {time.perf_counter() - t0:.1f}s (untimed)")
        # First create imports the kernel (untimed warm-up) and creates the client key.
        env.banger("vm", "create", "--name", "warmup", "--no-start")
        env.banger("vm", "delete", "warmup")
        kernel = env.rpc("kernel.show", {"name": "debian-6.1"})
        from banger.guest.ssh import ensure_client_key

        ensure_client_key(env.root / "st/banger/ssh/id_ed25519")
        work = env.root / "raw"
        work.mkdir()
        banger_t, raw_t = [], []
        for i in range(args.runs):
            # Interleaved so host noise hits both sides alike.
            raw_t.append(raw_run(env, kernel, image, work, i))
            banger_t.append(banger_run(env, f"bench-{i}"))
        b, r = statistics.median(banger_t), statistics.median(raw_t)
        print(f"create → first SSH command (median of {args.runs}):")
        print(f"  banger vm create + vm ssh  {b:6.2f}s   runs {[round(x, 2) for x in banger_t]}")
        print(f"  hand-rolled qemu + ssh     {r:6.2f}s   runs {[round(x, 2) for x in raw_t]}")
        print(f"  ratio banger/raw           {b / r:6.2f}x  (goal ≤ 1.10x)")

        per: list[float] = []
        for i in range(args.stopped):
            t1 = time.perf_counter()
            env.rpc("vm.create", {"name": f"stopped-{i}", "no_start": True})
            per.append(time.perf_counter() - t1)
        vms_dir = env.root / "st/banger/vms"
        sizes = [
            sum(f.stat().st_blocks * 512 for f in d.iterdir() if f.is_file())
            for d in vms_dir.iterdir()
        ]
        print(f"{args.stopped} stopped creates from one image (RPC vm.create --no-start):")
        print(
            f"  per create: median {statistics.median(per) * 1000:.0f} ms, "
            f"min {min(per) * 1000:.0f} ms, max {max(per) * 1000:.0f} ms, "
            f"total {sum(per):.2f}s"
        )
        print(
            f"  disk allocated per VM: median {statistics.median(sizes) / 1024:.0f} KiB "
            f"(image rootfs {image['size_bytes'] / (1 << 20):.0f} MiB shared, not copied)"
        )
        env.banger("vm", "prune", "-f")
    finally:
        subprocess.run(
            [sys.executable, "-m", "banger.cli.main", "daemon", "stop"],
            env=env.env,
            capture_output=True,
            check=False,
        )
        shutil.rmtree(env.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Observability probe latency next to the raw tool, on one real guest (QEMU TCG, user-mode).

    .venv/bin/python bench/bench_observe.py [--runs 5] [--cache-home DIR]

Boots a VM from the offline debian-bookworm image in a throwaway banger environment (pass an
XDG cache that already holds the image to skip its ~2 min build), then times, alternating:
`vm.ping` vs a raw control-channel ping; `vm.health` vs a bare `ssh … true` with banger's argv;
`vm.stats` and `vm.ports` vs a bare `ssh … cat /proc/loadavg /proc/meminfo /proc/net/tcp`.
Prints medians and ratios. Runs on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from banger.guest import probes
from banger.guest.ssh import SSHTarget, ssh_argv
from banger.rpc.client import Client


def median_ms(fn: Callable[[], object], runs: int, gap: float = 0.0) -> float:
    """Median wall time of `fn`; `gap` > 0 waits a random 0..gap s (untimed) before each call,
    as calls from users do, so a periodic poller in the guest cannot phase-lock with the loop."""
    samples = []
    for _ in range(runs):
        if gap:
            time.sleep(random.uniform(0, gap))
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def main(runs: int, cache_home: str | None) -> None:
    root = Path(tempfile.mkdtemp(prefix="bgbo-", dir="/tmp"))
    env = dict(os.environ)
    env.update(
        {
            "XDG_CONFIG_HOME": str(root / "cfg"),
            "XDG_STATE_HOME": str(root / "st"),
            "XDG_CACHE_HOME": cache_home or str(root / "cache"),
            "XDG_RUNTIME_DIR": str(root / "run"),
            "BANGER_NETWORK": "user",
            "NO_COLOR": "1",
        }
    )
    (root / "run").mkdir(mode=0o700)
    (root / "cfg" / "banger").mkdir(parents=True)
    (root / "cfg" / "banger" / "config.toml").write_text("[vm_defaults]\nmemory_mib = 512\n")

    def banger(*args: str) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "banger.cli.main", *args],
            env=env, capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"banger {' '.join(args)} failed: {p.stderr}")
        return p.stdout

    sock = root / "run" / "banger" / "bangerd.sock"
    try:
        banger("vm", "create", "--name", "bench")
        with Client(sock) as c:
            target = SSHTarget.from_json(c.call("vm.ssh", {"ref": "bench"}))
            raw_ssh = ssh_argv(target, ["true"], tty=False)
            raw_cat = ssh_argv(target, ["cat /proc/loadavg /proc/meminfo /proc/net/tcp"], tty=False)
            ctl = str(root / "run" / "banger")
            ctl_socks = list(Path(ctl).rglob("ctl.sock"))

            def run(argv: list[str]) -> None:
                subprocess.run(argv, capture_output=True, check=True, timeout=60)

            def vm_ping() -> None:
                # A failed probe answers fast too: time only pings the guest really answered.
                r = c.call("vm.ping", {"ref": "bench"})
                if not r["alive"]:
                    raise SystemExit(f"vm.ping: the guest did not answer: {r['error']}")

            rows = [
                (
                    "ping",
                    median_ms(vm_ping, runs, gap=0.25),
                    median_ms(
                        lambda: asyncio.run(probes.control_ping(str(ctl_socks[0]))), runs, gap=0.25
                    )
                    if ctl_socks
                    else float("nan"),
                ),
                (
                    "health",
                    median_ms(lambda: c.call("vm.health", {"ref": "bench"}), runs),
                    median_ms(lambda: run(raw_ssh), runs),
                ),
                (
                    "stats",
                    median_ms(lambda: c.call("vm.stats", {"ref": "bench"}), runs),
                    median_ms(lambda: run(raw_cat), runs),
                ),
                (
                    "ports",
                    median_ms(lambda: c.call("vm.ports", {"refs": ["bench"]}), runs),
                    median_ms(lambda: run(raw_cat), runs),
                ),
            ]
        print(f"{'probe':<8} {'banger ms':>10} {'raw ms':>10} {'ratio':>7}")
        for name, ours, raw in rows:
            print(f"{name:<8} {ours:10.1f} {raw:10.1f} {ours / raw:7.2f}")
    finally:
        subprocess.run(
            [sys.executable, "-m", "banger.cli.main", "vm", "delete", "bench"],
            env=env, capture_output=True, timeout=120, check=False,
        )  # fmt: skip
        subprocess.run(
            [sys.executable, "-m", "banger.cli.main", "daemon", "stop"],
            env=env, capture_output=True, timeout=60, check=False,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cache-home", default=None)
    a = ap.parse_args()
    main(a.runs, a.cache_home)

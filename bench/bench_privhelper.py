"""The cost of the privilege split: network steps via bangerd-root vs in-process vs raw `ip`.

    .venv/bin/python bench/bench_privhelper.py [--runs 20]    (as root)

A real `bangerd-root` runs under a temporary system root inside a throwaway network namespace
(owner: nobody); the measuring process re-executes itself inside the same namespace, so all three
run the tools the same way. Per step, medians of --runs:
- `ip` run directly (the raw tool);
- `LocalPrivOps` (user mode: the daemon runs the tool itself);
- `HelperPrivOps` (system mode: one socket round trip, validation, JSON log line, then the tool).
Steps: a TAP create+delete cycle, list_taps, and the helper's bare `priv.ping` round trip.
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
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from banger.network.privops import LocalPrivOps
from banger.privhelper.client import HelperPrivOps

OWNER_UID = 65534  # nobody: the helper only needs an unprivileged owner uid in install.toml
BRIDGE = "br-banger-b"
TAP = "tap-bg-0000beef"


async def timed(runs: int, fn: Callable[[], Awaitable[object]]) -> float:
    await fn()  # warm up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        await fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def raw(argvs: list[list[str]]) -> None:
    for argv in argvs:
        p = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await p.wait()


async def bench(runs: int, helper_sock: Path) -> None:
    local = LocalPrivOps()
    remote = HelperPrivOps(helper_sock)
    await local.ensure_bridge(BRIDGE, "172.31.0.1", 24)

    async def raw_cycle() -> None:
        await raw(
            [
                ["ip", "tuntap", "add", "dev", TAP, "mode", "tap", "user", str(OWNER_UID)],
                ["ip", "link", "set", "dev", TAP, "master", BRIDGE],
                ["ip", "link", "set", "dev", TAP, "up"],
                ["ip", "tuntap", "del", "dev", TAP, "mode", "tap"],
            ],
        )

    async def local_cycle() -> None:
        await local.ensure_tap(TAP, BRIDGE, OWNER_UID)
        await local.delete_tap(TAP)

    async def remote_cycle() -> None:
        await remote.ensure_tap(TAP, BRIDGE, OWNER_UID)
        await remote.delete_tap(TAP)

    rows = [
        (
            "tap create+delete",
            await timed(runs, raw_cycle),
            await timed(runs, local_cycle),
            await timed(runs, remote_cycle),
        ),
        (
            "list_taps",
            await timed(runs, lambda: raw([["ip", "-j", "link", "show"]])),
            await timed(runs, local.list_taps),
            await timed(runs, remote.list_taps),
        ),
    ]
    ping = await timed(runs, remote.ping)
    print(
        f"{'step':<20}{'raw ip':>10}{'in-process':>12}{'via helper':>12}{'helper/raw':>12}"
        f"{'helper/in-proc':>16}"
    )
    for name, r, lo, re in rows:
        print(f"{name:<20}{r:>8.1f}ms{lo:>10.1f}ms{re:>10.1f}ms{re / r:>11.2f}x{re / lo:>15.2f}x")
    print(f"{'priv.ping':<20}{'':>10}{'':>12}{ping:>10.2f}ms")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--inner-socket", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner_socket is not None:
        asyncio.run(bench(args.runs, args.inner_socket))
        return 0
    if os.geteuid() != 0:
        print("run as root (it creates a network namespace and starts bangerd-root)")
        return 2
    root = Path(tempfile.mkdtemp(prefix="bgb-", dir="/tmp"))
    ns = f"bgbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=30)
    helper = None
    try:
        (root / "etc/banger").mkdir(parents=True)
        (root / "etc/banger/install.toml").write_text(
            f'owner_user = "nobody"\nowner_uid = {OWNER_UID}\nowner_gid = 65534\n'
        )
        for d in ("run/banger", "var/lib/banger"):
            (root / d).mkdir(parents=True)
        bin_dir = Path(sys.executable).parent
        helper = subprocess.Popen(
            ["ip", "netns", "exec", ns, str(bin_dir / "bangerd-root")],
            env=dict(os.environ, BANGER_SYSTEM_ROOT=str(root)),
            stderr=subprocess.DEVNULL,
        )
        sock = root / "run/banger-root/bangerd-root.sock"
        deadline = time.monotonic() + 15
        while not (sock.exists() and sock.stat().st_uid == OWNER_UID):
            if time.monotonic() > deadline or helper.poll() is not None:
                print("bangerd-root did not start")
                return 1
            time.sleep(0.05)
        inner = [sys.executable, __file__, "--runs", str(args.runs), "--inner-socket", str(sock)]
        subprocess.run(["ip", "netns", "exec", ns, *inner], check=True, timeout=1800)
    finally:
        if helper is not None:
            helper.terminate()
            helper.wait(timeout=10)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=30)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

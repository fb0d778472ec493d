"""Issue 14's figures side by side in one run (QEMU TCG): every way to a usable VM against a cold
`vm create` → first SSH command, in the same daemon, image and sizing.

    .venv/bin/python bench/bench_snapshot.py [--runs 3] [--cache-home DIR]

A private XDG environment with a real daemon and user-mode networking, 512 MiB / 1 vCPU guests
of the offline debian-bookworm image (built, or found in --cache-home, first and untimed).
- cold: `vm create --cold X` + `vm ssh X -- true` (p50 of --runs);
- warm: `vm create Y` + `vm ssh Y -- true` from the template the first (untimed) create saved;
- suspend: `vm suspend P` (reported), then `vm start P` + `vm ssh P -- true`;
- checkpoint: `vm snapshot create` after the guest wrote 10 MiB of random data to /root: its
  size on disk split into disk layers, saved RAM and the rest, and the pause;
- fork: `vm fork P --name F --json` + `vm ssh F -- true` (p50); `-n 4` (each extra child's
  cost is (n4 - n1) / 3); the parent's pause p50/max over every fork and checkpoint;
- PSS (/proc/PID/smaps_rollup) of the 4 idle children of `-n 4` as % of guest RAM.
Ratios are cold / other (higher is better); the goals are the issue's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fork import GUEST_MIB, pid_of, pss_mib
from bench_vm_create import Env

CHANGED_MIB = 10


def timed(*steps: tuple[str, ...], env: Env) -> float:
    t = time.monotonic()
    for args in steps:
        env.banger(*args)
    return time.monotonic() - t


def ssh(name: str) -> tuple[str, ...]:
    return ("vm", "ssh", name, "--", "true")


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512 if path.exists() else 0


def checkpoint_after_write(env: Env, vm: str) -> dict[str, Any]:
    """Checkpoint `vm`, write CHANGED_MIB of random data to /root, checkpoint again: the second
    one's size split by what it holds."""
    env.banger("vm", "snapshot", "create", vm, "before")
    cmd = f"dd if=/dev/urandom of=/root/changed bs=1M count={CHANGED_MIB} status=none && sync"
    env.banger("vm", "ssh", vm, "--", "sh", "-c", cmd)
    env.banger("vm", "snapshot", "create", vm, "after")
    rows = {r["tag"]: r for r in json.loads(env.banger("vm", "snapshot", "list", vm, "--json"))}
    after = rows["after"]
    (sdir,) = (env.root / "st").rglob("snapshots/after")
    layers = sum(allocated(p) for p in sdir.glob("*.qcow2"))
    ram = sum(allocated(p) for p in sdir.iterdir() if p.suffix != ".qcow2" and "seed" not in p.name)
    mib = 1024 * 1024
    total = int(after["size_bytes"])
    return {
        "changed_mib": CHANGED_MIB,
        "size_mib": round(total / mib, 1),
        "disk_layers_mib": round(layers / mib, 1),
        "saved_ram_and_state_mib": round(ram / mib, 1),
        "layers_over_changed": round(layers / mib / CHANGED_MIB, 2),
        "goal_met": layers <= 2 * CHANGED_MIB * mib,
        "paused_ms": [float(rows[t]["paused_ms"]) for t in ("before", "after")],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-home", type=Path)
    args = ap.parse_args()
    env = Env(args.cache_home)
    (env.root / "cfg/banger/config.toml").write_text(
        'warm_creates = true\n[vm_defaults]\nmemory_mib = 512\nvcpu = 1\ndisk_size = "2G"\n'
    )
    out: dict[str, Any] = {"runs": args.runs, "guest": "TCG, 512 MiB, 1 vCPU, user-mode net"}
    try:
        env.banger("daemon", "start")
        env.banger("image", "pull", "debian-bookworm")
        out["first_create_makes_template_s"] = round(
            timed(("vm", "create", "--name", "first"), ssh("first"), env=env), 2
        )
        env.banger("vm", "delete", "first")
        cold: list[float] = []
        warm: list[float] = []
        for r in range(args.runs):
            cold.append(timed(("vm", "create", "--cold", "--name", f"c{r}"), ssh(f"c{r}"), env=env))
            warm.append(timed(("vm", "create", "--name", f"w{r}"), ssh(f"w{r}"), env=env))
            env.banger("vm", "delete", f"c{r}", f"w{r}")
        c50 = p50(cold)
        out["cold_create_to_ssh_s"] = {"p50": round(c50, 2), "runs": [round(x, 2) for x in cold]}
        out["warm_create_to_ssh_s"] = {
            "p50": round(p50(warm), 2),
            "runs": [round(x, 2) for x in warm],
        }
        out["ratio_cold_over_warm"] = round(c50 / p50(warm), 2)

        env.banger("vm", "create", "--cold", "--name", "par")
        env.banger(*ssh("par"))
        suspend: list[float] = []
        start: list[float] = []
        for _ in range(args.runs):
            suspend.append(timed(("vm", "suspend", "par"), env=env))
            start.append(timed(("vm", "start", "par"), ssh("par"), env=env))
        out["suspend_s"] = {"p50": round(p50(suspend), 2), "runs": [round(x, 2) for x in suspend]}
        out["suspended_start_to_ssh_s"] = {
            "p50": round(p50(start), 2),
            "runs": [round(x, 2) for x in start],
        }
        out["ratio_cold_over_suspended_start"] = round(c50 / p50(start), 2)

        ckpt = checkpoint_after_write(env, "par")
        out["checkpoint_after_10mib"] = ckpt
        pauses: list[float] = [ms / 1000 for ms in ckpt["paused_ms"]]

        one: list[float] = []
        for r in range(args.runs):
            t0 = time.monotonic()
            res = json.loads(env.banger("vm", "fork", "par", "--name", f"f{r}", "--json"))
            env.banger(*ssh(f"f{r}"))
            one.append(time.monotonic() - t0)
            pauses.append(float(res["paused_seconds"]))
            env.banger("vm", "delete", f"f{r}")
        t0 = time.monotonic()
        res4 = json.loads(env.banger("vm", "fork", "par", "--name", "q", "-n", "4", "--json"))
        env.banger(*ssh("q-1"))
        t4 = time.monotonic() - t0
        pauses.append(float(res4["paused_seconds"]))
        n1 = p50(one)
        out["fork_to_child_ssh_s"] = {"p50": round(n1, 2), "runs": [round(x, 2) for x in one]}
        out["ratio_cold_over_fork"] = round(c50 / n1, 2)
        out["fork_n4_total_s"] = round(t4, 2)
        out["fork_per_extra_child_s"] = round((t4 - n1) / 3, 2)
        out["parent_pause_ms"] = {
            "p50": round(p50(pauses) * 1000, 1),
            "max": round(max(pauses) * 1000, 1),
        }
        time.sleep(5)  # idle children (a bench, not a test: no synchronisation needed)
        pss = {f"q-{i}": pss_mib(pid_of(env, f"q-{i}")) for i in range(1, 5)}
        pct = {k: round(100 * v / GUEST_MIB, 1) for k, v in pss.items()}
        out["pss_pct_of_guest_ram_4_forks"] = pct
        out["pss_pct_parent"] = round(100 * pss_mib(pid_of(env, "par")) / GUEST_MIB, 1)
        print(json.dumps(out, indent=2))
        rows = [
            ("suspended start -> SSH vs cold", out["ratio_cold_over_suspended_start"], ">= 5x"),
            ("warm create -> SSH vs cold", out["ratio_cold_over_warm"], ">= 4x"),
            ("fork -> child SSH p50 (s)", round(n1, 2), "<= 1 s"),
            ("each extra child of -n 4 (s)", out["fork_per_extra_child_s"], "<= +0.3 s"),
            ("checkpoint layers / changed bytes", ckpt["layers_over_changed"], "<= 2x"),
            ("PSS of 4 idle forks, max % of guest RAM", max(pct.values()), "<= 30%"),
        ]
        for what, value, goal in rows:
            print(f"{what:45} {value!s:>8}   goal {goal}")
    finally:
        env.close()


if __name__ == "__main__":
    main()

"""`banger vm fork` → the child's first SSH command, side by side with a cold `vm create` → first
SSH command in the same run; `-n 4` against `-n 1`; the parent's pause; PSS of idle children.

    .venv/bin/python bench/bench_fork.py [--runs 3] [--cache-home DIR]

A private XDG environment with a real daemon and user-mode networking, 512 MiB / 1 vCPU guests
of the offline debian-bookworm image (built or found in --cache-home first, untimed).
- cold: `vm create --name X` then `vm ssh X -- true` (median of --runs).
- fork -n 1: `vm fork P --name X --json` then `vm ssh X -- true` (median of --runs); the
  parent's pause (`paused_seconds`) p50/max over every fork.
- fork -n 4: the whole command, then `vm ssh NEW-1 -- true`; each extra child's cost is
  (n4 - n1) / 3. With more than one child the daemon shares the base's RAM (memory.ram mapped
  copy-on-write).
- PSS (/proc/PID/smaps_rollup) of each QEMU: the 4 idle children after 5 s, a -n 1 child
  (RAM not shared), the parent; as % of the 512 MiB guest RAM (goal: ≤ 30% each for the 4).
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

from bench_vm_create import Env

GUEST_MIB = 512


def timed(fn: Any) -> tuple[float, Any]:
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pid_of(env: Env, name: str) -> int:
    return int(json.loads(env.banger("vm", "show", name, "--json"))["pid"])


def first_ssh(env: Env, name: str) -> None:
    env.banger("vm", "ssh", name, "--", "true")


def fork_then_ssh(env: Env, name: str, *more: str) -> Any:
    """`vm fork par --name NAME [more] --json`, then the first child's first SSH command."""
    res = json.loads(env.banger("vm", "fork", "par", "--name", name, *more, "--json"))
    first_ssh(env, str(res["children"][0]["name"]))
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-home", type=Path)
    args = ap.parse_args()
    env = Env(args.cache_home)
    try:
        env.banger("daemon", "start")
        env.banger("image", "pull", "debian-bookworm")
        cold = []
        for r in range(args.runs):
            t, _ = timed(lambda r=r: (env.banger("vm", "create", "--name", f"cold{r}"),
                                      first_ssh(env, f"cold{r}")))  # fmt: skip
            cold.append(t)
            env.banger("vm", "delete", f"cold{r}")
        env.banger("vm", "create", "--name", "par")
        first_ssh(env, "par")
        pauses: list[float] = []
        one = []
        for r in range(args.runs):
            name = f"f{r}"
            t, res = timed(lambda name=name: fork_then_ssh(env, name))
            one.append(t)
            pauses.append(float(res["paused_seconds"]))
            if r < args.runs - 1:
                env.banger("vm", "delete", name)
        single = f"f{args.runs - 1}"
        t4, res4 = timed(lambda: fork_then_ssh(env, "q", "-n", "4"))
        pauses.append(float(res4["paused_seconds"]))
        time.sleep(5)  # idle children (a bench, not a test: no synchronisation needed)
        kids = {f"q-{i}": pss_mib(pid_of(env, f"q-{i}")) for i in range(1, 5)}
        single_pss = pss_mib(pid_of(env, single))
        parent_pss = pss_mib(pid_of(env, "par"))
        n1 = statistics.median(one)
        c = statistics.median(cold)
        out = {
            "cold_create_to_ssh_s_p50": round(c, 2),
            "fork_n1_to_ssh_s_p50": round(n1, 2),
            "fork_n1_runs_s": [round(x, 2) for x in one],
            "ratio_cold_over_fork": round(c / n1, 2),
            "fork_n4_total_s": round(t4, 2),
            "fork_n4_children_ready_s": [ch["seconds"] for ch in res4["children"]],
            "per_extra_child_s": round((t4 - n1) / 3, 2),
            "n4_shared_memory": res4["shared_memory"],
            "parent_pause_ms_p50": round(statistics.median(pauses) * 1000, 1),
            "parent_pause_ms_max": round(max(pauses) * 1000, 1),
            "pss_mib_4_children": {k: round(v, 1) for k, v in kids.items()},
            "pss_pct_of_guest_ram_4_children": {
                k: round(100 * v / GUEST_MIB, 1) for k, v in kids.items()
            },
            "pss_mib_single_child_unshared": round(single_pss, 1),
            "pss_mib_parent": round(parent_pss, 1),
        }
        print(json.dumps(out, indent=2))
    finally:
        env.close()


if __name__ == "__main__":
    main()

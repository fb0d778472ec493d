"""Suspended `vm start` → first SSH command, side by side with a cold `vm create` → first SSH
command in the same run; the suspend itself (duration, image size); pause/resume.

    .venv/bin/python bench/bench_suspend.py [--runs 3] [--cache-home DIR]

A private XDG environment with a real daemon and user-mode networking, 512 MiB / 1 vCPU guests
of the offline debian-bookworm image (built or found in --cache-home first, untimed). Each round:
- cold: `vm create --name X` then `vm ssh X -- true`;
- suspend: `vm suspend X` (the VMM exits), its image's size on disk (`vm snapshot list --json`,
  kind suspend);
- wake: `vm start X` (restore, guest clock set, SSH waited for) then `vm ssh X -- true`;
- pause and resume: `vm pause X`, `vm resume X`, each the whole CLI command.
Reported: p50 of each over --runs rounds and the ratio cold / wake (goal here: at least 5 times).
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

MiB = 1 << 20


def timed(fn: Any) -> tuple[float, Any]:
    t = time.monotonic()
    out = fn()
    return time.monotonic() - t, out


def first_ssh(env: Env, name: str) -> None:
    env.banger("vm", "ssh", name, "--", "true")


def suspend_size(env: Env, name: str) -> int:
    snaps = json.loads(env.banger("vm", "snapshot", "list", name, "--json"))
    return int(next(s["size_bytes"] for s in snaps if s["kind"] == "suspend"))


def p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 2)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-home", type=Path)
    args = ap.parse_args()
    env = Env(args.cache_home)
    cold: list[float] = []
    wake: list[float] = []
    suspend: list[float] = []
    sizes: list[int] = []
    pause: list[float] = []
    resume: list[float] = []
    try:
        env.banger("daemon", "start")
        env.banger("image", "pull", "debian-bookworm")
        for r in range(args.runs):
            name = f"s{r}"
            t, _ = timed(lambda name=name: (env.banger("vm", "create", "--name", name),
                                            first_ssh(env, name)))  # fmt: skip
            cold.append(t)
            t, _ = timed(lambda name=name: env.banger("vm", "pause", name))
            pause.append(t)
            t, _ = timed(lambda name=name: env.banger("vm", "resume", name))
            resume.append(t)
            t, _ = timed(lambda name=name: env.banger("vm", "suspend", name))
            suspend.append(t)
            sizes.append(suspend_size(env, name))
            t, _ = timed(lambda name=name: (env.banger("vm", "start", name),
                                            first_ssh(env, name)))  # fmt: skip
            wake.append(t)
            env.banger("vm", "delete", name)
        out = {
            "runs": args.runs,
            "guest_mib": 512,
            "cold_create_to_ssh_s_p50": p50(cold),
            "suspended_start_to_ssh_s_p50": p50(wake),
            "ratio_cold_over_wake": round(statistics.median(cold) / statistics.median(wake), 2),
            "suspend_s_p50": p50(suspend),
            "suspend_image_mib_p50": round(statistics.median(sizes) / MiB, 1),
            "pause_cli_s_p50": p50(pause),
            "resume_cli_s_p50": p50(resume),
            "cold_runs_s": [round(x, 2) for x in cold],
            "wake_runs_s": [round(x, 2) for x in wake],
            "suspend_runs_s": [round(x, 2) for x in suspend],
        }
        print(json.dumps(out, indent=2))
    finally:
        env.close()


if __name__ == "__main__":
    main()

"""Warm vs cold `vm create` → first SSH command (QEMU TCG), side by side in one run.

    .venv/bin/python bench/bench_warm.py [--runs 3] [--cache-home DIR]

A private XDG environment with a real daemon (user-mode networking, 512 MiB / 1 vCPU guests).
The image (offline debian-bookworm) is pulled first, untimed; point --cache-home at a banger
cache that holds its build to skip mmdebstrap. A first, untimed create makes the template
(and its time with the checkpoint is reported against a `--cold` create: the cost the first
create pays). Then --runs rounds, each: `vm create --cold X` + `vm ssh X -- true`, and
`vm create Y` (warm) + `vm ssh Y -- true`; the VMs are deleted between rounds (untimed).
Medians (p50) and the ratio cold / warm (goal >= 4).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.conftest import BangerEnv, _stop_daemon, make_env  # noqa: E402


def run(be: BangerEnv, *args: str) -> str:
    p = be.banger(*args, timeout=1800)
    if p.returncode != 0:
        raise SystemExit(f"banger {' '.join(args)} failed:\n{p.stderr}")
    return str(p.stdout)


def create_to_ssh(be: BangerEnv, name: str, *extra: str) -> tuple[float, str]:
    t0 = time.monotonic()
    out = run(be, "vm", "create", "--name", name, *extra)
    run(be, "vm", "ssh", name, "--", "true")
    return time.monotonic() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cache-home", type=Path)
    args = ap.parse_args()
    given = args.cache_home
    cache = given if given and str(given) not in ("", ".") and given.is_dir() else None
    be = make_env("bgw-", cache_home=cache)
    be.write_config('[vm_defaults]\nmemory_mib = 512\nvcpu = 1\ndisk_size = "2G"\n')
    try:
        run(be, "daemon", "start")
        run(be, "image", "pull", "debian-bookworm")
        # The template: the first create's own cost (checkpoint included) vs a --cold one.
        first, _ = create_to_ssh(be, "first")
        plain, _ = create_to_ssh(be, "plain", "--cold")
        run(be, "vm", "delete", "plain")
        cold: list[float] = []
        warm: list[float] = []
        for i in range(args.runs):
            t, out = create_to_ssh(be, f"c{i}", "--cold")
            assert "(warm)" not in out, out
            cold.append(t)
            t, out = create_to_ssh(be, f"w{i}")
            assert "(warm)" in out, out
            warm.append(t)
            run(be, "vm", "delete", f"c{i}", f"w{i}")
        c50, w50 = statistics.median(cold), statistics.median(warm)
        print(f"runs: {args.runs} (TCG, 512 MiB, 1 vCPU, user-mode network)")
        print(f"first create (makes the template) → SSH: {first:.2f} s")
        print(f"a --cold create (no template made) → SSH: {plain:.2f} s")
        print(f"cold create → first SSH: p50 {c50:.2f} s  ({', '.join(f'{t:.2f}' for t in cold)})")
        print(f"warm create → first SSH: p50 {w50:.2f} s  ({', '.join(f'{t:.2f}' for t in warm)})")
        print(f"ratio cold / warm: {c50 / w50:.1f}x (goal >= 4x)")
    finally:
        be.banger("vm", "prune", "-f", timeout=300)
        for name in ("first",):
            be.banger("vm", "delete", name, timeout=300)
        _stop_daemon(be, check_leftovers=False)
        shutil.rmtree(be.root, ignore_errors=True)


if __name__ == "__main__":
    main()

"""What a test leaves behind, and what a failing test shows.

`leftovers(root)` finds processes (bangerd, QEMU, tool guards) and mounts that still refer to a
test environment's root once its daemon is stopped and its VMs are gone: a leak of banger's (or
of the test's). `failure_sections(env)` gives the tails of the daemon log and of every VM's
console log, attached to the pytest report of a failing test (conftest's makereport hook).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

TAIL_BYTES = 8192


def _refers_to(proc: psutil.Process, root: str) -> bool:
    try:
        cmdline = " ".join(proc.cmdline())
        if root in cmdline:
            return True
        return proc.cwd().startswith(root)
    except (psutil.Error, OSError):
        return False


def leftovers(root: Path, *, kill: bool = True) -> list[str]:
    """Descriptions of live processes and mounts under `root` (killed when `kill`)."""
    prefix = str(root)
    found: list[str] = []
    me = os.getpid()
    for proc in psutil.process_iter():
        if proc.pid == me or not _refers_to(proc, prefix):
            continue
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            found.append(f"process {proc.pid}: {' '.join(proc.cmdline())[:300]}")
            if kill:
                os.kill(proc.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError):
            continue
    with open("/proc/self/mounts") as f:
        for line in f:
            mountpoint = line.split()[1]
            if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
                found.append(f"mount {mountpoint}")
    return found


def _tail(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - TAIL_BYTES))
            return f.read().decode(errors="replace")
    except OSError as e:
        return f"({e.strerror})"


def failure_sections(state_dir: Path) -> list[tuple[str, str]]:
    """(title, text) for the daemon log and each VM console log under a banger state dir."""
    sections = []
    log = state_dir / "bangerd.log"
    if log.exists():
        sections.append((f"daemon log {log} (tail)", _tail(log)))
    for console in sorted(state_dir.glob("vms/*/console.log")):
        sections.append((f"console {console} (tail)", _tail(console)))
    return sections

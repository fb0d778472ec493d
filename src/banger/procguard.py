"""The guard between banger and a host tool: the tool's whole process tree dies with banger.

`python -I -S procguard.py FD -- ARGV...` (run by `banger.proc`, never by hand) forks ARGV in its
own process group and waits for it. FD is the read end of banger's *lifeline* pipe, whose write
end only the banger process holds: when banger dies, however it dies (even `kill -9`), the kernel
closes the write end, FD reads EOF, and the guard SIGKILLs its process group. That reaches
grandchildren the tool left in the group (fakeroot's shell → the image builder → mkfs; mmdebstrap
→ apt → dpkg), which `PR_SET_PDEATHSIG` alone cannot: it only fires for a direct child, and only
when the very parent that forked it exits. The guard is also a child subreaper, so a descendant
that daemonized into a session of its own (fakeroot's `faked`) is re-parented to the guard and
killed with the rest. The tool itself gets `PR_SET_PDEATHSIG(SIGKILL)` so it dies if the guard is
killed on its own.

Standard library only and no `banger` imports: it starts with `-S` (no site) in ~10 ms.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _descendants(root: int) -> list[int]:
    """Every live descendant of `root` (from /proc: pid -> ppid), children before parents."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(b")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    stack = list(children.get(root, []))
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out[::-1]


def _kill_everything() -> None:
    """banger is gone: SIGKILL our group and every descendant (some may have left the group)."""
    for pid in _descendants(os.getpid()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)


def _exec_child(argv: list[str], lifeline: int, guard: int, libc: ctypes.CDLL) -> None:
    """In the forked child: die with the guard, then become the tool."""
    try:
        os.close(lifeline)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != guard:
            os._exit(137)  # the guard died before the prctl took effect
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        os.execvp(argv[0], argv)
    except OSError as e:
        os.write(2, f"{argv[0]}: {e.strerror}\n".encode())
        os._exit(127)
    finally:
        os._exit(127)


def main(args: list[str]) -> int:
    if len(args) < 3 or args[1] != "--":
        sys.stderr.write("usage: procguard.py LIFELINE_FD -- ARGV...\n")
        return 64
    lifeline = int(args[0])
    argv = args[2:]
    guard = os.getpid()
    if os.getpgrp() != guard:
        os.setpgid(0, 0)  # the group is what dies with banger: the guard leads it
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    child = os.fork()
    if child == 0:
        _exec_child(argv, lifeline, guard, libc)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    # Drop our copies of the stdio pipes: banger's reader sees EOF when the tool's side is done.
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    pidfd = os.pidfd_open(child)
    poller = select.poll()
    poller.register(lifeline, select.POLLIN | select.POLLHUP)
    poller.register(pidfd, select.POLLIN)
    while True:
        try:
            ready = dict(poller.poll())
        except InterruptedError:
            continue
        if pidfd in ready:
            break
        if lifeline in ready:
            # EOF (or anything else): banger is gone. Take the tool's whole tree with us.
            _kill_everything()
    _, status = os.waitpid(child, 0)
    if os.WIFSIGNALED(status):
        killed_by = os.WTERMSIG(status)
        if killed_by != signal.SIGKILL:
            signal.signal(killed_by, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [killed_by])
        os.kill(guard, killed_by)  # report the same death to banger (returncode -signal)
        return 128 + killed_by
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run host tools without a shell; failures become OperationFailed naming the tool and stderr.

Every tool child (mkfs, qemu-img, mmdebstrap, fakeroot, git, ssh, ...) is started through
`procguard.py` in its own process group, so it and everything it starts die with this process,
even on `kill -9` (see `procguard`). A VMM is the exception: a running VM outlives the daemon by
design and is re-adopted at the next start, so it is spawned with `guarded=False` (its own
session, no lifeline). Nothing else in banger starts a process directly (tests/test_proc.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import OperationFailed

GUARD = Path(__file__).with_name("procguard.py")
# The guard needs only the standard library: any python3 runs it.
SYSTEM_PYTHONS = ("/usr/bin/python3", "/usr/local/bin/python3")


@functools.cache
def guard_python() -> str:
    """Our own interpreter, unless this uid cannot execute it — e.g. the system-mode owner daemon
    from a virtualenv whose python lives under root's 0700 home: then the system's python3."""
    if os.access(sys.executable, os.X_OK):
        return sys.executable
    return next((p for p in SYSTEM_PYTHONS if os.access(p, os.X_OK)), sys.executable)


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


_lifeline_lock = threading.Lock()
_lifeline: tuple[int, int] | None = None
_lifeline_pid = 0


def lifeline_fd() -> int:
    """The read end of this process's lifeline pipe (created once; re-created after a fork).

    Only this process holds the write end (both ends are close-on-exec; the read end is handed to
    each guard through `pass_fds`), so the guards read EOF exactly when this process is gone."""
    global _lifeline, _lifeline_pid
    with _lifeline_lock:
        if _lifeline is None or _lifeline_pid != os.getpid():
            _lifeline = os.pipe()
            _lifeline_pid = os.getpid()
        return _lifeline[0]


def guarded_argv(argv: Sequence[str]) -> tuple[list[str], int]:
    """`argv` wrapped in the guard, and the fd to pass to it. FileNotFoundError (as Popen would
    raise it) when the tool is not installed."""
    if not argv:
        raise ValueError("empty argv")
    if shutil.which(argv[0]) is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
    fd = lifeline_fd()
    return [guard_python(), "-I", "-S", str(GUARD), str(fd), "--", *argv], fd


async def spawn(
    argv: Sequence[str],
    *,
    guarded: bool = True,
    stdin: int | None = subprocess.DEVNULL,
    stdout: int | None = subprocess.PIPE,
    stderr: int | None = subprocess.PIPE,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    pass_fds: Sequence[int] = (),
) -> asyncio.subprocess.Process:
    """Start a child in a process group of its own and return its handle; stop it with
    `kill_tree`.

    guarded (tools): it and what it starts die with this process, even on `kill -9`.
    guarded=False (long-lived children that must outlive this process, i.e. VMMs): a session of
    its own, out of reach of this process's signals and death."""
    if not guarded:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            pass_fds=tuple(pass_fds),
            start_new_session=True,
        )
    full, fd = guarded_argv(argv)
    return await asyncio.create_subprocess_exec(
        *full,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        pass_fds=(fd, *pass_fds),
        start_new_session=True,
    )


def popen(argv: Sequence[str], *, guarded: bool = True, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Blocking twin of `spawn`: a `subprocess.Popen` in a group of its own (stop it with
    `kill_tree`); `guarded` as for `spawn`. `kwargs` are Popen's (never `shell`)."""
    if kwargs.get("shell"):
        raise ValueError("banger never runs a shell")
    if not guarded:
        return subprocess.Popen(list(argv), start_new_session=True, **kwargs)
    full, fd = guarded_argv(argv)
    pass_fds = (fd, *kwargs.pop("pass_fds", ()))
    return subprocess.Popen(full, pass_fds=pass_fds, start_new_session=True, **kwargs)


def kill_tree(proc: asyncio.subprocess.Process | subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's whole process group (a guarded tool and what it started); a child
    that does not lead a group of its own is killed alone."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()


def _fail(
    argv: Sequence[str], code: int | None, stderr: bytes, what: str | None
) -> OperationFailed:
    tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
    label = what or argv[0]
    status = "timed out" if code is None else f"exited {code}"
    return OperationFailed(f"{label} {status}: {' | '.join(tail) or '(no output)'}")


async def communicate(
    proc: asyncio.subprocess.Process, input: bytes | None, timeout: float | None
) -> tuple[bytes, bytes]:
    """`proc.communicate(input)` within `timeout`. On timeout or cancellation the child (and its
    process group, when it leads one) is killed and reaped first, then TimeoutError /
    CancelledError propagates."""
    try:
        return await asyncio.wait_for(proc.communicate(input), timeout)
    except (TimeoutError, asyncio.CancelledError):
        kill_tree(proc)
        await proc.wait()
        raise


async def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 300,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    what: str | None = None,
) -> Result:
    """Run `argv` asynchronously; on cancellation or timeout the child is killed."""
    proc = await spawn(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        env=env,
        cwd=cwd,
    )
    try:
        stdout, stderr = await communicate(proc, input, timeout)
    except TimeoutError:
        raise _fail(argv, None, b"", what) from None
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise _fail(argv, proc.returncode, stderr, what)
    return Result(tuple(argv), proc.returncode, stdout, stderr)


def run_sync(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 300,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    what: str | None = None,
) -> Result:
    """Blocking twin of `run` for code already on a worker thread (or the CLI)."""
    p = popen(
        argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        stdout, stderr = p.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(p)
        p.communicate()
        raise _fail(argv, None, b"", what) from None
    except BaseException:
        kill_tree(p)
        p.wait()
        raise
    if check and p.returncode != 0:
        raise _fail(argv, p.returncode, stderr, what)
    return Result(tuple(argv), p.returncode, stdout, stderr)

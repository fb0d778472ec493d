"""This machine's daemon: where its socket is, whether it answers, and starting it in the
background when nothing answers (user mode only; systemd owns it in system mode)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import BinaryIO

from banger.paths import Paths, UnsafePathError, ensure_private_dir
from banger.rpc.client import Client, DaemonUnreachable
from banger.rpc.errors import OperationFailed

START_TIMEOUT_SECONDS = 15.0

# bangerd.stderr.log (what a detached daemon printed before its own log took over) is capped.
BOOT_LOG_MAX_BYTES = 1024 * 1024


def ping(paths: Paths) -> dict[str, object] | None:
    try:
        with Client(paths.socket) as c:
            result = c.call("ping", timeout=5)
            return result if isinstance(result, dict) else None
    except DaemonUnreachable:
        return None


def _open_boot_log(path: Path) -> BinaryIO:
    """The detached daemon's stderr: 0600, never through a planted link, capped across starts
    (the previous one is kept as `.1`)."""
    from banger.daemon.lock import open_own_file

    with contextlib.suppress(FileNotFoundError):
        if os.lstat(path).st_size > BOOT_LOG_MAX_BYTES:
            os.replace(path, path.with_name(path.name + ".1"))
    fd = open_own_file(path, os.O_WRONLY | os.O_APPEND, "daemon boot log")
    return open(fd, "ab")


def start_daemon(paths: Paths) -> tuple[dict[str, object], bool]:
    """Spawn `bangerd` detached from this terminal and wait until a daemon answers ping.

    Returns (ping answer, whether this call's daemon is the one that answers). Several CLIs may
    auto-start at once: the daemons that lose the state dir's lock exit EXIT_ALREADY_RUNNING, and
    their CLIs connect to the winner. A holder that is on its way out (a `daemon stop` a moment
    ago) answers nothing: once it has let go of the lock, this spawns again."""
    from banger.daemon.lock import EXIT_ALREADY_RUNNING, holder

    boot_log = paths.boot_log
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        proc, offset = _spawn(paths)
        while time.monotonic() < deadline and proc.poll() is None:
            info = ping(paths)
            if info is not None:
                if info.get("pid") == proc.pid:
                    return info, True
                break  # another CLI's daemon won the race: ours is about to exit 3
            time.sleep(0.05)
        else:
            if proc.returncode is None:
                raise OperationFailed(
                    f"the daemon did not answer within {START_TIMEOUT_SECONDS:.0f}s "
                    f"(log: {paths.daemon_log})"
                )
            if proc.returncode != EXIT_ALREADY_RUNNING:
                raise OperationFailed(
                    f"the daemon failed to start: {_tail(boot_log, offset, proc.returncode)} "
                    f"(log: {boot_log})"
                )
            said = _tail(boot_log, offset, proc.returncode)
            if f"socket {paths.socket})" not in said:
                # The holder serves another socket (another XDG_RUNTIME_DIR): waiting is moot.
                raise OperationFailed(
                    f"{said}; this banger looks for it at {paths.socket}: use the same "
                    "XDG_RUNTIME_DIR as the running daemon, or stop it (`banger daemon stop`)"
                )
        # Lost the lock: wait for the holder to answer (it may be migrating), or to let go.
        while time.monotonic() < deadline:
            info = ping(paths)
            if info is not None:
                # Let ours go first, so no second bangerd outlives this command even briefly.
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                return info, False
            if proc.poll() is not None and holder(paths.lock_file) is None:
                break  # the holder is gone without answering: try again
            time.sleep(0.05)
        else:
            raise OperationFailed(
                f"another daemon holds {paths.lock_file} but does not answer on {paths.socket} "
                f"within {START_TIMEOUT_SECONDS:.0f}s: {_tail(boot_log, offset, proc.returncode)}"
            )


def _spawn(paths: Paths) -> tuple[subprocess.Popen[bytes], int]:
    """Start `bangerd` with its stderr appended to the boot log; (process, log offset)."""
    try:
        ensure_private_dir(paths.runtime_dir)
        paths.ensure_state_dir()
        err = _open_boot_log(paths.boot_log)
    except UnsafePathError as e:
        raise OperationFailed(str(e)) from None
    with err:
        # The log accumulates across starts: report only what this start wrote.
        offset = err.tell()
        proc = subprocess.Popen(
            [sys.executable, "-m", "banger.daemon.main"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
            env=os.environ.copy(),
        )
    return proc, offset


def _tail(boot_log: Path, offset: int, returncode: int | None) -> str:
    """What this start wrote to the boot log (its last lines), else the exit status."""
    with open(boot_log, "rb") as f:
        f.seek(offset)
        tail = f.read().decode(errors="replace").strip().splitlines()[-5:]
    return "; ".join(tail) or f"exit status {returncode}"


def resolve_paths() -> Paths:
    """The paths to use: the system install's when there is one, and then only for its owner."""
    from banger.paths import InstallError, read_install

    paths = Paths.detect()
    if paths.is_system:
        try:
            info = read_install(paths.system_root)
        except InstallError as e:
            raise OperationFailed(str(e)) from None
        if info is not None and os.getuid() != info.owner_uid:
            raise OperationFailed(
                f"banger is installed system-wide for {info.owner_user} (uid {info.owner_uid}); "
                f"only that user can use it: run `sudo -u {info.owner_user} banger ...` or log in "
                f"as {info.owner_user}"
            )
    return paths

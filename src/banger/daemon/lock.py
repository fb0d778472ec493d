"""One daemon per state dir: an exclusive `flock` on `<state>/bangerd.lock`, held for the daemon's
whole life.

The kernel drops the lock when the holder dies (even by SIGKILL), so a stale lock file from a dead
daemon is simply taken over. The file's content (pid and socket of the holder) is informational:
it lets a second daemon say whom it lost to. The descriptor is O_CLOEXEC, so VMMs and tools the
daemon starts (which may outlive it) never hold the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from banger.paths import UnsafePathError

# `bangerd` exits with this when another daemon holds the lock (the CLI's auto-start treats it as
# "someone else won the race" and connects to the winner).
EXIT_ALREADY_RUNNING = 3
# How long a loser waits for the winner to record its pid (it does so right after the flock).
_HOLDER_INFO_WAIT_SECONDS = 2.0


class AlreadyRunning(Exception):
    def __init__(self, pid: int | None, socket: str | None, lock_file: Path) -> None:
        self.pid = pid
        self.socket = socket
        who = f"pid {pid}" if pid is not None else "pid unknown"
        where = f"socket {socket}" if socket else f"lock {lock_file}"
        super().__init__(f"bangerd is already running ({who}, {where})")


@dataclass
class DaemonLock:
    path: Path
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # closing the only descriptor drops the flock
            self.fd = -1


def open_own_file(path: Path, flags: int, what: str) -> int:
    """Open `path` (creating it 0600) without following a link, blocking, close-on-exec; refuse
    anything but our own plain file with one link: writing through a symlink, hard link or FIFO
    someone planted would land outside banger's directories. `what` names it in errors."""
    flags |= os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # no hang on a FIFO
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafePathError(f"{path} is a symlink; remove it and retry") from None
        if e.errno == errno.EISDIR:
            raise UnsafePathError(
                f"{path} is a directory, not a {what}; remove it and retry"
            ) from None
        raise UnsafePathError(f"cannot open the {what} {path}: {e.strerror}") from None
    try:
        check_own_plain_file(path, os.fstat(fd))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_lock_file(path: Path) -> int:
    return open_own_file(path, os.O_RDWR, "lock file")


def check_own_plain_file(path: Path, st: os.stat_result) -> None:
    """A file banger writes must be a regular file with one link, owned by us."""
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePathError(f"{path} is not a regular file; remove it and retry")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {os.geteuid()}); "
            "remove it and retry"
        )
    if st.st_nlink != 1:
        raise UnsafePathError(
            f"{path} has {st.st_nlink} hard links (one may be outside banger's directories); "
            "remove it and retry"
        )


def _read_holder(fd: int) -> tuple[int | None, str | None]:
    """The holder's pid and socket, once it has written them (a complete, newline-ended text)."""
    deadline = time.monotonic() + _HOLDER_INFO_WAIT_SECONDS
    while True:
        raw = os.pread(fd, 4096, 0).decode(errors="replace")
        lines = raw.split("\n")
        if raw.endswith("\n") and len(lines) >= 2 and lines[0].isdigit():
            pid = int(lines[0])
            # A dead pid is the previous holder's text, not yet replaced by the new holder's.
            if _alive(pid):
                return pid, (lines[1] or None)
        if time.monotonic() >= deadline:
            return None, None
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder(path: Path) -> int | None:
    """The pid holding the lock on `path`, or None. Read from /proc/locks, without touching the
    lock: even a brief shared flock taken to test it would make a starting daemon give up."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    ident = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        with open("/proc/locks") as f:
            for line in f:
                fields = line.split()
                # "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE 0 EOF" ("N: -> FLOCK …" waits;
                # NFS emulates flock with a POSIX lock).
                if len(fields) >= 6 and fields[1] in ("FLOCK", "POSIX") and fields[5] == ident:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


def acquire(path: Path, socket: Path) -> DaemonLock:
    """Take the lock or raise AlreadyRunning naming the holder; record our pid and socket."""
    fd = _open_lock_file(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid, sock = _read_holder(fd)
        os.close(fd)
        raise AlreadyRunning(pid, sock, path) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n{socket}\n".encode(), 0)
    return DaemonLock(path, fd)

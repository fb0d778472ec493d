"""Hostile cases around the daemon's own files: a second daemon, stale or planted lock, pid, log and
socket paths, and state/cache/runtime dirs someone else owns or left open.

Each case plants something, starts a real `bangerd`, and asserts the exact outcome: a refusal
(exit status and the one stderr line) or a daemon that answers `ping` with the planted thing
neutralised. Afterwards nothing outside the state dirs changed (a sentinel tree with a file, a
directory and a live socket is compared before and after), and a refused daemon starts and
answers once the planted thing is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import socket
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from banger.paths import Paths
from tests.conftest import BangerEnv, make_env
from tests.daemon.procs import Outcome, ping_pid, start_bangerd, stop

NOBODY = 65534


@dataclass
class Ctx:
    be: BangerEnv
    outside: Path  # the sentinel tree: must be byte- and mode-identical afterwards
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    listener: socket.socket | None = None
    first_pid: int = 0
    first_socket_inode: int = 0
    bystander: subprocess.Popen[bytes] | None = None

    @property
    def paths(self) -> Paths:
        return self.be.paths

    @property
    def secret(self) -> Path:
        return self.outside / "secret"


@dataclass(frozen=True)
class Case:
    id: str
    plant: Callable[[Ctx], None]
    # None: the daemon must start and answer ping; else (exit status, the stderr it prints).
    refusal: Callable[[Ctx], tuple[int, str]] | None
    # Extra assertions once the daemon ran (or was refused).
    check: Callable[[Ctx], None] = lambda ctx: None
    # Undo the plant so that a refused daemon can be shown to start afterwards.
    repair: Callable[[Ctx], None] = lambda ctx: None


# --- plants -------------------------------------------------------------------------------------


def _state(ctx: Ctx) -> Path:
    ctx.paths.state_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    return ctx.paths.state_dir


def _runtime(ctx: Ctx) -> Path:
    ctx.paths.runtime_dir.mkdir(parents=True, mode=0o700, exist_ok=True)
    return ctx.paths.runtime_dir


def _lchown_nobody(path: Path) -> None:
    os.lchown(path, NOBODY, NOBODY)


def _first_daemon(ctx: Ctx, env: dict[str, str] | None = None) -> None:
    out = start_bangerd(env or ctx.be.env, ctx.paths.socket)
    ctx.procs.append(out.proc)
    assert out.returncode is None, out.stderr
    ctx.first_pid = out.proc.pid
    ctx.first_socket_inode = os.stat(ctx.paths.socket).st_ino


def plant_first_daemon(ctx: Ctx) -> None:
    _first_daemon(ctx)


def plant_first_daemon_other_runtime(ctx: Ctx) -> None:
    _first_daemon(ctx)
    # The second one will look for its socket elsewhere: it must still see the lock.
    other = ctx.be.root / "run2"
    other.mkdir(mode=0o700)
    ctx.be.env["XDG_RUNTIME_DIR"] = str(other)


def plant_killed_daemon(ctx: Ctx) -> None:
    out = start_bangerd(ctx.be.env, ctx.paths.socket)
    assert out.returncode is None, out.stderr
    out.proc.kill()  # SIGKILL: lock file, socket and pid file stay behind
    out.proc.wait(timeout=10)
    if out.proc.stderr is not None:
        out.proc.stderr.close()
    ctx.first_pid = out.proc.pid
    assert ctx.paths.lock_file.read_text().startswith(f"{out.proc.pid}\n")
    assert stat.S_ISSOCK(os.lstat(ctx.paths.socket).st_mode)


def plant_pid_file_of_live_bystander(ctx: Ctx) -> None:
    ctx.bystander = subprocess.Popen(["sleep", "600"])
    _runtime(ctx)
    ctx.paths.pid_file.write_text(f"{ctx.bystander.pid}\n")


def plant_pid_file_symlink(ctx: Ctx) -> None:
    _runtime(ctx)
    ctx.paths.pid_file.symlink_to(ctx.secret)


def plant_lock_symlink(ctx: Ctx) -> None:
    _state(ctx)
    ctx.paths.lock_file.symlink_to(ctx.secret)
    _lchown_nobody(ctx.paths.lock_file)


def plant_lock_hardlink(ctx: Ctx) -> None:
    _state(ctx)
    os.link(ctx.secret, ctx.paths.lock_file)


def plant_lock_directory(ctx: Ctx) -> None:
    (_state(ctx) / "bangerd.lock").mkdir()


def plant_lock_fifo(ctx: Ctx) -> None:
    os.mkfifo(_state(ctx) / "bangerd.lock", 0o600)


def plant_log_symlink(ctx: Ctx) -> None:
    _state(ctx)
    ctx.paths.daemon_log.symlink_to(ctx.secret)
    _lchown_nobody(ctx.paths.daemon_log)


def plant_log_hardlink(ctx: Ctx) -> None:
    _state(ctx)
    os.link(ctx.secret, ctx.paths.daemon_log)


def plant_socket_regular_file(ctx: Ctx) -> None:
    _runtime(ctx)
    ctx.paths.socket.write_text("not a socket\n")


def plant_socket_symlink(ctx: Ctx) -> None:
    _runtime(ctx)
    ctx.paths.socket.symlink_to(ctx.outside / "live.sock")
    _lchown_nobody(ctx.paths.socket)


def plant_socket_served_by_other(ctx: Ctx) -> None:
    _runtime(ctx)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(ctx.paths.socket))
    s.listen(8)
    ctx.listener = s


def plant_state_dir_0777(ctx: Ctx) -> None:
    _state(ctx).chmod(0o777)
    ctx.paths.images_dir.mkdir(mode=0o755)
    ctx.paths.images_dir.chmod(0o755)


def plant_state_dir_other_owner(ctx: Ctx) -> None:
    os.chown(_state(ctx), NOBODY, NOBODY)


def plant_state_dir_symlink_by_other(ctx: Ctx) -> None:
    ctx.paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    ctx.paths.state_dir.symlink_to(ctx.outside / "dir")
    _lchown_nobody(ctx.paths.state_dir)


def plant_state_dir_own_symlink(ctx: Ctx) -> None:
    target = ctx.be.root / "bigdisk-state"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    ctx.paths.state_dir.parent.mkdir(parents=True, exist_ok=True)
    ctx.paths.state_dir.symlink_to(target)


def plant_runtime_dir_other_owner(ctx: Ctx) -> None:
    os.chown(_runtime(ctx), NOBODY, NOBODY)


def plant_runtime_dir_symlink(ctx: Ctx) -> None:
    ctx.paths.runtime_dir.symlink_to(ctx.outside / "dir")


def plant_older_install_modes(ctx: Ctx) -> None:
    """What an older banger left: 0755 dirs and a 0644 database and log."""
    for d in (ctx.paths.state_dir, ctx.paths.cache_dir, ctx.paths.vms_dir, ctx.paths.ssh_dir):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    ctx.paths.daemon_log.write_text("")
    ctx.paths.daemon_log.chmod(0o644)
    import sqlite3

    sqlite3.connect(ctx.paths.db_file).close()
    ctx.paths.db_file.chmod(0o644)


# --- checks and repairs -------------------------------------------------------------------------


def check_first_intact(ctx: Ctx) -> None:
    assert ping_pid(ctx.paths.socket) == ctx.first_pid
    assert os.stat(ctx.paths.socket).st_ino == ctx.first_socket_inode


def check_first_intact_other_runtime(ctx: Ctx) -> None:
    assert not (ctx.be.root / "run2" / "banger" / "bangerd.sock").exists()
    first_socket = ctx.be.root / "run" / "banger" / "bangerd.sock"
    assert ping_pid(first_socket) == ctx.first_pid
    assert os.stat(first_socket).st_ino == ctx.first_socket_inode


def check_took_over(ctx: Ctx) -> None:
    pid = ping_pid(ctx.paths.socket)
    assert pid is not None and pid != ctx.first_pid
    assert ctx.paths.lock_file.read_text() == f"{pid}\n{ctx.paths.socket}\n"
    assert ctx.paths.pid_file.read_text() == f"{pid}\n"


def check_bystander_untouched(ctx: Ctx) -> None:
    assert ctx.bystander is not None and ctx.bystander.poll() is None
    assert ctx.paths.pid_file.read_text() == f"{ping_pid(ctx.paths.socket)}\n"


def check_pid_file_replaced(ctx: Ctx) -> None:
    st = os.lstat(ctx.paths.pid_file)
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert ctx.paths.pid_file.read_text() == f"{ping_pid(ctx.paths.socket)}\n"


def check_socket_file_kept(ctx: Ctx) -> None:
    assert ctx.paths.socket.read_text() == "not a socket\n"


def check_listener_kept(ctx: Ctx) -> None:
    assert ctx.listener is not None
    assert stat.S_ISSOCK(os.lstat(ctx.paths.socket).st_mode)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.connect(str(ctx.paths.socket))  # still the listener's
    probe.close()


def check_private_modes(ctx: Ctx) -> None:
    for d in (ctx.paths.state_dir, ctx.paths.cache_dir, ctx.paths.images_dir, ctx.paths.vms_dir):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    for f in (ctx.paths.db_file, ctx.paths.daemon_log):
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600, f


def check_own_symlink_followed(ctx: Ctx) -> None:
    target = ctx.be.root / "bigdisk-state"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o700
    assert (target / "banger.db").is_file()


def check_other_owner_kept(ctx: Ctx) -> None:
    assert os.lstat(ctx.paths.state_dir).st_uid == NOBODY
    assert not (ctx.paths.state_dir / "bangerd.lock").exists()


def repair_remove(path_of: Callable[[Paths], Path]) -> Callable[[Ctx], None]:
    def repair(ctx: Ctx) -> None:
        path = path_of(ctx.paths)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()

    return repair


def repair_chown_back(path_of: Callable[[Paths], Path]) -> Callable[[Ctx], None]:
    return lambda ctx: os.chown(path_of(ctx.paths), os.geteuid(), os.getegid())


def repair_close_listener(ctx: Ctx) -> None:
    assert ctx.listener is not None
    ctx.listener.close()
    ctx.listener = None
    ctx.paths.socket.unlink()


def _refused(status: int, line: Callable[[Ctx], str]) -> Callable[[Ctx], tuple[int, str]]:
    return lambda ctx: (status, f"bangerd: {line(ctx)}\n")


CASES = [
    Case(
        "second-daemon-same-state-dir",
        plant_first_daemon,
        _refused(
            3,
            lambda c: f"bangerd is already running (pid {c.first_pid}, socket {c.paths.socket})",
        ),
        check_first_intact,
    ),
    Case(
        "second-daemon-other-runtime-dir-names-the-first-socket",
        plant_first_daemon_other_runtime,
        _refused(
            3,
            lambda c: (
                f"bangerd is already running (pid {c.first_pid}, "
                f"socket {c.be.root / 'run' / 'banger' / 'bangerd.sock'})"
            ),
        ),
        check_first_intact_other_runtime,
    ),
    Case("stale-lock-socket-pid-from-killed-daemon", plant_killed_daemon, None, check_took_over),
    Case(
        "pid-file-names-an-unrelated-live-process",
        plant_pid_file_of_live_bystander,
        None,
        check_bystander_untouched,
    ),
    Case("pid-file-symlink-to-outside", plant_pid_file_symlink, None, check_pid_file_replaced),
    Case(
        "lock-file-symlink-planted-by-other-user",
        plant_lock_symlink,
        _refused(2, lambda c: f"{c.paths.lock_file} is a symlink; remove it and retry"),
        repair=repair_remove(lambda p: p.lock_file),
    ),
    Case(
        "lock-file-hard-link-to-outside-file",
        plant_lock_hardlink,
        _refused(
            2,
            lambda c: (
                f"{c.paths.lock_file} has 2 hard links (one may be outside banger's "
                "directories); remove it and retry"
            ),
        ),
        repair=repair_remove(lambda p: p.lock_file),
    ),
    Case(
        "lock-file-is-a-directory",
        plant_lock_directory,
        _refused(
            2, lambda c: f"{c.paths.lock_file} is a directory, not a lock file; remove it and retry"
        ),
        repair=repair_remove(lambda p: p.lock_file),
    ),
    Case(
        "lock-file-is-a-fifo",
        plant_lock_fifo,
        _refused(2, lambda c: f"{c.paths.lock_file} is not a regular file; remove it and retry"),
        repair=repair_remove(lambda p: p.lock_file),
    ),
    Case(
        "log-file-symlink-planted-by-other-user",
        plant_log_symlink,
        _refused(2, lambda c: f"{c.paths.daemon_log} is a symlink; remove it and retry"),
        repair=repair_remove(lambda p: p.daemon_log),
    ),
    Case(
        "log-file-hard-link-to-outside-file",
        plant_log_hardlink,
        _refused(
            2,
            lambda c: (
                f"{c.paths.daemon_log} has 2 hard links (one may be outside banger's "
                "directories); remove it and retry"
            ),
        ),
        repair=repair_remove(lambda p: p.daemon_log),
    ),
    Case(
        "socket-path-is-a-regular-file",
        plant_socket_regular_file,
        _refused(
            2,
            lambda c: f"{c.paths.socket} is a regular file, not a socket; remove it and retry",
        ),
        check_socket_file_kept,
        repair=repair_remove(lambda p: p.socket),
    ),
    Case(
        "socket-path-symlink-to-outside-socket",
        plant_socket_symlink,
        _refused(2, lambda c: f"{c.paths.socket} is a symlink, not a socket; remove it and retry"),
        repair=repair_remove(lambda p: p.socket),
    ),
    Case(
        "socket-path-served-by-another-process",
        plant_socket_served_by_other,
        _refused(
            2,
            lambda c: (
                f"{c.paths.socket} is served by another process (pid {os.getpid()}): a bangerd "
                "for another state dir sharing this runtime dir? Stop it or give each its own "
                "XDG_RUNTIME_DIR"
            ),
        ),
        check_listener_kept,
        repair=repair_close_listener,
    ),
    Case("state-dir-mode-0777", plant_state_dir_0777, None, check_private_modes),
    Case(
        "older-install-0755-dirs-0644-files", plant_older_install_modes, None, check_private_modes
    ),
    Case(
        "state-dir-owned-by-other-user",
        plant_state_dir_other_owner,
        _refused(
            2,
            lambda c: (
                f"{c.paths.state_dir} is owned by uid {NOBODY}, not by you (uid "
                f"{os.geteuid()}); remove it and retry"
            ),
        ),
        check_other_owner_kept,
        repair=repair_chown_back(lambda p: p.state_dir),
    ),
    Case(
        "state-dir-symlink-planted-by-other-user",
        plant_state_dir_symlink_by_other,
        _refused(
            2,
            lambda c: (
                f"{c.paths.state_dir} is a symlink owned by uid {NOBODY}, not by you; "
                "remove it and retry"
            ),
        ),
        repair=repair_remove(lambda p: p.state_dir),
    ),
    Case(
        "state-dir-own-symlink-to-own-dir-is-used-and-made-private",
        plant_state_dir_own_symlink,
        None,
        check_own_symlink_followed,
    ),
    Case(
        "runtime-dir-owned-by-other-user",
        plant_runtime_dir_other_owner,
        _refused(
            2,
            lambda c: (
                f"{c.paths.runtime_dir} is owned by uid {NOBODY}, not by you (uid "
                f"{os.geteuid()}); remove it and retry"
            ),
        ),
        repair=repair_chown_back(lambda p: p.runtime_dir),
    ),
    Case(
        "runtime-dir-is-a-symlink",
        plant_runtime_dir_symlink,
        _refused(
            2, lambda c: f"{c.paths.runtime_dir} is a symlink, not a directory; remove it and retry"
        ),
        repair=repair_remove(lambda p: p.runtime_dir),
    ),
]


# --- the sentinel outside -----------------------------------------------------------------------


def _make_outside(root: Path) -> tuple[Path, socket.socket]:
    outside = root / "outside"
    outside.mkdir()
    outside.chmod(0o755)
    (outside / "secret").write_text("sentinel: must never change\n")
    (outside / "secret").chmod(0o640)
    (outside / "dir").mkdir()
    (outside / "dir").chmod(0o750)
    (outside / "dir" / "inner").write_text("inner\n")
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(str(outside / "live.sock"))
    live.listen(1)
    return outside, live


def _snapshot(top: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every entry below `top`: (mode, uid, nlink, content digest for files)."""
    snap = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [".", *dirnames, *filenames]:
            p = Path(dirpath) / name
            st = os.lstat(p)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
            snap[str(p)] = (st.st_mode, st.st_uid, st.st_nlink, digest)
    return snap


@pytest.fixture
def hostile_env() -> Iterator[tuple[BangerEnv, Path]]:
    be = make_env("bgh-")
    outside, live = _make_outside(be.root)
    try:
        yield be, outside
    finally:
        live.close()
        shutil.rmtree(be.root, ignore_errors=True)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_daemon_case(case: Case, hostile_env: tuple[BangerEnv, Path]) -> None:
    be, outside = hostile_env
    ctx = Ctx(be=be, outside=outside)
    try:
        case.plant(ctx)
        before = _snapshot(outside)
        outcome = start_bangerd(be.env, ctx.paths.socket)
        ctx.procs.append(outcome.proc)
        if case.refusal is None:
            assert outcome.returncode is None, outcome.stderr
            assert ping_pid(ctx.paths.socket) == outcome.proc.pid
        else:
            assert (outcome.returncode, outcome.stderr) == case.refusal(ctx)
        case.check(ctx)
        assert _snapshot(outside) == before, "something outside the state dirs changed"
        if case.refusal is not None:
            case.repair(ctx)
            repaired = _snapshot(outside)  # a removed hard link lowers the sentinel's nlink
            _assert_starts_after(ctx)
            assert _snapshot(outside) == repaired
    finally:
        _cleanup(ctx)


def _assert_starts_after(ctx: Ctx) -> None:
    """The refusal was the only obstacle: with the planted thing removed (and the first daemon
    stopped) a daemon starts and answers."""
    for p in ctx.procs:
        stop(p)
    again: Outcome = start_bangerd(ctx.be.env, ctx.paths.socket)
    ctx.procs.append(again.proc)
    assert again.returncode is None, again.stderr
    assert ping_pid(ctx.paths.socket) == again.proc.pid


def _cleanup(ctx: Ctx) -> None:
    for p in ctx.procs:
        if p.poll() is None:
            assert stop(p) == 0
        elif p.stderr is not None:
            p.stderr.close()
    if ctx.listener is not None:
        ctx.listener.close()
    if ctx.bystander is not None:
        ctx.bystander.send_signal(signal.SIGKILL)
        ctx.bystander.wait(timeout=10)
    # Undo ownership changes so the env can be removed.
    for d in (ctx.paths.state_dir, ctx.paths.runtime_dir):
        with contextlib.suppress(FileNotFoundError):
            os.lchown(d, os.geteuid(), os.getegid())


def test_cli_refuses_a_state_dir_owned_by_another_user(banger_env: BangerEnv) -> None:
    """The CLI's auto-start checks the state dir the same way before it spawns anything."""
    state = banger_env.paths.state_dir
    state.mkdir(parents=True)
    os.chown(state, NOBODY, NOBODY)
    p = banger_env.banger("vm", "list")
    assert p.returncode == 1
    assert (
        f"{state} is owned by uid {NOBODY}, not by you (uid {os.geteuid()}); remove it and retry"
        in p.stderr
    )
    assert not (state / "bangerd.stderr.log").exists()
    os.chown(state, os.geteuid(), os.getegid())

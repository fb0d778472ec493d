"""One daemon per state dir: a second bangerd refuses and names the first, CLIs that auto-start at
once all reach the one winner, and the daemon log rotates by size."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from banger.daemon.logs import LOG_BACKUP_COUNT, LOG_MAX_BYTES, setup_logging
from tests.conftest import BangerEnv
from tests.daemon.procs import bangerd_pids_for, ping_pid, start_bangerd, stop

CONCURRENT_CLIS = 8


def _db_ok(be: BangerEnv) -> None:
    conn = sqlite3.connect(be.paths.db_file)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_migrations")]
        assert len(versions) == len(set(versions)) > 0
    finally:
        conn.close()


def test_second_daemon_refuses_and_the_first_keeps_serving(banger_env: BangerEnv) -> None:
    be = banger_env
    sock = be.paths.socket
    first = start_bangerd(be.env, sock)
    try:
        assert first.returncode is None, first.stderr
        inode = os.stat(sock).st_ino
        second = start_bangerd(be.env, sock)
        assert second.returncode == 3
        assert second.stderr == (
            f"bangerd: bangerd is already running (pid {first.proc.pid}, socket {sock})\n"
        )
        # The first one still answers on the very same socket, and its state is intact.
        assert ping_pid(sock) == first.proc.pid
        assert os.stat(sock).st_ino == inode
        assert be.paths.pid_file.read_text() == f"{first.proc.pid}\n"
        assert be.banger("vm", "list", "--json", check=True).stdout.strip() == "[]"
        _db_ok(be)
    finally:
        assert stop(first.proc) == 0


def test_two_daemons_started_at_once_on_a_fresh_state_dir(banger_env: BangerEnv) -> None:
    be = banger_env
    sock = be.paths.socket
    assert not be.paths.state_dir.exists()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "banger.daemon.main"],
            env=be.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        # Exactly one loses: it exits 3 naming the winner, which keeps running and answers.
        loser_rc = {p.pid: _wait_or_none(p) for p in procs}
        losers = [p for p in procs if loser_rc[p.pid] is not None]
        assert len(losers) == 1, loser_rc
        (loser,) = losers
        (winner,) = [p for p in procs if p is not loser]
        assert loser.returncode == 3
        assert loser.stderr is not None
        assert loser.stderr.read() == (
            f"bangerd: bangerd is already running (pid {winner.pid}, socket {sock})\n"
        )
        assert _wait_for_ping(sock) == winner.pid
        _db_ok(be)
    finally:
        for p in procs:
            stop(p)


def _wait_or_none(proc: subprocess.Popen[str]) -> int | None:
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        return None


def _wait_for_ping(sock: Path) -> int | None:
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        pid = ping_pid(sock)
        if pid is not None:
            return pid
        time.sleep(0.05)
    return None


def test_concurrent_auto_starts_all_reach_one_daemon(banger_env: BangerEnv) -> None:
    """Eight CLIs on a fresh env at once: each auto-starts a daemon, all but one lose the lock,
    and every command still succeeds against the winner."""
    be = banger_env
    with ThreadPoolExecutor(CONCURRENT_CLIS) as pool:
        results = list(pool.map(lambda _: be.banger("vm", "list", "--json", timeout=120), range(8)))
    for r in results:
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == []
    pids = bangerd_pids_for(be.env["XDG_STATE_HOME"])
    assert len(pids) == 1
    assert ping_pid(be.paths.socket) == pids[0]
    _db_ok(be)


def test_concurrent_daemon_starts_report_one_start(banger_env: BangerEnv) -> None:
    be = banger_env
    with ThreadPoolExecutor(CONCURRENT_CLIS) as pool:
        results = list(pool.map(lambda _: be.banger("daemon", "start", timeout=120), range(8)))
    for r in results:
        assert r.returncode == 0, r.stderr
    pids = bangerd_pids_for(be.env["XDG_STATE_HOME"])
    assert len(pids) == 1
    started = [r for r in results if r.stdout.startswith("bangerd started")]
    assert len(started) >= 1
    assert all(f"(pid {pids[0]}" in r.stdout for r in results)
    assert all(
        r.stdout == f"bangerd already running (pid {pids[0]})\n"
        for r in results
        if r not in started
    )


def test_lock_descriptor_is_not_inherited(daemon: BangerEnv) -> None:
    """VMMs the daemon starts may outlive it: they must not hold the state dir's lock."""
    pid = ping_pid(daemon.paths.socket)
    assert pid is not None
    lock = str(daemon.paths.lock_file)
    fd_dir = Path(f"/proc/{pid}/fd")
    fds = [fd.name for fd in fd_dir.iterdir() if os.readlink(fd) == lock]
    assert len(fds) == 1
    flags = next(
        int(line.split()[1], 8)
        for line in Path(f"/proc/{pid}/fdinfo/{fds[0]}").read_text().splitlines()
        if line.startswith("flags:")
    )
    assert flags & os.O_CLOEXEC
    assert daemon.paths.lock_file.read_text() == f"{pid}\n{daemon.paths.socket}\n"


# --- the daemon log rotates ---------------------------------------------------------------------


def test_daemon_log_rotates_when_it_outgrows_the_limit(banger_env: BangerEnv) -> None:
    be = banger_env
    log = be.paths.daemon_log
    log.parent.mkdir(parents=True, mode=0o700)
    old_line = json.dumps({"ts": "2026-01-01T00:00:00.000Z", "level": "info", "msg": "old"}) + "\n"
    log.write_text(old_line * (LOG_MAX_BYTES // len(old_line) + 1))
    for n in range(1, LOG_BACKUP_COUNT + 1):
        Path(f"{log}.{n}").write_text(f"backup {n}\n")

    be.banger("daemon", "start", check=True, timeout=30)
    # The first line the daemon wrote rolled the full log over, and the oldest backup went.
    assert Path(f"{log}.1").read_text().startswith(old_line)
    for n in range(2, LOG_BACKUP_COUNT + 1):
        assert Path(f"{log}.{n}").read_text() == f"backup {n - 1}\n"
    assert not Path(f"{log}.{LOG_BACKUP_COUNT + 1}").exists()
    assert log.stat().st_size < LOG_MAX_BYTES // 100
    assert {"daemon ready"} <= {json.loads(line)["msg"] for line in log.read_text().splitlines()}
    # The log still tells a failed request's story by its op id, in the current file.
    s = socket.socket(socket.AF_UNIX)
    s.connect(str(be.paths.socket))
    s.sendall(b'{"version":1,"method":"nope"}\n')
    answer = json.loads(s.makefile("rb").readline())
    s.close()
    op_id = answer["error"]["op_id"]
    assert any(op_id in line for line in log.read_text().splitlines())
    # The rotated log is as private as the new one (an older install's 0644 was fixed first).
    assert log.stat().st_mode & 0o777 == 0o600
    assert Path(f"{log}.1").stat().st_mode & 0o777 == 0o600


def test_log_handler_keeps_a_bounded_number_of_private_files(tmp_path: Path) -> None:
    import logging

    log = tmp_path / "bangerd.log"
    root = logging.getLogger("banger")
    # setup_logging configures the process's logger as bangerd's main would; later tests in
    # this process (caplog) need it back as it was.
    saved = (root.level, root.propagate, list(root.handlers))
    setup_logging(log, "info", max_bytes=2000, backup_count=2)
    logger = logging.getLogger("banger.test")
    try:
        for i in range(200):
            logger.info("line %d %s", i, "x" * 40)
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved[2]
        root.setLevel(saved[0])
        root.propagate = saved[1]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["bangerd.log", "bangerd.log.1", "bangerd.log.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2000
        assert p.stat().st_mode & 0o777 == 0o600
    last = json.loads(log.read_text().splitlines()[-1])
    assert last["msg"].startswith("line 199 ")


def test_cli_with_another_runtime_dir_names_the_running_daemon(banger_env: BangerEnv) -> None:
    """Same state dir, other XDG_RUNTIME_DIR: the auto-start loses the lock, and the CLI says at
    once where the running daemon listens instead of waiting for an answer that cannot come."""
    be = banger_env
    first = start_bangerd(be.env, be.paths.socket)
    try:
        assert first.returncode is None, first.stderr
        other_run = be.root / "run-other"
        other_run.mkdir(mode=0o700)
        env = {**be.env, "XDG_RUNTIME_DIR": str(other_run)}
        p = subprocess.run(
            [sys.executable, "-m", "banger.cli.main", "vm", "list"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert p.returncode == 1
        assert (
            f"bangerd: bangerd is already running (pid {first.proc.pid}, socket "
            f"{be.paths.socket}); this banger looks for it at {other_run}/banger/bangerd.sock"
        ) in p.stderr
        assert ping_pid(be.paths.socket) == first.proc.pid
        assert bangerd_pids_for(be.env["XDG_STATE_HOME"]) == [first.proc.pid]
    finally:
        assert stop(first.proc) == 0


def test_auto_start_right_after_a_shutdown_waits_for_the_lock_and_starts_afresh(
    banger_env: BangerEnv,
) -> None:
    """A daemon on its way out still holds the lock for a moment: a CLI auto-starting then loses
    to it, sees it let go, and starts a new one (never two at once, never an error)."""
    be = banger_env
    for _ in range(3):
        be.banger("daemon", "start", check=True, timeout=60)
        old = ping_pid(be.paths.socket)
        with be.client() as c:
            c.call("shutdown", timeout=30)
        r = be.banger("vm", "list", "--json", timeout=120)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == []
        pids = bangerd_pids_for(be.env["XDG_STATE_HOME"])
        assert len(pids) == 1
        assert ping_pid(be.paths.socket) == pids[0] != old


def test_daemon_stop_returns_once_the_state_dir_is_free(daemon: BangerEnv) -> None:
    from banger.daemon.lock import holder

    pid = ping_pid(daemon.paths.socket)
    assert pid is not None and holder(daemon.paths.lock_file) == pid
    out = daemon.banger("daemon", "stop", check=True, timeout=60)
    assert out.stdout == f"bangerd stopped (pid {pid})\n"
    assert holder(daemon.paths.lock_file) is None
    started = daemon.banger("daemon", "start", check=True, timeout=60).stdout
    assert started.startswith("bangerd started (pid ")

"""Pause/resume and suspend end to end (`banger vm pause|resume|suspend`, `vm start` of a
suspended VM): the real CLI and daemon, real QEMU TCG guests of the offline debian-bookworm
image, real OpenSSH. A tmpfs file, a live process (same pid) and a listening socket survive
both; the guest clock is right after a wake; a start that cannot load the image leaves it
suspended; stop discards the saved state (the next start is a cold boot); delete leaves no file;
a kill -9 of bangerd in the middle of a suspend leaves the VM running, or stopped with no file,
never half suspended.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BangerEnv
from tests.vms.test_crash_recovery import alive, banger_cli, kill_daemon, restart, wait_for
from tests.vms.test_vm_e2e import _show, _ssh

pytestmark = pytest.mark.slow

# The guest may be this far from the host after a wake (SSH round trips under TCG included).
CLOCK_SLACK_S = 5
# A suspend at least this long: a clock that was not corrected would be visibly behind.
SUSPENDED_FOR_S = 3 * CLOCK_SLACK_S

# A file in tmpfs (RAM only), a process, a listening socket (busybox httpd on 8080).
WRITE = (
    "echo in-ram > /dev/shm/ps-ram; mkdir -p /dev/shm/www; echo served > /dev/shm/www/x; "
    "setsid sleep 1000000 </dev/null >/dev/null 2>&1 & echo $! > /dev/shm/ps-pid; "
    "setsid /.banger/bin/busybox httpd -p 8080 -h /dev/shm/www </dev/null >/dev/null 2>&1; "
    "cat /dev/shm/ps-pid"
)
CHECK = (
    "cat /dev/shm/ps-ram; kill -0 $(cat /dev/shm/ps-pid) && echo alive-$(cat /dev/shm/ps-pid); "
    "/.banger/bin/busybox wget -qO- http://127.0.0.1:8080/x"
)


def _ok(be: BangerEnv, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = be.banger("vm", *args, timeout=timeout)
    assert p.returncode == 0, f"vm {' '.join(args)}: {p.stderr}"
    return p


def _out(be: BangerEnv, name: str, cmd: str) -> str:
    r = _ssh(be, name, cmd)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def _rows(be: BangerEnv, vm_id: str) -> list[tuple[str, str, str]]:
    with sqlite3.connect(f"file:{be.paths.db_file}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT tag, kind, state FROM vm_snapshots WHERE vm_id = ?", (vm_id,))
        return sorted(rows.fetchall())


def _clock_skew(be: BangerEnv, name: str) -> float:
    """Guest minus host time, seconds (the host read half way through the round trip)."""
    before = time.time()
    guest = float(_out(be, name, "date +%s.%N"))
    after = time.time()
    return guest - (before + after) / 2


def test_pause_resume_suspend_start_stop_delete(vmenv: BangerEnv) -> None:
    be = vmenv
    _ok(be, "create", "--name", "ps", timeout=900)
    vm = _show(be, "ps")
    vdir = Path(vm["dir"])
    pid = _out(be, "ps", WRITE)
    assert _out(be, "ps", CHECK) == f"in-ram\nalive-{pid}\nserved"

    # Pause: the VMM stays (same pid), the guest is out of reach with a hint to resume.
    assert _ok(be, "pause", "ps").stdout == "ps: paused\n"
    paused = _show(be, "ps")
    assert paused["state"] == "paused" and paused["pid"] == vm["pid"] and alive(vm["pid"])
    r = _ssh(be, "ps", "true")
    assert r.returncode != 0 and "vm ps is paused" in r.stderr, r.stderr
    assert "banger vm resume ps" in r.stderr
    r = be.banger("vm", "pause", "ps")
    assert r.returncode != 0 and "vm ps is already paused" in r.stderr
    r = be.banger("vm", "health", "ps")  # a guest probe: the same conflict, not a hang
    assert r.returncode != 0 and "vm ps is paused" in r.stderr, r.stderr
    assert re.search(r"ps\s+paused", _ok(be, "list").stdout)
    # A daemon restart keeps it paused, its VMM alive.
    be.banger("daemon", "stop", check=True, timeout=120)
    restart(be)
    again = _show(be, "ps")
    assert again["state"] == "paused" and again["pid"] == vm["pid"] and alive(vm["pid"])
    assert _ok(be, "resume", "ps").stdout == "ps: running\n"
    assert _out(be, "ps", CHECK) == f"in-ram\nalive-{pid}\nserved"

    # Suspend: the VMM exits, the state is on disk, the VM shows as suspended with its size.
    p = _ok(be, "suspend", "ps")
    m = re.fullmatch(r"ps: suspended \(([\d.]+ \w+) saved\)\n", p.stdout)
    assert m, p.stdout
    suspended_at = time.time()
    assert "saving RAM and device state" in p.stderr
    assert not alive(vm["pid"])
    shown = _show(be, "ps")
    assert shown["state"] == "suspended" and shown["pid"] is None
    assert _rows(be, vm["id"]) == [("@suspend", "suspend", "ready")]
    text = _ok(be, "show", "ps").stdout
    assert re.search(r"suspend image\s+[\d.]+ \w+", text), text
    assert re.search(r"ps\s+suspended", _ok(be, "list").stdout)
    r = _ssh(be, "ps", "true")
    assert r.returncode != 0 and "vm ps is suspended" in r.stderr
    assert "banger vm start ps" in r.stderr
    # Checkpoints of a suspended VM are refused (it does not run).
    r = be.banger("vm", "snapshot", "create", "ps", "t1")
    assert r.returncode != 0 and "vm ps is not running (state suspended)" in r.stderr

    # Long enough that an uncorrected guest clock would be visibly behind.
    wait_for(lambda: time.time() - suspended_at > SUSPENDED_FOR_S, "time to pass", 60)
    p = _ok(be, "start", "ps")
    assert p.stdout == "ps: running\n"
    woke = _show(be, "ps")
    assert woke["state"] == "running" and woke["pid"] != vm["pid"]
    assert _out(be, "ps", CHECK) == f"in-ram\nalive-{pid}\nserved"
    skew = _clock_skew(be, "ps")
    print(f"guest clock after a {SUSPENDED_FOR_S}+ s suspend: {skew:+.2f} s from the host")
    assert abs(skew) < CLOCK_SLACK_S
    # The image went with the start.
    assert _rows(be, vm["id"]) == [] and not (vdir / "suspend").exists()

    # A start that cannot load the image (cut in half here) fails with the reason and leaves
    # the VM suspended. Stop then discards its state; the next start is a cold boot.
    _ok(be, "suspend", "ps")
    stream = vdir / "suspend" / "state.mig"
    with open(stream, "r+b") as f:
        f.truncate(stream.stat().st_size // 2)
    r = be.banger("vm", "start", "ps", timeout=300)
    assert r.returncode != 0 and "vm ps failed to boot" in r.stderr, r.stderr
    assert _show(be, "ps")["state"] == "suspended"
    p = _ok(be, "stop", "ps")
    assert p.stdout == "ps: stopped (discarded the saved state (suspend image) of ps)\n"
    assert _show(be, "ps")["state"] == "stopped"
    assert _rows(be, vm["id"]) == [] and not (vdir / "suspend").exists()
    _ok(be, "start", "ps")
    assert _out(be, "ps", "test -e /dev/shm/ps-ram || echo cold") == "cold"

    # Delete of a suspended VM leaves no file and no row.
    _ok(be, "suspend", "ps")
    _ok(be, "delete", "ps", timeout=120)
    assert not vdir.exists() and _rows(be, vm["id"]) == []


def _held_suspend(
    be: BangerEnv, name: str, point: str, meanwhile: Callable[[], None] | None = None
) -> None:
    """`vm suspend` held at `point`; (`meanwhile`, then) kill -9 the daemon, start it again."""
    be.banger("daemon", "stop", check=True, timeout=120)  # the VM runs on (re-adopted)
    restart(be, point)
    cli = subprocess.Popen(
        [*banger_cli(), "vm", "suspend", name],
        env=be.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        flag = be.paths.runtime_dir / f"test-hold-{point}"
        wait_for(flag.exists, f"the suspend to reach {point}", 300)
        if meanwhile is not None:
            meanwhile()
        kill_daemon(be)
    finally:
        cli.wait(timeout=60)
    restart(be)


def test_kill_9_during_a_suspend_then_restart(vmenv: BangerEnv) -> None:
    be = vmenv
    _ok(be, "create", "--name", "psc", timeout=900)
    vm = _show(be, "psc")
    vdir = Path(vm["dir"])
    pid = _out(be, "psc", WRITE)

    # Held after the pending row, before the save: the VM runs on, same VMM; the row is gone.
    _held_suspend(be, "psc", "suspend")
    again = _show(be, "psc")
    assert again["state"] == "running" and again["pid"] == vm["pid"] and alive(vm["pid"])
    assert _rows(be, vm["id"]) == [] and not (vdir / "suspend").exists()
    assert _out(be, "psc", CHECK) == f"in-ram\nalive-{pid}\nserved"

    # Killed in the middle of the save: what the driver does first (vCPUs stopped, the
    # migration stream going to the suspend dir) is done by hand at the hold point. The
    # restart cancels the migration and thaws the guest: it runs on, same VMM, nothing left.
    def save_half_way() -> None:
        qmp = be.paths.runtime_dir / "vms" / vm["id"] / "qmp.sock"
        (vdir / "suspend").mkdir()
        stream = vdir / "suspend" / "state.mig"
        cmds = [
            {"execute": "qmp_capabilities"},
            {"execute": "stop"},
            {"execute": "migrate", "arguments": {"uri": f"exec:cat > {stream}"}},
        ]
        subprocess.run(
            ["socat", "-t", "2", "-", f"UNIX-CONNECT:{qmp}"],
            input="".join(json.dumps(c) + "\n" for c in cmds),
            capture_output=True,
            timeout=30,
            check=True,
            text=True,
        )
        wait_for(stream.exists, "the migration stream to start", 30)

    _held_suspend(be, "psc", "suspend", save_half_way)
    again = _show(be, "psc")
    assert again["state"] == "running" and again["pid"] == vm["pid"] and alive(vm["pid"])
    assert _rows(be, vm["id"]) == [] and not (vdir / "suspend").exists()
    assert _out(be, "psc", CHECK) == f"in-ram\nalive-{pid}\nserved"

    # Held after the save (the VMM has exited), before the image is on record: stopped, and
    # no file of the cut suspend is left.
    _held_suspend(be, "psc", "suspend_saved")
    again = _show(be, "psc")
    assert again["state"] == "stopped" and not alive(vm["pid"])
    assert _rows(be, vm["id"]) == [] and not (vdir / "suspend").exists()

    # Suspend and wake work afterwards.
    _ok(be, "start", "psc")
    pid = _out(be, "psc", WRITE)
    _ok(be, "suspend", "psc")
    _ok(be, "start", "psc")
    assert _out(be, "psc", CHECK) == f"in-ram\nalive-{pid}\nserved"
    _ok(be, "delete", "psc", timeout=120)
    assert not vdir.exists() and _rows(be, vm["id"]) == []

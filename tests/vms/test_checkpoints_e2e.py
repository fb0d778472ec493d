"""Checkpoints end to end (`banger vm snapshot ...`): the real CLI and daemon, real QEMU TCG
guests of the offline debian-bookworm image, real OpenSSH. A checkpoint brings back both disks
(/ and /root), the RAM (a tmpfs file, a process with the same pid), from a running or a stopped
VM, twice; its size on disk; delete; `vm delete`; and a kill -9 of bangerd in the middle of one.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest

from banger.vmm.qemu_snapshot import LAYERS_ONLY_MARK
from banger.vms.saved import size_on_disk
from tests.conftest import BangerEnv
from tests.vms.test_crash_recovery import alive, banger_cli, kill_daemon, restart, wait_for
from tests.vms.test_vm_e2e import _show, _ssh

pytestmark = pytest.mark.slow

MiB = 1 << 20


def _snap(be: BangerEnv, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    p = be.banger("vm", "snapshot", *args, timeout=timeout)
    assert p.returncode == 0, f"vm snapshot {' '.join(args)}: {p.stderr}"
    return p


def _list(be: BangerEnv, name: str) -> list[dict[str, Any]]:
    out = json.loads(_snap(be, "list", name, "--json").stdout)
    assert isinstance(out, list)
    return out


def _rows(be: BangerEnv, vm_id: str) -> list[tuple[str, str]]:
    with sqlite3.connect(f"file:{be.paths.db_file}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT tag, state FROM vm_snapshots WHERE vm_id = ?", (vm_id,))
        return sorted(rows.fetchall())


def _out(be: BangerEnv, name: str, cmd: str) -> str:
    r = _ssh(be, name, cmd)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


# A file on / (root disk), one in /root (work disk), one in tmpfs (RAM only), a process.
WRITE = (
    "echo on-root > /etc/ck-root; echo on-work > /root/ck-work; echo in-ram > /dev/shm/ck-ram; "
    "setsid sleep 1000000 </dev/null >/dev/null 2>&1 & echo $! > /dev/shm/ck-pid; sync; "
    "cat /dev/shm/ck-pid"
)
CHANGE = (
    "rm -f /etc/ck-root /dev/shm/ck-ram; echo changed > /root/ck-work; "
    "kill $(cat /dev/shm/ck-pid); sync"
)
CHECK = (
    "cat /etc/ck-root /root/ck-work /dev/shm/ck-ram; "
    "kill -0 $(cat /dev/shm/ck-pid) && echo alive-$(cat /dev/shm/ck-pid)"
)


def test_checkpoint_restore_delete_end_to_end(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "ck", timeout=900)
    assert p.returncode == 0, p.stderr
    vm = _show(be, "ck")
    vdir = Path(vm["dir"])
    pid = _out(be, "ck", WRITE)

    p = _snap(be, "create", "ck", "t1")
    m = re.fullmatch(r"ck: snapshot t1 \(([\d.]+ \w+) on disk, paused (\d+) ms\)\n", p.stdout)
    assert m, p.stdout
    print(f"checkpoint t1: {m.group(1)} on disk, paused {m.group(2)} ms")
    assert "saving RAM and disks" in p.stderr
    assert _show(be, "ck")["state"] == "running" and _show(be, "ck")["pid"] == vm["pid"]
    # The VM runs on: it writes, and its disks are still where they were.
    assert _out(be, "ck", CHECK) == f"on-root\non-work\nin-ram\nalive-{pid}"

    # Change everything, restore from the running VM: all of it is back, the same process too.
    assert _out(be, "ck", f"{CHANGE}; cat /root/ck-work") == "changed"
    p = _snap(be, "restore", "ck", "t1")
    assert p.stdout == "ck: restored t1 (running)\n"
    assert _out(be, "ck", CHECK) == f"on-root\non-work\nin-ram\nalive-{pid}"

    # The same checkpoint again (its frozen layers were never written).
    _out(be, "ck", CHANGE)
    _snap(be, "restore", "ck", "t1")
    assert _out(be, "ck", CHECK) == f"on-root\non-work\nin-ram\nalive-{pid}"

    # Size: a second checkpoint after the guest wrote 10 MiB holds about those 10 MiB (its
    # layers only have what changed since t1) plus the saved RAM and a copy of the seed.
    _out(be, "ck", "dd if=/dev/urandom of=/root/big bs=1M count=10 status=none; sync")
    _snap(be, "create", "ck", "t2")
    t2 = next(s for s in _list(be, "ck") if s["tag"] == "t2")
    d2 = vdir / "snapshots" / "t2"
    ram = size_on_disk(d2 / "state.mig")
    seed = size_on_disk(d2 / "seed.ext4")
    layers = t2["size_bytes"] - ram - seed
    print(
        f"checkpoint t2 after 10 MiB written: {t2['size_bytes'] / MiB:.1f} MiB on disk "
        f"(layers {layers / MiB:.1f} MiB, saved RAM {ram / MiB:.1f} MiB, seed "
        f"{seed / MiB:.1f} MiB), paused {t2['paused_ms']} ms"
    )
    assert 10 * MiB <= layers <= 2 * 10 * MiB
    assert t2["size_bytes"] <= 2 * 10 * MiB + ram + seed

    # Restore from a stopped VM.
    p = be.banger("vm", "stop", "ck", timeout=120)
    assert p.returncode == 0, p.stderr
    _snap(be, "restore", "ck", "t1")
    assert _show(be, "ck")["state"] == "running"
    assert _out(be, "ck", CHECK + "; test -e /root/big || echo no-big") == (
        f"on-root\non-work\nin-ram\nalive-{pid}\nno-big"
    )

    # The table a person reads.
    p = _snap(be, "list", "ck")
    assert re.search(r"t1\s+checkpoint", p.stdout) and re.search(r"t2\s+checkpoint", p.stdout)

    # Delete t2 (nothing reads through it: the VM runs over t1): gone from the list and disk.
    p = _snap(be, "delete", "ck", "t2")
    assert p.stdout == "ck: deleted snapshot t2\n"
    assert [s["tag"] for s in _list(be, "ck")] == ["t1"]
    assert not d2.exists()
    # Delete t1: the VM's disks read through its frozen layers, which stay (layers only).
    p = _snap(be, "delete", "ck", "t1")
    assert "deleted snapshot t1 (its disk layers stay" in p.stdout
    assert _list(be, "ck") == []
    kept = sorted(f.name for f in (vdir / "snapshots" / "t1").iterdir())
    assert kept == [LAYERS_ONLY_MARK, "root.qcow2", "work.qcow2"]
    assert _out(be, "ck", "cat /root/ck-work") == "on-work"  # the VM is fine

    # Deleting the VM leaves no checkpoint row or file.
    _snap(be, "create", "ck", "last")
    p = be.banger("vm", "delete", "ck", timeout=120)
    assert p.returncode == 0, p.stderr
    assert _rows(be, vm["id"]) == []
    assert not vdir.exists()


def test_refusals_name_what_to_do(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "ckr", "--no-start", timeout=900)
    assert p.returncode == 0, p.stderr
    p = be.banger("vm", "snapshot", "create", "ckr", "t1")
    assert p.returncode != 0 and "vm ckr is not running (state created)" in p.stderr
    assert "banger vm start ckr" in p.stderr
    p = be.banger("vm", "snapshot", "create", "ckr", "../../etc")
    assert p.returncode != 0 and "snapshot tag '../../etc' is not allowed" in p.stderr
    p = be.banger("vm", "snapshot", "restore", "ckr", "nope")
    assert p.returncode != 0 and "vm ckr has no snapshot 'nope'" in p.stderr
    assert "banger vm snapshot list ckr" in p.stderr
    p = be.banger("vm", "snapshot", "list", "ckr")
    assert p.returncode == 0 and "no snapshots of ckr" in p.stdout
    p = be.banger("vm", "delete", "ckr", timeout=120)
    assert p.returncode == 0, p.stderr


def _held_create(be: BangerEnv, name: str, tag: str, point: str) -> None:
    """`vm snapshot create` held at `point`; kill -9 the daemon there, start it again."""
    be.banger("daemon", "stop", check=True, timeout=120)  # the VM runs on (re-adopted)
    restart(be, point)
    cli = subprocess.Popen(
        [*banger_cli(), "vm", "snapshot", "create", name, tag],
        env=be.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        flag = be.paths.runtime_dir / f"test-hold-{point}"
        wait_for(flag.exists, f"the snapshot to reach {point}", 300)
        kill_daemon(be)
    finally:
        cli.wait(timeout=60)
    restart(be)


def test_kill_9_during_a_checkpoint_then_restart(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "ckc", timeout=900)
    assert p.returncode == 0, p.stderr
    vm = _show(be, "ckc")
    vdir = Path(vm["dir"])
    _out(be, "ckc", "echo before > /root/note; sync")

    # Held after the pending row, before any file: the restart removes the row.
    _held_create(be, "ckc", "t1", "snapshot")
    again = _show(be, "ckc")
    assert again["state"] == "running" and again["pid"] == vm["pid"] and alive(vm["pid"])
    assert _rows(be, vm["id"]) == []
    assert not (vdir / "snapshots" / "t1").exists()
    assert _list(be, "ckc") == []

    # Held after the driver saved (disks already swapped), before the row is ready: the
    # restart drops the row and the RAM state; the frozen layers the VM reads through stay.
    _held_create(be, "ckc", "t1", "snapshot_saved")
    again = _show(be, "ckc")
    assert again["state"] == "running" and again["pid"] == vm["pid"]
    assert _rows(be, vm["id"]) == []
    assert _list(be, "ckc") == []
    kept = sorted(f.name for f in (vdir / "snapshots" / "t1").iterdir())
    assert kept == [LAYERS_ONLY_MARK, "root.qcow2", "work.qcow2"]
    assert sorted(f.name for f in (vdir / "snapshots").iterdir()) == ["t1"]
    assert _out(be, "ckc", "cat /root/note; echo after > /root/note; sync") == "before"

    # The same tag works again, and restores.
    _snap(be, "create", "ckc", "t1")
    assert [s["tag"] for s in _list(be, "ckc")] == ["t1"]
    _out(be, "ckc", "echo later > /root/note; sync")
    _snap(be, "restore", "ckc", "t1")
    assert _out(be, "ckc", "cat /root/note") == "after"
    p = be.banger("vm", "delete", "ckc", timeout=120)
    assert p.returncode == 0, p.stderr
    assert _rows(be, vm["id"]) == [] and not vdir.exists()

"""`banger vm fork` end to end: the real CLI and daemon, real QEMU (TCG) checkpoint and restores of
the debian-bookworm guest, real OpenSSH with each child's own pinned host key."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import BangerEnv
from tests.vms.conftest import list_vms
from tests.vms.test_vm_e2e import _known_hosts, _show, _ssh

pytestmark = pytest.mark.slow


def _out(be: BangerEnv, name: str, script: str) -> str:
    p = _ssh(be, name, "sh", "-c", script)
    assert p.returncode == 0, (name, script, p.stderr)
    return p.stdout.strip()


def _served_key(be: BangerEnv, name: str) -> str:
    """The host key the guest's sshd offers (what a client checks against the pin)."""
    port = str(_show(be, name)["ssh_port"])
    p = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", port, "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return p.stdout.split()[-1]


def _exists(be: BangerEnv, name: str, path: str) -> bool:
    return _out(be, name, f"test -e {path} && echo yes || echo no") == "yes"


def test_fork_children_have_their_own_identity_memory_copy_and_disks(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "fp", timeout=900)
    assert p.returncode == 0, p.stderr
    # Before the fork: a tmpfs file, a live process, a file on the root disk and one in /root.
    _out(
        be,
        "fp",
        "echo mem > /dev/shm/before; echo root > /etc/before; echo work > /root/before; sync; "
        "setsid sleep 100000 </dev/null >/dev/null 2>&1 &",
    )
    sleeper = _out(be, "fp", "pgrep -x sleep")
    parent_id = _out(be, "fp", "cat /etc/machine-id")
    parent_key = _served_key(be, "fp")
    parent_port = _show(be, "fp")["ssh_port"]

    p = be.banger("vm", "fork", "fp", "--name", "fk", "-n", "2", timeout=900)
    assert p.returncode == 0, p.stderr
    assert "fk-1 ready in" in p.stdout and "fk-2 ready in" in p.stdout
    assert "fp: running (paused" in p.stdout

    ids, ports = {parent_id}, {parent_port}
    for child in ("fk-1", "fk-2"):
        vm = _show(be, child)
        assert vm["state"] == "running"
        ports.add(vm["ssh_port"])
        # Its own identity (the SSH session itself checked the pinned NEW.vm host key).
        assert _out(be, child, "hostname") == child
        ids.add(_out(be, child, "cat /etc/machine-id"))
        key = _served_key(be, child)
        assert key != parent_key and key in _known_hosts(be)
        assert f"{child}.vm" in _known_hosts(be)
        # The parent's memory and disks at the moment of the fork.
        assert _out(be, child, "cat /dev/shm/before /etc/before /root/before") == "mem\nroot\nwork"
        assert _out(be, child, "pgrep -x sleep") == sleeper
    assert len(ids) == 3 and len(ports) == 3
    assert _show(be, "fp")["state"] == "running"

    # Writes never cross: parent → children, child → parent and sibling (root disk and /root).
    _out(be, "fp", "echo p > /etc/after-parent; echo p > /root/after-parent; sync")
    _out(be, "fk-1", "echo c > /etc/after-child; echo c > /root/after-child; sync")
    for path in ("/etc/after-parent", "/root/after-parent"):
        assert _exists(be, "fp", path)
        assert not _exists(be, "fk-1", path) and not _exists(be, "fk-2", path)
    for path in ("/etc/after-child", "/root/after-child"):
        assert _exists(be, "fk-1", path)
        assert not _exists(be, "fp", path) and not _exists(be, "fk-2", path)

    # A second fork of the same parent (its layers were swapped by the first) carries its now.
    p = be.banger("vm", "fork", "fp", "--name", "fz", timeout=900)
    assert p.returncode == 0, p.stderr
    assert _out(be, "fz", "hostname; cat /root/after-parent") == "fz\np"
    assert not _exists(be, "fz", "/root/after-child")
    assert be.banger("vm", "delete", "fz", timeout=180).returncode == 0

    # The parent goes; its children keep their disks (read through the fork base's layers).
    assert be.banger("vm", "delete", "fp", timeout=180).returncode == 0
    assert _out(be, "fk-1", "cat /root/after-child /etc/before") == "c\nroot"
    p = be.banger("vm", "restart", "fk-2", timeout=900)
    assert p.returncode == 0, p.stderr
    assert _out(be, "fk-2", "hostname; cat /etc/before /root/before") == "fk-2\nroot\nwork"
    assert not _exists(be, "fk-2", "/dev/shm/before")  # a cold boot: memory starts afresh

    # A child's /root grows: its chain is copied into its own work.ext4 (offline), then it boots.
    assert be.banger("vm", "stop", "fk-1", timeout=180).returncode == 0
    p = be.banger("vm", "set", "fk-1", "--disk-size", "3G", timeout=600)
    assert p.returncode == 0, p.stderr
    assert be.banger("vm", "start", "fk-1", timeout=900).returncode == 0
    assert _out(be, "fk-1", "cat /root/after-child /root/before") == "c\nwork"
    size = int(_out(be, "fk-1", "df -B1 --output=size /root | tail -1"))
    assert size > 2_500_000_000

    for child in ("fk-1", "fk-2"):
        assert be.banger("vm", "delete", child, timeout=180).returncode == 0
    assert [vm["name"] for vm in list_vms(be)] == []
    bases = be.paths.state_dir / "bases"
    assert not bases.exists() or list(bases.iterdir()) == []
    assert list((be.paths.state_dir / "vms").iterdir()) == []


def test_fork_refusals_say_what_is_wrong(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "fq", "--no-start", timeout=900)
    assert p.returncode == 0, p.stderr
    p = be.banger("vm", "fork", "fq", "--name", "fr", timeout=60)
    assert p.returncode != 0 and "only a running or paused VM can be forked" in p.stderr
    p = be.banger("vm", "fork", "fq", "--name", "fr", "-n", "17", timeout=60)
    assert p.returncode != 0 and "1 to 16 children" in p.stderr
    p = be.banger("vm", "fork", "fq", "--name", "fq", "--json", timeout=60)
    assert p.returncode != 0 and "'fq' already exists" in p.stderr
    assert be.banger("vm", "delete", "fq", timeout=120).returncode == 0
    out = json.loads(be.banger("vm", "list", "--json", check=True, timeout=60).stdout)
    assert out == []

"""VMs end to end: the real CLI and daemon, real QEMU TCG boots of the imported Debian kernel and
the offline debian-bookworm image, real OpenSSH. Boots are kept few: each test covers a lot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from banger.rpc.errors import NotFound
from tests.conftest import BangerEnv
from tests.guest import bootkit
from tests.vms.conftest import list_vms
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


def _show(be: BangerEnv, name: str) -> dict[str, Any]:
    out = json.loads(be.banger("vm", "show", name, "--json", check=True, timeout=60).stdout)
    assert isinstance(out, dict)
    return out


def _ssh(
    be: BangerEnv, name: str, *cmd: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return be.banger("vm", "ssh", name, "--", *cmd, timeout=timeout)


def _qemu_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _known_hosts(be: BangerEnv) -> str:
    try:
        return (be.paths.ssh_dir / "known_hosts").read_text()
    except FileNotFoundError:
        return ""


def test_lifecycle_create_ssh_stop_start_restart_kill_delete(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "life", timeout=900)
    assert p.returncode == 0, p.stderr
    assert "spec: life: debian-bookworm · kernel debian-6.1 · 1 vCPU" in p.stderr
    assert "512 MiB (config)" in p.stderr and "2.0 GiB work disk (config)" in p.stderr
    assert "waiting for SSH" in p.stderr
    assert "life ready in" in p.stdout
    vm = _show(be, "life")
    assert vm["state"] == "running" and vm["network"] == "user"
    assert _qemu_alive(vm["pid"])
    assert "life.vm ssh-ed25519 " in _known_hosts(be)

    # A command's output and exit status come back verbatim.
    r = _ssh(be, "life", "hostname; uname -r; echo data > /root/keep; echo sys > /etc/keep; exit 7")
    assert r.returncode == 7, r.stderr
    assert r.stdout.splitlines()[:2] == ["life", bootkit.KVER]  # the imported host kernel
    # Several words keep their boundaries: 'a b' stays one argument, 'c;d' runs no `d`.
    r = _ssh(be, "life", "printf", "%s\\n", "a b", "c;d")
    assert (r.returncode, r.stdout.splitlines()) == (0, ["a b", "c;d"]), r.stderr
    r = _ssh(be, "life", "df -k /root | tail -1; stat -c %a /root")
    assert "/dev/vd" in r.stdout
    size_kib = int(r.stdout.split()[1])
    assert 1_800_000 < size_kib < 2_200_000  # the 2G work disk is /root

    # running VM: set is refused with what to do
    p = be.banger("vm", "set", "life", "--memory", "600")
    assert p.returncode == 1 and "is running; stop it first" in p.stderr

    p = be.banger("vm", "stop", "life", timeout=120)
    assert p.returncode == 0 and "life: stopped" in p.stdout, p.stderr
    # Graceful: the guest's own shutdown path ran (not the forced one after the timeout).
    assert "graceful stop timed out" not in be.paths.daemon_log.read_text()
    logs = be.banger("vm", "logs", "life", check=True).stdout
    assert "banger-guest: shutting down" in logs and "reboot: Power down" in logs
    vm = _show(be, "life")
    assert vm["state"] == "stopped" and vm["pid"] is None
    p = _ssh(be, "life", "true")
    assert p.returncode == 1 and "is stopped" in p.stderr

    # stopped VM: grow the work disk (filesystem resized) and change memory
    p = be.banger("vm", "set", "life", "--disk-size", "3G", "--memory", "600", timeout=300)
    assert p.returncode == 0, p.stderr
    p = be.banger("vm", "set", "life", "--disk-size", "1G")
    assert p.returncode == 1 and "can only grow" in p.stderr

    p = be.banger("vm", "start", "life", timeout=600)
    assert p.returncode == 0, p.stderr
    r = _ssh(be, "life", "cat /root/keep /etc/keep; df -k /root | tail -1; free -m | head -2")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[:2] == ["data", "sys"]
    assert 2_800_000 < int(r.stdout.splitlines()[2].split()[1]) < 3_300_000
    assert _show(be, "life")["memory_mib"] == 600

    p = be.banger("vm", "restart", "lif", timeout=600)  # unique prefix
    assert p.returncode == 0 and "life: restarted" in p.stdout, p.stderr
    assert _ssh(be, "life", "cat /root/keep").stdout.strip() == "data"

    # guest poweroff: the VM is reported stopped, never running
    pid = _show(be, "life")["pid"]
    _ssh(be, "life", "poweroff")
    wait_until(lambda: _show(be, "life")["state"] != "running", 30, "life leaving running")
    assert _show(be, "life")["state"] == "stopped"
    assert not _qemu_alive(pid)

    # The ACPI power button alone (QMP system_powerdown, no control channel) powers it off.
    p = be.banger("vm", "start", "life", timeout=600)
    assert p.returncode == 0, p.stderr
    vm = _show(be, "life")
    qmp = be.paths.runtime_dir / "vms" / vm["id"] / "qmp.sock"
    subprocess.run(
        ["socat", "-t", "2", "-", f"UNIX-CONNECT:{qmp}"],
        input='{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n',
        capture_output=True,
        timeout=30,
        check=True,
        text=True,
    )
    wait_until(lambda: _show(be, "life")["state"] != "running", 30, "life leaving running")
    assert _show(be, "life")["state"] == "stopped"
    assert not _qemu_alive(vm["pid"])

    p = be.banger("vm", "start", "life", timeout=600)
    assert p.returncode == 0, p.stderr
    pid = _show(be, "life")["pid"]
    p = be.banger("vm", "kill", "--signal", "KILL", "life", timeout=60)
    assert p.returncode == 0 and "life: killed" in p.stdout
    assert _show(be, "life")["state"] == "stopped"
    assert not _qemu_alive(pid)

    logs = be.banger("vm", "logs", "life", check=True).stdout
    assert logs.count("--- banger: boot of life") == 5
    assert "banger-guest: READY mode=minimal" in logs  # --init auto, no systemd in the image

    vm_dir = Path(_show(be, "life")["dir"])
    assert (vm_dir / "root.qcow2").exists()
    p = be.banger("vm", "delete", "life", timeout=120)
    assert p.returncode == 0 and "life: deleted" in p.stdout
    assert not vm_dir.exists()
    assert "life.vm" not in _known_hosts(be)
    p = be.banger("vm", "show", "life")
    assert p.returncode == 1 and "not found" in p.stderr


def test_async_create_cancel_mid_boot_leaves_nothing(vmenv: BangerEnv) -> None:
    be = vmenv
    before = {p.name for p in be.paths.vms_dir.iterdir()}
    with be.client() as c:
        st = c.call("vm.create.begin", {"name": "gone"})
        op = st["id"]
        assert op.startswith("op-")

        def booting() -> dict[str, Any] | None:
            now: dict[str, Any] = c.call("vm.create.status", {"id": op})
            return now if now["stage"] in ("wait_guest", "wait_ssh") or now["done"] else None

        st = wait_until(booting, 300, "the create reaching the guest boot")
        assert not st["done"], st  # cancelled while the guest boots
        vm_id = next(iter({p.name for p in be.paths.vms_dir.iterdir()} - before))
        st = c.call("vm.create.cancel", {"id": op})
        assert st["done"] and st["cancelled"] and st["vm"] is None
        assert c.call("vm.create.status", {"id": op})["cancelled"]
        with pytest.raises(NotFound):
            c.call("vm.show", {"ref": "gone"})
    assert {p.name for p in be.paths.vms_dir.iterdir()} == before
    assert not (be.paths.runtime_dir / "vms" / vm_id).exists()
    assert "gone.vm" not in _known_hosts(be)
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    assert not [ln for ln in ps.splitlines() if f"banger-{vm_id}" in ln and not ln.startswith("Z")]


def test_two_at_once_then_daemon_restart_readopts(vmenv: BangerEnv) -> None:
    be = vmenv
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "banger.cli.main", "vm", "create", "--name", n],
            env=be.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in ("twin-a", "twin-b")
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err
        assert "ready in" in out
    a, b = _show(be, "twin-a"), _show(be, "twin-b")
    assert a["image_id"] == b["image_id"] and a["dir"] != b["dir"]
    assert a["ssh_port"] != b["ssh_port"]
    for name in ("twin-a", "twin-b"):
        assert _ssh(be, name, "hostname").stdout.strip() == name

    # Daemon restart: VMs keep running and are re-adopted.
    be.banger("daemon", "stop", check=True, timeout=60)
    assert _qemu_alive(a["pid"]) and _qemu_alive(b["pid"])
    be.banger("daemon", "start", check=True, timeout=30)
    states = {v["name"]: v for v in list_vms(be)}
    assert states["twin-a"]["state"] == "running" and states["twin-a"]["pid"] == a["pid"]
    assert _ssh(be, "twin-b", "hostname").stdout.strip() == "twin-b"

    # A VMM that dies behind banger's back is reported stopped, not running.
    os.kill(a["pid"], 9)
    wait_until(lambda: _show(be, "twin-a")["state"] == "stopped", 30, "twin-a reported stopped")

    # Several VMs per verb, acted on concurrently; prune removes the non-running one.
    p = be.banger("vm", "prune", "-f", timeout=120)
    assert p.returncode == 0 and "twin-a: deleted" in p.stdout
    assert [v["name"] for v in list_vms(be)] == ["twin-b"]
    p = be.banger("vm", "create", "--name", "idle", "--no-start", timeout=300)
    assert p.returncode == 0 and _show(be, "idle")["state"] == "created"
    p = be.banger("vm", "delete", "twin-b", "idle", timeout=120)
    assert p.returncode == 0, p.stderr
    assert "twin-b: deleted" in p.stdout and "idle: deleted" in p.stdout
    assert list_vms(be) == []


def test_bad_input_is_refused_clearly(vmenv: BangerEnv) -> None:
    be = vmenv
    p = be.banger("vm", "create", "--name", "Web_1", "--no-start")
    assert p.returncode == 1
    assert "invalid character 'W' at position 1" in p.stderr
    p = be.banger("vm", "create", "--name", "-web", "--no-start")
    assert "cannot start or end with '-'" in p.stderr
    p = be.banger("vm", "create", "--image", "no-such-image", "--no-start")
    assert p.returncode == 1 and "image 'no-such-image' not found" in p.stderr
    p = be.banger("vm", "stop", "nothing-here")
    assert p.returncode == 1 and "not found" in p.stderr
    p = be.banger("vm", "ssh", "nothing-here")
    assert p.returncode == 1 and "not found" in p.stderr
    p = be.banger("vm", "create", "--no-start", "--disk-size", "lots")
    assert p.returncode == 1 and "not understood" in p.stderr
    assert list_vms(be) == []


def test_failed_boot_leaves_vm_in_error_with_console_log(vmenv: BangerEnv) -> None:
    be = vmenv
    # debian-bookworm (minbase) has no systemd: the guest init refuses and powers off at once.
    p = be.banger("vm", "create", "--name", "nosd", "--init", "systemd", timeout=600)
    assert p.returncode == 1
    assert "vm nosd failed to boot" in p.stderr and "the image has no systemd" in p.stderr
    vm = _show(be, "nosd")
    assert vm["state"] == "error" and "has no systemd" in vm["error"] and vm["pid"] is None
    logs = be.banger("vm", "logs", "nosd", check=True).stdout
    assert "banger-guest: ERROR --init systemd: the image has no systemd" in logs
    p = be.banger("vm", "delete", "nosd", timeout=120)
    assert p.returncode == 0, p.stderr

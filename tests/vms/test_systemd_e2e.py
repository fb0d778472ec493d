"""`--init systemd` end to end: the real CLI and daemon booting the built-in
debian-bookworm-systemd (minbase + systemd-sysv, no D-Bus) under QEMU TCG, real OpenSSH."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BangerEnv, BuiltImage
from tests.vms.conftest import list_vms
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

IMAGE = "debian-bookworm-systemd"
# Units whose failure would mean banger's systemd set-up is broken.
BANGER_UNITS = ("ssh", "getty", "banger", "root.mount", "network", "logind", "binfmt")


def _show(be: BangerEnv, name: str) -> dict[str, Any]:
    out = json.loads(be.banger("vm", "show", name, "--json", check=True, timeout=60).stdout)
    assert isinstance(out, dict)
    return out


def _ssh(be: BangerEnv, name: str, cmd: str) -> subprocess.CompletedProcess[str]:
    return be.banger("vm", "ssh", name, "--", cmd, timeout=120)


def _wait_stopped(be: BangerEnv, name: str, timeout: float = 30) -> None:
    wait_until(lambda: _show(be, name)["state"] != "running", timeout, f"{name} leaving running")
    assert _show(be, name)["state"] == "stopped"


def _timed(be: BangerEnv, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    p = be.banger(*args, timeout=600)
    return p, time.monotonic() - started


def _work_disk_clean(vm: dict[str, Any]) -> bool:
    """The guest's shutdown unmounted /root (or made it read-only): no journal to replay."""
    vdir = Path(vm["dir"])
    # A QEMU VM writes /root into work.qcow2 over work.ext4: read the disk the guest saw.
    flat = vdir / "work-flat.ext4"
    subprocess.run(
        ["qemu-img", "convert", "-U", "-O", "raw", str(vdir / "work.qcow2"), str(flat)],
        check=True,
    )
    try:
        out = subprocess.run(
            ["dumpe2fs", "-h", str(flat)], capture_output=True, text=True, check=True
        ).stdout
    finally:
        flat.unlink()
    features = next(ln for ln in out.splitlines() if ln.startswith("Filesystem features:"))
    return "needs_recovery" not in features


def test_systemd_guest_lifecycle(vmenv: BangerEnv, debian_systemd_image: BuiltImage) -> None:
    be = vmenv
    # The session build is in the shared cache: this pull only links its ext4.
    p = be.banger("image", "pull", IMAGE, timeout=600)
    assert p.returncode == 0, p.stderr

    p, ready = _timed(be, "vm", "create", "--name", "sd", "--image", IMAGE, "--init", "systemd")
    assert p.returncode == 0, p.stderr
    print(f"systemd guest: vm create → ready {ready:.1f}s")
    assert _show(be, "sd")["init_mode"] == "systemd"
    # Ready means systemd has finished starting: systemctl works at once.
    r = _ssh(
        be,
        "sd",
        "cat /proc/1/comm; systemctl is-system-running;"
        " findmnt -n -o SOURCE /root; echo data > /root/keep;"
        " systemctl list-units --state=failed --no-legend --plain",
    )
    assert r.returncode in (0, 1), r.stderr  # is-system-running exits 1 when degraded
    lines = r.stdout.splitlines()
    assert lines[0] == "systemd"
    assert lines[1] in ("running", "degraded"), r.stdout
    assert lines[2].startswith("/dev/vd")  # the work disk is /root
    failed = [ln.split()[0] for ln in lines[3:] if ln.strip()]
    assert not [u for u in failed if any(k in u for k in BANGER_UNITS)], failed
    logs = be.banger("vm", "logs", "sd", check=True).stdout
    assert "banger-guest: READY mode=systemd" in logs

    # Graceful stop through systemd (the forced path only starts after the 30 s timeout).
    p, took = _timed(be, "vm", "stop", "sd")
    assert p.returncode == 0 and "sd: stopped" in p.stdout, p.stderr
    print(f"systemd guest: vm stop {took:.1f}s")
    assert "graceful stop timed out" not in be.paths.daemon_log.read_text()
    assert _work_disk_clean(_show(be, "sd"))
    logs = be.banger("vm", "logs", "sd", check=True).stdout
    assert "reboot: Power down" in logs
    assert "FAILED" not in logs  # e.g. "Failed unmounting /.banger" at shutdown

    p, ready = _timed(be, "vm", "start", "sd")
    assert p.returncode == 0, p.stderr
    print(f"systemd guest: vm start → ready {ready:.1f}s")
    # The first command after READY: the home survived, and a guest `poweroff` reaches systemd
    # (it used to fail while systemd was still starting: "Failed to talk to init daemon").
    r = _ssh(be, "sd", "cat /root/keep; poweroff")
    assert r.stdout.splitlines()[:1] == ["data"], r.stderr
    assert r.returncode in (0, 255), r.stderr  # 255: the connection dropped as it powered off
    assert "Failed to talk to init daemon" not in r.stderr
    _wait_stopped(be, "sd")
    assert _work_disk_clean(_show(be, "sd"))

    # --init auto picks the image's systemd; the ACPI power button alone (QMP system_powerdown,
    # no control channel) shuts it down although there is no logind.
    p = be.banger("vm", "create", "--name", "sdauto", "--image", IMAGE, timeout=600)
    assert p.returncode == 0, p.stderr
    vm = _show(be, "sdauto")
    assert vm["init_mode"] == "auto"
    assert _ssh(be, "sdauto", "cat /proc/1/comm").stdout.strip() == "systemd"
    assert "READY mode=systemd" in be.banger("vm", "logs", "sdauto", check=True).stdout
    qmp = be.paths.runtime_dir / "vms" / vm["id"] / "qmp.sock"
    subprocess.run(
        ["socat", "-t", "2", "-", f"UNIX-CONNECT:{qmp}"],
        input='{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n',
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    _wait_stopped(be, "sdauto")
    assert _work_disk_clean(_show(be, "sdauto"))

    p = be.banger("vm", "delete", "sd", "sdauto", timeout=120)
    assert p.returncode == 0, p.stderr
    assert list_vms(be) == []

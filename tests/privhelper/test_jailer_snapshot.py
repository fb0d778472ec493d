"""Firecracker snapshots in a system install: the owner daemon saves and restores a VM whose
jail bangerd-root built (the jailed VMM may only write the jail's `run/`).

Same setup as test_jailer.py: the real `bangerd-root`, the contract doubles for the jailer and
Firecracker (dropping to the owner), the daemon side run as the owner through
`FirecrackerDriver.from_config`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.privhelper.conftest import Helper, User, as_user
from tests.privhelper.test_jailer import (  # noqa: F401 - fixtures used by name
    fake_bins,
    jail_helper,
    vm_files,
)

_DAEMON_SIDE = r"""
import asyncio, json, sys, time
from pathlib import Path
from banger.config import load_config
from banger.paths import Paths
from banger.privhelper.client import HelperPrivOps
from banger.vmm.base import DiskSpec, NetworkSpec, VMSpec
from banger.vmm.firecracker import FirecrackerDriver, open_control

async def ask(handle, line):
    reader, writer = await open_control(handle, timeout=10)
    writer.write(line.encode() + b"\n")
    await writer.drain()
    answer = (await asyncio.wait_for(reader.readline(), 10)).decode().strip()
    writer.close()
    return answer

async def main() -> None:
    vm = Path(sys.argv[1])
    paths = Paths.detect()
    # As the daemon of a system install wires it (daemon/app.py): jailer through bangerd-root.
    driver = FirecrackerDriver.from_config(
        load_config(paths.config_file), HelperPrivOps(paths.helper_socket)
    )
    spec = VMSpec(
        vm_id=vm.name, name="fc-sys", kernel=vm / "vmlinux", initrd=vm / "initrd.img",
        cmdline="root=/dev/vda", root_disk=DiskSpec(vm / "root.img"),
        work_disk=DiskSpec(vm / "work.img"), vcpus=1, memory_mib=256,
        network=NetworkSpec(kind="none"), console_log=vm / "console.log",
        runtime_dir=paths.runtime_dir / "vms" / vm.name,
    )
    out = {}
    handle = await driver.launch(spec)
    await driver.wait_ready(handle, 30, lambda: driver.is_alive(handle))
    out["set"] = await ask(handle, "set system-mode")
    saved = await driver.save(handle, spec, vm / "suspend", keep_running=False)
    out["alive_after_suspend"] = driver.is_alive(handle)
    out["jail_after_suspend"] = Path(handle.details["jail_dir"]).exists()
    out["files"] = sorted(p.name for p in saved.dir.iterdir())
    restored = await driver.restore(spec, saved)
    out["state"] = await driver.state(restored)
    out["get"] = await ask(restored, "get")
    cp = await driver.save(restored, spec, vm / "cp", keep_running=True)
    out["cp_files"] = sorted(p.name for p in cp.dir.iterdir())
    out["state_after_cp"] = await driver.state(restored)
    out["stop"] = await driver.stop(restored, timeout=20)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_owner_daemon_suspends_restores_and_checkpoints_a_jailed_vm(
    jail_helper: Helper,  # noqa: F811
    owner_user: User,
    fake_bins: Path,  # noqa: F811
) -> None:
    root = jail_helper.root
    files = vm_files(root, owner_user)
    vm = files["console"].parent
    env = {
        "PATH": os.environ.get("PATH", ""),
        "BANGER_SYSTEM_ROOT": str(root),
        "HOME": "/nonexistent",
    }
    p = subprocess.run(
        [*as_user(owner_user), sys.executable, "-c", _DAEMON_SIDE, str(vm)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd="/",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    assert out["set"] == "ok"
    assert not out["alive_after_suspend"] and not out["jail_after_suspend"]
    assert out["files"] == ["memory", "saved.json", "vmstate"]
    assert (out["state"], out["get"]) == ("Running", "value system-mode")
    assert out["cp_files"] == ["memory", "root.img", "saved.json", "vmstate", "work.img"]
    assert out["state_after_cp"] == "Running" and out["stop"] == "graceful"
    calls = [
        json.loads(x)
        for x in (root / "var/lib/banger/fc-calls.jsonl").read_text().splitlines()
        if x.strip()
    ]
    # Firecracker wrote and read the snapshot inside the jail's run/, the one place it may.
    create = next(c for c in calls if c["path"] == "/snapshot/create")["body"]
    assert (create["snapshot_path"], create["mem_file_path"]) == (
        "run/snapshot.vmstate",
        "run/snapshot.mem",
    )
    load = next(c for c in calls if c["path"] == "/snapshot/load")["body"]
    assert load["snapshot_path"] == "run/snapshot.vmstate"
    assert load["mem_backend"]["backend_path"] == "run/snapshot.mem"
    assert all(c["status"] < 300 for c in calls), [c for c in calls if c["status"] >= 300]

"""`kill -9` of the real daemon during a `vm fork` (after the fork base is saved; during a child's
restore): after a restart the parent runs on (re-adopted, same VMM), no child is left half made
(no record, dir or host key pin), no orphan QEMU, and the base is either gone or kept as remains
the parent's disks read through. Real bangerd, real QEMU TCG guests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from banger.vms import layers
from tests.conftest import BangerEnv, BuiltImage, _stop_daemon
from tests.vms.conftest import list_vms, make_vm_env
from tests.vms.test_crash_recovery import (
    assert_recovered,
    kill_daemon,
    restart,
    show,
    wait_for,
    with_env,
)
from tests.vms.test_vm_e2e import _known_hosts, _ssh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def forkenv(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_vm_env(debian_image.cache_home)
    be.banger("daemon", "start", check=True, timeout=60)
    yield be
    with_env(be, None).banger("daemon", "start", timeout=60)
    for vm in list_vms(be):
        be.banger("vm", "delete", str(vm["name"]), timeout=180)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.mark.parametrize("point", ["fork-base", "restore"])
def test_crash_during_a_fork_leaves_the_parent_running_and_no_half_child(
    forkenv: BangerEnv, point: str
) -> None:
    be = forkenv
    kill_daemon(be)  # no VM runs yet: a daemon that holds the fork at `point` takes over
    restart(be, hold=point)
    parent = f"cp-{point.replace('-', '')}"
    p = be.banger("vm", "create", "--name", parent, timeout=900)
    assert p.returncode == 0, p.stderr
    before = show(be, parent)
    assert before is not None
    cli = subprocess.Popen(
        [sys.executable, "-m", "banger.cli.main", "vm", "fork", parent, "--name", "ck", "-n", "2"],
        env=be.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        flag = be.paths.runtime_dir / f"test-hold-{point}"
        wait_for(flag.exists, f"the fork to reach {point}")
        kill_daemon(be)
    finally:
        cli.wait(timeout=60)
    restart(be)
    vms = assert_recovered(be)
    assert sorted(vms) == [parent]
    assert "ck-1.vm" not in _known_hosts(be) and "ck-2.vm" not in _known_hosts(be)
    after = vms[parent]
    assert after["state"] == "running" and after["pid"] == before["pid"]
    assert _ssh(be, parent, "true").returncode == 0
    for base in be.paths.bases_dir.iterdir():
        assert layers.is_remains(base), sorted(p.name for p in base.iterdir())
        assert not (base / "state.mig").exists()
    assert be.banger("vm", "delete", parent, timeout=180).returncode == 0
    assert list(be.paths.bases_dir.iterdir()) == []

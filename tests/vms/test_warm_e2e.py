"""Warm creates with real QEMU guests (TCG): the first create of an image + sizing boots cold and
saves a template, the next wakes from it as its own machine; a changed image boots cold again;
templates go with `image cache prune` / `image delete`, and a VM made from one outlives it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon
from tests.vms.conftest import list_vms, make_vm_env
from tests.vms.test_vm_e2e import _ssh

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vmenv(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    """tests/vms/conftest.py's vmenv with warm creates on (there they are off)."""
    be = make_vm_env(debian_image.cache_home, warm=True)
    be.banger("daemon", "start", check=True, timeout=30)
    yield be
    be.banger("vm", "prune", "-f", timeout=120)
    for vm in list_vms(be):
        be.banger("vm", "delete", str(vm["name"]), timeout=120)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


def _image(be: BangerEnv, ref: str) -> dict[str, Any]:
    out = json.loads(be.banger("image", "show", ref, "--json", check=True, timeout=60).stdout)
    assert isinstance(out, dict)
    return out


def _create(be: BangerEnv, name: str, *extra: str) -> str:
    """`vm create` as a user runs it; returns its `ready in` line."""
    res = be.banger("vm", "create", "--image", "mine", "--name", name, *extra, timeout=600)
    assert res.returncode == 0, res.stderr
    [line] = [ln for ln in res.stdout.splitlines() if "ready in" in ln]
    return line


def _guest(be: BangerEnv, name: str, cmd: str) -> str:
    res = _ssh(be, name, "sh", "-c", cmd)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_warm_creates_end_to_end(vmenv: BangerEnv, tmp_path: Path) -> None:
    be = vmenv
    be.banger("image", "pull", "debian-bookworm", check=True, timeout=1800)  # from the cache
    base = _image(be, "debian-bookworm")
    rootfs = be.root / "mine.ext4"
    subprocess.run(["cp", "--sparse=always", base["rootfs"], str(rootfs)], check=True)
    # The default kernel boots it (imported at the first create).
    be.banger(
        "image", "register", "--name", "mine", "--rootfs", str(rootfs), check=True, timeout=120
    )

    first = _create(be, "w1")
    assert "(warm)" not in first
    [template] = _image(be, "mine")["templates"]
    assert template["memory_mib"] == 512 and template["uses"] == 0
    assert "TEMPLATE" in be.banger("image", "show", "mine", check=True).stdout
    # Written after the template was taken: a warm VM must not see it.
    _guest(be, "w1", "echo later > /root/after.txt && sync")

    second = _create(be, "w2")
    assert second.endswith("(warm)"), second
    assert _guest(be, "w2", "hostname") == "w2"
    assert _guest(be, "w2", "test -e /root/after.txt && echo yes || echo no") == "no"
    ids = {n: _guest(be, n, "cat /etc/machine-id") for n in ("w1", "w2")}
    assert ids["w1"] != ids["w2"]
    # The key sshd serves: a re-identified guest's from /run/banger-ssh, a cold one's from seed.
    serving = (
        "cat /run/banger-ssh/ssh_host_ed25519_key.pub 2>/dev/null"
        " || cat /.banger/ssh/ssh_host_ed25519_key.pub"
    )
    keys = {n: _guest(be, n, serving).split()[1] for n in ids}
    assert keys["w1"] != keys["w2"]
    pinned = (be.paths.ssh_dir / "known_hosts").read_text()
    assert any(ln.startswith("w2.vm ") and keys["w2"] in ln for ln in pinned.splitlines())
    # Writes in the warm VM stay in it.
    _guest(be, "w2", "echo mine > /root/w2.txt && sync")
    assert _guest(be, "w1", "test -e /root/w2.txt && echo yes || echo no") == "no"
    assert _image(be, "mine")["templates"][0]["uses"] == 1

    # `vm run` creates warm too, then ships the checkout in and runs the command there.
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hello.txt").write_text("hi from the checkout\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    for cmd in (["init", "-q"], ["add", "hello.txt"], ["commit", "-q", "-m", "one"]):
        subprocess.run([*git, *cmd], check=True)
    ran = be.banger(
        "vm", "run", "--image", "mine", "--name", "wr", "--rm", str(repo), "--",
        "cat", "hello.txt", timeout=600,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "wr ready in" in ran.stderr and "(warm)" in ran.stderr, ran.stderr
    assert "hi from the checkout" in ran.stdout

    # `--cold` boots cold.
    assert "(warm)" not in _create(be, "w3", "--cold")

    # The image's file changed (rewritten in place): the next create is cold, the old template
    # is gone and a new one is made.
    os.utime(rootfs, ns=(rootfs.stat().st_atime_ns, rootfs.stat().st_mtime_ns + 10**9))
    assert "(warm)" not in _create(be, "w4")
    [fresh] = _image(be, "mine")["templates"]
    assert fresh["key"] != template["key"]

    # `image cache prune` removes templates; the warm VM outlives its template, restarts too.
    pruned = be.banger("image", "cache", "prune", check=True, timeout=120).stdout
    assert "removed 1 warm-create template" in pruned
    assert _image(be, "mine")["templates"] == []
    assert _guest(be, "w2", "cat /root/w2.txt") == "mine"
    be.banger("vm", "restart", "w2", check=True, timeout=600)
    assert _guest(be, "w2", "cat /root/w2.txt; hostname") == "mine\nw2"

    # `image delete` (once no VM uses the image) removes its templates and their files.
    for name in ("w1", "w2", "w3", "w4"):
        be.banger("vm", "delete", name, check=True, timeout=120)
    _create(be, "w5")
    assert len(_image(be, "mine")["templates"]) == 1
    be.banger("vm", "delete", "w5", check=True, timeout=120)
    be.banger("image", "delete", "mine", check=True, timeout=120)
    templates = be.paths.state_dir / "templates"
    assert not templates.exists() or list(templates.iterdir()) == []
    assert list((be.paths.state_dir / "vms").iterdir()) == []


def test_a_crash_while_making_a_template_keeps_the_vm_and_no_template(vmenv: BangerEnv) -> None:
    from tests.vms.test_crash_recovery import (
        assert_recovered,
        begin_create,
        kill_daemon,
        restart,
        restart_with_hold,
        wait_for,
    )

    be = vmenv
    restart_with_hold(be, "template")
    begin_create(be, "t1")
    wait_for((be.paths.runtime_dir / "test-hold-template").exists, "the template hold point")
    templates = be.paths.state_dir / "templates"
    assert [p.name for p in templates.iterdir()]  # the checkpoint's files are there
    kill_daemon(be)
    restart(be)
    vms = assert_recovered(be)
    assert vms["t1"]["state"] == "running"  # its create had finished: re-adopted intact
    assert _image(be, "debian-bookworm")["templates"] == []
    # Only the layers t1's own disks read through are left, marked as remains.
    for d in templates.iterdir():
        assert (d / "REMAINS").is_file(), list(d.iterdir())
    assert _guest(be, "t1", "hostname") == "t1"
    be.banger("vm", "delete", "t1", check=True, timeout=120)
    assert list(templates.iterdir()) == []


def test_a_crash_during_a_warm_create_leaves_a_whole_vm_or_none(vmenv: BangerEnv) -> None:
    from tests.vms.test_crash_recovery import (
        assert_caught,
        assert_recovered,
        begin_create,
        kill_daemon,
        restart,
        restart_with_hold,
        wait_for,
    )

    be = vmenv
    # The template's first VM stays (a deleted one would leave remains its template reads).
    be.banger("vm", "create", "--name", "t0", check=True, timeout=600)
    restart_with_hold(be, "restore")
    begin_create(be, "t2")
    wait_for((be.paths.runtime_dir / "test-hold-restore").exists, "the restore hold point")
    kill_daemon(be)
    restart(be)
    assert_recovered(be)  # the restored VMM no record owned is stopped
    assert_caught(be, "t2", "boot")  # kept as error with the reason, as any interrupted create
    be.banger("vm", "delete", "t2", check=True, timeout=120)
    # The template is intact: the next create is warm.
    res = be.banger("vm", "create", "--name", "t3", timeout=600)
    assert res.returncode == 0 and "(warm)" in res.stdout, res.stderr
    assert_recovered(be)
    for name in ("t3", "t0"):
        be.banger("vm", "delete", name, check=True, timeout=120)

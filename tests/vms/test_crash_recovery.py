"""`kill -9` of the real daemon at each create stage, during an image pull, a delete and a
workspace prepare; then a restart must leave no VMM, TAP, mount, staging entry, tool process or
VM dir without a record, the caught VM `error` with the reason (or gone when it never had a
record), and the same name must work again. Real bangerd, real QEMU TCG guests.

Stages are observed through `vm.create.status` where they last long enough (resolve while the
image is being built, wait_guest); the short ones (disks, boot, wait_ssh) are held at a named
point by the test-only `BANGER_TEST_HOLD_AT` hook (docs/vms.md), which touches
`<runtime>/test-hold-<point>` when it gets there.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.network.tap import tap_name
from banger.rpc.errors import NotFound
from banger.vms import recovery
from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env
from tests.netns import add_netns
from tests.vms.conftest import list_vms, make_vm_env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

DEADLINE = 600.0


@pytest.fixture(scope="module")
def crashenv(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    # A fresh state dir whose cache holds debian-bookworm: the first create still builds the
    # image from the cache (apply + mkfs), which is the pull the first case kills.
    be = make_vm_env(debian_image.cache_home)
    be.banger("daemon", "start", check=True, timeout=60)
    yield be
    with_env(be, None).banger("daemon", "start", timeout=60)
    for vm in list_vms(be):
        be.banger("vm", "delete", str(vm["name"]), timeout=180)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


def with_env(be: BangerEnv, hold: str | None) -> BangerEnv:
    env = dict(be.env)
    env.pop(HOLD, None)
    if hold is not None:
        env[HOLD] = hold
    return BangerEnv(root=be.root, env=env)


HOLD = "BANGER_TEST_HOLD_AT"


def wait_for(cond: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    return wait_until(cond, timeout, what)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


def daemon_pid(be: BangerEnv) -> int:
    return int(be.paths.pid_file.read_text())


def kill_daemon(be: BangerEnv) -> None:
    pid = daemon_pid(be)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not alive(pid), "the daemon to die", 30)


def restart(be: BangerEnv, hold: str | None = None) -> None:
    for flag in be.paths.runtime_dir.glob("test-hold-*"):
        flag.unlink()
    with_env(be, hold).banger("daemon", "start", check=True, timeout=120)


def begin_create(be: BangerEnv, name: str) -> str:
    with be.client() as c:
        return str(c.call("vm.create.begin", {"name": name})["id"])


def status(be: BangerEnv, op: str) -> dict[str, Any]:
    with be.client() as c:
        st = c.call("vm.create.status", {"id": op})
    assert isinstance(st, dict)
    assert not st["done"], f"the create ended before the crash: {st}"
    return st


def at_stage(be: BangerEnv, op: str, stage: str) -> bool:
    return status(be, op)["stage"] == stage


def show(be: BangerEnv, name: str) -> dict[str, Any] | None:
    p = be.banger("vm", "show", name, "--json", timeout=60)
    if p.returncode != 0:
        assert "not found" in p.stderr, p.stderr
        return None
    out = json.loads(p.stdout)
    assert isinstance(out, dict)
    return out


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not alive(int(entry)):
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in cmd:
            out.append((int(entry), cmd.decode(errors="replace")))
    return out


def assert_recovered(be: BangerEnv) -> dict[str, dict[str, Any]]:
    """Nothing is left that no record owns. Returns the records by name."""
    vms = {str(v["name"]): v for v in list_vms(be)}
    running = {str(v["id"]): v["pid"] for v in vms.values() if v["state"] == "running"}
    procs = recovery.vmm_processes(be.paths)
    assert {(p.vm_id, p.pid) for p in procs} <= set(running.items()), procs
    assert list(be.paths.staging_dir.iterdir()) == []
    assert {p.name for p in be.paths.vms_dir.iterdir()} <= {str(v["id"]) for v in vms.values()}
    rt = be.paths.runtime_dir / "vms"
    if rt.exists():
        assert {p.name for p in rt.iterdir()} <= set(running)
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(be.root) not in mounts
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    for v in vms.values():
        if v["state"] != "running":
            assert f" {tap_name(str(v['id']))}:" not in links
    # No tool child of the dead daemon (image builder, mkfs, qemu-img, ssh master...) survived:
    # every process naming the state dir is a running VM's VMM.
    leftovers = [
        (pid, cmd)
        for pid, cmd in processes_mentioning(str(be.paths.state_dir))
        if pid not in running.values()
    ]
    assert leftovers == []
    assert recovery.ssh_masters(be.paths.ssh_dir / "known_hosts") == []
    return vms


def assert_caught(be: BangerEnv, name: str, stage: str) -> None:
    vm = show(be, name)
    assert vm is not None
    assert vm["state"] == "error" and vm["pid"] is None, vm
    assert vm["error"].startswith(
        f"interrupted: bangerd stopped while creating this VM (stage {stage})"
    )
    p = be.banger("vm", "show", name, timeout=60)
    assert "interrupted: bangerd stopped" in p.stdout  # the human view says it too


def recreate(be: BangerEnv, name: str, *, boot: bool) -> None:
    """The name is free again once the caught VM is deleted; a create succeeds."""
    if show(be, name) is not None:
        p = be.banger("vm", "delete", name, timeout=180)
        assert p.returncode == 0, p.stderr
    args = ["vm", "create", "--name", name] + ([] if boot else ["--no-start"])
    p = be.banger(*args, timeout=900)
    assert p.returncode == 0, p.stderr
    vm = show(be, name)
    assert vm is not None and vm["state"] == ("running" if boot else "created"), vm
    p = be.banger("vm", "delete", name, timeout=180)
    assert p.returncode == 0, p.stderr
    assert_recovered(be)


# --- create stages, in order: the first also kills the image build (the pull) ------------------


def test_crash_while_resolving(crashenv: BangerEnv) -> None:
    be = crashenv
    op = begin_create(be, "cr-resolve")
    wait_for(lambda: at_stage(be, op, "resolve"), "stage resolve")
    kill_daemon(be)
    restart(be)
    vms = assert_recovered(be)
    assert "cr-resolve" not in vms  # it never had a record
    recreate(be, "cr-resolve", boot=False)


def test_crash_during_image_pull_kills_the_build(crashenv: BangerEnv) -> None:
    be = crashenv
    # Another size than the cached rootfs: the pull applies the layers and runs mkfs again.
    cli = subprocess.Popen(
        [*banger_cli(), "image", "pull", "debian-bookworm", "--name", "cr-pull", "--size", "3G"],
        env=be.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        builders = wait_for(lambda: build_processes(be), "the image build")
        kill_daemon(be)
    finally:
        cli.wait(timeout=60)
    # The builder and its children (guarded tools) die with the daemon, before any restart.
    wait_for(lambda: not build_processes(be), "the build to die", 30)
    assert not [pid for pid, _ in builders if alive(pid)]
    restart(be)
    assert_recovered(be)
    with be.client() as c, pytest.raises(NotFound):
        c.call("image.show", {"ref": "cr-pull"})
    known = {str(i["id"]) for i in image_list(be)}
    assert {p.name for p in be.paths.images_dir.iterdir()} <= known
    p = be.banger("image", "pull", "debian-bookworm", "--name", "cr-pull", "--size", "3G",
                  timeout=1200)  # fmt: skip
    assert p.returncode == 0, p.stderr
    p = be.banger("image", "delete", "cr-pull", timeout=120)
    assert p.returncode == 0, p.stderr


def build_processes(be: BangerEnv) -> list[tuple[int, str]]:
    return [
        (pid, cmd)
        for pid, cmd in processes_mentioning(str(be.paths.staging_dir))
        if "banger.images.build" in cmd or "mkfs" in cmd
    ]


def image_list(be: BangerEnv) -> list[dict[str, Any]]:
    out = json.loads(be.banger("image", "list", "--json", check=True, timeout=60).stdout)
    assert isinstance(out, list)
    return out


def test_crash_while_making_disks(crashenv: BangerEnv) -> None:
    be = crashenv
    restart_with_hold(be, "disks")
    op = begin_create(be, "cr-disks")
    hold = be.paths.runtime_dir / "test-hold-disks"
    wait_for(hold.exists, "the disks hold point")
    assert at_stage(be, op, "disks")
    staged = wait_for(lambda: list(be.paths.staging_dir.glob("vm-*")), "staging")
    assert (staged[0] / "work.ext4").exists()
    kill_daemon(be)
    restart(be)
    vms = assert_recovered(be)
    assert "cr-disks" not in vms
    recreate(be, "cr-disks", boot=False)


def test_crash_after_the_vmm_started_but_before_its_handle_was_recorded(
    crashenv: BangerEnv,
) -> None:
    be = crashenv
    restart_with_hold(be, "boot")
    op = begin_create(be, "cr-boot")
    wait_for((be.paths.runtime_dir / "test-hold-boot").exists, "the boot hold point")
    assert at_stage(be, op, "boot")
    rec = show(be, "cr-boot")
    assert rec is not None and rec["state"] == "created" and rec["pid"] is None
    qemu = [p for p in recovery.vmm_processes(be.paths) if p.vm_id == rec["id"]]
    assert len(qemu) == 1
    kill_daemon(be)
    # A VMM outlives the daemon by design (a restart re-adopts running VMs)...
    assert alive(qemu[0].pid)
    restart(be)
    # ...but this one belongs to no finished create: the restart stops it.
    assert not alive(qemu[0].pid)
    assert_recovered(be)
    assert_caught(be, "cr-boot", "boot")
    recreate(be, "cr-boot", boot=True)


def test_crash_while_waiting_for_the_guest(crashenv: BangerEnv) -> None:
    be = crashenv
    op = begin_create(be, "cr-guest")
    wait_for(lambda: at_stage(be, op, "wait_guest"), "stage wait_guest")
    vm = show(be, "cr-guest")
    assert vm is not None and vm["state"] == "running" and alive(vm["pid"])
    kill_daemon(be)
    restart(be)
    assert not alive(vm["pid"])
    assert_recovered(be)
    assert_caught(be, "cr-guest", "wait_guest")
    recreate(be, "cr-guest", boot=False)


def test_crash_while_waiting_for_ssh(crashenv: BangerEnv) -> None:
    be = crashenv
    restart_with_hold(be, "wait_ssh")
    op = begin_create(be, "cr-ssh")
    wait_for((be.paths.runtime_dir / "test-hold-wait_ssh").exists, "the wait_ssh hold point")
    assert at_stage(be, op, "wait_ssh")
    vm = show(be, "cr-ssh")
    assert vm is not None and alive(vm["pid"])
    kill_daemon(be)
    restart(be)
    assert not alive(vm["pid"])
    assert_recovered(be)
    assert_caught(be, "cr-ssh", "wait_ssh")
    recreate(be, "cr-ssh", boot=False)


# --- a workspace prepare and a delete of a running VM ------------------------------------------


def test_crash_during_workspace_prepare_then_during_delete(
    crashenv: BangerEnv, tmp_path: Path
) -> None:
    be = crashenv
    p = be.banger("vm", "create", "--name", "cr-ws", timeout=900)
    assert p.returncode == 0, p.stderr
    vm = show(be, "cr-ws")
    assert vm is not None
    repo = make_repo(tmp_path / "repo")
    known_hosts = be.paths.ssh_dir / "known_hosts"
    cli = subprocess.Popen(
        [*banger_cli(), "vm", "workspace", "prepare", "cr-ws", str(repo), "--json"],
        env=be.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: recovery.ssh_masters(known_hosts), "the prepare's ssh master")
        kill_daemon(be)
    finally:
        cli.wait(timeout=60)
    restart(be)
    vms = assert_recovered(be)
    # A running VM is re-adopted, not touched; the prepare can simply run again.
    assert vms["cr-ws"]["state"] == "running" and vms["cr-ws"]["pid"] == vm["pid"]
    p = be.banger("vm", "workspace", "prepare", "cr-ws", str(repo), "--json", timeout=600)
    assert p.returncode == 0, p.stderr
    r = be.banger("vm", "ssh", "cr-ws", "--", "cat /root/repo/file-0.txt", timeout=120)
    assert r.stdout.startswith("content 0"), r.stderr

    # Delete: killed after it started (the intent is on disk), finished by the restart.
    cli = subprocess.Popen(
        [*banger_cli(), "vm", "delete", "cr-ws"],
        env=be.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for((Path(vm["dir"]) / recovery.DELETING).exists, "the delete to start")
        kill_daemon(be)
    finally:
        cli.wait(timeout=60)
    restart(be)
    vms = assert_recovered(be)
    assert "cr-ws" not in vms and not Path(vm["dir"]).exists()
    assert not alive(vm["pid"])
    assert "cr-ws.vm" not in known_hosts.read_text()
    recreate(be, "cr-ws", boot=False)


# --- helpers -------------------------------------------------------------------------------------


def restart_with_hold(be: BangerEnv, point: str) -> None:
    be.banger("daemon", "stop", check=True, timeout=120)
    restart(be, point)


def banger_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "banger.cli.main"]


def make_repo(root: Path) -> Path:
    """A checkout big enough that shipping it takes a moment under TCG."""
    root.mkdir(parents=True)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
    for i in range(400):
        (root / f"file-{i}.txt").write_text(f"content {i}\n" + os.urandom(4096).hex())
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], check=True)
    return root


# --- bridged networking: the TAP of a VM caught mid-create is freed ------------------------------


def test_crash_at_boot_in_bridged_mode_frees_the_tap(debian_image: BuiltImage) -> None:
    """The daemon runs in a network namespace this test creates (its bridge, TAPs and nftables
    never touch the host), as tests/network does."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.fail(
            "bridged networking needs root and /dev/net/tun: "
            "run the suite as root after scripts/setup-host.sh"
        )
    ns = f"bgt-{secrets.token_hex(4)}"
    add_netns(ns)
    be = make_env("bgcr-br-", cache_home=debian_image.cache_home, network="bridge")
    # Cold creates only: the cases hold creates at cold-boot stages (warm: tests/vms/test_warm*).
    be.write_config('warm_creates = false\n[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n')

    def in_ns(env: BangerEnv, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *banger_cli(), *args],
            env=env.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )

    def taps() -> str:
        return subprocess.run(
            ["ip", "-n", ns, "-o", "link"], capture_output=True, text=True, check=True
        ).stdout

    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True, timeout=20)
        # The daemon must start with the hold set (a CLI command would auto-start one without).
        p = in_ns(with_env(be, "boot"), "daemon", "start")
        assert p.returncode == 0, p.stderr
        p = in_ns(be, "image", "pull", "debian-bookworm")
        assert p.returncode == 0, p.stderr
        begin_create(be, "cr-br")
        wait_for((be.paths.runtime_dir / "test-hold-boot").exists, "the boot hold point")
        rec = show(be, "cr-br")
        assert rec is not None
        tap = tap_name(str(rec["id"]))
        assert f" {tap}:" in taps()
        qemu = [p for p in recovery.vmm_processes(be.paths) if p.vm_id == rec["id"]]
        assert len(qemu) == 1
        kill_daemon(be)
        assert alive(qemu[0].pid) and f" {tap}:" in taps()  # both outlive the daemon...
        for flag in be.paths.runtime_dir.glob("test-hold-*"):
            flag.unlink()
        p = in_ns(be, "daemon", "start")
        assert p.returncode == 0, p.stderr
        # ...until the restart: the VMM is stopped and its TAP deleted.
        assert not alive(qemu[0].pid)
        assert f" {tap}:" not in taps()
        assert_recovered(be)
        assert_caught(be, "cr-br", "boot")
        p = be.banger("vm", "delete", "cr-br", timeout=180)
        assert p.returncode == 0, p.stderr
    finally:
        _stop_daemon(be)
        for vmm in recovery.vmm_processes(be.paths):  # only when the test failed midway
            os.kill(vmm.pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
        shutil.rmtree(be.root, ignore_errors=True)

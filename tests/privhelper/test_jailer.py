"""`priv.jailer_launch`: bangerd-root starts the Firecracker jailer for the owner daemon.

The helper is the real `bangerd-root` subprocess (tests/privhelper/conftest.py); the jailer and
Firecracker are the suite's contract doubles (tests/vmm/firecracker/fake_jailer.py and
fake_firecracker.py), the jailer told to drop to --uid/--gid as the real one does. The daemon side
runs as the throwaway owner user, through `FirecrackerDriver.from_config` as bangerd would.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.privhelper.conftest import Helper, User, as_user, start_helper, stop_helper
from tests.waiting import wait_until

FC_TESTS = Path(__file__).resolve().parent.parent / "vmm" / "firecracker"
VM_ID = "0123456789ab"


@pytest.fixture(scope="module")
def fake_bins() -> Iterator[Path]:
    # Traversable by the owner: the jailed (dropped) fake Firecracker is executed from here.
    d = Path(tempfile.mkdtemp(prefix="bgfcb-", dir="/tmp"))
    os.chmod(d, 0o755)
    # Python scripts, not sh wrappers: the interpreter (the test venv's, possibly below a
    # root-only directory) is opened while the exec still has the jailer's root credentials.
    for name, script in (("firecracker", "fake_firecracker.py"), ("jailer", "fake_jailer.py")):
        exe = d / name
        path = FC_TESTS / script
        exe.write_text(
            f"#!{sys.executable}\nimport runpy, sys\nsys.argv[0] = {str(path)!r}\n"
            f"runpy.run_path({str(path)!r}, run_name='__main__')\n"
        )
        exe.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_config(root: Path, fake_bins: Path, base: str | None = None) -> None:
    (root / "etc/banger/config.toml").write_text(
        f'firecracker_bin = "{fake_bins / "firecracker"}"\n'
        f'jailer_bin = "{fake_bins / "jailer"}"\n'
        "jailer_enabled = true\n"
        f'jailer_chroot_base = "{base or root / "jail"}"\n'
    )


def owned(path: Path, owner: User, data: bytes = b"", mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chown(path, owner.uid, owner.gid)
    os.chmod(path, mode)
    return path


def vm_files(root: Path, owner: User) -> dict[str, Path]:
    """A VM's files in the owner's state dir, as the VM service lays them out."""
    d = root / "var/lib/banger/vms" / VM_ID
    files = {
        "vmlinux": owned(d / "vmlinux", owner, b"\x7fELF" + b"\0" * 60),
        "initrd": owned(d / "initrd.img", owner, b"initrd"),
        "rootfs.img": owned(d / "root.img", owner, b"\0" * 4096),
        "work.img": owned(d / "work.img", owner, b"\0" * 4096),
        "firecracker.log": owned(d / "firecracker.log", owner),
        "firecracker.metrics": owned(d / "firecracker.metrics", owner),
        "console": owned(d / "console.log", owner),
    }
    for p in (d, d.parent):
        os.chown(p, owner.uid, owner.gid)
    return files


@pytest.fixture
def jail_helper(
    system_root: Path, netns: str, owner_user: User, fake_bins: Path
) -> Iterator[Helper]:
    write_config(system_root, fake_bins)
    calls = system_root / "var/lib/banger/fc-calls.jsonl"
    owned(calls, owner_user)
    h = start_helper(
        system_root,
        netns,
        owner_user,
        {"BANGER_FAKE_JAILER_DROP": "1", "BANGER_FC_DOUBLE_LOG": str(calls)},
    )
    yield h
    stop_helper(h)


def valid_params(root: Path, fake_bins: Path, owner: User) -> dict[str, Any]:
    files = vm_files(root, owner)
    return {
        "jailer": str(fake_bins / "jailer"),
        "exec_file": str(fake_bins / "firecracker"),
        "id": VM_ID,
        "uid": owner.uid,
        "gid": owner.gid,
        "chroot_base": str(root / "jail"),
        "cgroup_version": 2,
        "cgroups": ["cpu.max=50000 100000", "memory.max=1G"],
        "parent_cgroup": None,
        "netns": None,
        "api_sock": "run/fc.sock",
        "console_log": str(files["console"]),
        "files": {k: str(v) for k, v in files.items() if k != "console"},
    }


def _refused(resp: dict[str, Any]) -> str:
    assert resp.get("ok") is False, resp
    assert resp["error"]["code"] in ("bad_request", "not_found"), resp
    return str(resp["error"]["message"])


# (id, change to the valid params, fragment of the refusal)
HOSTILE: list[tuple[str, dict[str, Any], str]] = [
    ("foreign-exec-file", {"exec_file": "/bin/sh"}, "not the configured binary"),
    ("foreign-jailer", {"jailer": "/usr/bin/env"}, "not the configured binary"),
    ("uid-root", {"uid": 0}, "only drop to the install owner"),
    ("gid-root", {"gid": 0}, "only drop to the install owner"),
    ("uid-string", {"uid": "0"}, "only drop to the install owner"),
    ("chroot-base-elsewhere", {"chroot_base": "/tmp"}, "not the configured jailer_chroot_base"),
    ("id-traversal", {"id": "../../etc"}, "not a banger VM id"),
    ("id-foreign", {"id": "firecracker-x"}, "not a banger VM id"),
    ("cgroup-procs", {"cgroups": ["cgroup.procs=1"]}, "not a cgroup setting"),
    ("cgroup-traversal", {"cgroups": ["../../etc/x=1"]}, "not a cgroup setting"),
    ("cgroup-dotdot-value", {"cgroups": ["memory.max=1G/../x"]}, "not a cgroup setting"),
    ("cgroup-shell", {"cgroups": ["cpu.max=$(reboot)"]}, "not a cgroup setting"),
    ("cgroup-not-list", {"cgroups": "cpu.max=1"}, "must be a list"),
    ("parent-cgroup-traversal", {"parent_cgroup": "../x"}, "not a plain cgroup path"),
    ("parent-cgroup-absolute", {"parent_cgroup": "/sys"}, "not a plain cgroup path"),
    ("netns-traversal", {"netns": "/var/run/netns/../../etc/shadow"}, "not a named network"),
    ("netns-dotdot", {"netns": "/var/run/netns/.."}, "not a named network"),
    ("netns-elsewhere", {"netns": "/proc/1/ns/net"}, "not a named network"),
    ("api-sock-absolute", {"api_sock": "/tmp/evil.sock"}, "run/<name>.sock"),
    ("api-sock-traversal", {"api_sock": "run/../fc.sock"}, "run/<name>.sock"),
    ("cgroup-version", {"cgroup_version": 3}, "must be 1 or 2"),
    ("unknown-arg", {"argv": ["sh"]}, "unknown argument"),
]


@pytest.mark.parametrize(
    ("change", "fragment"), [h[1:] for h in HOSTILE], ids=[h[0] for h in HOSTILE]
)
def test_hostile_jailer_calls_are_refused(
    jail_helper: Helper,
    owner_user: User,
    fake_bins: Path,
    change: dict[str, Any],
    fragment: str,
) -> None:
    params = {**valid_params(jail_helper.root, fake_bins, owner_user), **change}
    msg = _refused(jail_helper.call_as(owner_user, "priv.jailer_launch", params))
    assert fragment in msg
    # Nothing was built: refusals come before the jail.
    assert not (jail_helper.root / "jail/firecracker" / VM_ID).exists()


def test_hostile_files_are_refused(
    jail_helper: Helper, owner_user: User, stranger_user: User, fake_bins: Path
) -> None:
    root = jail_helper.root
    params = valid_params(root, fake_bins, owner_user)
    state = root / "var/lib/banger"
    vm = state / "vms" / VM_ID
    (vm / "shadow-link").symlink_to("/etc/shadow")
    os.lchown(vm / "shadow-link", owner_user.uid, owner_user.gid)
    root_file = vm / "root-owned.img"
    root_file.write_bytes(b"x")
    stranger_file = owned(vm / "stranger.img", stranger_user)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"files": {**params["files"], "passwd": str(vm / "root.img")}}, "not a file banger"),
        ({"files": {**params["files"], "rootfs.img": "/etc/shadow"}}, "outside banger's"),
        (
            {"files": {**params["files"], "rootfs.img": f"{state}/vms/../vms/{VM_ID}/root.img"}},
            "'..' component",
        ),
        ({"files": {**params["files"], "rootfs.img": str(vm / "shadow-link")}}, "symlink"),
        ({"files": {**params["files"], "rootfs.img": str(root_file)}}, "owned by the banger"),
        ({"files": {**params["files"], "work.img": str(stranger_file)}}, "owned by the banger"),
        ({"files": {"rootfs.img": str(vm / "root.img")}}, "vmlinux, rootfs.img"),
        ({"console_log": "/etc/motd"}, "outside banger's"),
        ({"console_log": str(vm / "shadow-link")}, "symlink"),
    ]
    for change, fragment in cases:
        msg = _refused(jail_helper.call_as(owner_user, "priv.jailer_launch", {**params, **change}))
        assert fragment in msg, (change, msg)
    assert not (root / "jail/firecracker" / VM_ID).exists()


def test_unsafe_chroot_bases_are_refused(
    jail_helper: Helper, owner_user: User, fake_bins: Path
) -> None:
    """The configured base itself must be root's alone: the jailer follows it by name as root."""
    root = jail_helper.root
    (root / "realjail").mkdir(mode=0o711)
    (root / "jlink").symlink_to(root / "realjail")
    owner_dir = root / "ownjail"
    owner_dir.mkdir()
    os.chown(owner_dir, owner_user.uid, owner_user.gid)
    world = root / "worldjail"
    world.mkdir()
    os.chmod(world, 0o777)
    cases = [
        (root / "var/lib/banger/jail", "can rename things in"),  # inside the owner's state dir
        (root / "var/lib", "contains"),  # above it
        (root / "jlink", "symlink"),
        (root / "jlink/sub", "symlink"),
        (owner_dir, "not a root-owned directory"),
        (owner_dir / "sub", "not a root-owned directory"),
        (world, "not a root-owned directory"),
    ]
    params = valid_params(root, fake_bins, owner_user)
    for base, fragment in cases:
        write_config(root, fake_bins, str(base))
        msg = _refused(
            jail_helper.call_as(
                owner_user, "priv.jailer_launch", {**params, "chroot_base": str(base)}
            )
        )
        assert fragment in msg, (base, msg)
    assert not (owner_dir / "sub").exists() and not (root / "realjail/firecracker").exists()


# The daemon side, run as the owner: FirecrackerDriver.from_config in a system install.
_DAEMON_SIDE = r"""
import asyncio, json, os, sys, time
from pathlib import Path
from banger.config import load_config
from banger.daemon.logs import current_op_id
from banger.paths import Paths
from banger.vmm.base import DiskSpec, NetworkSpec, VMSpec
from banger.privhelper.client import HelperPrivOps
from banger.vmm.firecracker import FirecrackerDriver

async def main() -> None:
    vm = Path(sys.argv[1])
    current_op_id.set(sys.argv[2])
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
    out = {"system": paths.is_system, "uid": os.getuid(), "helper": driver.helper is not None}
    handle = await driver.launch(spec)
    out["pid"] = handle.pid
    out["api_socket"] = handle.api_socket
    st = Path(f"/proc/{handle.pid}/status").read_text()
    out["vmm_uid"] = int(next(l for l in st.splitlines() if l.startswith("Uid:")).split()[1])
    out["api_socket_uid"] = os.stat(handle.api_socket).st_uid
    cfg = await driver.inspect(handle)
    out["kernel"] = cfg["boot-source"]["kernel_image_path"]
    out["vsock"] = cfg["vsock"]["uds_path"]
    deadline = time.monotonic() + 20
    while b"fake-guest: up" not in (vm / "console.log").read_bytes():
        assert time.monotonic() < deadline, (vm / "console.log").read_text()
        await asyncio.sleep(0.05)
    out["stop"] = await driver.stop(handle, timeout=20)
    out["alive_after"] = driver.is_alive(handle)
    print(json.dumps(out))

asyncio.run(main())
"""


def test_owner_daemon_boots_the_double_through_the_helper(
    jail_helper: Helper, owner_user: User, fake_bins: Path
) -> None:
    root = jail_helper.root
    files = vm_files(root, owner_user)
    vm = files["console"].parent
    op_id = "op-" + secrets.token_hex(6)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "BANGER_SYSTEM_ROOT": str(root),
        "HOME": "/nonexistent",
    }
    p = subprocess.run(
        [*as_user(owner_user), sys.executable, "-c", _DAEMON_SIDE, str(vm), op_id],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd="/",
    )
    assert p.returncode == 0, p.stderr[-3000:]
    out = json.loads(p.stdout)
    jail = root / "jail/firecracker" / VM_ID
    assert out["system"] and out["helper"] and out["uid"] == owner_user.uid
    # Firecracker runs as the owner (the jailer dropped), its API socket in the jail's run/.
    assert out["vmm_uid"] == owner_user.uid
    assert out["api_socket"] == str(jail / "root/run/fc.sock")
    assert out["api_socket_uid"] == owner_user.uid
    # API paths are relative to the jail.
    assert (out["kernel"], out["vsock"]) == ("vmlinux", "run/v.sock")
    assert out["stop"] == "graceful" and not out["alive_after"]
    assert b"fake-guest: up" in files["console"].read_bytes()
    # The helper reaps the process and removes the jail; the VM's own disks stay.
    wait_until(lambda: not jail.exists(), 10, "the helper removing the jail")
    assert files["rootfs.img"].exists() and files["rootfs.img"].stat().st_nlink == 1
    calls = [
        json.loads(x)
        for x in (root / "var/lib/banger/fc-calls.jsonl").read_text().splitlines()
        if x.strip()
    ]
    # The double received the whole configuration with jail-relative paths, then the start.
    by_path = {c["path"]: c for c in calls}
    assert by_path["/boot-source"]["body"]["initrd_path"] == "initrd"
    assert by_path["/drives/rootfs"]["body"]["path_on_host"] == "rootfs.img"
    assert by_path["/logger"]["body"]["log_path"] == "firecracker.log"
    assert any(c["body"] == {"action_type": "InstanceStart"} for c in calls)
    logged = [x for x in jail_helper.log_lines() if x.get("method") == "priv.jailer_launch"]
    assert logged and logged[-1]["msg"] == "helper rpc completed"
    assert logged[-1]["op_id"] == op_id and logged[-1]["caller_uid"] == owner_user.uid
    started = [x for x in jail_helper.log_lines() if x.get("msg") == "jailer started"]
    exited = [x for x in jail_helper.log_lines() if x.get("msg") == "jailed firecracker exited"]
    assert started[-1]["op_id"] == op_id and started[-1]["pid"] == out["pid"]
    assert exited[-1]["op_id"] == op_id and exited[-1]["pid"] == out["pid"]


def test_jail_is_root_owned_and_files_are_links(
    jail_helper: Helper, owner_user: User, fake_bins: Path
) -> None:
    """What the helper builds, seen while the VMM runs (launched by a direct owner call)."""
    root = jail_helper.root
    params = valid_params(root, fake_bins, owner_user)
    # A stale jail of this VM (a VM that exited while the helper was down), with an owner-made
    # symlink in its run/: replaced, and the symlink's target untouched.
    victim = root / "victim"
    victim.mkdir()
    (victim / "keep").write_text("x")
    stale_run = root / "jail/firecracker" / VM_ID / "root/run"
    stale_run.mkdir(parents=True)
    for d in stale_run.parents[:4]:
        d.chmod(0o711)
    (stale_run / "stale.sock").write_text("")
    (stale_run / "evil").symlink_to(victim)
    resp = jail_helper.call_as(owner_user, "priv.jailer_launch", params)
    assert resp["ok"] is True, resp
    pid = resp["result"]["pid"]
    jail = Path(resp["result"]["jail_dir"])
    try:
        # Firecracker's API socket: the jailer has finished with the jail and exec'd.
        wait_until((jail / "root/run/fc.sock").exists, 20, "the jailed double binding fc.sock")
        assert not (stale_run / "stale.sock").exists() and not (stale_run / "evil").exists()
        assert (victim / "keep").read_text() == "x"
        assert jail == root / "jail/firecracker" / VM_ID
        for d in (root / "jail", root / "jail/firecracker", jail):
            st = os.lstat(d)
            assert (st.st_uid, st.st_mode & 0o777) == (0, 0o711), d
        # The jailer hands its chroot's /, /run (and /dev) to --uid, 0700 (env.rs
        # setup_jailed_folder); the helper built them root's.
        for d in (jail / "root", jail / "root/run", jail / "root/dev"):
            st = os.lstat(d)
            assert (st.st_uid, st.st_mode & 0o777) == (owner_user.uid, 0o700), d
        for name, src in params["files"].items():
            assert (jail / "root" / name).stat().st_ino == Path(src).stat().st_ino, name
        # The jailer copied Firecracker in (a copy, not a link) and ran that copy.
        jailed_fc = jail / "root/firecracker"
        assert jailed_fc.read_bytes() == (fake_bins / "firecracker").read_bytes()
        assert jailed_fc.stat().st_ino != (fake_bins / "firecracker").stat().st_ino
        argv_ok = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--api-sock" in argv_ok and b"run/fc.sock" in argv_ok
        # One --id, the jailer's, followed by the timing flags it adds.
        assert argv_ok.count(b"--id") == 1 and b"--start-time-us" in argv_ok
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], check=False, timeout=10)
    wait_until(lambda: not jail.exists(), 10, "the helper removing the jail")

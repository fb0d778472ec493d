"""QEMU suspend, checkpoints, restore and forks (vmm/qemu_snapshot.py through QemuDriver).

Real QEMU TCG guests (marker slow) running a test init that evaluates shell lines sent on the
control port (`sh CMD` -> `OUT <output>`), so a test can read the guest's tmpfs, its disks and
the pid of a long-lived process; and fast tests of the file layout, the record and the errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from banger.guest.initramfs import build_initramfs
from banger.vmm import qemu_snapshot as snap
from banger.vmm.base import (
    Capability,
    DiskSpec,
    DriverError,
    NetworkSpec,
    SavedMachine,
    VMHandle,
    VMSpec,
)
from banger.vmm.qemu import QemuDriver, wait_control_ready
from tests.guest import bootkit
from tests.waiting import async_wait_until

# PID 1 of the test guest: tmpfs on /tmp, the work disk on /work, a sleeper whose pid must
# survive, a fake SSH banner on port 22, and `sh CMD` lines evaluated from the control port.
TEST_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t sysfs sysfs /sys; $B mount -t tmpfs tmpfs /tmp
$B mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  $B ln -sf "../${p##*/}" "/dev/virtio-ports/$($B cat $p/name)"
done
$B mount -t ext4 /dev/vdb /work
$B ip link set lo up; $B ip link set eth0 up; $B ip addr add 10.0.2.15/24 dev eth0
(while :; do echo "SSH-2.0-fake" | $B nc -l -p 22; done) &
$B sleep 1000000 &
echo $! > /tmp/sleeper.pid
exec 3<>/dev/virtio-ports/banger.ctl
echo "READY mode=test" >&3
while :; do
  if read -r cmd <&3; then
    case "$cmd" in
      sh\ *) out=$(eval "${cmd#sh }" 2>&1 | $B tr '\n' ' '); echo "OUT $out" >&3;;
    esac
  else $B sleep 0.2; fi
done
"""
MEMORY_MIB = 256


@pytest.fixture(scope="module")
def guest_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, Path]]:
    yield build_guest(tmp_path_factory.mktemp("qsnap-guest"))


def build_guest(d: Path) -> tuple[Path, Path, Path]:
    """initrd, the root image (raw ext4, never written) and a raw ext4 work image to convert."""
    initrd = d / "initrd.img"
    build_initramfs(initrd, modules=bootkit.resolve_modules())
    tree = d / "tree"
    for sub in ("bin", "sbin", "proc", "sys", "dev", "tmp", "work"):
        (tree / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    (tree / "sbin/init").write_text(TEST_INIT)
    (tree / "sbin/init").chmod(0o755)
    root = d / "root.ext4"
    bootkit.make_ext4(root, tree, size_mib=32)
    work_tree = d / "work-tree"
    work_tree.mkdir()
    work = d / "work.ext4"
    bootkit.make_ext4(work, work_tree, size_mib=64)
    return initrd, root, work


async def make_disks(vdir: Path, root_image: Path, work_image: Path) -> tuple[Path, Path]:
    """A VM's disks as the boot pipeline must make them: qcow2 root over the image, qcow2 work."""
    from banger.vmm.plan import create_root_overlay

    vdir.mkdir(parents=True, exist_ok=True)
    await create_root_overlay(root_image, vdir / "root.qcow2")
    await snap.to_qcow2(work_image, vdir / "work.qcow2")
    return vdir / "root.qcow2", vdir / "work.qcow2"


def make_spec(vdir: Path, initrd: Path, vm_id: str, memory_file: Path | None = None) -> VMSpec:
    run = Path(tempfile.mkdtemp(prefix="bgs-", dir="/tmp"))
    return VMSpec(
        vm_id=vm_id,
        name=f"snap-{vm_id}",
        kernel=bootkit.KERNEL,
        initrd=initrd,
        cmdline="console=ttyS0 panic=-1 quiet banger.init=/sbin/init",
        root_disk=DiskSpec(vdir / "root.qcow2", "qcow2"),
        work_disk=DiskSpec(vdir / "work.qcow2", "qcow2"),
        vcpus=1,
        memory_mib=MEMORY_MIB,
        network=NetworkSpec(kind="user"),
        console_log=vdir / "console.log",
        runtime_dir=run,
        memory_file=memory_file,
    )


async def guest(handle: VMHandle, command: str, timeout: float = 60) -> str:
    """Run a shell line in the test guest over the control channel; its output, one line."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(handle.control_socket), timeout
    )
    try:
        writer.write(f"sh {command}\n".encode())
        await writer.drain()
        while True:
            line = (await asyncio.wait_for(reader.readline(), timeout)).decode()
            if not line:
                raise AssertionError("the guest closed the control channel")
            if line.startswith("OUT"):
                return line[3:].strip()
    finally:
        writer.close()


class Fleet:
    """Every VM a test started, stopped at the end whatever happened."""

    def __init__(self) -> None:
        self.driver = QemuDriver(accel="tcg")
        self.handles: list[VMHandle] = []
        self.runtime_dirs: list[Path] = []

    def track(self, handle: VMHandle, spec: VMSpec) -> VMHandle:
        self.handles.append(handle)
        self.runtime_dirs.append(spec.runtime_dir)
        return handle

    async def boot(self, spec: VMSpec) -> VMHandle:
        handle = self.track(await self.driver.launch(spec), spec)
        await wait_control_ready(
            handle.control_socket, 180, alive=lambda: self.driver.is_alive(handle)
        )
        return handle

    async def restore(self, spec: VMSpec, saved: SavedMachine) -> VMHandle:
        return self.track(await self.driver.restore(spec, saved), spec)


@pytest.fixture
async def fleet() -> AsyncIterator[Fleet]:
    f = Fleet()
    yield f
    for handle in f.handles:
        await f.driver.force_stop(handle)
    for run in f.runtime_dirs:
        shutil.rmtree(run, ignore_errors=True)


# --- real guests -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_suspend_and_restore_keep_tmpfs_process_and_network(
    guest_files: tuple[Path, Path, Path], tmp_path: Path, fleet: Fleet
) -> None:
    from banger.guest.ssh import wait_ssh_banner

    initrd, root, work = guest_files
    vdir = tmp_path / "vm"
    await make_disks(vdir, root, work)
    spec = make_spec(vdir, initrd, "susp0001")
    handle = await fleet.boot(spec)
    pid = await guest(handle, "echo kept-in-ram > /tmp/note; cat /tmp/sleeper.pid")
    assert pid.isdigit()

    saved = await fleet.driver.save(handle, spec, tmp_path / "suspend", keep_running=False)
    assert not fleet.driver.is_alive(handle), "the VMM must exit once suspended"
    assert saved.disks == {} and saved.details["kind"] == "suspend"
    assert snap.load_saved(saved.dir) == saved  # the record reads back as written
    # The VM's disks are where they were, untouched layers: a cold boot would need no lookup.
    assert spec.root_disk.path.exists() and spec.work_disk is not None

    again = await fleet.restore(spec, snap.load_saved(saved.dir))
    assert again.pid != handle.pid
    out = await guest(again, f"cat /tmp/note; kill -0 {pid} && echo alive; cat /tmp/sleeper.pid")
    assert out == f"kept-in-ram alive {pid}"
    # virtio-net and slirp came back: the guest's port 22 answers through the new forward.
    await wait_ssh_banner("127.0.0.1", again.ssh_port, 60)


@pytest.mark.slow
async def test_checkpoint_then_restore_rolls_back_memory_and_both_disks(
    guest_files: tuple[Path, Path, Path], tmp_path: Path, fleet: Fleet
) -> None:
    initrd, root, work = guest_files
    vdir = tmp_path / "vm"
    root_disk, work_disk = await make_disks(vdir, root, work)
    spec = make_spec(vdir, initrd, "ckpt0001")
    handle = await fleet.boot(spec)
    await guest(handle, "echo one > /tmp/m; echo one > /r; echo one > /work/w; sync")

    ckpt = await fleet.driver.save(handle, spec, tmp_path / "ckpt", keep_running=True)
    assert fleet.driver.is_alive(handle), "a checkpoint keeps the VM running"
    assert ckpt.paused_seconds > 0
    assert set(ckpt.disks) == {"root", "work"}
    # Same paths for the VM; each now a fresh layer over the checkpoint's frozen one.
    for role, disk in (("root", root_disk), ("work", work_disk)):
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(disk)],
                check=True,
                capture_output=True,
            ).stdout
        )
        assert info["full-backing-filename"] == str(ckpt.disks[role])

    # The guest runs on and changes memory and both disks...
    out = await guest(handle, "echo two > /tmp/m; echo two > /r; echo two > /work/w; sync; cat /r")
    assert out == "two"
    # ...and a second checkpoint on top works too (the chain grows by one layer per disk).
    # A VM the caller paused is checkpointed and stays paused.
    await fleet.driver.pause(handle)
    second = await fleet.driver.save(handle, spec, tmp_path / "ckpt2", keep_running=True)
    # (QEMU reports `postmigrate`, not `paused`: not running either way; `resume` thaws it.)
    assert (await fleet.driver.qmp(handle, "query-status"))["running"] is False
    await fleet.driver.resume(handle)
    assert await guest(handle, "cat /tmp/m /r /work/w") == "two two two"
    await fleet.driver.force_stop(handle)

    back = await fleet.restore(spec, snap.load_saved(ckpt.dir))
    assert await guest(back, "cat /tmp/m /r /work/w") == "one one one"
    await fleet.driver.force_stop(back)
    later = await fleet.restore(spec, snap.load_saved(second.dir))
    assert await guest(later, "cat /tmp/m /r /work/w") == "two two two"


@pytest.mark.slow
async def test_forks_of_one_checkpoint_do_not_see_each_others_writes(
    guest_files: tuple[Path, Path, Path], tmp_path: Path, fleet: Fleet
) -> None:
    initrd, root, work = guest_files
    vdir = tmp_path / "parent"
    await make_disks(vdir, root, work)
    spec = make_spec(vdir, initrd, "fork0000")
    parent = await fleet.boot(spec)
    pid = await guest(parent, "echo base > /tmp/m; echo base > /work/w; sync; cat /tmp/sleeper.pid")
    ckpt = await fleet.driver.save(parent, spec, tmp_path / "ckpt", keep_running=True)

    # Child 1 loads RAM from the stream; then the RAM moves to a file that child 2 maps
    # copy-on-write (share_memory): both must start from the same machine.
    children: list[VMHandle] = []
    for i in (1, 2):
        cdir = tmp_path / f"child{i}"
        cdir.mkdir()
        child_spec = dataclasses.replace(make_spec(cdir, initrd, f"fork000{i}"), name=f"child{i}")
        if i == 2:
            ckpt = await fleet.driver.share_memory(spec, ckpt)
            assert ckpt.details["memory"] == "file"
            assert snap.load_saved(ckpt.dir) == ckpt
        child = await fleet.restore(child_spec, ckpt)
        assert await guest(child, f"cat /tmp/m /work/w; kill -0 {pid} && echo alive") == (
            "base base alive"
        )
        children.append(child)
    for i, child in enumerate(children, 1):
        await guest(child, f"echo c{i} > /tmp/m; echo c{i} > /work/w; echo c{i} > /r; sync")
    await guest(parent, "echo p > /work/w; sync")
    for i, child in enumerate(children, 1):
        assert await guest(child, "cat /tmp/m /work/w /r") == f"c{i} c{i} c{i}"
    assert await guest(parent, "cat /tmp/m /work/w; cat /r 2>/dev/null || echo none") == (
        "base p none"
    )
    # Each child's disks are its own layers over the parent's frozen ones.
    assert (tmp_path / "child1" / "work.qcow2").exists()
    assert str(ckpt.dir / snap.MEMORY_FILE) in Path(f"/proc/{children[1].pid}/maps").read_text()


@pytest.mark.slow
async def test_template_ram_file_is_shared_copy_on_write_by_forks(
    guest_files: tuple[Path, Path, Path], tmp_path: Path, fleet: Fleet
) -> None:
    initrd, root, work = guest_files
    vdir = tmp_path / "template"
    await make_disks(vdir, root, work)
    spec = make_spec(vdir, initrd, "tmpl0000", memory_file=vdir / "ram")
    template = await fleet.boot(spec)
    await guest(template, "echo warm > /tmp/m")
    # Suspend writes only the device state: RAM is already in the file, which moves in.
    saved = await fleet.driver.save(template, spec, tmp_path / "saved", keep_running=False)
    assert saved.details["memory"] == "file"
    assert (saved.dir / snap.MEMORY_FILE).exists() and not (vdir / "ram").exists()
    state_bytes = (saved.dir / snap.STATE_FILE).stat().st_size
    assert state_bytes < (MEMORY_MIB << 20) // 8, state_bytes

    # A template's disks are left as they were: each fork gets a copy of their layers here
    # (a checkpoint's would be frozen layers; see docs/snapshots.md).
    forks = []
    for i in (1, 2):
        cdir = tmp_path / f"fork{i}"
        cdir.mkdir()
        shutil.copy(vdir / "root.qcow2", cdir / "root.qcow2")
        shutil.copy(vdir / "work.qcow2", cdir / "work.qcow2")
        fork = await fleet.restore(make_spec(cdir, initrd, f"tmpl000{i}"), saved)
        assert await guest(fork, "cat /tmp/m") == "warm"
        forks.append(fork)
    await guest(forks[0], "echo mine > /tmp/m")
    assert await guest(forks[1], "cat /tmp/m") == "warm"
    # The RAM file itself never changes under the forks (MAP_PRIVATE).
    assert saved.details["memory"] == "file"
    for fork in forks:
        maps = Path(f"/proc/{fork.pid}/maps").read_text()
        assert str(saved.dir / snap.MEMORY_FILE) in maps


# --- fast: layout, record, errors ----------------------------------------------------------------


# A daemon that dies at a checkpoint's switchover point: it saves through the real driver in a
# process of its own, stops right after QEMU paused the guest for the switchover, and is killed.
SAVE_UNTIL_SWITCHOVER = """
import asyncio, pickle, sys
from pathlib import Path
from banger.vmm import qemu_snapshot as snap
from banger.vmm.qemu import QemuDriver

handle, spec, dest, flag = pickle.loads(Path(sys.argv[1]).read_bytes())

async def hang(*args, **kwargs):
    Path(flag).touch()
    await asyncio.Event().wait()

snap.freeze_disks = hang
asyncio.run(QemuDriver(accel="tcg").save(handle, spec, dest, keep_running=True))
"""


@pytest.mark.slow
async def test_a_save_cut_by_a_daemon_crash_is_undone_when_the_vm_is_reattached(
    guest_files: tuple[Path, Path, Path], tmp_path: Path, fleet: Fleet
) -> None:
    initrd, root, work = guest_files
    vdir = tmp_path / "vm"
    await make_disks(vdir, root, work)
    spec = make_spec(vdir, initrd, "cut00001")
    handle = await fleet.boot(spec)
    pid = await guest(handle, "echo before > /tmp/note; cat /tmp/sleeper.pid")
    args, flag = tmp_path / "save.pickle", tmp_path / "at-switchover"
    args.write_bytes(pickle.dumps((handle, spec, tmp_path / "cut", flag)))
    daemon = subprocess.Popen([sys.executable, "-c", SAVE_UNTIL_SWITCHOVER, str(args)])
    try:
        await async_wait_until(flag.exists, 120, "the save to reach the switchover point")
    finally:
        daemon.kill()
        daemon.wait()
    assert (spec.runtime_dir / snap.SAVE_MARK).read_text() == "running\n"
    async with snap.QmpSession(handle.api_socket) as qmp:
        assert not (await qmp.execute("query-status"))["running"]  # frozen, owner gone
        assert (await qmp.execute("query-migrate"))["status"] == "pre-switchover"

    assert await fleet.driver.attach(handle)  # what the next daemon start does

    assert not (spec.runtime_dir / snap.SAVE_MARK).exists()
    assert await guest(handle, f"cat /tmp/note; kill -0 {pid} && echo alive") == "before alive"
    # Nothing of the cut save is in the way of the next one.
    saved = await fleet.driver.save(handle, spec, tmp_path / "next", keep_running=True)
    assert saved.details["kind"] == "checkpoint"
    assert await guest(handle, "cat /tmp/note") == "before"


def _spec(tmp: Path, **kw: object) -> VMSpec:
    base = make_spec(tmp, tmp / "initrd", "fast0001")
    shutil.rmtree(base.runtime_dir, ignore_errors=True)
    return dataclasses.replace(base, **kw)  # type: ignore[arg-type]


def test_driver_advertises_the_snapshot_capabilities() -> None:
    caps = QemuDriver(accel="tcg").capabilities
    assert {Capability.SUSPEND, Capability.SNAPSHOT, Capability.FORK} <= caps


def test_memory_backend_is_always_named_so_streams_load_across_kinds(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    argv = QemuDriver(accel="tcg").build_argv(spec, "tcg")
    assert "memory-backend-ram,id=mem,size=256M" in argv
    assert argv[argv.index("memory-backend-ram,id=mem,size=256M") + 2] == "memory-backend=mem"
    shared = snap.memory_args(_spec(tmp_path, memory_file=tmp_path / "r,am"))
    assert shared[1].endswith(f"mem-path={tmp_path}/r,,am,share=on")
    private = snap.memory_args(spec, tmp_path / "saved.ram")
    assert private[1].startswith("memory-backend-file,id=mem,") and "share=off" in private[1]


def test_checkpoints_need_qcow2_writable_disks(tmp_path: Path) -> None:
    spec = _spec(tmp_path, work_disk=DiskSpec(tmp_path / "work.ext4", "raw"))
    with pytest.raises(DriverError, match=r"work disk .*work\.ext4 is raw.*qcow2"):
        snap.writable_disks(spec)
    ro_root = _spec(tmp_path, root_disk=DiskSpec(tmp_path / "r.img", "raw", read_only=True))
    # A read-only disk stays out of the chain; device ids keep counting it.
    assert [(d.role, d.device) for d in snap.writable_disks(ro_root)] == [("work", "d1")]


def test_record_round_trips_with_paths_inside_its_directory(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    d = tmp_path / "ckpt"
    d.mkdir()
    saved = snap.new_record(spec, d, "checkpoint", {"root": d / "root.qcow2"}, 0.25, False)
    snap.write_record(saved)
    (d / snap.STATE_FILE).write_bytes(b"x")
    (d / "root.qcow2").write_bytes(b"x")
    data = json.loads((d / snap.META_FILE).read_text())
    assert data["disks"] == {"root": "root.qcow2"}  # names, not paths: the dir can move
    assert snap.load_saved(d) == saved
    assert not list(d.glob(".*.tmp"))


def test_load_saved_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DriverError, match="no saved.json"):
        snap.load_saved(tmp_path)
    saved = snap.new_record(_spec(tmp_path), tmp_path, "checkpoint", {}, 0.0, False)
    snap.write_record(saved)
    with pytest.raises(DriverError, match="state.mig is missing"):
        snap.load_saved(tmp_path)


def test_restore_refuses_a_different_machine_shape(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    saved = snap.new_record(spec, tmp_path, "suspend", {}, 0.0, False)
    with pytest.raises(DriverError, match="256 MiB of RAM, the VM now has 512 MiB"):
        snap.check_restorable(dataclasses.replace(spec, memory_mib=512), saved)
    with pytest.raises(DriverError, match="2 vCPUs|1 vCPUs, the VM now has 2"):
        snap.check_restorable(dataclasses.replace(spec, vcpus=2), saved)
    with pytest.raises(DriverError, match="devices"):
        snap.check_restorable(dataclasses.replace(spec, work_disk=None), saved)
    snap.check_restorable(spec, saved)


async def test_save_refuses_an_existing_directory_and_a_live_shared_ram_checkpoint(
    tmp_path: Path,
) -> None:
    driver = QemuDriver(accel="tcg")
    handle = VMHandle("qemu", 0, str(tmp_path / "qmp.sock"), str(tmp_path / "ctl.sock"))
    with pytest.raises(DriverError, match="already exists"):
        await driver.save(handle, _spec(tmp_path), tmp_path, keep_running=True)
    spec = _spec(tmp_path, memory_file=tmp_path / "ram")
    with pytest.raises(DriverError, match="shared file cannot be checkpointed"):
        await driver.save(handle, spec, tmp_path / "new", keep_running=True)
    assert not (tmp_path / "new").exists()


async def test_a_failed_save_leaves_no_directory(tmp_path: Path) -> None:
    driver = QemuDriver(accel="tcg")
    handle = VMHandle("qemu", 0, str(tmp_path / "no-qmp.sock"), str(tmp_path / "ctl.sock"))
    with pytest.raises(DriverError, match="cannot reach QMP"):
        await driver.save(handle, _spec(tmp_path), tmp_path / "s", keep_running=False)
    assert not (tmp_path / "s").exists()


def test_recover_disk_finishes_an_interrupted_swap(tmp_path: Path) -> None:
    disk = tmp_path / "work.qcow2"
    staged = tmp_path / ".work.qcow2.123.next"
    staged.write_bytes(b"new layer")
    assert snap.recover_disk(disk)
    assert disk.read_bytes() == b"new layer" and not staged.exists()
    assert not snap.recover_disk(disk)  # present: nothing to do


def test_a_kept_node_name_is_a_symlink_recovery_ignores(tmp_path: Path) -> None:
    # After a swap the new layer's staging name points at the VM's path (the next checkpoint
    # reopens it read-only by that name); the one before it goes.
    disk = tmp_path / "work.qcow2"
    disk.write_bytes(b"active")
    older = tmp_path / ".work.qcow2.1.next"
    older.symlink_to(disk.name)
    snap._keep_node_name(disk, tmp_path / ".work.qcow2.2.next")
    assert not older.is_symlink()
    assert (tmp_path / ".work.qcow2.2.next").read_bytes() == b"active"
    disk.unlink()  # a crash between the renames: no staged layer, only the kept name
    assert not snap.recover_disk(disk)


def _qemu_io(path: Path, command: str) -> str:
    return subprocess.run(
        ["qemu-io", "-f", "qcow2", "-c", command, str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


async def test_deleting_a_checkpoint_others_build_on_keeps_its_layers_until_folded(
    tmp_path: Path,
) -> None:
    # A chain as checkpoints leave it: c1/work.qcow2 <- c2/work.qcow2 <- work.qcow2 (active).
    c1, c2 = tmp_path / "c1", tmp_path / "c2"
    c1.mkdir()
    c2.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(c1 / "work.qcow2"), "1M"])
    _qemu_io(c1 / "work.qcow2", "write -P 0xab 0 64k")
    await snap.create_layer(c2 / "work.qcow2", c1 / "work.qcow2", 1 << 20)
    await snap.create_layer(tmp_path / "work.qcow2", c2 / "work.qcow2", 1 << 20)
    spec = _spec(tmp_path)
    saved1 = snap.new_record(spec, c1, "checkpoint", {"work": c1 / "work.qcow2"}, 0.0, False)
    snap.write_record(saved1)
    (c1 / snap.STATE_FILE).write_bytes(b"ram")

    kept = await snap.delete_saved(saved1, [c2 / "work.qcow2", tmp_path / "work.qcow2"])
    assert kept is False
    assert (c1 / "work.qcow2").exists() and (c1 / snap.LAYERS_ONLY_MARK).exists()
    assert not (c1 / snap.STATE_FILE).exists() and not (c1 / snap.META_FILE).exists()

    # Offline, fold it into its dependent; then nothing needs it.
    await snap.rebase_dependents(c1 / "work.qcow2", [c2 / "work.qcow2"])
    assert await snap.backing_of(c2 / "work.qcow2") is None
    out = _qemu_io(tmp_path / "work.qcow2", "read -P 0xab 0 64k")
    assert "Pattern verification failed" not in out and "read 65536/65536" in out
    assert await snap.delete_saved(saved1, [c2 / "work.qcow2", tmp_path / "work.qcow2"])
    assert not c1.exists()

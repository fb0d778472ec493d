"""QEMU suspend, checkpoints, restore and forks: the mechanics behind `QemuDriver.save/restore`.

Measured choice (docs/snapshots.md): RAM and device state travel as a migration stream written
to a file (`migrate` to an fd QEMU gets over QMP, `-incoming defer` + `migrate-incoming` from
one), because it works with the `microvm` machine and its virtio-mmio devices under TCG and needs
no qcow2 internal snapshots. A checkpoint pre-copies RAM while the guest runs and stops it
only at the switchover point (`pause-before-switchover`). Disks join a qcow2 copy-on-write
chain: at that point each writable disk's active layer is renamed into the checkpoint directory
(frozen from then on) and a new empty active layer over it, swapped in with `blockdev-add` +
`blockdev-snapshot`, takes the SAME path. So a VM's disk paths never change.

A saved machine's directory:
    saved.json   the record (written last: a directory without it is incomplete)
    state.mig    the migration stream (RAM unless `memory.ram` exists, and device state)
    memory.ram   guest RAM as a plain file (templates only: the VM ran with `memory_file`);
                 restores map it private (copy-on-write), so forks share its unchanged pages
    root.qcow2, work.qcow2   frozen disk layers (checkpoints only)

Deleting a checkpoint whose layers later layers (newer checkpoints, the VM's active disks, forks)
are backed by: `delete_saved` drops the RAM state at once; the layers stay until nothing depends
on them (`rebase_dependents`, offline, folds them into their dependents).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.proc import run
from banger.vmm.base import DiskSpec, DriverError, SavedMachine, VMSpec

FORMAT_VERSION = 1
META_FILE = "saved.json"
STATE_FILE = "state.mig"
MEMORY_FILE = "memory.ram"
LAYERS_ONLY_MARK = "layers-only"
# The RAM block's id: the same memory-backend id on every launch, so a stream saved from a VM
# with file-backed RAM loads into one with anonymous RAM and back (blocks are matched by id).
MEMORY_BACKEND_ID = "mem"
MIGRATION_TIMEOUT_SECONDS = 300.0
ROLES = ("root", "work")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class WritableDisk:
    """A disk that joins the copy-on-write chain: its role, the VM's path, QEMU's device id."""

    role: str
    path: Path
    device: str


def writable_disks(spec: VMSpec) -> list[WritableDisk]:
    """The root and work disks (device ids d0, d1 as `QemuDriver.build_argv` numbers them);
    each must be qcow2, a raw file cannot get a layer over it at the same path."""
    disks: list[tuple[str, DiskSpec | None]] = [("root", spec.root_disk), ("work", spec.work_disk)]
    out: list[WritableDisk] = []
    index = 0
    for role, disk in disks:
        if disk is None:
            continue
        if not disk.read_only:
            if disk.format != "qcow2":
                raise DriverError(
                    f"the {role} disk {disk.path} is {disk.format}: checkpoints and forks need "
                    "every writable disk as qcow2 (create it with vmm.qemu_snapshot.to_qcow2)"
                )
            out.append(WritableDisk(role, disk.path, f"d{index}"))
        index += 1
    return out


def memory_args(spec: VMSpec, memory_from: Path | None = None) -> list[str]:
    """The guest RAM backend: shared over `spec.memory_file` (a template in the making), private
    copy-on-write over a saved `memory.ram` (`memory_from`), anonymous otherwise."""
    size = f"size={spec.memory_mib}M"
    if memory_from is not None:
        obj = f"memory-backend-file,id={MEMORY_BACKEND_ID},{size},mem-path={_opt(memory_from)}"
        obj += ",share=off"
    elif spec.memory_file is not None:
        obj = f"memory-backend-file,id={MEMORY_BACKEND_ID},{size},"
        obj += f"mem-path={_opt(spec.memory_file)},share=on"
    else:
        obj = f"memory-backend-ram,id={MEMORY_BACKEND_ID},{size}"
    return ["-object", obj, "-machine", f"memory-backend={MEMORY_BACKEND_ID}"]


def _opt(path: Path) -> str:
    return str(path).replace(",", ",,")


def helper_spec(spec: VMSpec, saved: SavedMachine, work: Path, ram: Path) -> VMSpec:
    """The machine `QemuDriver.share_memory` loads a saved stream into: `spec`'s devices, the
    saved frozen layers (or the VM's disks, for a suspend) under `snapshot=on` (QEMU's own
    temporary overlays: nothing saved is written), RAM shared in `ram`, no host port."""
    disks = {d.role: d for d in writable_disks(spec)}

    def layer(role: str, disk: DiskSpec | None) -> DiskSpec | None:
        if disk is None:
            return None
        path = saved.disks.get(role, disk.path) if role in disks else disk.path
        return dataclasses.replace(disk, path=path, scratch=True)

    root = layer("root", spec.root_disk)
    assert root is not None
    return dataclasses.replace(
        spec,
        vm_id=f"{spec.vm_id}-mem",
        root_disk=root,
        work_disk=layer("work", spec.work_disk),
        # Same device (virtio-net), another backend: the VM may hold its TAP right now.
        network=dataclasses.replace(
            spec.network, kind="user", ssh_host_port=0, forwards=(), tap_device=""
        )
        if spec.network.kind != "none"
        else spec.network,
        console_log=work / "console.log",
        runtime_dir=work,
        memory_file=ram,
    )


# --- the record --------------------------------------------------------------------------------


def saved_to_json(saved: SavedMachine) -> dict[str, Any]:
    return {
        "version": FORMAT_VERSION,
        "driver": saved.driver,
        "disks": {role: path.name for role, path in saved.disks.items()},
        "memory_mib": saved.memory_mib,
        "paused_seconds": saved.paused_seconds,
        "details": saved.details,
    }


def saved_from_json(directory: Path, data: Any) -> SavedMachine:
    """The record read back, every field checked (a hand-edited file must not point QEMU at an
    arbitrary path: disk layers are plain names inside `directory`)."""
    where = directory / META_FILE
    if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
        raise DriverError(f"{where}: not a version {FORMAT_VERSION} saved-machine record")
    if data.get("driver") != "qemu":
        raise DriverError(f"{where}: saved by the {data.get('driver')!r} driver, not qemu")
    disks = data.get("disks")
    details = data.get("details")
    memory = data.get("memory_mib")
    paused = data.get("paused_seconds")
    if not isinstance(disks, dict) or not isinstance(details, dict):
        raise DriverError(f"{where}: disks and details must be objects")
    if not isinstance(memory, int) or memory <= 0 or not isinstance(paused, int | float):
        raise DriverError(f"{where}: memory_mib must be a positive integer")
    out: dict[str, Path] = {}
    for role, name in disks.items():
        if role not in ROLES or not isinstance(name, str) or not _NAME_RE.match(name):
            raise DriverError(f"{where}: bad disk entry {role!r}: {name!r}")
        out[role] = directory / name
    if details.get("kind") not in ("suspend", "checkpoint"):
        raise DriverError(f"{where}: kind must be suspend or checkpoint")
    return SavedMachine("qemu", directory, out, memory, float(paused), details)


def write_record(saved: SavedMachine) -> None:
    """saved.json, staged then renamed: its presence means the save completed (the files it
    names are synced first)."""
    for name in (STATE_FILE, MEMORY_FILE, *(p.name for p in saved.disks.values())):
        with contextlib.suppress(FileNotFoundError), open(saved.dir / name, "rb") as f:
            os.fsync(f.fileno())
    tmp = saved.dir / f".{META_FILE}.tmp"
    tmp.write_text(json.dumps(saved_to_json(saved), indent=2, sort_keys=True) + "\n")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, saved.dir / META_FILE)


def load_saved(directory: Path) -> SavedMachine:
    """The saved machine in `directory`; DriverError when it is missing, incomplete or damaged."""
    try:
        data = json.loads((directory / META_FILE).read_text())
    except FileNotFoundError:
        raise DriverError(f"{directory} holds no saved machine (no {META_FILE})") from None
    except (OSError, ValueError) as e:
        raise DriverError(f"cannot read {directory / META_FILE}: {e}") from None
    saved = saved_from_json(directory, data)
    if not (directory / STATE_FILE).is_file():
        raise DriverError(f"{directory}: the machine state {STATE_FILE} is missing")
    for role, layer in saved.disks.items():
        if not layer.is_file():
            raise DriverError(f"{directory}: the frozen {role} layer {layer.name} is missing")
    return saved


def check_restorable(spec: VMSpec, saved: SavedMachine) -> None:
    """The machine shape must match what was saved (migration restores device state into the
    same devices); say which part differs."""
    want = saved.details
    if spec.memory_mib != saved.memory_mib:
        raise DriverError(
            f"saved with {saved.memory_mib} MiB of RAM, the VM now has {spec.memory_mib} MiB: "
            "set it back or boot cold"
        )
    if spec.vcpus != want.get("vcpus"):
        raise DriverError(f"saved with {want.get('vcpus')} vCPUs, the VM now has {spec.vcpus}")
    shape = machine_shape(spec)
    if shape != want.get("shape"):
        raise DriverError(f"saved with devices {want.get('shape')}, the VM now has {shape}")
    roles = {d.role for d in writable_disks(spec)}
    if not set(saved.disks) <= roles:
        raise DriverError(f"the checkpoint has {sorted(saved.disks)} layers, the VM {roles}")


def machine_shape(spec: VMSpec) -> str:
    """What the migration stream depends on: disk count, network device, RAM backing kind."""
    disks = 1 + (spec.work_disk is not None) + len(spec.extra_disks)
    net = "none" if spec.network.kind == "none" else "virtio-net"
    return f"disks={disks},net={net}"


# --- disks -------------------------------------------------------------------------------------


async def to_qcow2(raw: Path, out: Path) -> None:
    """A raw disk image converted to a standalone qcow2 (sparse input stays sparse); the boot
    pipeline uses it for the work disk (mkfs.ext4 on a raw file, then this)."""
    tmp = out.with_name(f".{out.name}.tmp")
    await run(
        ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(tmp)],
        what="qemu-img convert (work disk to qcow2)",
        timeout=300,
    )
    os.replace(tmp, out)


async def create_layer(path: Path, backing: Path, size: int) -> None:
    """An empty qcow2 at `path` over the frozen qcow2 `backing` (absolute), staged then renamed
    (replacing what was there: the layer it rolls back)."""
    tmp = path.with_name(f".{path.name}.next")
    await run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            str(backing.resolve()),
            "-u",
            str(tmp),
            str(size),
        ],  # fmt: skip
        what="qemu-img create (disk layer)",
        timeout=60,
    )
    os.replace(tmp, path)


async def virtual_size(path: Path) -> int:
    res = await run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], what="qemu-img info", timeout=60
    )
    return int(json.loads(res.out)["virtual-size"])


async def backing_of(path: Path) -> Path | None:
    res = await run(
        ["qemu-img", "info", "-U", "--output=json", str(path)], what="qemu-img info", timeout=60
    )
    name = json.loads(res.out).get("full-backing-filename")
    return Path(name) if name else None


async def rebase_dependents(layer: Path, dependents: Sequence[Path]) -> None:
    """Fold `layer` into each dependent (safe `qemu-img rebase` onto the layer's own backing:
    it copies the clusters they read through it), so `layer` can go. Offline only: no running
    QEMU may have the dependents open."""
    below = await backing_of(layer)
    fmt = "raw" if below is not None and below.suffix != ".qcow2" else "qcow2"
    for dep in dependents:
        argv = ["qemu-img", "rebase", "-q", "-f", "qcow2"]
        argv += ["-b", str(below), "-F", fmt] if below is not None else ["-b", ""]
        await run([*argv, str(dep)], what="qemu-img rebase (fold a deleted layer)", timeout=600)


async def delete_saved(saved: SavedMachine, layers_in_use: Sequence[Path]) -> bool:
    """Delete a saved machine. Its RAM state always goes; its frozen disk layers go unless one of
    `layers_in_use` (every qcow2 layer of this VM and its forks still kept) is backed by them:
    then they stay, the directory is marked layers-only, and False is returned; a later
    `rebase_dependents` while those VMs are stopped frees them."""
    keep = False
    frozen = {p.resolve() for p in saved.disks.values()}
    for layer in layers_in_use:
        if layer.resolve() in frozen or not layer.exists():
            continue
        below = await backing_of(layer)
        if below is not None and below.resolve() in frozen:
            keep = True
    if not keep:
        shutil.rmtree(saved.dir)
        return True
    (saved.dir / LAYERS_ONLY_MARK).write_text("frozen disk layers other layers are backed by\n")
    for name in (META_FILE, STATE_FILE, MEMORY_FILE):
        with contextlib.suppress(FileNotFoundError):
            (saved.dir / name).unlink()
    return False


def new_record(
    spec: VMSpec,
    dest: Path,
    kind: str,
    disks: dict[str, Path],
    paused: float,
    memory_in_file: bool,
) -> SavedMachine:
    return SavedMachine(
        driver="qemu",
        dir=dest,
        disks=disks,
        memory_mib=spec.memory_mib,
        paused_seconds=paused,
        details={
            "kind": kind,
            "vcpus": spec.vcpus,
            "shape": machine_shape(spec),
            "memory": "file" if memory_in_file else "stream",
            "created": time.time(),
            "vm_id": spec.vm_id,
        },
    )


# --- QMP sequences -----------------------------------------------------------------------------


class QmpSession:
    """One QMP connection for a sequence that must share it (`getfd` names an fd per monitor
    connection for the `migrate` that follows)."""

    def __init__(self, socket: str, timeout: float = 10.0) -> None:
        from qemu.qmp import QMPClient

        self.socket = socket
        self.timeout = timeout
        self.client = QMPClient("banger-snapshot")

    async def __aenter__(self) -> QmpSession:
        from qemu.qmp import QMPError

        try:
            await asyncio.wait_for(self.client.connect(self.socket), self.timeout)
        except (TimeoutError, OSError, QMPError) as e:
            raise DriverError(f"cannot reach QMP at {self.socket}: {e}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self.client.disconnect()

    async def execute(self, cmd: str, args: dict[str, Any] | None = None) -> Any:
        from qemu.qmp import ExecuteError

        try:
            return await asyncio.wait_for(self.client.execute(cmd, args), self.timeout)
        except TimeoutError:
            raise DriverError(f"QMP {cmd} timed out on {self.socket}") from None
        except ExecuteError as e:
            raise DriverError(f"QMP {cmd} failed: {e.error.error.desc}") from None

    async def pass_fd(self, fd: int, name: str) -> None:
        """Hand `fd` to QEMU under `name` (SCM_RIGHTS, then `getfd`)."""
        with contextlib.suppress(Exception):
            await self.execute("closefd", {"fdname": name})
        self.client.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": name})

    async def set_ignore_shared(self, on: bool) -> None:
        caps = [{"capability": "x-ignore-shared", "state": on}]
        await self.execute("migrate-set-capabilities", {"capabilities": caps})

    async def wait_migration(self, alive: Any = None) -> dict[str, Any]:
        """Poll `query-migrate` until it completed (returns it) or failed (raises)."""
        deadline = time.monotonic() + MIGRATION_TIMEOUT_SECONDS
        while True:
            info = await self.execute("query-migrate")
            status = info.get("status") if isinstance(info, dict) else None
            if status == "completed":
                return dict(info)
            if status in ("failed", "cancelled"):
                raise DriverError(f"migration {status}: {info.get('error-desc', 'no detail')}")
            if time.monotonic() > deadline:
                raise DriverError(f"migration still {status} after {MIGRATION_TIMEOUT_SECONDS}s")
            await asyncio.sleep(0.01)


MIGRATION_FD = "banger-mig"
FILE_BANDWIDTH = 64 << 30  # bytes/s: no throttling in practice
CONVERGE_SECONDS = 10.0


async def stage_layers(disks: Sequence[WritableDisk], dest: Path) -> list[Path]:
    """Before the pause: for each disk an empty qcow2 at a staging name beside it, backed by
    its future frozen layer `dest/<role>.qcow2` (-u: that file does not exist yet)."""
    staged: list[Path] = []
    for disk in disks:
        size = await virtual_size(disk.path)
        path = disk.path.with_name(f".{disk.path.name}.{time.monotonic_ns()}.next")
        await run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-F",
                "qcow2",
                "-b",
                str((dest / f"{disk.role}.qcow2").absolute()),
                "-u",
                str(path),
                str(size),
            ],  # fmt: skip
            what="qemu-img create (new active layer)",
            timeout=60,
        )
        staged.append(path)
    return staged


async def freeze_disks(
    qmp: QmpSession, disks: Sequence[WritableDisk], staged: Sequence[Path], dest: Path
) -> dict[str, Path]:
    """With the guest paused (`stop` drained and flushed its disks): each active layer becomes
    the frozen `dest/<role>.qcow2` under a new empty active layer at the VM's same path.

    Order matters: `blockdev-snapshot` reopens the old layer read-only BY ITS FILE NAME
    (external_snapshot_commit in QEMU's blockdev.c), so the new layer is swapped in while it
    still sits at a staging name and the old one at the VM's path; only then are the files
    renamed (QEMU keeps its open descriptors; its node names show stale paths from then on, and
    the read-only reopen at the next checkpoint fails by name, which QEMU ignores). A crash
    between the two renames leaves the VM's path missing and `.<name>.<n>.next` beside it:
    `recover_disk` finishes the swap."""
    frozen: dict[str, Path] = {}
    for disk, new in zip(disks, staged, strict=True):
        node = f"banger-{disk.role}-{time.monotonic_ns()}"
        try:
            await qmp.execute(
                "blockdev-add",
                {
                    "driver": "qcow2",
                    "node-name": node,
                    "discard": "unmap",
                    "file": {"driver": "file", "filename": str(new)},
                    "backing": None,
                },
            )
            await qmp.execute("blockdev-snapshot", {"node": disk.device, "overlay": node})
        except DriverError:
            with contextlib.suppress(Exception):
                await qmp.execute("blockdev-del", {"node-name": node})
            raise
        layer = dest / f"{disk.role}.qcow2"
        os.rename(disk.path, layer)
        os.rename(new, disk.path)
        frozen[disk.role] = layer
        _keep_node_name(disk.path, new)
    return frozen


def _keep_node_name(path: Path, stale: Path) -> None:
    """QEMU knows the new active layer by its staging name; the next checkpoint reopens it
    read-only BY THAT NAME. Without a file there the reopen fails (ignored by QEMU) and the
    running VM keeps its write lock on what becomes a frozen layer: a fork's child, which opens
    that layer as its backing, then fails with "Failed to get shared 'write' lock". A symlink
    at the staging name to the VM's path makes the reopen find the same file; the previous
    one (of the layer just frozen) is no longer needed."""
    for old in path.parent.glob(f".{path.name}.*.next"):
        if old.is_symlink():
            old.unlink(missing_ok=True)
    os.symlink(path.name, stale)


def recover_disk(path: Path) -> bool:
    """After a crash mid-checkpoint: when `path` is missing and exactly one staged new layer
    lies beside it, move it into place (its frozen layer was renamed first). True if it did."""
    if path.exists():
        return False
    # (symlinks there are kept node names, `_keep_node_name`: not a staged layer)
    staged = sorted(p for p in path.parent.glob(f".{path.name}.*.next") if not p.is_symlink())
    if len(staged) != 1:
        return False
    os.rename(staged[0], path)
    return True


# A save in progress: written in the VM's runtime dir before a save touches the VM, removed
# when it is done either way. A daemon killed mid-save leaves it; the next one's `attach` then
# knows to cancel the migration nobody owns and to put the guest back as it was.
SAVE_MARK = "save-in-progress"
_MIGRATION_IN_FLIGHT = {"setup", "active", "pre-switchover", "device", "cancelling", "wait-unplug"}


def mark_save(runtime_dir: Path, was_running: bool) -> Path:
    mark = runtime_dir / SAVE_MARK
    mark.write_text("running\n" if was_running else "paused\n")
    return mark


async def abandon_save(socket: str, was_running: bool) -> str:
    """After a crash mid-save: cancel the migration (to a file nobody will finish), wait until
    it is over, and run the guest again if it ran before the save. Returns what it found."""
    async with QmpSession(socket) as qmp:
        status = (await qmp.execute("query-migrate")).get("status", "none")
        found = str(status)
        if status in _MIGRATION_IN_FLIGHT:
            await qmp.execute("migrate_cancel")
            deadline = time.monotonic() + 30.0
            while status in _MIGRATION_IN_FLIGHT and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                status = (await qmp.execute("query-migrate")).get("status", "none")
        running = bool((await qmp.execute("query-status")).get("running"))
        if was_running and not running:
            await qmp.execute("cont")
        return found


async def start_migration(qmp: QmpSession, state: Path, ignore_shared: bool, live: bool) -> None:
    """Start the migration stream into `state` (created, never overwritten). `live`: pre-copy
    while the guest runs, stopping at the switchover point for the caller (`pre-switchover`)."""
    await qmp.set_ignore_shared(ignore_shared)
    caps = [{"capability": "pause-before-switchover", "state": live}]
    await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": FILE_BANDWIDTH})
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await qmp.pass_fd(fd, MIGRATION_FD)
    finally:
        os.close(fd)
    await qmp.execute("migrate", {"uri": f"fd:{MIGRATION_FD}"})


async def wait_switchover(qmp: QmpSession) -> None:
    """Wait for a live migration to reach `pre-switchover` (QEMU has stopped the guest, its
    devices and disks are quiesced and not yet handed over). A guest that dirties RAM faster
    than it is written gets stopped after CONVERGE_SECONDS, which makes it converge."""
    stop_at = time.monotonic() + CONVERGE_SECONDS
    deadline = time.monotonic() + MIGRATION_TIMEOUT_SECONDS
    stopped = False
    while True:
        info = await qmp.execute("query-migrate")
        status = info.get("status")
        if status == "pre-switchover":
            return
        if status in ("failed", "cancelled", "completed"):
            raise DriverError(f"migration {status} before the switchover point")
        if not stopped and time.monotonic() > stop_at:
            await qmp.execute("stop")
            stopped = True
        if time.monotonic() > deadline:
            raise DriverError(f"migration still {status} after {MIGRATION_TIMEOUT_SECONDS}s")
        await asyncio.sleep(0.005)


async def migrate_to_file(qmp: QmpSession, state: Path, ignore_shared: bool) -> dict[str, Any]:
    """Write the (paused) machine's migration stream to `state` (created, never overwritten)."""
    await qmp.set_ignore_shared(ignore_shared)
    caps = [{"capability": "pause-before-switchover", "state": False}]
    await qmp.execute("migrate-set-capabilities", {"capabilities": caps})
    # The default cap (128 MiB/s) is for networks; a paused guest going to a file wants none.
    await qmp.execute("migrate-set-parameters", {"max-bandwidth": FILE_BANDWIDTH})
    fd = os.open(state, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        await qmp.pass_fd(fd, MIGRATION_FD)
    finally:
        os.close(fd)
    await qmp.execute("migrate", {"uri": f"fd:{MIGRATION_FD}"})
    # Not fsynced here: that would lengthen the guest's pause; `write_record` syncs the
    # directory's files before the record makes them a saved machine.
    return await qmp.wait_migration()


async def migrate_from_file(qmp: QmpSession, state: Path, ignore_shared: bool, alive: Any) -> None:
    """Feed `state` to a QEMU started with `-incoming defer`; return once it is loaded (the
    guest is then paused: it was paused when saved)."""
    await qmp.set_ignore_shared(ignore_shared)
    fd = os.open(state, os.O_RDONLY | os.O_CLOEXEC)
    try:
        await qmp.pass_fd(fd, MIGRATION_FD)
    finally:
        os.close(fd)
    await qmp.execute("migrate-incoming", {"uri": f"fd:{MIGRATION_FD}"})
    deadline = time.monotonic() + MIGRATION_TIMEOUT_SECONDS
    while True:
        if not alive():
            raise DriverError("QEMU exited while loading the saved state (see the console log)")
        status = (await qmp.execute("query-status")).get("status")
        if status != "inmigrate":
            break
        if time.monotonic() > deadline:
            raise DriverError(f"the saved state did not load in {MIGRATION_TIMEOUT_SECONDS}s")
        await asyncio.sleep(0.01)
    info = await qmp.execute("query-migrate")
    if info.get("status") == "failed":
        raise DriverError(f"loading the saved state failed: {info.get('error-desc', '')}")

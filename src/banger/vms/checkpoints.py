"""Checkpoints of a VM (`vm snapshot create|list|restore|delete`, docs/snapshots.md).

A checkpoint is the whole machine at one moment, RAM and every writable disk, taken while the
VM runs (the driver pauses it only for the switchover: `Driver.save(keep_running=True)`), kept
under `<vm dir>/snapshots/<tag>/` with a copy of the VM's seed disk (a wake does not rebuild the
seed: the guest has it mounted). Restoring rolls memory and both disks back to it and wakes the
VM through the boot pipeline (`BootPipeline.wake`). Everything here goes through the driver seam
(capabilities, `SavedMachine.driver`), never a driver's name.

Crash rule (vms/saved.py): the row is written pending BEFORE any file and made ready after the
files are complete; the next daemon start removes what a pending row left
(`vms/startup.py cleanup_pending_saves`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import Conflict, InvalidInput, NotFound, NotRunning, OperationFailed
from banger.request import RequestContext
from banger.vmm.base import Capability, Driver, DriverError, SavedMachine
from banger.vmm.rawdisk import clone_raw
from banger.vms import layers
from banger.vms.boot import Progress, Wake
from banger.vms.host import ServiceHost
from banger.vms.saved import SnapshotRecord, size_on_disk, validate_tag
from banger.vms.spec import VMRecord
from banger.vms.states import Event

log = logging.getLogger("banger.vms")

SNAPSHOTS_DIR = "snapshots"
SEED_FILE = "seed.ext4"
# The restore's steps the CLI counts: stop (when it ran), then a wake's boot, guest, SSH.
RESTORE_STEPS = 4


@dataclass(frozen=True)
class Deleted:
    vm: str
    tag: str
    # The frozen disk layers stayed: other layers (the VM's disks, later checkpoints, forks)
    # are still backed by them; they go with the VM, or once nothing reads through them.
    layers_kept: bool


def info(vm: VMRecord, rec: SnapshotRecord) -> dict[str, Any]:
    """A checkpoint as the RPC answers it."""
    return {
        "vm": vm.name,
        "tag": rec.tag,
        "kind": rec.kind,
        "created_at": rec.created_at,
        "size_bytes": rec.size_bytes,
        "paused_ms": rec.paused_ms,
    }


def snapshots_dir(vm: VMRecord) -> Path:
    return vm.dir / SNAPSHOTS_DIR


def new_dir(vm: VMRecord, tag: str) -> Path:
    """`snapshots/<tag>`, or `<tag>~<n>` when a deleted checkpoint of that tag left frozen layers
    there that other layers still read through (they cannot move: qcow2 names its backing file
    by path). '~' is not allowed in tags, so no other tag's dir is ever taken."""
    base = snapshots_dir(vm)
    dest = base / tag
    n = 1
    while os.path.lexists(dest):
        dest = base / f"{tag}~{n}"
        n += 1
    return dest


async def _copy_file(src: Path, dest: Path) -> None:
    """A sparse (or reflinked) copy, staged, synced, then renamed into place."""
    tmp = dest.with_name(f".{dest.name}.partial")
    tmp.unlink(missing_ok=True)
    await clone_raw(src, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dest)


def _outside(vm: VMRecord, rec: SnapshotRecord, saved: SavedMachine) -> bool:
    """The record names files a driver would open or delete: they must be this VM's
    checkpoint's own (a record edited to point elsewhere is refused, never followed)."""
    home = snapshots_dir(vm).resolve()
    where = rec.dir.resolve()
    files = [saved.dir, *saved.disks.values()]
    return not where.is_relative_to(home) or any(
        not f.resolve().is_relative_to(where) for f in files
    )


class Checkpoints:
    """The `vm snapshot` verbs over the VM service (its locks, records, boot pipeline, drivers)."""

    def __init__(self, svc: ServiceHost) -> None:
        self._svc = svc

    def _driver_for(self, vm: VMRecord, driver: Driver) -> Driver:
        if Capability.SNAPSHOT not in driver.capabilities:
            raise InvalidInput(
                f"vm {vm.name} runs on the {driver.name} driver, which cannot take or restore "
                "checkpoints (no snapshot capability)"
            )
        return driver

    # --- create ----------------------------------------------------------------------------------

    async def create(self, ref: str, tag: str, ctx: RequestContext) -> dict[str, Any]:
        validate_tag(tag)
        svc = self._svc
        vm = svc._find(ref)
        async with svc._lock(vm.id):
            vm = await svc._refresh(svc.repo.get(vm.id))
            handle = svc.repo.handle(vm.id)
            if vm.state not in ("running", "paused") or handle is None:
                raise NotRunning(
                    f"vm {vm.name} is not running (state {vm.state}): a checkpoint saves a "
                    "running machine"
                )
            spec, driver = await svc.boot.running_spec(vm, handle)
            self._driver_for(vm, driver)
            dest = new_dir(vm, tag)
            # The pending row before any file (AlreadyExists when the tag is taken).
            svc.saved.begin(vm.id, tag, "checkpoint", dest)
            try:
                ctx.progress(stage="save", detail="RAM and disks", current=1, total=2)
                await svc._hold_for_test("snapshot")
                await asyncio.to_thread(dest.parent.mkdir, mode=0o700, exist_ok=True)
                try:
                    saved = await driver.save(handle, spec, dest, keep_running=True)
                except DriverError as e:
                    raise OperationFailed(f"checkpoint {tag!r} of vm {vm.name} failed: {e}") from e
                # The driver may note what it saved in the handle (e.g. a diff base).
                svc.repo.set_handle(vm.id, handle)
                ctx.progress(stage="seed", detail="seed disk", current=2, total=2)
                await _copy_file(vm.dir / SEED_FILE, dest / SEED_FILE)
                await svc._hold_for_test("snapshot_saved")
                size = await asyncio.to_thread(size_on_disk, dest)
                svc.saved.finish(vm.id, tag, saved, size)
            except BaseException:
                await asyncio.shield(self._drop_pending(vm.id, tag, dest))
                raise
            log.info(
                "checkpoint taken",
                extra={"vm": vm.name, "tag": tag, "size": size, "paused_s": saved.paused_seconds},
            )
            return info(vm, svc.saved.get(vm.id, tag))

    async def _drop_pending(self, vm_id: str, tag: str, dest: Path) -> None:
        """A create that failed: its files (but frozen layers the VM's disks are already backed
        by), then its row."""
        svc = self._svc
        try:
            in_use = await asyncio.to_thread(layers.all_layers, svc.paths)
            await layers.remove_saved_dir(dest, layers.outside(in_use, dest))
        except Exception as e:  # the next start's cleanup retries (the row stays pending)
            log.warning("removing a failed checkpoint failed: %s", e, extra={"tag": tag})
            return
        svc.saved.delete(vm_id, tag)

    # --- list ------------------------------------------------------------------------------------

    async def list(self, ref: str) -> list[dict[str, Any]]:
        vm = self._svc._find(ref)
        return [info(vm, rec) for rec in self._svc.saved.list(vm.id)]

    # --- restore ---------------------------------------------------------------------------------

    def _checkpoint(self, vm: VMRecord, tag: str) -> tuple[SnapshotRecord, SavedMachine]:
        try:
            rec = self._svc.saved.get(vm.id, tag)
        except NotFound:
            raise NotFound(f"vm {vm.name} has no snapshot {tag!r}") from None
        if rec.kind != "checkpoint" or rec.saved is None:
            raise NotFound(f"vm {vm.name} has no snapshot {tag!r}")
        if _outside(vm, rec, rec.saved):
            raise OperationFailed(
                f"snapshot {tag!r} of vm {vm.name} is damaged: its record names files outside "
                f"{rec.dir}; refusing to use it"
            )
        return rec, rec.saved

    async def restore(self, ref: str, tag: str, ctx: RequestContext) -> VMRecord:
        validate_tag(tag)
        svc = self._svc
        vm = svc._find(ref)
        async with svc._lock(vm.id):
            vm = await svc._refresh(svc.repo.get(vm.id))
            rec, saved = self._checkpoint(vm, tag)
            driver = self._driver_for(vm, svc.registry.get(saved.driver))
            if vm.state == "suspended":
                raise Conflict(
                    f"vm {vm.name} is suspended: resume or stop it first (a restore would "
                    "discard its suspended state)"
                )
            vcpus = saved.details.get("vcpus")
            if saved.memory_mib != vm.memory_mib or (vcpus is not None and vcpus != vm.vcpus):
                raise Conflict(
                    f"snapshot {tag!r} was taken with {vcpus} vCPUs and {saved.memory_mib} MiB; "
                    f"vm {vm.name} now has {vm.vcpus} and {vm.memory_mib} MiB: set them back first"
                )
            seed = rec.dir / SEED_FILE
            if not seed.is_file():
                raise OperationFailed(f"snapshot {tag!r} of vm {vm.name} lost its seed disk")
            ctx.progress(stage="stop", detail="", current=1, total=RESTORE_STEPS)
            if vm.state in ("running", "paused"):
                # Its current state is discarded anyway: no graceful shutdown.
                handle = svc.repo.handle(vm.id)
                if handle is not None:
                    await svc.registry.get(handle.driver).force_stop(handle)
                svc.lifecycle.apply(vm.id, Event.STOPPED, f"stopped to restore snapshot {tag}")
                await svc.boot.release(vm.id)
            # The seed the saved guest has mounted (a cold boot's would differ under its cache).
            await _copy_file(seed, vm.dir / SEED_FILE)
            log.info("restoring", extra={"vm": vm.name, "tag": tag, "via": driver.name})
            progress = Progress(ctx, RESTORE_STEPS, step=1)
            woke = await svc.boot.wake(svc.repo.get(vm.id), progress, Wake(saved, kind="restore"))
            return svc._enrich(woke)

    # --- delete ----------------------------------------------------------------------------------

    async def delete(self, ref: str, tag: str) -> Deleted:
        validate_tag(tag)
        svc = self._svc
        vm = svc._find(ref)
        async with svc._lock(vm.id):
            vm = svc.repo.get(vm.id)
            try:
                rec = svc.saved.get(vm.id, tag)
            except NotFound:
                raise NotFound(f"vm {vm.name} has no snapshot {tag!r}") from None
            saved = rec.saved
            if saved is None or rec.kind != "checkpoint":
                raise NotFound(f"vm {vm.name} has no snapshot {tag!r}")
            if _outside(vm, rec, saved):
                # A damaged record: forget it, touch no file it names.
                log.warning("dropping a damaged snapshot record", extra={"tag": tag})
                svc.saved.delete(vm.id, tag)
                return Deleted(vm.name, tag, layers_kept=False)
            driver = svc.registry.get(saved.driver)
            in_use = await asyncio.to_thread(layers.all_layers, svc.paths)
            try:
                gone = await driver.delete_saved(saved, layers.outside(in_use, rec.dir))
            except (DriverError, OSError) as e:
                msg = f"deleting snapshot {tag!r} of vm {vm.name} failed: {e}"
                raise OperationFailed(msg) from e
            if not gone:  # layers only: the rest of the checkpoint goes now
                (rec.dir / SEED_FILE).unlink(missing_ok=True)
            svc.saved.delete(vm.id, tag)
            return Deleted(vm.name, tag, layers_kept=not gone)

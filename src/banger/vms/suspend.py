"""Pause, resume and suspend of a VM (`vm pause|resume|suspend`, docs/snapshots.md).

- pause: the VMM freezes the vCPUs, memory stays in place, the process stays (`paused`).
- resume: thaws a paused VM (`running`).
- suspend: the whole machine (RAM and device state) goes to `<vm dir>/suspend/` through
  `Driver.save(keep_running=False)`, the VMM exits (`suspended`). `vm start` wakes it through the
  boot pipeline (`BootPipeline.wake`, kind "resume": the guest clock is set, SSH waited for) and
  then deletes the image; `vm stop` discards it, `vm delete` removes it with the VM.

Crash rule (vms/saved.py): the `@suspend` row is written pending BEFORE any file, made ready when
the files are complete, and the state changes last. What a daemon start makes of each cut
(vms/startup.py `Startup.run`): a pending row goes with its files (the VM is re-adopted running
when its VMM lives, and thawed in case the save had stopped it; else it is stopped); a ready row
of a VM whose VMM has exited makes it `suspended`; a suspended VM without a ready row is stopped;
a ready row of a VM that runs again (a start cut after its wake) is deleted.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from banger import fsutil
from banger.errors import InvalidInput, NotFound, NotRunning, OperationFailed
from banger.request import RequestContext
from banger.vmm.base import (
    Capability,
    Driver,
    DriverError,
    MissingCapability,
    SavedMachine,
    VMHandle,
)
from banger.vms import layers
from banger.vms.boot import Progress, Wake
from banger.vms.host import ServiceHost
from banger.vms.saved import SUSPEND_TAG, WAKING_MARK, SnapshotRecord, size_on_disk
from banger.vms.spec import VMRecord
from banger.vms.states import Event

log = logging.getLogger("banger.vms")

SUSPEND_DIR = "suspend"
# The steps the CLI counts for a start of a suspended VM: a wake's boot, guest, SSH.
WAKE_STEPS = 3
DISCARDED = "discarded the saved state (suspend image)"


def suspend_dir(vm: VMRecord) -> Path:
    return vm.dir / SUSPEND_DIR


def _capable(vm: VMRecord, driver: Driver, cap: Capability) -> None:
    if cap not in driver.capabilities:
        raise InvalidInput(f"vm {vm.name}: {MissingCapability(driver.name, cap)}")


def _outside(vm: VMRecord, rec: SnapshotRecord, saved: SavedMachine) -> bool:
    """A record naming files anywhere but this VM's suspend dir is refused, never followed."""
    home = suspend_dir(vm).resolve()
    files = [rec.dir, saved.dir, *saved.disks.values()]
    return any(not f.resolve().is_relative_to(home) for f in files)


class Suspends:
    """The pause/resume/suspend verbs over the VM service (its locks, records, boot pipeline)."""

    def __init__(self, svc: ServiceHost) -> None:
        self._svc = svc

    # --- pause / resume --------------------------------------------------------------------------

    async def _pausable(self, vm: VMRecord, event: Event) -> tuple[VMRecord, VMHandle, Driver]:
        """The fresh record of `vm` (its lock held), allowed `event`, its VMM and a driver that
        can pause it."""
        svc = self._svc
        vm = await svc._refresh(svc.repo.get(vm.id))
        svc.lifecycle.check(vm, event)
        handle = svc.repo.handle(vm.id)
        if handle is None:
            raise NotRunning(f"vm {vm.name} is not running (state {vm.state})")
        driver = svc.registry.get(handle.driver)
        _capable(vm, driver, Capability.PAUSE)
        return vm, handle, driver

    async def pause(self, ref: str) -> VMRecord:
        svc = self._svc
        vm = svc._find(ref)
        async with svc._lock(vm.id):
            vm, handle, driver = await self._pausable(vm, Event.PAUSE)
            # State first: a crash between the two leaves `paused` over a running guest, which
            # `vm resume` settles (a thaw of a running guest is harmless); never the reverse.
            svc.lifecycle.apply(vm.id, Event.PAUSE, "paused")
            try:
                await driver.pause(handle)
            except BaseException as e:
                svc.lifecycle.apply(vm.id, Event.RESUME, "the pause failed")
                if isinstance(e, MissingCapability):
                    raise InvalidInput(f"vm {vm.name}: {e}") from None
                if isinstance(e, DriverError):
                    raise OperationFailed(f"pausing vm {vm.name} failed: {e}") from e
                raise
            return svc._record(vm.id)

    async def resume(self, ref: str) -> VMRecord:
        svc = self._svc
        vm = svc._find(ref)
        async with svc._lock(vm.id):
            vm, handle, driver = await self._pausable(vm, Event.RESUME)
            try:
                await driver.resume(handle)
            except MissingCapability as e:
                raise InvalidInput(f"vm {vm.name}: {e}") from None
            except DriverError as e:
                raise OperationFailed(f"resuming vm {vm.name} failed: {e}") from e
            svc.lifecycle.apply(vm.id, Event.RESUME, "resumed")
            return svc._record(vm.id)

    # --- suspend ---------------------------------------------------------------------------------

    async def suspend(self, ref: str, ctx: RequestContext) -> VMRecord:
        svc = self._svc
        vm = svc._find(ref)
        async with svc._lock(vm.id):
            vm = await svc._refresh(svc.repo.get(vm.id))
            svc.lifecycle.check(vm, Event.SUSPEND)
            handle = svc.repo.handle(vm.id)
            if handle is None:
                raise NotRunning(f"vm {vm.name} is not running (state {vm.state})")
            spec, driver = await svc.boot.running_spec(vm, handle)
            _capable(vm, driver, Capability.SUSPEND)
            dest = suspend_dir(vm)
            # No row of it exists (the state says so): whatever is there is a leftover.
            svc.saved.delete(vm.id, SUSPEND_TAG)
            await asyncio.to_thread(fsutil.remove_entry, dest)
            # The pending row before any file.
            svc.saved.begin(vm.id, SUSPEND_TAG, "suspend", dest)
            try:
                ctx.progress(stage="suspend", detail="", current=1, total=1)
                await svc._hold_for_test("suspend")
                try:
                    saved = await driver.save(handle, spec, dest, keep_running=False)
                except MissingCapability as e:
                    raise InvalidInput(f"vm {vm.name}: {e}") from None
                except DriverError as e:
                    raise OperationFailed(f"suspending vm {vm.name} failed: {e}") from e
                await svc._hold_for_test("suspend_saved")
                # From here no await: the VMM has exited, a cancel must not drop a whole image
                # (sizing is a few stat calls).
                size = size_on_disk(dest)
                svc.saved.finish(vm.id, SUSPEND_TAG, saved, size)
            except BaseException:
                await asyncio.shield(self._drop(vm.id, dest))
                raise
            # The image is whole: from here the VM is suspended (its VMM has exited).
            svc.lifecycle.apply(vm.id, Event.SUSPEND, f"suspended ({size} bytes saved)")
            await svc.boot.release(vm.id)
            log.info("vm suspended", extra={"vm": vm.name, "size": size})
            return svc._record(vm.id)

    async def _drop(self, vm_id: str, dest: Path) -> None:
        """A suspend that failed: its files, then its row (the next start retries if this fails)."""
        try:
            await asyncio.to_thread(fsutil.remove_entry, dest)
        except OSError as e:
            log.warning("removing a failed suspend image failed: %s", e, extra={"vm_id": vm_id})
            return
        self._svc.saved.delete(vm_id, SUSPEND_TAG)

    # --- start of a suspended VM -----------------------------------------------------------------

    def image(self, vm: VMRecord) -> tuple[SnapshotRecord, SavedMachine]:
        try:
            rec = self._svc.saved.get(vm.id, SUSPEND_TAG)
        except NotFound:
            raise OperationFailed(
                f"vm {vm.name} is suspended but its saved state is missing; stop it to discard "
                "the suspended state, then start it again (a cold boot)"
            ) from None
        saved = rec.saved
        if rec.kind != "suspend" or saved is None or _outside(vm, rec, saved):
            raise OperationFailed(
                f"the suspend image of vm {vm.name} is damaged: its record names files outside "
                f"{suspend_dir(vm)}; refusing to use it (stop the VM to discard it)"
            )
        return rec, saved

    async def wake(self, vm: VMRecord, ctx: RequestContext) -> VMRecord:
        """`vm start` of a suspended VM (the caller holds its lock): RAM and devices come back,
        the clock is set, SSH answers; then the image goes. A failure leaves it suspended."""
        svc = self._svc
        rec, saved = self.image(vm)
        _capable(vm, svc.registry.get(saved.driver), Capability.SUSPEND)
        progress = Progress(ctx, WAKE_STEPS)
        # From the restore on the guest runs and writes its disks: if the daemon dies before
        # the state change, this image no longer matches them (the next start discards it).
        waking = rec.dir / WAKING_MARK
        await asyncio.to_thread(waking.write_text, "a start of this image is under way\n")
        try:
            woke = await svc.boot.wake(vm, progress, Wake(saved, identity=None, kind="resume"))
        except BaseException:
            waking.unlink(missing_ok=True)  # still suspended: the image is still good
            raise
        # The VM runs again: its image goes even if the client goes away now.
        await asyncio.shield(self._delete_image(vm, rec, saved))
        return woke

    async def _delete_image(self, vm: VMRecord, rec: SnapshotRecord, saved: SavedMachine) -> None:
        svc = self._svc
        try:
            in_use: list[Path] = []
            if saved.disks:  # a suspend's disks are the VM's own: nothing reads through it
                found = await asyncio.to_thread(layers.all_layers, svc.paths)
                in_use = layers.outside(found, rec.dir)
            await svc.registry.get(saved.driver).delete_saved(saved, in_use)
        except (DriverError, OSError) as e:
            # Its files stay until the next suspend clears them; the row goes regardless: a
            # ready image of a VM whose VMM died would otherwise make it `suspended` again at
            # the next daemon start, over disks that moved on.
            log.warning("deleting the suspend image failed: %s", e, extra={"vm": vm.name})
        svc.saved.delete(vm.id, SUSPEND_TAG)

    async def discard(self, vm: VMRecord) -> None:
        """`vm stop` of a suspended VM (the caller holds its lock): the image goes, then the
        state (a crash between the two leaves a suspended VM without an image, which the next
        daemon start stops)."""
        svc = self._svc
        try:
            rec: SnapshotRecord | None = svc.saved.get(vm.id, SUSPEND_TAG)
        except NotFound:
            rec = None
        if rec is not None and rec.saved is not None and not _outside(vm, rec, rec.saved):
            await self._delete_image(vm, rec, rec.saved)
        else:
            if rec is not None:
                log.warning("dropping a damaged suspend record", extra={"vm": vm.name})
            svc.saved.delete(vm.id, SUSPEND_TAG)
        await asyncio.to_thread(fsutil.remove_entry, suspend_dir(vm))
        svc.lifecycle.apply(vm.id, Event.DISCARDED, DISCARDED)
        log.info(DISCARDED, extra={"vm": vm.name})

"""What a daemon start does with the VMs it finds (docs/vms.md, "Crash recovery").

Finish interrupted deletes, fail interrupted creates (stopping what they launched), stop VMMs
and workspace SSH masters no record owns, sweep leftovers, then re-adopt every `running` VM whose
VMM is alive and mark the others stopped (or error, when the console says why). A running VM's
VMM is never killed here. Runs before the RPC server accepts anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from banger import fsutil
from banger.errors import NotFound
from banger.paths import Paths
from banger.vmm.base import Capability, VMHandle
from banger.vmm.registry import DriverRegistry
from banger.vms import layers, recovery
from banger.vms.boot import console_failure
from banger.vms.repository import VMRepository
from banger.vms.saved import SUSPEND_TAG, WAKING_MARK, SnapshotRecord, SnapshotRepository
from banger.vms.spec import VMRecord
from banger.vms.states import Event, Lifecycle

log = logging.getLogger("banger.vms")

VMM_EXIT_TIMEOUT = 10.0


class Startup:
    def __init__(
        self,
        *,
        repo: VMRepository,
        lifecycle: Lifecycle,
        registry: DriverRegistry,
        paths: Paths,
        known_hosts: Path,
        runtime_dir: Callable[[str], Path],
        purge: Callable[[str], Awaitable[None]],
        saved: SnapshotRepository | None = None,
    ) -> None:
        self._repo, self._lifecycle, self._registry = repo, lifecycle, registry
        self._paths, self._known_hosts, self._runtime_dir = paths, known_hosts, runtime_dir
        self._purge, self._saved = purge, saved

    async def run(self) -> list[VMRecord]:
        """Recover, then re-adopt: returns the VMs that run on (running or paused: a paused
        VM's VMM stays, frozen)."""
        # Suspends a crash cut short: their VMs may have been stopped by the save (thawed below).
        pending = self._saved.pending() if self._saved is not None else []
        cut = {r.vm_id for r in pending if r.kind == "suspend"}
        await self.recover()
        running = []
        for vm in self._repo.all():
            if vm.state == "suspended":
                self._check_suspended(vm)
                continue
            if vm.state not in ("running", "paused"):
                self._drop_stale_image(vm)
                continue
            handle = self._repo.handle(vm.id)
            alive = False
            if handle is not None:
                try:
                    alive = await self._registry.get(handle.driver).attach(handle)
                except Exception as e:
                    log.warning("re-attaching the vm failed: %s", e, extra={"vm": vm.name})
            if alive and handle is not None:
                log.info(f"re-adopted {vm.state} vm", extra={"vm": vm.name, "pid": vm.pid})
                caps = self._registry.get(handle.driver).capabilities
                if vm.state == "running" and (vm.id in cut or Capability.PAUSE in caps):
                    # Any save a crash cut (suspend, checkpoint, fork, template) may have left
                    # the vCPUs stopped; a `running` VM runs (a no-op when it does).
                    await self._thaw(vm, handle)
                self._drop_stale_image(vm)
                running.append(vm)
            elif self._suspend_image(vm) is not None:
                # The suspend finished its image and the VMM exited; only the state was left.
                self._lifecycle.apply(vm.id, Event.SUSPEND, "suspended (finished at restart)")
                shutil.rmtree(self._runtime_dir(vm.id), ignore_errors=True)
            else:
                self.mark_dead(vm)
        return running

    def _suspend_image(self, vm: VMRecord) -> SnapshotRecord | None:
        if self._saved is None:
            return None
        try:
            return self._saved.get(vm.id, SUSPEND_TAG)
        except NotFound:
            return None

    def _check_suspended(self, vm: VMRecord) -> None:
        """A suspended VM whose image a crash took away (a stop cut short) is stopped."""
        if self._saved is None:
            return
        rec = self._suspend_image(vm)
        if rec is not None and rec.saved is not None and (rec.dir / WAKING_MARK).is_file():
            # A start was cut after the guest ran again (its VMM, unowned, was stopped): the
            # image is older than the disks now, so loading it would corrupt them.
            log.warning("discarding a suspend image a cut start had resumed", extra={"vm": vm.name})
            if rec.dir.resolve().is_relative_to(vm.dir.resolve()):
                fsutil.remove_entry(rec.dir)
            self._saved.delete(vm.id, SUSPEND_TAG)
            self._lifecycle.apply(
                vm.id,
                Event.DISCARDED,
                "a start of it was cut while the guest ran again: its saved state no longer "
                "matched its disks and was discarded",
            )
            return
        # The files go before the row (a stop deletes them first): either missing means lost.
        if rec is None or rec.saved is None or not (rec.saved.dir / "saved.json").is_file():
            if rec is not None:
                self._saved.delete(vm.id, SUSPEND_TAG)
            log.warning("a suspended vm has no saved state", extra={"vm": vm.name})
            self._lifecycle.apply(vm.id, Event.DISCARDED, "the saved state was lost")

    def _drop_stale_image(self, vm: VMRecord) -> None:
        """A ready suspend image of a VM that is not suspended (a start cut short after its
        wake, a stop after its state change) is stale: it goes."""
        rec = self._suspend_image(vm)
        if rec is None or self._saved is None:
            # Files of an image whose row went (their deletion failed after a wake): leftovers.
            leftover = vm.dir / "suspend"
            if self._saved is not None and leftover.is_dir() and not leftover.is_symlink():
                log.warning("removing a suspend image's leftover files", extra={"vm": vm.name})
                fsutil.remove_entry(leftover)
            return
        log.warning("removing a stale suspend image", extra={"vm": vm.name})
        if rec.dir.resolve().is_relative_to(vm.dir.resolve()):
            fsutil.remove_entry(rec.dir)
        self._saved.delete(vm.id, SUSPEND_TAG)

    async def _thaw(self, vm: VMRecord, handle: VMHandle) -> None:
        """A save cut short may have stopped the vCPUs (and for QEMU left a migration behind,
        which `resume` cancels; Firecracker answers a resume of running vCPUs with Resumed):
        the VM was running, so it runs on."""
        try:
            await self._registry.get(handle.driver).resume(handle)
        except Exception as e:
            log.warning("thawing a vm after a cut suspend failed: %s", e, extra={"vm": vm.name})

    def mark_dead(self, vm: VMRecord) -> None:
        """A `running` VM whose VMM is gone: stopped, or error when the console says why."""
        reason = console_failure(vm.console_log)
        if reason:
            self._lifecycle.apply(vm.id, Event.CRASHED, f"the VM exited: {reason}")
        else:
            self._lifecycle.apply(vm.id, Event.EXITED, "the VMM exited")
        shutil.rmtree(self._runtime_dir(vm.id), ignore_errors=True)

    async def recover(self) -> None:
        """Undo what a daemon killed mid-work left behind."""
        procs = await asyncio.to_thread(recovery.vmm_processes, self._paths)
        for vm in self._repo.all():
            mine = [p for p in procs if p.vm_id == vm.id]
            if recovery.marked(vm.dir, recovery.DELETING) is not None:
                log.warning("finishing an interrupted delete", extra={"vm": vm.name})
                await self._stop_vmms(vm.id, mine)
                await self._purge(vm.id)
                continue
            if recovery.marked(vm.dir, recovery.FORKING) is not None:
                # A fork's child that never ran as itself: nothing of it is kept.
                log.warning("removing an interrupted fork's child", extra={"vm": vm.name})
                await self._stop_vmms(vm.id, mine)
                await self._purge(vm.id)
                continue
            stage = recovery.marked(vm.dir, recovery.CREATING)
            if stage is None:
                continue
            # A create was cut short: its VM may be half-booted. Stop it, keep it as an error.
            log.warning("marking an interrupted create failed", extra={"vm": vm.name})
            await self._stop_vmms(vm.id, mine)
            reason = (
                f"interrupted: bangerd stopped while creating this VM (stage {stage or '?'}); "
                "delete the VM and create it again"
            )
            self._lifecycle.apply(vm.id, Event.INTERRUPTED, reason)
            recovery.clear(vm.dir, recovery.CREATING)
            shutil.rmtree(self._runtime_dir(vm.id), ignore_errors=True)
        # VMMs of this state dir that no running record owns: a VM whose record is gone, or one
        # launched by a boot the crash cut off before it recorded the handle.
        owned: dict[str, int] = {}
        for vm in self._repo.all():
            handle = self._repo.handle(vm.id) if vm.state in ("running", "paused") else None
            if handle is not None:
                owned[vm.id] = handle.pid
        stray = [p for p in procs if owned.get(p.vm_id) != p.pid]
        for p in stray:
            log.warning("stopping a VMM no VM owns", extra={"pid": p.pid, "vm_id": p.vm_id})
        await kill_processes([(p.pid, p.vm_id) for p in stray])
        # Workspace SSH masters of the dead daemon (they daemonize out of the guard's reach).
        masters = await asyncio.to_thread(recovery.ssh_masters, self._known_hosts)
        await kill_processes([(m.pid, "ControlMaster=yes") for m in masters])
        for m in masters:
            await asyncio.to_thread(_remove_own_dir, m.control_dir)
        if self._saved is not None:
            await cleanup_pending_saves(self._saved, self._paths)
        await asyncio.to_thread(self._sweep_dirs, set(owned))
        await self._finish_bases()
        await layers.sweep(self._paths)

    async def _finish_bases(self) -> None:
        """Fork bases without the REMAINS note were being made when the daemon died: keep only
        the layers some VM reads through (the parent's active layers already do, right after
        its checkpoint), as remains; the rest goes."""
        bases = self._paths.bases_dir
        if not _real_dir(bases):
            return
        for entry in sorted(bases.iterdir()):
            if not layers.is_remains(entry):
                log.info("finishing an interrupted fork base", extra={"path": str(entry)})
                await layers.remove_keeping_backers(entry, self._paths)

    def _sweep_dirs(self, running: set[str]) -> None:
        """Remove VM dirs without a record, runtime dirs of VMs not running, and every staging
        entry (VMs, images, kernels: nothing is in flight at start). Symlinks are unlinked,
        never followed; a directory that is itself a symlink is not swept at all."""
        paths = self._paths
        for parent, keep in (
            (paths.vms_dir, self._repo.ids()),
            (paths.runtime_dir / "vms", running),
            (paths.staging_dir, set[str]()),
        ):
            if not _real_dir(parent):
                if os.path.lexists(parent):
                    log.error("not sweeping %s: it is not a directory (a symlink?)", parent)
                continue
            for entry in parent.iterdir():
                if entry.name in keep or layers.is_remains(entry):
                    continue  # remains: `layers.sweep` decides (others' disks may need them)
                log.info("removing leftover", extra={"path": str(entry)})
                fsutil.remove_entry(entry)

    async def _stop_vmms(self, vm_id: str, procs: Sequence[recovery.VMMProcess]) -> None:
        """Stop every VMM of `vm_id`: the recorded one through its driver, then any other."""
        handle = self._repo.handle(vm_id)
        if handle is not None:
            try:
                await self._registry.get(handle.driver).force_stop(handle)
            except Exception as e:
                log.warning("stopping the recorded VMM failed: %s", e, extra={"vm_id": vm_id})
        await kill_processes([(p.pid, p.vm_id) for p in procs])


async def cleanup_pending_saves(saved: SnapshotRepository, paths: Paths) -> int:
    """Saved machines a crash cut short (pending rows, any kind: checkpoint, suspend): their
    directories go, but frozen layers some other layer already reads through (a checkpoint
    killed after its disk swap: the VM's active layers are backed by them) stay, marked
    layers-only; then the rows. Returns how many rows it removed."""
    pending = saved.pending()
    if not pending:
        return 0
    in_use = await asyncio.to_thread(layers.all_layers, paths)
    done = 0
    for rec in pending:
        log.warning(
            "removing an interrupted save",
            extra={"vm_id": rec.vm_id, "tag": rec.tag, "kind": rec.kind},
        )
        home = (paths.vms_dir / rec.vm_id).resolve()
        if not rec.dir.resolve().is_relative_to(home):
            # A row naming a dir outside its VM's: dropped, the named files never touched.
            log.warning("dropping a pending save naming files elsewhere", extra={"vm": rec.vm_id})
            saved.delete(rec.vm_id, rec.tag)
            done += 1
            continue
        try:
            await layers.remove_saved_dir(rec.dir, layers.outside(in_use, rec.dir))
        except Exception as e:
            log.error("cannot remove %s: %s", rec.dir, e)
            continue
        saved.delete(rec.vm_id, rec.tag)
        done += 1
    return done


async def kill_processes(victims: Sequence[tuple[int, str]]) -> None:
    """SIGKILL each (pid, needle) whose command line still holds the needle (guards against
    pid reuse since the scan) and wait until they are gone (TAPs and disks released)."""
    pids = []
    for pid, needle in victims:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle.encode() not in cmdline:
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError) as e:
            log.warning("cannot stop pid %d: %s", pid, e)
            continue
        pids.append(pid)
    deadline = time.monotonic() + VMM_EXIT_TIMEOUT
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _running(pid)]
        if pids:
            await asyncio.sleep(0.05)
    for pid in pids:
        log.error("pid %d survived SIGKILL", pid)


def _running(pid: int) -> bool:
    try:
        st = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return st.rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")


def _real_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode)


def _remove_own_dir(path: Path) -> None:
    """Remove an SSH control dir we made (under /tmp: only a real dir we own)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
        fsutil.remove_entry(path)

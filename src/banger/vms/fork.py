"""`vm fork`: new VMs that carry a running VM's memory and disks (docs/snapshots.md, "Fork").

1. One live checkpoint of the parent (`Driver.save(keep_running=True)`) into a fork base
   `<state>/bases/<id>/`: its RAM and device state, its writable disks frozen as layers (the
   parent goes on over new active layers at its own paths), plus a copy of its seed disk.
2. Per child: `provision_clone` makes the record and the VM dir (host key, console log, seed
   copy; staged, then published, marked `forking`), `wake_clone` restores the base under the
   child's own disk paths (fresh qcow2 layers over the frozen ones) and gives the guest its
   identity (hostname, machine-id, host key, bridged address) through the boot pipeline.
   A child that fails is removed whole; the others are kept.
3. The base gets the REMAINS note (vms/layers.py): its frozen layers stay while the parent or a
   child reads through them, the rest goes now.

Crash safety: a child keeps the `forking` marker until it runs as itself (a daemon start removes
such a child whole); a base without REMAINS is finished by the next daemon start (vms/startup.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from banger import fsutil
from banger.errors import AlreadyExists, Conflict, InvalidInput, NotFound, NotRunning
from banger.guest.identity import GuestIdentity
from banger.guest.ssh import generate_host_key, pin_host_key
from banger.request import RequestContext
from banger.vmm.base import Capability, SavedMachine, VMSpec
from banger.vmm.plan import ROOT_RAW
from banger.vms import disks, layers, recovery
from banger.vms.boot import Progress, Wake
from banger.vms.host import ServiceHost
from banger.vms.names import InvalidName, validate_name
from banger.vms.ports import Network
from banger.vms.repository import now
from banger.vms.spec import VMRecord


class ForkHost(ServiceHost, Protocol):
    """What a fork uses of the VM service beyond the verbs' common `ServiceHost`."""

    @property
    def network(self) -> Network | None: ...
    @property
    def known_hosts(self) -> Path: ...
    @property
    def _reserved(self) -> set[str]: ...
    def vm_dir(self, vm_id: str) -> Path: ...
    async def _purge(self, vm_id: str) -> None: ...
    async def _discard(self, vm_id: str, name: str, made: Path | None, inserted: bool) -> None: ...


log = logging.getLogger("banger.vms")

MAX_CHILDREN = 16
SEED = "seed.ext4"
# Phases of one child's wake as the CLI counts them (boot, wait_guest, wait_ssh).
CHILD_PHASES = 3
# Share the base's RAM between the children (QEMU: one `memory.ram` mapped copy-on-write)?
# Measured under TCG (bench/bench_fork.py): it costs a helper VMM load + save of the stream.
SHARE_MEMORY_FROM = 2


@runtime_checkable
class SharesMemory(Protocol):
    """A driver that can turn a saved machine's RAM into a file its restores map copy-on-write
    (vmm/qemu.py `share_memory`)."""

    async def share_memory(self, spec: VMSpec, saved: SavedMachine) -> SavedMachine: ...


@dataclass
class ChildOutcome:
    name: str
    vm: VMRecord | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class ForkResult:
    parent: VMRecord
    # The parent's vCPUs stood still this long (the checkpoint's switchover).
    paused_seconds: float
    checkpoint_seconds: float
    shared_memory: bool
    children: list[ChildOutcome] = field(default_factory=list)


def child_names(name: str, count: int | None) -> list[str]:
    """NEW alone, or NEW-1 … NEW-K with a count (each a valid VM name)."""
    if count is not None and not 1 <= count <= MAX_CHILDREN:
        raise InvalidInput(f"a fork makes 1 to {MAX_CHILDREN} children, not {count}")
    names = [name] if count is None else [f"{name}-{i}" for i in range(1, count + 1)]
    out = []
    for n in names:
        try:
            out.append(validate_name(n))
        except InvalidName as e:
            raise InvalidInput(str(e)) from None
    return out


def reserve_names(svc: ForkHost, names: list[str]) -> None:
    """All of them or none (so no work starts for a fork that would clash half way)."""
    taken = svc.repo.names() | svc._reserved
    for n in names:
        if n in taken:
            raise AlreadyExists(f"vm {n!r} already exists; choose another name or delete it first")
    svc._reserved.update(names)


async def fork(
    svc: ForkHost, ref: str, name: str, count: int | None, ctx: RequestContext
) -> ForkResult:
    names = child_names(name, count)
    parent = svc._find(ref)
    reserve_names(svc, names)
    try:
        total = 1 + CHILD_PHASES * len(names)
        base = svc.paths.bases_dir / secrets.token_hex(6)
        try:
            result, saved = await checkpoint(svc, parent, base, ctx, total, len(names))
            for i, n in enumerate(names):
                step = 1 + CHILD_PHASES * i
                result.children.append(
                    await make_child(svc, result.parent, n, saved, ctx, step, total)
                )
        finally:
            # The base's layers back the parent's (and children's) active layers from the
            # checkpoint on: they stay as remains; its RAM, state and seed copy go now.
            if base.exists():
                await layers.remove_keeping_backers(base, svc.paths)
    finally:
        svc._reserved.difference_update(names)
    with contextlib.suppress(NotFound):  # the parent may have been deleted meanwhile
        result.parent = svc._record(result.parent.id)
    return result


async def checkpoint(
    svc: ForkHost, parent: VMRecord, base: Path, ctx: RequestContext, total: int, n: int
) -> tuple[ForkResult, SavedMachine]:
    """The parent's live checkpoint into `base` (under the parent's lock: a paused parent stays
    paused, a running one pauses for the switchover only)."""
    async with svc._lock(parent.id):
        parent = await svc._refresh(svc.repo.get(parent.id))
        handle = svc.repo.handle(parent.id)
        if parent.state not in ("running", "paused") or handle is None:
            raise NotRunning(
                f"vm {parent.name} is {parent.state}: only a running or paused VM can be forked"
            )
        driver = svc.registry.get(handle.driver)
        if Capability.FORK not in driver.capabilities:
            raise Conflict(f"vm {parent.name} runs on the {driver.name} VMM, which cannot fork")
        ctx.progress(stage="checkpoint", detail=parent.name, current=1, total=total)
        spec, _ = await svc.boot.running_spec(parent, handle)
        started = time.monotonic()
        base.parent.mkdir(parents=True, exist_ok=True)
        saved = await driver.save(handle, spec, base, keep_running=True)
        # The wake does not rebuild the seed (the guest has it mounted): the children get this.
        await asyncio.to_thread(shutil.copyfile, parent.dir / SEED, base / SEED)
        await svc._hold_for_test("fork-base")
    shared = False
    if n >= SHARE_MEMORY_FROM and isinstance(driver, SharesMemory):
        # Children map one RAM file copy-on-write: the pages none of them changed are shared.
        saved = await driver.share_memory(spec, saved)
        shared = True
    result = ForkResult(
        parent=parent,
        paused_seconds=saved.paused_seconds,
        checkpoint_seconds=time.monotonic() - started,
        shared_memory=shared,
    )
    log.info(
        "forked vm checkpointed",
        extra={"vm": parent.name, "paused_s": round(saved.paused_seconds, 3)},
    )
    return result, saved


async def make_child(
    svc: ForkHost,
    parent: VMRecord,
    name: str,
    saved: SavedMachine,
    ctx: RequestContext,
    step: int,
    total: int,
) -> ChildOutcome:
    """One child, whole or not at all (a failure is reported in the outcome)."""
    started = time.monotonic()
    child: VMRecord | None = None
    try:
        child = await provision_clone(svc, parent, name, saved)
        progress = Progress(_prefixed(ctx, name), total, step=step)
        vm = await wake_clone(svc, child, saved, progress, "fork")
        return ChildOutcome(name, svc._enrich(vm), time.monotonic() - started)
    except asyncio.CancelledError:
        if child is not None:
            await asyncio.shield(svc._purge(child.id))
        raise
    except Exception as e:
        reason = getattr(e, "message", None) or str(e) or type(e).__name__
        log.warning("fork child failed: %s", reason, extra={"vm": name})
        if child is not None:
            await svc._purge(child.id)
        return ChildOutcome(name, None, time.monotonic() - started, reason)


async def provision_clone(
    svc: ForkHost, source: VMRecord, name: str, saved: SavedMachine
) -> VMRecord:
    """A new VM shaped like `source` (image, kernel, sizing, init, network kind, NAT and egress
    policy), with its own id, name, host key (pinned as NAME.vm) and a copy of `seed`; no disks
    (the restore lays them over the saved layers). Marked `forking` until `wake_clone` is done.
    Staged then published, record after the dir: on failure nothing of it is left."""
    vm_id = secrets.token_hex(6)
    made: Path | None = None
    inserted = False
    try:
        staged = svc.paths.staging_dir / f"vm-{vm_id}"
        staged.mkdir(parents=True)
        made = staged
        recovery.mark(staged, recovery.FORKING, source.name)
        _, pub = await asyncio.to_thread(generate_host_key, staged)
        (staged / "console.log").touch()
        await asyncio.to_thread(shutil.copyfile, saved.dir / SEED, staged / SEED)
        disk_placeholders(staged, saved)
        final = svc.vm_dir(vm_id)
        await asyncio.to_thread(fsutil.publish, staged, final)
        made = final
        stamp = now()
        svc.repo.insert(
            VMRecord(
                id=vm_id, name=name, state="created", image_id=source.image_id,
                image_name=source.image_name, kernel=source.kernel, vcpus=source.vcpus,
                memory_mib=source.memory_mib, disk_size_bytes=source.disk_size_bytes,
                init_mode=source.init_mode, network=source.network, created_at=stamp,
                updated_at=stamp, dir=final, console_log=final / "console.log",
            )
        )  # fmt: skip
        inserted = True
        await _copy_network_policy(svc, source.id, vm_id)
        await asyncio.to_thread(pin_host_key, svc.known_hosts, f"{name}.vm", pub)
    except BaseException:
        await svc._discard(vm_id, name, made, inserted)
        raise
    return svc.repo.get(vm_id)


async def _copy_network_policy(svc: ForkHost, source_id: str, vm_id: str) -> None:
    """A child may reach no more than its parent could (NAT, egress rules)."""
    if svc.network is None or svc.network.mode != "bridge":
        return
    policy = svc.network.policy(source_id)
    if svc.network.nat(source_id):
        await svc.network.set_nat(vm_id, True)
    if policy.restricted:
        await svc.network.set_egress(vm_id, [r.text for r in policy.rules], (), policy.mode)


async def wake_clone(
    svc: ForkHost, vm: VMRecord, saved: SavedMachine, progress: Progress, kind: str
) -> VMRecord:
    """Start `vm` (from `provision_clone`) from `saved` with its own identity; running on return.
    A failure leaves it `error` (the caller removes it)."""
    identity = child_identity(vm.name, vm.dir)
    async with svc._lock(vm.id):
        woke = await svc.boot.wake(svc.repo.get(vm.id), progress, Wake(saved, identity, kind))
    # Runs as itself: no longer a crash's to remove.
    await asyncio.to_thread(recovery.clear, vm.dir, recovery.FORKING)
    return woke


def disk_placeholders(vdir: Path, saved: SavedMachine) -> None:
    """Empty files naming the disk formats a VM made from `saved` will have (the boot plan
    picks the driver and disk kinds from them: a raw root means Firecracker); the restore puts
    the VM's own disks at those paths, over or copied from the saved ones."""
    for role, frozen in saved.disks.items():
        qcow2 = frozen.suffix == ".qcow2"
        if role == "root" and not qcow2:
            (vdir / ROOT_RAW).touch()
        elif role == "work":
            (vdir / (disks.WORK_OVERLAY if qcow2 else disks.WORK_RAW)).touch()


def child_identity(name: str, vdir: Path) -> GuestIdentity:
    """The identity a VM made from another's memory takes (a fork child, a warm create): its
    name, a new machine-id, the host key made in its dir. A bridged VM's address is filled in by
    the wake once the network attached it."""
    return GuestIdentity(
        hostname=name,
        machine_id=secrets.token_hex(16),
        host_key_private=(vdir / "ssh_host_ed25519_key").read_text(),
        host_key_public=(vdir / "ssh_host_ed25519_key.pub").read_text().strip(),
    )


def _prefixed(ctx: RequestContext, name: str) -> RequestContext:
    """Progress lines that say which child they are about."""

    def emit(ev: dict[str, Any]) -> None:
        ctx.emit({**ev, "vm": name, "detail": f"{name}: {ev.get('detail', '')}".rstrip(": ")})

    return RequestContext(op_id=ctx.op_id, method=ctx.method, emit=emit)

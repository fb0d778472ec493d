"""The boot pipeline: named stages from a stored VM to a guest that answers SSH.

    resolve → network → seed → launch → wait_guest → wait_ssh → publish

A wake (`BootPipeline.wake`) brings a saved machine back instead of booting one (resume of a
suspend, roll back to a checkpoint, a fork's or warm create's first start):

    resolve → network → restore → identity → wait_ssh → publish

It keeps the seed disk that was saved with the machine (the guest has it mounted: a rebuilt one
would differ under its page cache), and `identity` sets the guest's clock or, for a new VM made
from another's memory, its whole identity (guest/identity.py).

Each stage reports progress under its phase (the steps the CLI counts: boot, wait_guest,
wait_ssh). A failure at any stage stops what was launched, releases the network and the runtime
dir, and leaves the VM `error` with the reason; a cancel does the same and leaves it `stopped`.
The pipeline talks to VMMs only through the `Driver` protocol and the daemon's `DriverRegistry`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import BangerError, Conflict, InvalidInput, NotFound, OperationFailed
from banger.guest import payload
from banger.guest.identity import (
    GuestAddress,
    GuestIdentity,
    IdentityError,
    reidentify,
    set_clock,
)
from banger.request import RequestContext
from banger.vmm.base import DiskSpec, Driver, NetworkSpec, SavedMachine, VMHandle, VMSpec
from banger.vmm.plan import BootPlan
from banger.vmm.registry import DriverRegistry
from banger.vms import disks
from banger.vms.operations import Operation
from banger.vms.ports import GuestTools, Images, Kernel, Kernels, Network
from banger.vms.repository import VMRepository, now
from banger.vms.spec import VMRecord
from banger.vms.states import Event, Lifecycle

log = logging.getLogger("banger.vms")

GUEST_READY_TIMEOUT = 180.0
IDENTITY_TIMEOUT = 60.0
SSH_READY_TIMEOUT = 60.0
CONSOLE_TAIL_LINES = 8
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet cryptomgr.notests mitigations=off "
    "root=/dev/vda rootfstype=ext4 banger.seed=LABEL=banger-seed banger.init=/.banger/init"
)

Hold = Callable[[str], Awaitable[None]]


async def _no_hold(point: str) -> None:
    return None


class Progress:
    """Counts phases (resolve, disks, boot, wait_guest, wait_ssh: what the CLI numbers); a
    stage inside the current phase only updates the detail. `on_phase` sees each new phase
    (the create's crash marker)."""

    def __init__(
        self,
        ctx: RequestContext,
        total: int,
        *,
        step: int = 0,
        op: Operation | None = None,
        on_phase: Callable[[str], None] | None = None,
    ) -> None:
        self.ctx, self.total, self.step, self.op, self.on_phase = ctx, total, step, op, on_phase
        self.phase = ""

    def stage(self, phase: str, name: str, detail: str = "") -> None:
        if phase != self.phase:
            self.phase = phase
            self.step += 1
            self.ctx.progress(stage=phase, detail=detail, current=self.step, total=self.total)
            if self.on_phase is not None:
                self.on_phase(phase)
        else:
            self.ctx.progress(stage=name, detail=detail)
        if self.op is not None:
            self.op.update(phase, detail, done=self.step - 1, total=self.total)


@dataclass(frozen=True)
class Wake:
    """What a wake restores: `saved` (from `Driver.save`), and for a VM made from another's
    memory (fork, warm create) the identity the guest takes; None: the same VM wakes (its clock
    is set). A work disk saved as qcow2 needs the VM's overlay, which the resolve stage keeps."""

    saved: SavedMachine
    identity: GuestIdentity | None = None
    # What the progress and the log call it ("resume", "restore", "fork", "warm").
    kind: str = "restore"


@dataclass
class _Boot:
    """What the stages hand each other."""

    vm: VMRecord
    rundir: Path
    wake: Wake | None = None
    kernel: Kernel | None = None
    plan: BootPlan | None = None
    net: NetworkSpec = field(default_factory=lambda: NetworkSpec(kind="user"))
    guest_net: payload.GuestNetwork = field(default_factory=lambda: payload.GuestNetwork("user"))
    guest_ip: str | None = None
    handle: VMHandle | None = None

    @property
    def driver(self) -> Driver:
        assert self.plan is not None, "the resolve stage sets the plan"
        return self.plan.driver

    def alive(self) -> bool:
        return self.handle is not None and self.driver.is_alive(self.handle)


@dataclass(frozen=True)
class Stage:
    name: str
    phase: str
    detail: str
    run: Callable[[_Boot], Awaitable[None]]


class BootPipeline:
    def __init__(
        self,
        *,
        repo: VMRepository,
        lifecycle: Lifecycle,
        registry: DriverRegistry,
        images: Images,
        kernels: Kernels,
        network: Network | None,
        tools: GuestTools,
        key_path: Callable[[], Path],
        runtime_dir: Callable[[str], Path],
        cache_dir: Path,
        hold: Hold = _no_hold,
        guest_timeout: float = GUEST_READY_TIMEOUT,
        ssh_timeout: float = SSH_READY_TIMEOUT,
    ) -> None:
        self._repo, self._lifecycle, self._registry = repo, lifecycle, registry
        self._images, self._kernels, self._network = images, kernels, network
        self._tools, self._key_path, self._runtime_dir = tools, key_path, runtime_dir
        self._cache_dir, self._hold = cache_dir, hold
        self._guest_timeout, self._ssh_timeout = guest_timeout, ssh_timeout
        self.stages = (
            Stage("resolve", "boot", "kernel and image", self._resolve),
            Stage("network", "boot", "network", self._attach),
            Stage("seed", "boot", "seed disk", self._seed),
            Stage("launch", "boot", "VMM", self._launch),
            Stage("wait_guest", "wait_guest", "guest init", self._wait_guest),
            Stage("wait_ssh", "wait_ssh", "SSH", self._wait_ssh),
            Stage("publish", "wait_ssh", "name and SSH alias", self._publish),
        )
        self.wake_stages = (
            Stage("resolve", "boot", "kernel and image", self._resolve),
            Stage("network", "boot", "network", self._attach),
            Stage("restore", "boot", "saved machine", self._restore),
            Stage("identity", "wait_guest", "guest clock and identity", self._identity),
            Stage("wait_ssh", "wait_ssh", "SSH", self._wait_ssh),
            Stage("publish", "wait_ssh", "name and SSH alias", self._publish),
        )

    async def run(self, vm: VMRecord, progress: Progress) -> VMRecord:
        """Boot `vm` (the caller holds its lock). Returns the running record."""
        self._lifecycle.check(vm, Event.LAUNCHED)
        return await self._run(_Boot(vm, self._runtime_dir(vm.id)), self.stages, progress)

    async def wake(self, vm: VMRecord, progress: Progress, wake: Wake) -> VMRecord:
        """Bring `vm` back from `wake.saved` (the caller holds its lock): a suspended VM goes
        `running` by RESTORE, any not-running one by LAUNCHED. The VM's disks and seed are the
        caller's to prepare; the driver lays the checkpoint's layers under them."""
        self._lifecycle.check(vm, self._wake_event(vm))
        b = _Boot(vm, self._runtime_dir(vm.id), wake=wake)
        return await self._run(b, self.wake_stages, progress)

    @staticmethod
    def _wake_event(vm: VMRecord) -> Event:
        return Event.RESTORE if vm.state == "suspended" else Event.LAUNCHED

    async def _run(self, b: _Boot, stages: tuple[Stage, ...], progress: Progress) -> VMRecord:
        vm = b.vm
        current = stages[0]
        try:
            for current in stages:
                progress.stage(current.phase, current.name, current.detail)
                await current.run(b)
        except asyncio.CancelledError:
            await asyncio.shield(self._undo(b))
            if not self._still_suspended(vm):
                self._lifecycle.apply(vm.id, Event.BOOT_CANCELLED, f"cancelled at {current.name}")
            raise
        except Exception as e:
            await self._undo(b)
            reason = getattr(e, "message", None) or str(e) or type(e).__name__
            if not self._still_suspended(vm):
                self._lifecycle.apply(vm.id, Event.BOOT_FAILED, reason)
            log.warning("boot failed", extra={"vm": vm.name, "stage": current.name})
            if isinstance(e, BangerError) and not isinstance(e, OperationFailed):
                raise  # not found / invalid input keep their kind
            msg = f"vm {vm.name} failed to boot: {reason} (console log: {vm.console_log})"
            tail = console_tail(vm.console_log)
            raise OperationFailed(msg + ("\n" + tail if tail else "")) from None
        return self._repo.get(vm.id)

    def _still_suspended(self, vm: VMRecord) -> bool:
        """A wake that failed before its guest ran again: the suspend image is still good, so
        the VM stays `suspended` (a later `vm start` tries again)."""
        return self._repo.get(vm.id).state == "suspended"

    # --- stages ------------------------------------------------------------------------------

    async def _resolve(self, b: _Boot) -> None:
        vm = b.vm
        try:
            kernel = await self._kernels.get(vm.kernel)
        except Exception as e:
            if not is_not_found(e):
                raise
            raise NotFound(f"kernel {vm.kernel!r} of vm {vm.name} no longer exists") from None
        try:
            await self._images.get(vm.image_id)
        except Exception as e:
            if not is_not_found(e):
                raise
            raise NotFound(
                f"image {vm.image_name!r} of vm {vm.name} no longer exists; delete the VM"
            ) from None
        if kernel.initrd is None:
            raise InvalidInput(f"kernel {kernel.name} has no initramfs; re-import it with modules")
        b.kernel = kernel
        b.plan = self._registry.boot_plan(
            vm.name, vm.dir, kernel.name, kernel.boot_image, kernel.vmlinux, vm.network
        )
        if b.plan.root.format == "qcow2" and b.wake is None:
            # QEMU: /root joins the copy-on-write chain too (vms/disks.py).
            await disks.ensure_work_overlay(vm.dir)

    async def _attach(self, b: _Boot) -> None:
        vm = b.vm
        if vm.network != "tap":
            return
        if self._network is None:
            raise OperationFailed("this VM uses bridged networking but it is unavailable")
        gn = await self._network.attach(vm.id, vm.name)
        b.net = NetworkSpec(kind="tap", tap_device=gn.tap, mac=gn.mac)
        b.guest_net = payload.GuestNetwork(
            kind="tap",
            address=gn.ip,
            prefix=gn.prefix,
            gateway=gn.gateway,
            dns=tuple(gn.dns),
            mac=gn.mac,
        )
        b.guest_ip = gn.ip

    async def _seed(self, b: _Boot) -> None:
        vm, vdir = b.vm, b.vm.dir
        pubkey = await asyncio.to_thread(self._tools.client_key, self._key_path())
        cfg = payload.SeedConfig(
            vm_id=vm.id,
            hostname=vm.name,
            authorized_keys=pubkey,
            host_key_private=(vdir / "ssh_host_ed25519_key").read_text(),
            host_key_public=(vdir / "ssh_host_ed25519_key.pub").read_text(),
            init_mode=vm.init_mode,
            network=b.guest_net,
        )
        channel = b.driver.guest_channel()
        if channel.kind == "vsock":
            # No virtio-serial there: the seed carries the AF_VSOCK control agent.
            agent = await asyncio.to_thread(self._tools.vsock_agent, self._cache_dir)
            cfg = dataclasses.replace(cfg, vsockd=agent, vsock_port=channel.vsock_port)
        await asyncio.to_thread(self._tools.build_seed, vdir / "seed.ext4", cfg)

    def _spec(self, b: _Boot, what: str) -> VMSpec:
        """The machine the driver starts (a cold boot and a wake describe the same one)."""
        vm = b.vm
        with open(vm.console_log, "ab") as f:
            f.write(f"\n--- banger: {what} of {vm.name} at {now()} ---\n".encode())
        shutil.rmtree(b.rundir, ignore_errors=True)
        return machine_spec(b)

    async def running_spec(self, vm: VMRecord, handle: VMHandle) -> tuple[VMSpec, Driver]:
        """The VMSpec the running (or paused) `vm` runs with now (the one its boot or wake built)
        and its driver: what `Driver.save` needs for a checkpoint, a fork or a suspend. Touches
        nothing (no console marker, the runtime dir stays); the network is the VM's current one."""
        b = _Boot(vm, self._runtime_dir(vm.id), handle=handle)
        kernel = await self._kernels.get(vm.kernel)
        b.kernel = kernel
        b.plan = self._registry.boot_plan(
            vm.name, vm.dir, kernel.name, kernel.boot_image, kernel.vmlinux, vm.network
        )
        if vm.network == "tap":
            from banger.network.tap import guest_mac, tap_name

            b.net = NetworkSpec(kind="tap", tap_device=tap_name(vm.id), mac=guest_mac(vm.id))
            b.guest_ip = self._network.guest_ip(vm.id) if self._network is not None else None
        else:
            b.net = NetworkSpec(kind="user", ssh_host_port=handle.ssh_port)
        return machine_spec(b), self._registry.get(handle.driver)

    async def _launch(self, b: _Boot) -> None:
        spec = self._spec(b, "boot")
        b.handle = await b.driver.launch(spec)
        await self._hold("boot")
        self._lifecycle.apply(b.vm.id, Event.LAUNCHED, handle=b.handle)

    async def _restore(self, b: _Boot) -> None:
        assert b.wake is not None
        if b.driver.name != b.wake.saved.driver:
            raise Conflict(
                f"vm {b.vm.name}'s saved state was made by the {b.wake.saved.driver} VMM, but "
                f"the VM would now start on {b.driver.name}: set vmm = "
                f'"{b.wake.saved.driver}" in the config to restore it'
            )
        spec = self._spec(b, b.wake.kind)
        b.handle = await b.driver.restore(spec, b.wake.saved)
        await self._hold("restore")
        reason = f"{b.wake.kind} from {b.wake.saved.dir.name}"
        self._lifecycle.apply(b.vm.id, self._wake_event(b.vm), reason, handle=b.handle)

    async def _identity(self, b: _Boot) -> None:
        """The guest's clock (it wakes at the moment it was saved) or its whole new identity."""
        assert b.wake is not None and b.handle is not None
        handle, driver = b.handle, b.driver

        async def open_control(
            timeout: float,
        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await driver.open_control(handle, timeout)

        try:
            if b.wake.identity is None:
                await set_clock(open_control, IDENTITY_TIMEOUT)
            else:
                ident = self._with_address(b, b.wake.identity)
                await reidentify(open_control, ident, IDENTITY_TIMEOUT)
        except IdentityError as e:
            raise OperationFailed(f"the restored guest did not take its identity: {e}") from None

    @staticmethod
    def _with_address(b: _Boot, ident: GuestIdentity) -> GuestIdentity:
        """A bridged VM made from another's memory takes the address its network stage got."""
        gn = b.guest_net
        if ident.address is not None or gn.kind != "tap" or not gn.address:
            return ident
        addr = GuestAddress(gn.address, gn.prefix, gn.gateway or None, gn.mac or None)
        return dataclasses.replace(ident, address=addr)

    async def _wait_guest(self, b: _Boot) -> None:
        assert b.handle is not None
        await b.driver.wait_ready(b.handle, self._guest_timeout, b.alive)

    async def _wait_ssh(self, b: _Boot) -> None:
        assert b.handle is not None
        await self._hold("wait_ssh")
        h = b.handle
        await self._tools.wait_ssh(h.ssh_host, h.ssh_port, self._ssh_timeout, b.alive)

    async def _publish(self, b: _Boot) -> None:
        if self._network is None or b.handle is None:
            return
        try:
            await self._network.published(
                b.vm.id, b.vm.name, b.vm.network, b.handle.ssh_host, b.handle.ssh_port
            )
        except Exception as e:
            # The VM runs; only `ssh <name>.vm` and its DNS name are missing.
            log.warning("publishing the vm failed: %s", e, extra={"vm": b.vm.name})

    # --- cleanup -----------------------------------------------------------------------------

    async def _undo(self, b: _Boot) -> None:
        if b.handle is not None:
            try:
                await b.driver.force_stop(b.handle)
            except Exception as e:
                log.warning("stopping a failed boot's VMM failed: %s", e, extra={"vm": b.vm.name})
        await self.release(b.vm.id)

    async def reidentify_running(self, handle: VMHandle, ident: GuestIdentity) -> None:
        """Give the running guest behind `handle` a new identity (hostname, machine-id, host
        key: sshd restarts) through its control channel."""
        driver = self._registry.get(handle.driver)

        async def open_control(
            timeout: float,
        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await driver.open_control(handle, timeout)

        try:
            await reidentify(open_control, ident, IDENTITY_TIMEOUT)
        except IdentityError as e:
            raise OperationFailed(f"the guest did not take its new identity: {e}") from None

    async def release(self, vm_id: str) -> None:
        """After the VMM is gone: its runtime dir and its network attachment."""
        shutil.rmtree(self._runtime_dir(vm_id), ignore_errors=True)
        if self._network is None:
            return
        try:
            await self._network.detach(vm_id)
        except Exception as e:
            log.warning("detaching the vm's network failed: %s", e, extra={"vm_id": vm_id})


def is_not_found(e: BaseException) -> bool:
    """A not-found from a collaborator (domain NotFound, or a service still raising wire errors)."""
    return isinstance(e, NotFound) or getattr(e, "code", None) == "not_found"


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def console_failure(path: Path) -> str | None:
    """Why the last boot ended, when the console says it failed."""
    tail = console_tail(path, 40)
    boot_marker = tail.rfind("--- banger: boot")
    tail = tail[boot_marker:] if boot_marker >= 0 else tail
    for line in reversed(tail.splitlines()):
        if "warning:" in line:
            continue  # e.g. an optional module that did not load: the boot went on
        for marker in ("banger-initramfs:", "banger-guest: ERROR", "Kernel panic"):
            if marker in line:
                return line.strip()
    return None


def machine_spec(b: _Boot) -> VMSpec:
    """The machine a boot, a wake or a save describes (the same one each time)."""
    vm, plan, kernel = b.vm, b.plan, b.kernel
    assert plan is not None and kernel is not None
    return VMSpec(
        vm_id=vm.id,
        name=vm.name,
        kernel=plan.kernel,
        initrd=kernel.initrd,
        cmdline=KERNEL_ARGS,
        root_disk=plan.root,
        work_disk=disks.work_disk(vm.dir),
        extra_disks=(DiskSpec(vm.dir / "seed.ext4", "raw", read_only=True),),
        vcpus=vm.vcpus,
        memory_mib=vm.memory_mib,
        network=b.net,
        console_log=vm.console_log,
        runtime_dir=b.rundir,
        extra={"kernel_name": kernel.name, **({"guest_ip": b.guest_ip} if b.guest_ip else {})},
    )

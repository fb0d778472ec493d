"""The VM service: verbs over the lifecycle core. The repository (`vms/repository.py`) owns the
rows, the state machine (`vms/states.py`) every state change, the boot pipeline (`vms/boot.py`)
the way to a running guest, `vms/startup.py` what a daemon start finds. A VM's VMM outlives the
daemon: a restart re-adopts running VMs from their persisted handles and never kills them.

Per VM, under `<state>/vms/<id>/`: root.qcow2 (overlay over the image's raw ext4) or root.img,
work.ext4 (sparse, /root in the guest) and for QEMU VMs work.qcow2 over it (vms/disks.py),
seed.ext4 (rebuilt at every cold start), console.log, host key.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import logging
import os
import secrets
import shutil
import signal as signal_mod
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from banger import fsutil
from banger.config import Config
from banger.errors import AlreadyExists, BangerError, Conflict, InvalidInput, NotFound, NotRunning
from banger.guest.identity import GuestIdentity
from banger.guest.ssh import SSHTarget, forget_host, generate_host_key, pin_host_key
from banger.images.model import TemplateInfo
from banger.network.egress import Policy, updated
from banger.paths import Paths
from banger.request import RequestContext
from banger.store.db import Store
from banger.vmm.base import Driver, DriverError, VMHandle, VMSpec
from banger.vmm.registry import DriverRegistry
from banger.vms import boot as boot_mod
from banger.vms import disks, layers, recovery
from banger.vms import fork as fork_mod
from banger.vms import warm as warm_mod
from banger.vms.boot import BootPipeline, Progress, Wake
from banger.vms.checkpoints import Checkpoints, Deleted
from banger.vms.names import InvalidName, generate_name, validate_name
from banger.vms.operations import Operation, Operations
from banger.vms.ports import GuestTools, Image, Images, Kernel, Kernels, Network
from banger.vms.repository import VMRepository, now
from banger.vms.saved import Combination, SnapshotRepository, TemplateRecord, TemplateRepository
from banger.vms.spec import InitMode, Sizing, VMRecord, resolve_sizing
from banger.vms.startup import Startup
from banger.vms.states import Event, Lifecycle
from banger.vms.suspend import Suspends
from banger.vms.warm import Templates

log = logging.getLogger("banger.vms")

STOP_TIMEOUT = 30.0
DELETE_STOP_TIMEOUT = 10.0
KILL_EXIT_TIMEOUT = 10.0
MONITOR_INTERVAL = 1.0
ALLOWED_SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "ABRT")
CREATE_STAGES = ("resolve", "disks", "boot", "wait_guest", "wait_ssh")
START_STAGES = ("boot", "wait_guest", "wait_ssh")
# Test-only: hold a create at a named point (disks, boot, wait_ssh) so a crash test can kill the
# daemon there; it touches `<runtime>/test-hold-<point>` when it gets there (docs/vms.md).
TEST_HOLD_ENV = "BANGER_TEST_HOLD_AT"


@dataclass(frozen=True)
class CreateRequest:
    name: str | None = None
    image: str | None = None
    kernel: str | None = None
    vcpus: int | None = None
    memory_mib: int | None = None
    disk_size: str | None = None
    init: InitMode = "auto"
    start: bool = True
    nat: bool = False
    allow: tuple[str, ...] = ()  # egress allow rules: any one makes the VM's egress restricted
    egress: Literal["open", "restricted"] | None = None
    # Boot cold even when a warm-create template of this combination exists.
    cold: bool = False


@dataclass(frozen=True)
class _Provisioned:
    """What `_provision` decided: the combination (None: this driver cannot warm-create) and
    the template the VM wakes from (None: a cold boot)."""

    combo: Combination | None = None
    template: TemplateRecord | None = None


class VMService:
    def __init__(
        self,
        *,
        store: Store,
        paths: Paths,
        config: Config,
        registry: DriverRegistry,
        images: Images,
        kernels: Kernels,
        network: Network | None = None,
        tools: GuestTools | None = None,
        monitor_interval: float = MONITOR_INTERVAL,
    ) -> None:
        self.paths, self.config, self.registry = paths, config, registry
        self.images, self.kernels, self.network = images, kernels, network
        self.repo = VMRepository(store, paths.vms_dir)
        # Saved machines on record (vms/saved.py): checkpoints and suspend images, templates.
        self.saved = SnapshotRepository(store)
        self.templates = TemplateRepository(store)
        self.warm = Templates(self.templates, paths)
        # Background work of finished creates (a template's RAM moved into a shared file).
        self._background: set[asyncio.Task[None]] = set()
        self.lifecycle = Lifecycle(self.repo)
        self.boot = BootPipeline(
            repo=self.repo,
            lifecycle=self.lifecycle,
            registry=registry,
            images=images,
            kernels=kernels,
            network=network,
            tools=tools or GuestTools(),
            key_path=lambda: self.key_path,
            runtime_dir=self.runtime_dir,
            cache_dir=paths.cache_dir,
            hold=self._hold_for_test,
        )
        self.startup = Startup(
            repo=self.repo,
            lifecycle=self.lifecycle,
            registry=registry,
            paths=paths,
            known_hosts=self.known_hosts,
            runtime_dir=self.runtime_dir,
            purge=self._purge,
            saved=self.saved,
        )
        self.checkpoints = Checkpoints(self)
        self.suspends = Suspends(self)
        self.ops = Operations()
        self._locks: dict[str, asyncio.Lock] = {}
        self._reserved: set[str] = set()
        self._monitor: asyncio.Task[None] | None = None
        self._monitor_interval = monitor_interval

    # --- paths ---------------------------------------------------------------------------------

    def vm_dir(self, vm_id: str) -> Path:
        return self.repo.vm_dir(vm_id)

    def runtime_dir(self, vm_id: str) -> Path:
        return self.paths.runtime_dir / "vms" / vm_id

    @property
    def key_path(self) -> Path:
        cfg = self.config.ssh_key_path
        return Path(cfg) if cfg else self.paths.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.paths.ssh_dir / "known_hosts"

    # --- service lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from a crash, re-adopt VMs whose VMM still runs (the others are marked
        stopped), hand the survivors to the network, then watch them."""
        running = await self.startup.run()
        try:
            await self.warm.recover()
        except Exception as e:
            log.warning("cleaning up interrupted templates failed: %s", e)
        if self.network is not None:
            from banger.network.service import RunningVM

            kinds: dict[str, Literal["tap", "user"]] = {"tap": "tap", "user": "user"}
            survivors = [
                RunningVM(
                    vm.id,
                    vm.name,
                    kinds.get(vm.network, "none"),
                    vm.ssh_host or "",
                    vm.ssh_port or 22,
                )
                for vm in running
            ]
            try:
                await self.network.reconcile(survivors)
            except Exception as e:
                log.warning("reconciling running VMs into the network failed: %s", e)
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def stop(self) -> None:
        """Daemon shutdown: stop watching; running VMs keep running (a restart re-adopts them)."""
        for task in list(self._background):
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for op in self.ops.running():
            if op.task is not None:
                op.task.cancel()
                with contextlib.suppress(BaseException):  # its runner recorded the outcome
                    await op.task
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    async def _monitor_loop(self) -> None:
        """A guest that powered itself off (or a VMM that died) becomes `stopped` promptly."""
        while True:
            await asyncio.sleep(self._monitor_interval)
            try:
                for vm in self.repo.all():
                    if vm.state in ("running", "paused") and not self._lock(vm.id).locked():
                        await self._refresh(vm)
            except Exception:
                log.exception("vm monitor pass failed")

    # --- records -------------------------------------------------------------------------------

    def _enrich(self, vm: VMRecord) -> VMRecord:
        """The record plus what the network service knows of it (bridged VMs)."""
        if self.network is None or vm.network != "tap":
            return vm
        try:
            policy: Policy = self.network.policy(vm.id)
            return vm.model_copy(
                update={
                    "ip": self.network.guest_ip(vm.id),
                    "nat": self.network.nat(vm.id),
                    "egress": policy.mode,
                    "egress_rules": [rule.text for rule in policy.rules],
                }
            )
        except Exception as e:
            log.warning("reading the vm's network state failed: %s", e, extra={"vm": vm.name})
            return vm

    def _record(self, vm_id: str) -> VMRecord:
        return self._enrich(self.repo.get(vm_id))

    def handle(self, vm_id: str) -> VMHandle | None:
        """The running VM's VMM handle (pid, sockets), for probes; None when it is not running."""
        return self.repo.handle(vm_id)

    def references(self, kind: str, ident: str) -> builtins.list[str]:
        """Who uses image/kernel `ident` (deleting it is refused while any VM does)."""
        return [f"vm {name}" for name in self.repo.users_of(kind, ident)]

    # --- warm-create templates (vms/warm.py) ---------------------------------------------------

    def templates_of(self, image_id: str | None) -> builtins.list[TemplateInfo]:
        """The ready templates of an image (None: of every image), for `image show`."""
        out = []
        for rec in self.templates.all():
            if rec.state != "ready" or image_id not in (None, rec.image_id):
                continue
            combo = warm_mod.parse_combination(rec.combination)
            out.append(
                TemplateInfo(
                    key=rec.key, kernel=rec.kernel, init_mode=str(combo.get("init_mode", "")),
                    vcpus=int(str(combo.get("vcpus", 0))),
                    memory_mib=int(str(combo.get("memory_mib", 0))),
                    disk_size_bytes=int(str(combo.get("disk_size_bytes", 0))),
                    driver=rec.driver, size_bytes=rec.size_bytes, created_at=rec.created_at,
                    uses=rec.uses,
                )
            )  # fmt: skip
        return out

    async def _drop_orphan_templates(self) -> None:
        """Templates of images that are gone (a re-pull under the same name gives a new id)."""
        for rec in builtins.list(self.templates.all()):
            if rec.state != "ready":
                continue
            try:
                await self.images.get(rec.image_id)
            except Exception as e:
                if boot_mod.is_not_found(e):
                    log.info("removing the template of a deleted image", extra={"key": rec.key})
                    await self.warm.delete(rec)

    async def remove_templates(self, image_id: str | None) -> int:
        """Delete the image's templates (None: all). VMs created from them keep working: the
        layers they read through stay as remains until they are gone."""
        doomed = [
            rec
            for rec in self.templates.all()
            if rec.state == "ready" and image_id in (None, rec.image_id)
        ]
        for rec in doomed:
            await self.warm.delete(rec)
        return len(doomed)

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _find(self, ref: str) -> VMRecord:
        """Exact id or name, then a unique prefix of ids and names."""
        if not ref:
            raise InvalidInput("a vm name or id is required")
        vms = self.repo.all()
        for vm in vms:
            if ref in (vm.id, vm.name):
                return vm
        matches = [vm for vm in vms if vm.id.startswith(ref) or vm.name.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"vm {ref!r} not found")
        names = ", ".join(sorted(vm.name for vm in matches))
        raise InvalidInput(f"vm ref {ref!r} is ambiguous (matches {names}); use more characters")

    async def _refresh(self, vm: VMRecord) -> VMRecord:
        """A `running` VM whose process is gone becomes stopped (or error) right now."""
        if vm.state not in ("running", "paused"):
            return self._enrich(vm)
        handle = self.repo.handle(vm.id)
        if handle is not None and self.registry.get(handle.driver).is_alive(handle):
            return self._enrich(vm)
        self.startup.mark_dead(vm)
        await self.boot.release(vm.id)
        return self._record(vm.id)

    # --- queries -------------------------------------------------------------------------------

    async def get(self, ref: str) -> VMRecord:
        """The VM `ref` names (id, name, or a unique prefix), its liveness checked now."""
        return await self._refresh(self._find(ref))

    async def get_many(self, refs: Sequence[str]) -> builtins.list[VMRecord]:
        out: builtins.list[VMRecord] = []
        for ref in refs:
            vm = await self.get(ref)
            if all(v.id != vm.id for v in out):
                out.append(vm)
        return out

    async def list(self) -> builtins.list[VMRecord]:
        return [await self._refresh(vm) for vm in self.repo.all()]

    async def ssh_target(self, ref: str) -> SSHTarget:
        vm = await self.get(ref)
        if vm.state == "paused":
            raise Conflict(f"vm {vm.name} is paused: resume it to reach the guest")
        if vm.state != "running" or not vm.ssh_host:
            raise NotRunning(f"vm {vm.name} is {vm.state}")
        return SSHTarget(
            host=vm.ssh_host,
            port=vm.ssh_port or 22,
            user="root",
            key_path=self.key_path,
            known_hosts_path=self.known_hosts,
            vm_name=vm.name,
        )

    async def logs(self, ref: str, max_bytes: int, *, offset: int | None = None) -> dict[str, Any]:
        vm = self._find(ref)
        text, size, data = "", 0, b""
        try:
            with open(vm.console_log, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                if offset is None:
                    f.seek(max(0, size - max_bytes))
                    text = f.read().decode(errors="replace")
                else:
                    offset = offset if offset <= size else 0  # truncated / recreated
                    f.seek(offset)
                    data = f.read(max_bytes)
        except FileNotFoundError:
            offset = 0 if offset is not None else None
        out: dict[str, Any] = {
            "vm": vm.name,
            "path": str(vm.console_log),
            "size": size,
            "content": text,
        }
        if offset is not None:
            out["offset"] = offset
            out["data_base64"] = base64.b64encode(data).decode()
        return out

    # --- create --------------------------------------------------------------------------------

    async def create(
        self, req: CreateRequest, ctx: RequestContext, op: Operation | None = None
    ) -> VMRecord:
        marker_dir: Path | None = None

        def on_phase(phase: str) -> None:
            if marker_dir is None:
                return
            # Where a crash would find this create (the reason `vm show` gives after it).
            try:
                recovery.mark(marker_dir, recovery.CREATING, phase)
            except OSError as e:
                log.warning("recording the create's stage failed: %s", e)

        total = len(CREATE_STAGES) if req.start else 2
        progress = Progress(ctx, total, op=op, on_phase=on_phase)
        if req.allow or req.egress is not None:
            # Bad rules fail before any work: same checks as `vm set`.
            policy = updated(Policy("open"), req.allow, (), req.egress)
            if policy.restricted and self._network_kind() != "tap":
                raise InvalidInput(
                    "egress rules need bridged networking (the host enforces them on banger's "
                    'bridge), but this daemon uses user-mode networking; set `network = "bridge"`'
                )
        name = self._reserve_name(req.name)
        vm_id = secrets.token_hex(6)
        try:
            plan = await self._provision(vm_id, name, req, ctx, progress, op)
        finally:
            self._reserved.discard(name)
        marker_dir = self.vm_dir(vm_id)
        if not req.start:
            await asyncio.to_thread(recovery.clear, marker_dir, recovery.CREATING)
            if op is not None:
                op.update("done", "created", done=total, total=total)
            return self._record(vm_id)
        warm = False
        try:
            async with self._lock(vm_id):
                if plan.template is not None:
                    warm = await self._wake_warm(vm_id, plan.template, progress, op)
                if warm:
                    vm = self.repo.get(vm_id)
                else:
                    vm = await self.boot.run(self.repo.get(vm_id), progress)
                # Whole now: a crash from here on finds a running VM, not an interrupted create.
                marker_dir = None
                await asyncio.to_thread(recovery.clear, self.vm_dir(vm_id), recovery.CREATING)
                if not warm and plan.combo is not None:
                    await self._make_template(vm, plan.combo, ctx)
        except asyncio.CancelledError:
            # A cancelled create leaves nothing behind: no process, no disks, no record.
            await asyncio.shield(self._purge(vm_id))
            raise
        finally:
            # Finished, failed (the record says why) or purged: no longer an interrupted create.
            marker_dir = None
            await asyncio.to_thread(recovery.clear, self.vm_dir(vm_id), recovery.CREATING)
        if op is not None:
            op.update("ready", "warm" if warm else "", done=total, total=total)
        vm = self.repo.get(vm_id).model_copy(update={"boot": "warm" if warm else "cold"})
        return self._enrich(vm)

    async def _wake_warm(
        self, vm_id: str, template: TemplateRecord, progress: Progress, op: Operation | None
    ) -> bool:
        """Wake the provisioned VM from `template` under its own identity. False when that
        failed: the VM is then made ready for a cold boot (its own disks and seed), the reason
        logged; the caller boots it cold."""
        assert template.saved is not None
        vm = self.repo.get(vm_id)
        ident = fork_mod.child_identity(vm.name, vm.dir)
        try:
            await self.boot.wake(vm, progress, Wake(template.saved, identity=ident, kind="warm"))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning(
                "warm create failed; booting cold: %s",
                getattr(e, "message", None) or e,
                extra={"vm": vm.name, "template": template.key, "op_id": op.id if op else None},
            )
            await self._cold_disks(vm)
            return False
        self.templates.used(template.key)
        return True

    async def _cold_disks(self, vm: VMRecord) -> None:
        """A VM whose warm wake failed gets the disks a cold create gives it."""
        image = await self.images.get(vm.image_id)
        for name in ("root.qcow2", "root.img", "root.json", disks.WORK_OVERLAY, disks.WORK_RAW):
            (vm.dir / name).unlink(missing_ok=True)
        try:
            await self.registry.make_root_disk(image.rootfs, vm.dir, vm.network)
        except DriverError as e:
            raise InvalidInput(str(e)) from None
        await disks.create_work_disk(vm.dir / disks.WORK_RAW, vm.disk_size_bytes)

    async def _make_template(self, vm: VMRecord, combo: Combination, ctx: RequestContext) -> None:
        """Right after the first cold boot of `combo` (the caller holds the VM's lock, nothing
        of the user's is in the guest yet): checkpoint it as the template. Never fails the
        create: a failure is logged and leaves no template and an untouched VM."""
        if self.warm.repo.ready(combo) is not None:
            return
        handle = self.repo.handle(vm.id)
        if handle is None:
            return
        try:
            spec, driver = await self.boot.running_spec(vm, handle)
            await self.warm.invalidate_stale(combo)
            rec = await self.warm.make(
                driver,
                handle,
                spec,
                vm.dir,
                combo,
                self._hold_for_test,
                before_ready=lambda: self._rekey_template_source(vm, handle, ctx),
            )
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning(
                "saving a warm-create template failed: %s",
                getattr(e, "message", None) or e,
                extra={"vm": vm.name, "op_id": ctx.op_id},
            )
            return
        if rec is None:
            return
        # Mapping the RAM copy-on-write needs a helper VMM for seconds: not on the user's clock.
        self.warm.sharing[rec.key] = asyncio.Event()  # creates of it wait until it is done
        task = asyncio.create_task(self._share_template_memory(driver, spec, rec, ctx.op_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _rekey_template_source(
        self, vm: VMRecord, handle: VMHandle, ctx: RequestContext
    ) -> None:
        """The template being made holds this VM's SSH host key (in sshd's memory and on the
        seed copy every warm VM mounts): this VM takes a new one before the template is ready,
        so the key warm VMs can read is served by no VM. Raises if it could not (the template
        is then dropped), after sending the guest its old, pinned key again."""
        rekey = self.paths.staging_dir / f"rekey-{vm.id}"  # swept at daemon start
        try:
            priv, pub = await asyncio.to_thread(generate_host_key, rekey)
            ident = GuestIdentity(
                hostname=vm.name,
                machine_id=secrets.token_hex(16),
                host_key_private=priv,
                host_key_public=pub,
            )
            try:
                await self.boot.reidentify_running(handle, ident)
            except BangerError:
                # Idempotent: whatever the guest took, it serves the key pinned for it again.
                old = fork_mod.child_identity(vm.name, vm.dir)
                try:
                    await self.boot.reidentify_running(handle, old)
                except BangerError as again:
                    log.error(
                        "the VM may now serve a host key that is not pinned: %s",
                        again.message,
                        extra={"vm": vm.name, "op_id": ctx.op_id},
                    )
                raise
            for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub"):
                os.replace(rekey / name, vm.dir / name)
            await asyncio.to_thread(pin_host_key, self.known_hosts, f"{vm.name}.vm", pub)
        finally:
            shutil.rmtree(rekey, ignore_errors=True)

    async def _share_template_memory(
        self, driver: Driver, spec: VMSpec, rec: TemplateRecord, op_id: str
    ) -> None:
        try:
            await self.warm.share_memory(driver, spec, rec)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # The template still works: restores read RAM from its stream.
            log.warning(
                "sharing a template's memory failed: %s",
                e,
                extra={"template": rec.key, "op_id": op_id},
            )

    async def _provision(
        self,
        vm_id: str,
        name: str,
        req: CreateRequest,
        ctx: RequestContext,
        progress: Progress,
        op: Operation | None,
    ) -> _Provisioned:
        """Stages resolve and disks: the VM's record and directory, or nothing at all. A VM
        that will wake from a warm-create template gets its dir shaped for that wake."""
        made_dir: Path | None = None
        plan = _Provisioned()
        inserted = False
        try:
            try:
                sizing = resolve_sizing(self.config, req.vcpus, req.memory_mib, req.disk_size)
            except ValueError as e:
                raise InvalidInput(str(e)) from None
            progress.stage("resolve", "resolve", "image and kernel")
            if req.kernel and req.kernel != self.config.default_kernel:
                # Fail fast: a kernel that is not there is refused before any image is built.
                await self.kernels.ensure(req.kernel, ctx)
            image = await self.images.ensure(req.image or self.config.default_image, ctx)
            kernel_name = req.kernel or image.kernel_ref or self.config.default_kernel
            kernel = await self.kernels.ensure(kernel_name, ctx)
            if kernel.initrd is None:
                raise InvalidInput(
                    f"kernel {kernel.name} has no initramfs; re-import it with its modules "
                    "so banger can generate one"
                )
            spec_line = f"{name}: {image.name} · kernel {kernel.name} · {sizing.line()}"
            ctx.progress(
                stage="spec", detail=spec_line, current=progress.step, total=progress.total
            )
            if op is not None:
                op.spec = spec_line
            net_kind = self._network_kind()
            if req.start:
                plan = await self._warm_plan(image, kernel, req, sizing, net_kind)
            progress.stage("disks", "disks", "root disk and work disk")
            staged = self.paths.staging_dir / f"vm-{vm_id}"
            made_dir = staged
            staged.mkdir(parents=True)
            # The VM dir is renamed into place with this marker: a crash finds it (recovery).
            recovery.mark(staged, recovery.CREATING, "disks")
            if plan.template is not None:
                # The restore lays this VM's own layers over the template's frozen ones.
                _, pub = await asyncio.to_thread(warm_mod.provision_child, staged, plan.template)
            else:
                try:
                    # qcow2 overlay for QEMU; a raw reflink/sparse copy when Firecracker runs.
                    await self.registry.make_root_disk(image.rootfs, staged, net_kind)
                except DriverError as e:
                    raise InvalidInput(str(e)) from None
                await disks.create_work_disk(staged / disks.WORK_RAW, sizing.disk_size_bytes)
                _, pub = await asyncio.to_thread(generate_host_key, staged)
                (staged / "console.log").touch()
            await self._hold_for_test("disks")
            final = self.vm_dir(vm_id)
            # Disks and marker on disk before the rename, the rename before the record.
            await asyncio.to_thread(fsutil.publish, staged, final)
            made_dir = final
            stamp = now()
            self.repo.insert(
                VMRecord(
                    id=vm_id, name=name, state="created", image_id=image.id,
                    image_name=image.name, kernel=kernel.name, vcpus=sizing.vcpus,
                    memory_mib=sizing.memory_mib, disk_size_bytes=sizing.disk_size_bytes,
                    init_mode=req.init, network=net_kind, created_at=stamp, updated_at=stamp,
                    dir=final, console_log=final / "console.log",
                )
            )  # fmt: skip
            inserted = True
            if req.nat or req.allow or req.egress == "restricted":
                if self.network is None:
                    raise InvalidInput("NAT needs the network service, which is not running")
                await self.network.set_nat(vm_id, True)
                if req.allow or req.egress is not None:
                    await self.network.set_egress(vm_id, req.allow, (), req.egress)
            await asyncio.to_thread(pin_host_key, self.known_hosts, f"{name}.vm", pub)
        except BaseException:
            # Failed or cancelled before the VM exists: leave nothing behind.
            await self._discard(vm_id, name, made_dir, inserted)
            raise
        return plan

    async def _warm_plan(
        self, image: Image, kernel: Kernel, req: CreateRequest, sizing: Sizing, net_kind: str
    ) -> _Provisioned:
        """The create's combination and, unless `cold`, its ready template (an outdated one of
        the same image is deleted on the way). Any failure here only means a cold boot."""
        try:
            plan = self.registry.boot_plan(
                "new", self.paths.staging_dir, kernel.name, kernel.boot_image, kernel.vmlinux,
                net_kind,
            )  # fmt: skip
            if not self.config.warm_creates or not warm_mod.can_warm(plan.driver):
                return _Provisioned()
            combo = warm_mod.combination(image, kernel, req.init, sizing, plan.driver, net_kind)
            if req.cold:
                return _Provisioned()  # `--cold`: neither uses nor makes a template
            await self.warm.invalidate_stale(combo)
            await self._drop_orphan_templates()
            return _Provisioned(combo, await self.warm.find(combo))
        except Exception as e:
            log.warning("looking up a warm-create template failed: %s", e)
            return _Provisioned()

    def _reserve_name(self, requested: str | None) -> str:
        taken = self.repo.names() | self._reserved
        if requested:
            try:
                name = validate_name(requested)
            except InvalidName as e:
                raise InvalidInput(str(e)) from None
            if name in taken:
                raise AlreadyExists(
                    f"vm {name!r} already exists; choose another name or delete it first"
                )
        else:
            name = generate_name(taken)
        self._reserved.add(name)
        return name

    async def _discard(self, vm_id: str, name: str, made: Path | None, inserted: bool) -> None:
        if inserted:
            self.repo.delete(vm_id)
        if made is not None:
            await asyncio.to_thread(shutil.rmtree, made, True)
        await asyncio.to_thread(forget_host, self.known_hosts, [f"{name}.vm"])

    def _network_kind(self) -> str:
        if self.network is not None and self.network.mode == "bridge":
            return "tap"
        return "user"

    async def _hold_for_test(self, point: str) -> None:
        """Test-only (BANGER_TEST_HOLD_AT=point): stop here until the daemon dies."""
        if os.environ.get(TEST_HOLD_ENV) != point:
            return
        (self.paths.runtime_dir / f"test-hold-{point}").touch()
        log.warning("holding a create for a test", extra={"point": point})
        await asyncio.Event().wait()

    def begin_create(self, req: CreateRequest, op_id: str) -> Operation:
        op = self.ops.add(Operation(id=op_id, kind="vm.create"))
        ctx = RequestContext(op_id=op_id, method="vm.create.begin")

        async def runner() -> None:
            try:
                vm = await self.create(req, ctx, op)
                op.vm = vm.model_dump(mode="json")
            except asyncio.CancelledError:
                op.cancelled = True
                op.stage = "cancelled"
            except Exception as e:
                op.failure = e
                op.stage = "failed"
                log.warning(
                    "async create failed: %s",
                    getattr(e, "message", None) or e,
                    exc_info=not isinstance(e, BangerError) and not hasattr(e, "code"),
                )
            finally:
                op.done = True
                op.finished = time.monotonic()

        op.task = asyncio.create_task(runner())
        return op

    async def cancel_create(self, op_id: str) -> Operation:
        op = self.ops.get(op_id)
        if not op.done and op.task is not None:
            op.task.cancel()
            with contextlib.suppress(BaseException):  # the runner recorded the outcome
                await asyncio.wait_for(asyncio.shield(op.task), 60)
        return op

    # --- verbs ---------------------------------------------------------------------------------

    async def start_vm(self, ref: str, ctx: RequestContext) -> VMRecord:
        vm = self._find(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self.repo.get(vm.id))
            if vm.state == "suspended":
                return self._enrich(await self.suspends.wake(vm, ctx))
            return self._enrich(await self.boot.run(vm, Progress(ctx, len(START_STAGES))))

    async def stop_vm(self, ref: str, timeout: float = STOP_TIMEOUT) -> VMRecord:
        vm = self._find(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self.repo.get(vm.id))
            if vm.state == "suspended":
                await self.suspends.discard(vm)
                return self._record(vm.id)
            self.lifecycle.check(vm, Event.STOPPED)
            await self._stop_locked(vm, timeout)
            return self._record(vm.id)

    async def _stop_locked(self, vm: VMRecord, timeout: float) -> bool:
        """Graceful power-off through the guest, then force after `timeout`. True if graceful."""
        handle = self.repo.handle(vm.id)
        graceful = True
        if handle is not None:
            driver = self.registry.get(handle.driver)
            if vm.state == "paused" and driver.is_alive(handle):
                # A frozen guest cannot power itself off: thaw it first.
                try:
                    await driver.resume(handle)
                except Exception as e:
                    log.warning("thawing the paused vm failed: %s", e, extra={"vm": vm.name})
            if driver.is_alive(handle):
                await driver.request_shutdown(handle)
                if not await driver.wait_exit(handle, timeout):
                    log.warning("graceful stop timed out; forcing", extra={"vm": vm.name})
                    graceful = False
                    await driver.force_stop(handle)
        reason = "stopped" if graceful else f"stopped: forced after {timeout:g}s"
        self.lifecycle.apply(vm.id, Event.STOPPED, reason)
        await self.boot.release(vm.id)
        return graceful

    async def kill_vm(self, ref: str, sig: str) -> VMRecord:
        name = sig.upper().removeprefix("SIG")
        if name not in ALLOWED_SIGNALS:
            raise InvalidInput(
                f"signal {sig!r} is not allowed; use one of {', '.join(ALLOWED_SIGNALS)}"
            )
        signum = int(getattr(signal_mod, f"SIG{name}"))
        vm = self._find(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self.repo.get(vm.id))
            self.lifecycle.check(vm, Event.STOPPED)
            handle = self.repo.handle(vm.id)
            if handle is not None:
                driver = self.registry.get(handle.driver)
                driver.send_signal(handle, signum)
                if not await driver.wait_exit(handle, KILL_EXIT_TIMEOUT):
                    # The VMM survived the signal (e.g. USR1): it keeps running.
                    return self._record(vm.id)
            self.lifecycle.apply(vm.id, Event.STOPPED, f"killed with SIG{name}")
            await self.boot.release(vm.id)
            return self._record(vm.id)

    async def restart_vm(self, ref: str, ctx: RequestContext) -> VMRecord:
        vm = self._find(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self.repo.get(vm.id))
            total = len(START_STAGES) + 1
            if vm.state in ("running", "paused"):
                ctx.progress(stage="stop", detail="", current=0, total=total)
                await self._stop_locked(vm, STOP_TIMEOUT)
            elif vm.state == "suspended":  # a restart is a cold boot: the saved state goes
                ctx.progress(stage="stop", detail="discard the saved state", current=0, total=total)
                await self.suspends.discard(vm)
            progress = Progress(ctx, total, step=1)
            return self._enrich(await self.boot.run(self.repo.get(vm.id), progress))

    async def delete(self, ref: str) -> VMRecord:
        vm = self._find(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self.repo.get(vm.id))
            # A crash from here on is finished by the next start (recovery), not left half-done.
            try:
                await asyncio.to_thread(recovery.mark, vm.dir, recovery.DELETING, "", durable=True)
            except OSError as e:
                log.warning("marking the delete failed: %s", e, extra={"vm": vm.name})
            if vm.state in ("running", "paused"):
                await self._stop_locked(vm, DELETE_STOP_TIMEOUT)
            await self._purge(vm.id)
            return vm.model_copy(update={"state": "stopped"})

    async def _purge(self, vm_id: str) -> None:
        """Remove every trace of a VM (process must be gone): disks, record, host key pin."""
        vm = self.repo.find(vm_id)
        handle = self.repo.handle(vm_id)
        if handle is not None:
            await self.registry.get(handle.driver).force_stop(handle)
        await self.boot.release(vm_id)
        # Files a fork's or warm-created VM's disks read through stay until nothing does.
        await layers.remove_keeping_backers(self.vm_dir(vm_id), self.paths)
        self.repo.delete(vm_id)
        await layers.sweep(self.paths)
        if vm is not None:
            await asyncio.to_thread(forget_host, self.known_hosts, [f"{vm.name}.vm"])
        if self.network is not None:
            try:
                await self.network.forget(vm_id)
            except Exception as e:
                log.warning("releasing the vm's network failed: %s", e, extra={"vm_id": vm_id})
        self._locks.pop(vm_id, None)

    async def set_vm(
        self,
        ref: str,
        vcpus: int | None,
        memory_mib: int | None,
        disk_size: str | None,
        nat: bool | None = None,
        allow: Sequence[str] = (),
        disallow: Sequence[str] = (),
        egress: Literal["open", "restricted"] | None = None,
    ) -> VMRecord:
        egress_change = bool(allow or disallow or egress is not None)
        sizes = vcpus is not None or memory_mib is not None or disk_size is not None
        if not sizes and nat is None and not egress_change:
            raise InvalidInput(
                "nothing to change: give vCPUs, memory, a disk size, NAT or egress rules"
            )
        vm = self._find(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self.repo.get(vm.id))
            if egress_change or nat is not None:
                # Host-side only: the network service applies it at once if the VM runs.
                if self.network is None:
                    raise InvalidInput("NAT and egress rules need the network service")
                if egress_change:
                    await self.network.set_egress(vm.id, allow, disallow, egress)
                if nat is not None:
                    await self.network.set_nat(vm.id, nat)
                if not sizes:
                    self.repo.set_sizing(vm.id)
                    return self._record(vm.id)
            self.lifecycle.check(vm, Event.RECONFIGURED)
            size: int | None = None
            if disk_size is not None:
                try:
                    size = resolve_sizing(self.config, disk_size=disk_size).disk_size_bytes
                except ValueError as e:
                    raise InvalidInput(str(e)) from None
                if size < vm.disk_size_bytes:
                    raise InvalidInput(
                        f"disk size can only grow: vm {vm.name} has "
                        f"{vm.disk_size_bytes >> 20} MiB, asked for {size >> 20} MiB"
                    )
                saved = self.saved.list(vm.id)
                if saved:
                    tags = ", ".join(rec.tag for rec in saved)
                    raise Conflict(
                        f"vm {vm.name} has snapshots ({tags}) whose disks have its current size; "
                        "delete them first, then grow the disk"
                    )
                await self._free_work_disk_for_growth(vm)
                await disks.grow_work_disk(vm.dir, size)
            self.repo.set_sizing(vm.id, vcpus=vcpus, memory_mib=memory_mib, disk_size_bytes=size)
            return self._record(vm.id)

    async def _free_work_disk_for_growth(self, vm: VMRecord) -> None:
        """Growing commits the VM's /root chain into its `work.ext4`. Other disks that read
        through that file (fork children, warm-created VMs: qcow2 names its backing file by
        path) would see the VM's later writes: refused. A warm-create template in the VM's own
        chain is a cache: dropped, so no later create starts from a changed disk."""
        raw = vm.dir / disks.WORK_RAW
        if not raw.exists():
            return  # a fork's child: growing flattens its chain into a new file of its own
        overlay = vm.dir / disks.WORK_OVERLAY
        own = {p.resolve() for p in (overlay, *layers.backing_chain(overlay))}
        readers = await asyncio.to_thread(layers.layers_reading, raw, self.paths)
        foreign = [r for r in layers.outside(readers, vm.dir) if r.resolve() not in own]
        templates = {rec.dir.resolve(): rec for rec in self.templates.all()}

        def template_of(layer: Path) -> TemplateRecord | None:
            return next((t for d, t in templates.items() if layer.is_relative_to(d)), None)

        blocking = [r for r in foreign if template_of(r.resolve()) is None]
        if blocking:
            raise Conflict(
                f"vm {vm.name}'s /root disk is read through by {len(blocking)} other disk(s) "
                "(VMs forked from it or created warm from its template); delete those VMs "
                "first, then grow the disk"
            )
        drop = {t.key: t for p in (*own, *(r.resolve() for r in foreign)) if (t := template_of(p))}
        for rec in drop.values():
            log.info("dropping a template to grow its source's disk", extra={"vm": vm.name})
            await self.warm.delete(rec)

    # --- checkpoints (vms/checkpoints.py) ------------------------------------------------------

    async def snapshot_create(self, ref: str, tag: str, ctx: RequestContext) -> dict[str, Any]:
        return await self.checkpoints.create(ref, tag, ctx)

    async def snapshot_list(self, ref: str) -> builtins.list[dict[str, Any]]:
        return await self.checkpoints.list(ref)

    async def snapshot_restore(self, ref: str, tag: str, ctx: RequestContext) -> VMRecord:
        return await self.checkpoints.restore(ref, tag, ctx)

    async def snapshot_delete(self, ref: str, tag: str) -> Deleted:
        return await self.checkpoints.delete(ref, tag)

    # --- fork (vms/fork.py) ------------------------------------------------------------------

    async def fork(
        self, ref: str, name: str, count: int | None, ctx: RequestContext
    ) -> fork_mod.ForkResult:
        """`count` children (NAME, or NAME-1 … NAME-K) of the running or paused VM `ref`."""
        return await fork_mod.fork(self, ref, name, count, ctx)

    # --- pause, resume, suspend (vms/suspend.py) ------------------------------------------------

    async def pause_vm(self, ref: str) -> VMRecord:
        return await self.suspends.pause(ref)

    async def resume_vm(self, ref: str) -> VMRecord:
        return await self.suspends.resume(ref)

    async def suspend_vm(self, ref: str, ctx: RequestContext) -> VMRecord:
        return await self.suspends.suspend(ref, ctx)

    async def prune(self) -> builtins.list[VMRecord]:
        """Delete every VM that is not running (a suspended one keeps its saved state)."""
        keep = ("running", "paused", "suspended")
        doomed = [vm for vm in await self.list() if vm.state not in keep]
        out = []
        for vm in doomed:
            with contextlib.suppress(NotFound):  # deleted meanwhile: nothing to do
                out.append(await self.delete(vm.id))
        return out

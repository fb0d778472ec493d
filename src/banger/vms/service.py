"""`d.vms`: the VM lifecycle. The service owns state (SQLite `vms`), disks and the guest seed;
the VMM driver owns the argv. A VM's QEMU outlives the daemon: `start()` re-adopts running VMs
from their persisted handles and never kills them; a dead process is reported `stopped`.

Per VM, under `<state>/vms/<id>/`: root.qcow2 (overlay over the image's raw ext4), work.ext4
(sparse, /root in the guest), seed.ext4 (rebuilt at every start), console.log, host key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal as signal_mod
import sqlite3
import stat as stat_mod
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from banger import errors as domain
from banger import fsutil
from banger.daemon.context import RequestContext
from banger.daemon.errmap import to_rpc
from banger.guest import payload
from banger.guest.ssh import (
    SSHTarget,
    ensure_client_key,
    forget_host,
    generate_host_key,
    pin_host_key,
    wait_ssh_banner,
)
from banger.network.egress import Policy, updated
from banger.rpc.errors import (
    AlreadyExists,
    BadRequest,
    Conflict,
    NotFound,
    NotRunning,
    OperationFailed,
    RPCError,
)
from banger.vmm.base import DiskSpec, Driver, DriverError, NetworkSpec, VMHandle, VMSpec
from banger.vmm.qemu import wait_control_ready
from banger.vmm.select import driver_by_name
from banger.vms import disks, recovery, rootdisk
from banger.vms.names import InvalidName, generate_name, validate_name
from banger.vms.operations import Operation, Operations
from banger.vms.spec import InitMode, VMRecord, resolve_sizing

if TYPE_CHECKING:
    from banger.daemon.app import Daemon

log = logging.getLogger("banger.vms")

GUEST_READY_TIMEOUT = 180.0
SSH_READY_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
MONITOR_INTERVAL = 1.0
CONSOLE_TAIL_LINES = 8
ALLOWED_SIGNALS = ("TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2", "ABRT")
KERNEL_ARGS = (
    "console=ttyS0 panic=-1 quiet cryptomgr.notests mitigations=off "
    "root=/dev/vda rootfstype=ext4 banger.seed=LABEL=banger-seed banger.init=/.banger/init"
)
CREATE_STAGES = ("resolve", "disks", "boot", "wait_guest", "wait_ssh")
# Test-only: hold a create at a named point (disks, boot, wait_ssh) so a crash test can kill the
# daemon there; it touches `<runtime>/test-hold-<point>` when it gets there (docs/vms.md).
TEST_HOLD_ENV = "BANGER_TEST_HOLD_AT"
VMM_EXIT_TIMEOUT = 10.0

Report = Callable[[str, str], None]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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


class VMService:
    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.ops = Operations()
        self._locks: dict[str, asyncio.Lock] = {}
        self._reserved: set[str] = set()
        self._monitor: asyncio.Task[None] | None = None
        d.reference_checks.append(self._references)

    # --- paths ---------------------------------------------------------------------------------

    def vm_dir(self, vm_id: str) -> Path:
        return self.d.paths.vms_dir / vm_id

    def runtime_dir(self, vm_id: str) -> Path:
        return self.d.paths.runtime_dir / "vms" / vm_id

    @property
    def key_path(self) -> Path:
        cfg = self.d.config.ssh_key_path
        return Path(cfg) if cfg else self.d.paths.ssh_dir / "id_ed25519"

    @property
    def known_hosts(self) -> Path:
        return self.d.paths.ssh_dir / "known_hosts"

    # --- service lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from a crash (`_recover`), then re-adopt VMs whose VMM still runs and mark
        the others stopped. A running VM's VMM is never killed here."""
        await self._recover()
        running = []
        for vm in self._all():
            if vm.state != "running":
                continue
            handle = self._handle(vm.id)
            alive = False
            if handle is not None:
                with contextlib.suppress(DriverError):
                    alive = await driver_by_name(self.d.config, handle.driver).attach(handle)
            if alive:
                log.info("re-adopted running vm", extra={"vm": vm.name, "pid": vm.pid})
                running.append(vm)
            else:
                self._mark_dead(vm)
        net = getattr(self.d, "network", None)
        if net is not None:
            from banger.network.service import RunningVM

            kinds = {"tap": "tap", "user": "user"}
            with contextlib.suppress(Exception):
                await net.reconcile(
                    [
                        RunningVM(
                            vm.id,
                            vm.name,
                            kinds.get(vm.network, "none"),  # type: ignore[arg-type]
                            vm.ssh_host or "",
                            vm.ssh_port or 22,
                        )
                        for vm in running
                    ]
                )
        self._monitor = asyncio.create_task(self._monitor_loop())

    async def _recover(self) -> None:
        """Undo what a daemon killed mid-work left behind (docs/vms.md, "Crash recovery").

        Runs before the RPC server accepts anything, so no create or delete is in flight.
        """
        paths = self.d.paths
        procs = await asyncio.to_thread(recovery.vmm_processes, paths)
        for vm in self._all():
            if recovery.marked(vm.dir, recovery.DELETING) is not None:
                # A delete was cut short: finish it.
                log.warning("finishing an interrupted delete", extra={"vm": vm.name})
                await self._stop_vmms(vm.id, [p for p in procs if p.vm_id == vm.id])
                await self._purge(vm.id)
                continue
            stage = recovery.marked(vm.dir, recovery.CREATING)
            if stage is None:
                continue
            # A create was cut short: its VM may be half-booted. Stop it, keep it as an error.
            log.warning("marking an interrupted create failed", extra={"vm": vm.name})
            await self._stop_vmms(vm.id, [p for p in procs if p.vm_id == vm.id])
            reason = (
                f"interrupted: bangerd stopped while creating this VM (stage {stage or '?'}); "
                f"delete it (`banger vm delete {vm.name}`) and create it again"
            )
            self._update(vm.id, state="error", error=reason, handle=None)
            recovery.clear(vm.dir, recovery.CREATING)
            shutil.rmtree(self.runtime_dir(vm.id), ignore_errors=True)
        # VMMs of this state dir that no running record owns: a VM whose record is gone, or one
        # launched by a boot the crash cut off before it recorded the handle.
        owned: dict[str, int] = {}
        for vm in self._all():
            handle = self._handle(vm.id) if vm.state == "running" else None
            if handle is not None:
                owned[vm.id] = handle.pid
        stray = [p for p in procs if owned.get(p.vm_id) != p.pid]
        for p in stray:
            log.warning("stopping a VMM no VM owns", extra={"pid": p.pid, "vm_id": p.vm_id})
        await self._kill_processes([(p.pid, p.vm_id) for p in stray])
        # Workspace SSH masters of the dead daemon (they daemonize out of the guard's reach).
        masters = await asyncio.to_thread(recovery.ssh_masters, self.known_hosts)
        await self._kill_processes([(m.pid, "ControlMaster=yes") for m in masters])
        for m in masters:
            await asyncio.to_thread(_remove_own_dir, m.control_dir)
        await asyncio.to_thread(self._sweep_dirs, set(owned))

    def _sweep_dirs(self, running: set[str]) -> None:
        """Remove VM dirs without a record, runtime dirs of VMs not running, and every staging
        entry (VMs, images, kernels: nothing is in flight at start). Symlinks are unlinked,
        never followed; a directory that is itself a symlink is not swept at all."""
        paths = self.d.paths
        known = {r["id"] for r in self.d.store.query("SELECT id FROM vms")}
        for parent, keep in (
            (paths.vms_dir, known),
            (paths.runtime_dir / "vms", running),
            (paths.staging_dir, set[str]()),
        ):
            if not _real_dir(parent):
                if os.path.lexists(parent):
                    log.error("not sweeping %s: it is not a directory (a symlink?)", parent)
                continue
            for entry in parent.iterdir():
                if entry.name in keep:
                    continue
                log.info("removing leftover", extra={"path": str(entry)})
                fsutil.remove_entry(entry)

    async def _stop_vmms(self, vm_id: str, procs: Sequence[recovery.VMMProcess]) -> None:
        """Stop every VMM of `vm_id`: the recorded one through its driver, then any other."""
        handle = self._handle(vm_id)
        if handle is not None:
            with contextlib.suppress(DriverError, OSError):
                await self._driver_for(handle).force_stop(handle)
        await self._kill_processes([(p.pid, p.vm_id) for p in procs])

    async def _kill_processes(self, victims: Sequence[tuple[int, str]]) -> None:
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
                os.kill(pid, signal_mod.SIGKILL)
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

    async def stop(self) -> None:
        """Daemon shutdown: stop watching; running VMs keep running (a restart re-adopts them)."""
        for op in self.ops.running():
            if op.task is not None:
                op.task.cancel()
                with contextlib.suppress(BaseException):
                    await op.task
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor

    async def _monitor_loop(self) -> None:
        """A guest that powered itself off (or a QEMU that died) becomes `stopped` promptly."""
        while True:
            await asyncio.sleep(MONITOR_INTERVAL)
            try:
                for vm in self._all():
                    if vm.state == "running" and not self._lock(vm.id).locked():
                        await self._refresh(vm)
            except Exception:
                log.exception("vm monitor pass failed")

    # --- store ---------------------------------------------------------------------------------

    def _row(self, r: sqlite3.Row) -> VMRecord:
        handle = json.loads(r["handle"]) if r["handle"] else None
        vm_dir = self.vm_dir(r["id"])
        ip = None
        nat = False
        egress, egress_rules = "open", []
        net = getattr(self.d, "network", None)
        if net is not None and r["network"] == "tap":
            with contextlib.suppress(Exception):
                ip = net.guest_ip(r["id"])
                nat = net.nat(r["id"])
                policy = net.policy(r["id"])
                egress, egress_rules = policy.mode, [rule.text for rule in policy.rules]
        return VMRecord(
            id=r["id"],
            name=r["name"],
            state=r["state"],
            image_id=r["image_id"],
            image_name=r["image_name"],
            kernel=r["kernel"],
            vcpus=r["vcpus"],
            memory_mib=r["memory_mib"],
            disk_size_bytes=r["disk_size"],
            init_mode=r["init_mode"],
            network=r["network"],
            error=r["error"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            started_at=r["started_at"],
            pid=handle["pid"] if handle else None,
            ssh_host=handle["ssh_host"] if handle else None,
            ssh_port=handle["ssh_port"] if handle else None,
            ip=ip,
            nat=nat,
            egress=egress,
            egress_rules=egress_rules,
            vmm=handle["driver"] if handle else None,
            root_disk=rootdisk.describe_root_disk(vm_dir),
            dir=vm_dir,
            console_log=vm_dir / "console.log",
        )

    def _all(self) -> list[VMRecord]:
        return [self._row(r) for r in self.d.store.query("SELECT * FROM vms ORDER BY created_at")]

    def _get_by_id(self, vm_id: str) -> VMRecord:
        r = self.d.store.query_one("SELECT * FROM vms WHERE id = ?", (vm_id,))
        if r is None:
            raise NotFound(f"vm {vm_id!r} not found")
        return self._row(r)

    def handle(self, vm_id: str) -> VMHandle | None:
        """The running VM's VMM handle (pid, sockets), for probes; None when it is not running."""
        return self._handle(vm_id)

    def _handle(self, vm_id: str) -> VMHandle | None:
        r = self.d.store.query_one("SELECT handle FROM vms WHERE id = ?", (vm_id,))
        if r is None or not r["handle"]:
            return None
        return VMHandle.from_json(json.loads(r["handle"]))

    def _update(self, vm_id: str, **fields: Any) -> None:
        fields["updated_at"] = _now()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self.d.store.tx() as c:
            c.execute(f"UPDATE vms SET {cols} WHERE id = ?", (*fields.values(), vm_id))

    def _lock(self, vm_id: str) -> asyncio.Lock:
        return self._locks.setdefault(vm_id, asyncio.Lock())

    def _references(self, kind: str, ident: str) -> list[str]:
        if kind == "image":
            rows = self.d.store.query("SELECT name FROM vms WHERE image_id = ?", (ident,))
        elif kind == "kernel":
            rows = self.d.store.query("SELECT name FROM vms WHERE kernel = ?", (ident,))
        else:
            return []
        return [f"vm {r['name']}" for r in rows]

    # --- refs ----------------------------------------------------------------------------------

    def resolve(self, ref: str) -> VMRecord:
        """Exact id or name, then a unique prefix of ids and names."""
        if not ref:
            raise BadRequest("a vm name or id is required")
        vms = self._all()
        for vm in vms:
            if ref in (vm.id, vm.name):
                return vm
        matches = [vm for vm in vms if vm.id.startswith(ref) or vm.name.startswith(ref)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise NotFound(f"vm {ref!r} not found; `banger vm list` shows the VMs")
        names = ", ".join(sorted(vm.name for vm in matches))
        raise BadRequest(f"vm ref {ref!r} is ambiguous (matches {names}); use more characters")

    def resolve_many(self, refs: Sequence[str]) -> list[VMRecord]:
        out: list[VMRecord] = []
        for ref in refs:
            vm = self.resolve(ref)
            if all(v.id != vm.id for v in out):
                out.append(vm)
        return out

    # --- liveness ------------------------------------------------------------------------------

    def _driver_for(self, handle: VMHandle) -> Driver:
        return driver_by_name(self.d.config, handle.driver)

    async def _refresh(self, vm: VMRecord) -> VMRecord:
        """A `running` VM whose process is gone becomes stopped (or error) right now."""
        if vm.state != "running":
            return vm
        handle = self._handle(vm.id)
        if handle is not None and self._driver_for(handle).is_alive(handle):
            return vm
        self._mark_dead(vm)
        net = getattr(self.d, "network", None)
        if net is not None:
            with contextlib.suppress(Exception):
                await net.detach(vm.id)
        return self._get_by_id(vm.id)

    def _mark_dead(self, vm: VMRecord) -> None:
        reason = _console_failure(vm.console_log)
        if reason:
            self._update(vm.id, state="error", error=f"the VM exited: {reason}", handle=None)
        else:
            self._update(vm.id, state="stopped", handle=None)
        shutil.rmtree(self.runtime_dir(vm.id), ignore_errors=True)

    # --- queries -------------------------------------------------------------------------------

    async def list_vms(self) -> list[VMRecord]:
        return [await self._refresh(vm) for vm in self._all()]

    async def show(self, ref: str) -> VMRecord:
        return await self._refresh(self.resolve(ref))

    async def ssh_target(self, ref: str) -> SSHTarget:
        vm = await self.show(ref)
        if vm.state != "running" or not vm.ssh_host:
            raise NotRunning(
                f"vm {vm.name} is {vm.state}; start it with `banger vm start {vm.name}`"
            )
        return SSHTarget(
            host=vm.ssh_host,
            port=vm.ssh_port or 22,
            user="root",
            key_path=self.key_path,
            known_hosts_path=self.known_hosts,
            vm_name=vm.name,
        )

    async def logs(self, ref: str, max_bytes: int, *, offset: int | None = None) -> dict[str, Any]:
        vm = self.resolve(ref)
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
        total = len(CREATE_STAGES) if req.start else 2
        step = 0

        marker_dir: Path | None = None

        def report(stage: str, detail: str = "") -> None:
            nonlocal step
            step += 1
            ctx.progress(stage=stage, detail=detail, current=step, total=total)
            if op is not None:
                op.update(stage, detail, done=step - 1, total=total)
            if marker_dir is not None:
                # Where a crash would find this create (the reason `vm show` gives after it).
                with contextlib.suppress(OSError):
                    recovery.mark(marker_dir, recovery.CREATING, stage)

        if req.allow or req.egress is not None:
            # Bad rules fail before any work: same checks as `vm set --allow`.
            policy = updated(Policy("open"), req.allow, (), req.egress)
            if policy.restricted and self._network_kind() != "tap":
                raise BadRequest(
                    "egress rules need bridged networking (the host enforces them on banger's "
                    'bridge), but this daemon uses user-mode networking; set `network = "bridge"`'
                )
        name = self._reserve_name(req.name)
        vm_id = secrets.token_hex(6)
        made_dir: Path | None = None
        inserted = False
        try:
            try:
                sizing = resolve_sizing(self.d.config, req.vcpus, req.memory_mib, req.disk_size)
            except ValueError as e:
                raise BadRequest(str(e)) from None
            report("resolve", "image and kernel")
            if req.kernel and req.kernel != self.d.config.default_kernel:
                # Fail fast: a kernel that is not there is refused before any image is built.
                await self.d.kernels.ensure(req.kernel, ctx)
            image_name = req.image or self.d.config.default_image
            image = await self.d.images.ensure(image_name, ctx)
            kernel_name = req.kernel or image.kernel_ref or self.d.config.default_kernel
            kernel = await self.d.kernels.ensure(kernel_name, ctx)
            if kernel.initrd is None:
                raise BadRequest(
                    f"kernel {kernel.name} has no initramfs; re-import it with its modules "
                    "(`banger kernel import --modules DIR`) so banger can generate one"
                )
            spec_line = f"{name}: {image.name} · kernel {kernel.name} · {sizing.line()}"
            ctx.progress(stage="spec", detail=spec_line, current=step, total=total)
            if op is not None:
                op.spec = spec_line
            report("disks", "root disk and work disk")
            staged = self.d.paths.staging_dir / f"vm-{vm_id}"
            made_dir = staged
            staged.mkdir(parents=True)
            # The VM dir is renamed into place with this marker: a crash finds it (recovery).
            recovery.mark(staged, recovery.CREATING, "disks")
            try:
                # qcow2 overlay for QEMU; a raw reflink/sparse copy when Firecracker runs VMs.
                await rootdisk.make_root_disk(
                    self.d.config, image.rootfs, staged, self._network_kind()
                )
            except DriverError as e:
                raise BadRequest(str(e)) from None
            await disks.create_work_disk(staged / "work.ext4", sizing.disk_size_bytes)
            priv, pub = await asyncio.to_thread(generate_host_key, staged)
            (staged / "console.log").touch()
            await self._hold_for_test("disks")
            final = self.vm_dir(vm_id)
            # Disks and marker on disk before the rename, the rename before the record.
            await asyncio.to_thread(fsutil.publish, staged, final)
            made_dir = final
            marker_dir = final
            net_kind = self._network_kind()
            now = _now()
            with self.d.store.tx() as c:
                c.execute(
                    "INSERT INTO vms (id, name, state, image_id, image_name, kernel, vcpus,"
                    " memory_mib, disk_size, init_mode, network, error, handle, created_at,"
                    " updated_at, started_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,NULL,NULL,?,?,NULL)",
                    (
                        vm_id, name, "created", image.id, image.name, kernel.name,
                        sizing.vcpus, sizing.memory_mib, sizing.disk_size_bytes, req.init,
                        net_kind, now, now,
                    ),
                )  # fmt: skip
            inserted = True
            if req.nat or req.allow or req.egress == "restricted":
                net = getattr(self.d, "network", None)
                if net is None:
                    raise BadRequest("--nat needs the network service")
                await net.set_nat(vm_id, True)
                if req.allow or req.egress is not None:
                    await net.set_egress(vm_id, req.allow, (), req.egress)
            await asyncio.to_thread(pin_host_key, self.known_hosts, f"{name}.vm", pub)
            del priv
        except BaseException:
            # Failed or cancelled before the VM exists: leave nothing behind.
            await self._discard(vm_id, name, made_dir, inserted)
            raise
        finally:
            self._reserved.discard(name)
        if not req.start:
            await asyncio.to_thread(recovery.clear, self.vm_dir(vm_id), recovery.CREATING)
            if op is not None:
                op.update("done", "created", done=total, total=total)
            return self._get_by_id(vm_id)
        try:
            async with self._lock(vm_id):
                vm = await self._boot(self._get_by_id(vm_id), report)
        except asyncio.CancelledError:
            # A cancelled create leaves nothing behind: no process, no disks, no record.
            await asyncio.shield(self._purge(vm_id))
            raise
        finally:
            # Finished, failed (the record says why) or purged: no longer an interrupted create.
            marker_dir = None
            await asyncio.to_thread(recovery.clear, self.vm_dir(vm_id), recovery.CREATING)
        if op is not None:
            op.update("ready", "", done=total, total=total)
        return vm

    def _reserve_name(self, requested: str | None) -> str:
        taken = {vm.name for vm in self._all()} | self._reserved
        if requested:
            try:
                name = validate_name(requested)
            except InvalidName as e:
                raise BadRequest(str(e)) from None
            if name in taken:
                raise AlreadyExists(
                    f"vm {name!r} already exists; choose another --name or delete it first"
                )
        else:
            name = generate_name(taken)
        self._reserved.add(name)
        return name

    async def _discard(self, vm_id: str, name: str, made: Path | None, inserted: bool) -> None:
        if inserted:
            with self.d.store.tx() as c:
                c.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
        if made is not None:
            await asyncio.to_thread(shutil.rmtree, made, True)
        await asyncio.to_thread(forget_host, self.known_hosts, [f"{name}.vm"])

    def _network_kind(self) -> str:
        net = getattr(self.d, "network", None)
        if net is not None and getattr(net, "mode", "user") == "bridge":
            return "tap"
        return "user"

    # --- boot ----------------------------------------------------------------------------------

    async def _boot(self, vm: VMRecord, report: Report) -> VMRecord:
        """Launch the VM and wait for its guest (READY) and SSH (banner). Caller holds the lock."""
        report("boot", "seed disk and VMM")
        kernel = await self.d.kernels.get(vm.kernel)
        try:
            await self.d.images.get(vm.image_id)
        except domain.NotFound:
            raise NotFound(
                f"image {vm.image_name!r} of vm {vm.name} no longer exists; delete the VM"
            ) from None
        if kernel.initrd is None:
            raise BadRequest(f"kernel {kernel.name} has no initramfs; re-import it with modules")
        pubkey = await asyncio.to_thread(ensure_client_key, self.key_path)
        vdir = vm.dir
        host_priv = (vdir / "ssh_host_ed25519_key").read_text()
        host_pub = (vdir / "ssh_host_ed25519_key.pub").read_text()
        net_spec, guest_net, guest_ip = await self._attach_network(vm)
        seed_cfg = payload.SeedConfig(
            vm_id=vm.id,
            hostname=vm.name,
            authorized_keys=pubkey,
            host_key_private=host_priv,
            host_key_public=host_pub,
            init_mode=vm.init_mode,
            network=guest_net,
        )
        launched: VMHandle | None = None
        driver: Driver | None = None
        try:
            with open(vm.console_log, "ab") as f:
                f.write(f"\n--- banger: boot of {vm.name} at {_now()} ---\n".encode())
            rundir = self.runtime_dir(vm.id)
            shutil.rmtree(rundir, ignore_errors=True)
            plan = rootdisk.boot_plan(
                self.d.config,
                vm.name,
                vdir,
                kernel.name,
                kernel.boot_image,
                kernel.vmlinux,
                vm.network,
            )
            if plan.driver.name == "firecracker":
                # No virtio-serial there: the seed carries the AF_VSOCK control helper.
                from banger.guest.vsockd import ensure_vsockd
                from banger.vmm.firecracker import CONTROL_VSOCK_PORT

                helper = await asyncio.to_thread(ensure_vsockd, self.d.paths.cache_dir)
                seed_cfg = dataclasses.replace(
                    seed_cfg, vsockd=helper, vsock_port=CONTROL_VSOCK_PORT
                )
            await asyncio.to_thread(payload.build_seed, vdir / "seed.ext4", seed_cfg)
            spec = VMSpec(
                vm_id=vm.id,
                name=vm.name,
                kernel=plan.kernel,
                initrd=kernel.initrd,
                cmdline=KERNEL_ARGS,
                root_disk=plan.root,
                work_disk=DiskSpec(vdir / "work.ext4", "raw"),
                extra_disks=(DiskSpec(vdir / "seed.ext4", "raw", read_only=True),),
                vcpus=vm.vcpus,
                memory_mib=vm.memory_mib,
                network=net_spec,
                console_log=vm.console_log,
                runtime_dir=rundir,
                extra={"kernel_name": kernel.name, **({"guest_ip": guest_ip} if guest_ip else {})},
            )
            driver = plan.driver
            launched = await driver.launch(spec)
            await self._hold_for_test("boot")
            self._update(
                vm.id,
                state="running",
                error=None,
                handle=json.dumps(launched.to_json()),
                started_at=_now(),
            )
            handle = launched
            drv = driver

            def alive() -> bool:
                return drv.is_alive(handle)

            report("wait_guest", "guest init")
            if handle.driver == "firecracker":
                from banger.vmm.firecracker import wait_console_ready

                # No virtio-serial on Firecracker: the guest's READY comes on the console.
                await wait_console_ready(handle, GUEST_READY_TIMEOUT, alive)
            else:
                await wait_control_ready(handle.control_socket, GUEST_READY_TIMEOUT, alive=alive)
            report("wait_ssh", f"{handle.ssh_host}:{handle.ssh_port}")
            await self._hold_for_test("wait_ssh")
            await wait_ssh_banner(handle.ssh_host, handle.ssh_port, SSH_READY_TIMEOUT, alive)
        except asyncio.CancelledError:
            if launched is not None and driver is not None:
                await asyncio.shield(driver.force_stop(launched))
            await asyncio.shield(self._after_exit(vm.id))
            self._update(vm.id, state="stopped", handle=None)
            raise
        except (DriverError, TimeoutError, ConnectionError, OSError, domain.BangerError) as e:
            if launched is not None and driver is not None:
                await driver.force_stop(launched)
            await self._after_exit(vm.id)
            tail = _console_tail(vm.console_log)
            reason = e.message if isinstance(e, domain.BangerError) else str(e)
            self._update(vm.id, state="error", error=reason, handle=None)
            msg = f"vm {vm.name} failed to boot: {reason} (console log: {vm.console_log})"
            if tail:
                msg += "\n" + tail
            raise OperationFailed(msg) from None
        net = getattr(self.d, "network", None)
        if net is not None:
            with contextlib.suppress(Exception):
                await net.published(vm.id, vm.name, vm.network, handle.ssh_host, handle.ssh_port)
        return self._get_by_id(vm.id)

    async def _hold_for_test(self, point: str) -> None:
        """Test-only (BANGER_TEST_HOLD_AT=point): stop here until the daemon dies."""
        if os.environ.get(TEST_HOLD_ENV) != point:
            return
        (self.d.paths.runtime_dir / f"test-hold-{point}").touch()
        log.warning("holding a create for a test", extra={"point": point})
        await asyncio.Event().wait()

    async def _attach_network(
        self, vm: VMRecord
    ) -> tuple[NetworkSpec, payload.GuestNetwork, str | None]:
        net = getattr(self.d, "network", None)
        if vm.network == "tap":
            if net is None:
                raise OperationFailed("this VM uses bridged networking but it is unavailable")
            gn = await net.attach(vm.id, vm.name)
            return (
                NetworkSpec(kind="tap", tap_device=gn.tap, mac=gn.mac),
                payload.GuestNetwork(
                    kind="tap",
                    address=gn.ip,
                    prefix=gn.prefix,
                    gateway=gn.gateway,
                    dns=tuple(gn.dns),
                    mac=gn.mac,
                ),
                gn.ip,
            )
        return NetworkSpec(kind="user"), payload.GuestNetwork(kind="user"), None

    async def _after_exit(self, vm_id: str) -> None:
        shutil.rmtree(self.runtime_dir(vm_id), ignore_errors=True)
        net = getattr(self.d, "network", None)
        if net is not None:
            with contextlib.suppress(Exception):
                await net.detach(vm_id)

    # --- verbs ---------------------------------------------------------------------------------

    async def start_vm(self, ref: str, ctx: RequestContext) -> VMRecord:
        vm = self.resolve(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self._get_by_id(vm.id))
            if vm.state == "running":
                raise Conflict(f"vm {vm.name} is already running")
            step = 0

            def report(stage: str, detail: str = "") -> None:
                nonlocal step
                step += 1
                ctx.progress(stage=stage, detail=detail, current=step, total=3)

            return await self._boot(vm, report)

    async def stop_vm(self, ref: str, timeout: float = STOP_TIMEOUT) -> VMRecord:
        vm = self.resolve(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self._get_by_id(vm.id))
            if vm.state != "running":
                raise NotRunning(f"vm {vm.name} is not running (state {vm.state})")
            await self._stop_locked(vm, timeout)
            return self._get_by_id(vm.id)

    async def _stop_locked(self, vm: VMRecord, timeout: float) -> bool:
        """Graceful power-off through the guest, then force after `timeout`. True if graceful."""
        handle = self._handle(vm.id)
        graceful = True
        if handle is not None:
            driver = self._driver_for(handle)
            if driver.is_alive(handle):
                await driver.request_shutdown(handle)
                if not await driver.wait_exit(handle, timeout):
                    log.warning("graceful stop timed out; forcing", extra={"vm": vm.name})
                    graceful = False
                    await driver.force_stop(handle)
        self._update(vm.id, state="stopped", handle=None, error=None)
        await self._after_exit(vm.id)
        return graceful

    async def kill_vm(self, ref: str, sig: str) -> VMRecord:
        name = sig.upper().removeprefix("SIG")
        if name not in ALLOWED_SIGNALS:
            raise BadRequest(
                f"signal {sig!r} is not allowed; use one of {', '.join(ALLOWED_SIGNALS)}"
            )
        signum = int(getattr(signal_mod, f"SIG{name}"))
        vm = self.resolve(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self._get_by_id(vm.id))
            if vm.state != "running":
                raise NotRunning(f"vm {vm.name} is not running (state {vm.state})")
            handle = self._handle(vm.id)
            if handle is not None:
                driver = self._driver_for(handle)
                driver.send_signal(handle, signum)
                if not await driver.wait_exit(handle, 10.0):
                    # The VMM survived the signal (e.g. USR1): it keeps running.
                    return self._get_by_id(vm.id)
            self._update(vm.id, state="stopped", handle=None)
            await self._after_exit(vm.id)
            return self._get_by_id(vm.id)

    async def restart_vm(self, ref: str, ctx: RequestContext) -> VMRecord:
        vm = self.resolve(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self._get_by_id(vm.id))
            if vm.state == "running":
                ctx.progress(stage="stop", detail="", current=0, total=4)
                await self._stop_locked(vm, STOP_TIMEOUT)
            step = 1

            def report(stage: str, detail: str = "") -> None:
                nonlocal step
                step += 1
                ctx.progress(stage=stage, detail=detail, current=step, total=4)

            return await self._boot(self._get_by_id(vm.id), report)

    async def delete_vm(self, ref: str) -> VMRecord:
        vm = self.resolve(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self._get_by_id(vm.id))
            # A crash from here on is finished by the next start (recovery), not left half-done.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(recovery.mark, vm.dir, recovery.DELETING, "", durable=True)
            if vm.state == "running":
                await self._stop_locked(vm, 10.0)
            await self._purge(vm.id)
            return vm.model_copy(update={"state": "stopped"})

    async def _purge(self, vm_id: str) -> None:
        """Remove every trace of a VM (process must be gone): disks, record, host key pin."""
        r = self.d.store.query_one("SELECT name FROM vms WHERE id = ?", (vm_id,))
        handle = self._handle(vm_id)
        if handle is not None:
            await self._driver_for(handle).force_stop(handle)
        await self._after_exit(vm_id)
        await asyncio.to_thread(shutil.rmtree, self.vm_dir(vm_id), True)
        with self.d.store.tx() as c:
            c.execute("DELETE FROM vms WHERE id = ?", (vm_id,))
        if r is not None:
            await asyncio.to_thread(forget_host, self.known_hosts, [f"{r['name']}.vm"])
        net = getattr(self.d, "network", None)
        if net is not None:
            with contextlib.suppress(Exception):
                await net.forget(vm_id)
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
        if (
            vcpus is None
            and memory_mib is None
            and disk_size is None
            and nat is None
            and not egress_change
        ):
            raise BadRequest(
                "nothing to change: give --vcpu, --memory, --disk-size, --nat/--no-nat, "
                "--allow, --disallow or --egress"
            )
        vm = self.resolve(ref)
        async with self._lock(vm.id):
            vm = await self._refresh(self._get_by_id(vm.id))
            if egress_change:
                # Host-side only, like NAT: applied at once to a running VM.
                net = getattr(self.d, "network", None)
                if net is None:
                    raise BadRequest("--allow/--disallow/--egress need the network service")
                await net.set_egress(vm.id, allow, disallow, egress)
                if vcpus is None and memory_mib is None and disk_size is None and nat is None:
                    self._update(vm.id)
                    return self._get_by_id(vm.id)
            if nat is not None:
                # NAT is host-side only: the network service applies it at once if the VM runs.
                net = getattr(self.d, "network", None)
                if net is None:
                    raise BadRequest("--nat needs the network service")
                await net.set_nat(vm.id, nat)
                if vcpus is None and memory_mib is None and disk_size is None:
                    self._update(vm.id)
                    return self._get_by_id(vm.id)
            if vm.state == "running":
                raise Conflict(
                    f"vm {vm.name} is running; stop it first (`banger vm stop {vm.name}`), "
                    "change it, then start it again"
                )
            fields: dict[str, Any] = {}
            if vcpus is not None:
                fields["vcpus"] = vcpus
            if memory_mib is not None:
                fields["memory_mib"] = memory_mib
            if disk_size is not None:
                try:
                    size = resolve_sizing(self.d.config, disk_size=disk_size).disk_size_bytes
                except ValueError as e:
                    raise BadRequest(str(e)) from None
                if size < vm.disk_size_bytes:
                    raise BadRequest(
                        f"disk size can only grow: vm {vm.name} has "
                        f"{vm.disk_size_bytes >> 20} MiB, asked for {size >> 20} MiB"
                    )
                await disks.grow_work_disk(vm.dir / "work.ext4", size)
                fields["disk_size"] = size
            self._update(vm.id, **fields)
            return self._get_by_id(vm.id)

    async def prune(self) -> list[VMRecord]:
        """Delete every VM that is not running."""
        doomed = [vm for vm in await self.list_vms() if vm.state != "running"]
        out = []
        for vm in doomed:
            with contextlib.suppress(NotFound):
                out.append(await self.delete_vm(vm.id))
        return out

    # --- async create --------------------------------------------------------------------------

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
                op.error = {"code": "cancelled", "message": "the create was cancelled"}
            except (RPCError, domain.BangerError) as e:
                op.error = _wire_error(e)
                op.stage = "failed"
            except Exception as e:
                log.exception("async create crashed")
                op.error = {"code": "operation_failed", "message": str(e) or type(e).__name__}
                op.stage = "failed"
            finally:
                op.done = True
                op.finished = time.monotonic()

        op.task = asyncio.create_task(runner())
        return op

    async def cancel_create(self, op_id: str) -> Operation:
        op = self.ops.get(op_id)
        if not op.done and op.task is not None:
            op.task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(op.task), 60)
        return op


async def for_each(
    refs: Sequence[VMRecord], fn: Callable[[VMRecord], Awaitable[VMRecord]]
) -> list[dict[str, Any]]:
    """Run `fn` on every VM concurrently; results in the given order, errors per VM."""

    async def one(vm: VMRecord) -> dict[str, Any]:
        try:
            done = await fn(vm)
            return {"vm": vm.name, "ok": True, "result": done.model_dump(mode="json")}
        except (RPCError, domain.BangerError) as e:
            return {"vm": vm.name, "ok": False, "error": _wire_error(e)}

    return list(await asyncio.gather(*(one(vm) for vm in refs)))


def _wire_error(e: RPCError | domain.BangerError) -> dict[str, str]:
    # Transitional (compose branch): images/kernels raise domain errors now.
    wire = e if isinstance(e, RPCError) else to_rpc(e)
    return {"code": wire.code, "message": wire.message}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")


def _real_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat_mod.S_ISDIR(st.st_mode)


def _remove_own_dir(path: Path) -> None:
    """Remove an SSH control dir we made (under /tmp: only a real dir we own)."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    if stat_mod.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid():
        fsutil.remove_entry(path)


def _console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _console_failure(path: Path) -> str | None:
    """Why the last boot ended, when the console says it failed."""
    tail = _console_tail(path, 40)
    boot_marker = tail.rfind("--- banger: boot")
    tail = tail[boot_marker:] if boot_marker >= 0 else tail
    for line in reversed(tail.splitlines()):
        if "warning:" in line:
            continue  # e.g. an optional module that did not load: the boot went on
        for marker in ("banger-initramfs:", "banger-guest: ERROR", "Kernel panic"):
            if marker in line:
                return line.strip()
    return None

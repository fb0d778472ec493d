"""The QEMU driver: a `microvm` machine with virtio-mmio disks/NIC, serial console to a file,
QMP on a Unix socket and a virtio-serial control port.

QEMU runs with `-daemonize`, so the VM process is not a child of the daemon: a daemon restart
re-attaches through the persisted pid and sockets and never kills it. The driver owns the argv;
the service hands it a `VMSpec`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from banger.proc import communicate, spawn
from banger.vmm import qemu_snapshot as snap
from banger.vmm.accel import resolve_accel
from banger.vmm.base import (
    Alive,
    Capability,
    DiskSpec,
    DriverError,
    GuestChannel,
    MissingCapability,
    SavedMachine,
    VMHandle,
    VMSpec,
)

log = logging.getLogger("banger.vmm.qemu")

CONTROL_PORT_NAME = "banger.ctl"
QMP_TIMEOUT_SECONDS = 5.0
LAUNCH_TIMEOUT_SECONDS = 30.0


def host_tsc_khz() -> int | None:
    """The host CPU's nominal kHz, used to pin the guest TSC (TCG guests may fail calibration)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("cpu MHz"):
            with contextlib.suppress(ValueError):
                return int(float(line.split(":", 1)[1]) * 1000)
    return None


def _drive(index: int, disk: DiskSpec) -> list[str]:
    opts = f"id=d{index},file={_escape(str(disk.path))},format={disk.format},if=none"
    opts += ",cache=writeback,discard=unmap"
    if disk.read_only:
        opts += ",readonly=on"
    if disk.scratch:
        opts += ",snapshot=on"
    return ["-drive", opts, "-device", f"virtio-blk-device,drive=d{index}"]


def _escape(value: str) -> str:
    # QEMU option values use ',' as separator; a literal comma is written as ',,'.
    return value.replace(",", ",,")


class QemuDriver:
    name = "qemu"

    def __init__(self, qemu_bin: str = "qemu-system-x86_64", accel: str = "auto") -> None:
        self.qemu_bin = qemu_bin
        self.accel_setting = accel

    # --- argv -------------------------------------------------------------------------------

    def build_argv(
        self, spec: VMSpec, accel: str | None = None, memory_from: Path | None = None
    ) -> list[str]:
        accel = accel or resolve_accel(self.accel_setting)
        run = spec.runtime_dir
        cmdline = spec.cmdline
        if accel == "tcg":
            khz = host_tsc_khz()
            if khz and "tsc_early_khz=" not in cmdline:
                # Without this a loaded host can make the guest hang in TSC calibration.
                cmdline += f" tsc_early_khz={khz} tsc=reliable"
        argv = [
            self.qemu_bin,
            "-name", f"banger-{spec.name},process=banger-{spec.vm_id}",
            "-M", "microvm,acpi=on",
            "-accel", accel,
            "-cpu", "max" if accel == "tcg" else "host",
            "-m", str(spec.memory_mib),
            "-smp", str(spec.vcpus),
            "-nodefaults", "-no-user-config", "-no-reboot", "-display", "none",
            "-kernel", str(spec.kernel),
            "-append", cmdline,
            "-chardev", f"file,id=con,path={_escape(str(spec.console_log))},append=on",
            "-serial", "chardev:con",
            "-qmp", f"unix:{run / 'qmp.sock'},server=on,wait=off",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=ctl,path={run / 'ctl.sock'},server=on,wait=off",
            "-device", f"virtserialport,chardev=ctl,name={CONTROL_PORT_NAME}",
            "-pidfile", str(run / "qemu.pid"),
            "-daemonize",
        ]  # fmt: skip
        # Always a named memory backend: saved streams match RAM blocks by id (qemu_snapshot).
        argv += snap.memory_args(spec, memory_from)
        if spec.initrd is not None:
            argv += ["-initrd", str(spec.initrd)]
        disks: list[DiskSpec] = [spec.root_disk]
        if spec.work_disk is not None:
            disks.append(spec.work_disk)
        disks.extend(spec.extra_disks)
        for i, disk in enumerate(disks):
            argv += _drive(i, disk)
        argv += self._net_args(spec)
        return argv

    def _net_args(self, spec: VMSpec) -> list[str]:
        net = spec.network
        mac = f",mac={net.mac}" if net.mac else ""
        if net.kind == "user":
            fwds = [(net.ssh_host_port, 22), *net.forwards]
            hostfwd = "".join(f",hostfwd=tcp:127.0.0.1:{h}-:{g}" for h, g in fwds)
            return [
                "-netdev", f"user,id=n0{hostfwd}",
                "-device", f"virtio-net-device,netdev=n0{mac}",
            ]  # fmt: skip
        if net.kind == "tap":
            return [
                "-netdev", f"tap,id=n0,ifname={net.tap_device},script=no,downscript=no",
                "-device", f"virtio-net-device,netdev=n0{mac}",
            ]  # fmt: skip
        return []

    # --- lifecycle --------------------------------------------------------------------------

    async def launch(self, spec: VMSpec) -> VMHandle:
        return await self._start(spec, [], None)

    async def _start(
        self, spec: VMSpec, extra_argv: list[str], memory_from: Path | None
    ) -> VMHandle:
        spec.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for stale in ("qmp.sock", "ctl.sock", "qemu.pid"):
            with contextlib.suppress(FileNotFoundError):
                (spec.runtime_dir / stale).unlink()
        accel = resolve_accel(self.accel_setting)
        argv = self.build_argv(spec, accel, memory_from) + extra_argv
        # Not guarded: the VM must outlive the daemon (a restarted daemon re-adopts it).
        proc = await spawn(argv, guarded=False)
        try:
            _out, err = await communicate(proc, None, LAUNCH_TIMEOUT_SECONDS)
        except TimeoutError:
            raise DriverError(f"qemu did not start within {LAUNCH_TIMEOUT_SECONDS:.0f}s") from None
        except asyncio.CancelledError:
            # -daemonize may already have forked the VM: do not leave it running.
            pid = _read_pid(spec.runtime_dir / "qemu.pid")
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            raise
        if proc.returncode != 0:
            tail = " | ".join(err.decode(errors="replace").strip().splitlines()[-3:])
            raise DriverError(f"qemu exited {proc.returncode}: {tail or '(no output)'}")
        pid = _read_pid(spec.runtime_dir / "qemu.pid")
        if not pid:
            raise DriverError("qemu started but wrote no pid file")
        handle = VMHandle(
            driver=self.name,
            pid=pid,
            api_socket=str(spec.runtime_dir / "qmp.sock"),
            control_socket=str(spec.runtime_dir / "ctl.sock"),
            ssh_host="127.0.0.1",
            ssh_port=22,
            started_at=time.time(),
            details={"accel": accel, "vm_id": spec.vm_id, "network": spec.network.kind},
        )
        if spec.network.kind == "user":
            port = spec.network.ssh_host_port or await self._forwarded_port(handle)
            handle.ssh_port = port
        elif spec.network.kind == "tap":
            handle.ssh_host = str(spec.extra.get("guest_ip", ""))
        return handle

    async def _forwarded_port(self, handle: VMHandle) -> int:
        """The host port QEMU picked for `hostfwd=…:0-:22` (from `info usernet`)."""
        out = await self.hmp(handle, "info usernet")
        port = parse_usernet_ssh_port(out)
        if port is None:
            raise DriverError(f"cannot find the SSH port forward in `info usernet`: {out!r}")
        return port

    async def attach(self, handle: VMHandle) -> bool:
        """Re-adopt a VMM an earlier daemon started. If that daemon died in the middle of a
        save of it (its mark is still there), the save is undone: the migration nobody owns is
        cancelled and the guest runs again if it ran before (the VM is as it was)."""
        if not self.is_alive(handle):
            return False
        mark = Path(handle.api_socket).parent / snap.SAVE_MARK
        if mark.is_file():
            was_running = mark.read_text().strip() != "paused"
            found = await snap.abandon_save(handle.api_socket, was_running)
            log.warning(
                "undid a save cut short by a daemon crash",
                extra={"vm_id": handle.details.get("vm_id"), "migration": found},
            )
            mark.unlink(missing_ok=True)
        return True

    def is_alive(self, handle: VMHandle) -> bool:
        return _pid_is_our_qemu(handle.pid, str(handle.details.get("vm_id", "")))

    async def request_shutdown(self, handle: VMHandle) -> None:
        """Ask the guest to power off: the control channel first, the ACPI button as well."""
        with contextlib.suppress(OSError, asyncio.TimeoutError):
            await send_control(handle.control_socket, "stop")
        with contextlib.suppress(Exception):
            await self.qmp(handle, "system_powerdown")

    async def force_stop(self, handle: VMHandle) -> None:
        if not self.is_alive(handle):
            return
        with contextlib.suppress(Exception):
            await self.qmp(handle, "quit")
        if await self.wait_exit(handle, 2.0):
            return
        self.send_signal(handle, signal.SIGKILL)
        await self.wait_exit(handle, 5.0)

    async def wait_exit(self, handle: VMHandle, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.is_alive(handle):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def send_signal(self, handle: VMHandle, signum: int) -> None:
        if self.is_alive(handle):
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signum)

    # --- QMP ---------------------------------------------------------------------------------

    async def qmp(self, handle: VMHandle, cmd: str, args: dict[str, Any] | None = None) -> Any:
        from qemu.qmp import QMPClient

        client = QMPClient(f"banger-{handle.pid}")
        try:
            await asyncio.wait_for(client.connect(handle.api_socket), QMP_TIMEOUT_SECONDS)
            return await asyncio.wait_for(client.execute(cmd, args), QMP_TIMEOUT_SECONDS)
        except TimeoutError:
            raise DriverError(f"QMP {cmd} timed out on {handle.api_socket}") from None
        finally:
            with contextlib.suppress(Exception):
                await client.disconnect()

    async def hmp(self, handle: VMHandle, command: str) -> str:
        out = await self.qmp(handle, "human-monitor-command", {"command-line": command})
        return str(out)

    # --- readiness, control channel, capabilities ------------------------------------------------

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {
                Capability.PAUSE,
                Capability.PORT_FORWARD,
                Capability.SUSPEND,
                Capability.SNAPSHOT,
                Capability.FORK,
            }
        )

    def guest_channel(self) -> GuestChannel:
        return GuestChannel("virtio-serial")

    async def wait_ready(self, handle: VMHandle, timeout: float, alive: Alive) -> str:
        return await wait_control_ready(handle.control_socket, timeout, alive=alive)

    async def open_control(
        self, handle: VMHandle, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(asyncio.open_unix_connection(handle.control_socket), timeout)

    async def pause(self, handle: VMHandle) -> None:
        await self.qmp(handle, "stop")

    async def resume(self, handle: VMHandle) -> None:
        # A suspend cut short (bangerd killed during its save) leaves a migration running or
        # done with the guest stopped: cancel it first (a no-op otherwise), then `cont`, which
        # also takes the disks back after a completed migration.
        await self.qmp(handle, "migrate_cancel")
        await self.qmp(handle, "cont")

    async def port_forwards(self, handle: VMHandle) -> list[tuple[int, int]]:
        return parse_usernet_forwards(await self.hmp(handle, "info usernet"))

    async def add_port_forward(self, handle: VMHandle, host_port: int, guest_port: int) -> None:
        if handle.details.get("network") != "user":
            raise MissingCapability(
                f"{self.name} ({handle.details.get('network')} network)", Capability.PORT_FORWARD
            )
        # netdev id "n0" is this driver's (_net_args); an empty reply means it worked.
        reply = await self.hmp(handle, f"hostfwd_add n0 tcp:127.0.0.1:{host_port}-:{guest_port}")
        if reply.strip():
            raise DriverError(f"cannot forward guest port {guest_port}: {reply.strip()}")

    # --- suspend, checkpoints, restore, forks (mechanics in vmm/qemu_snapshot.py) --------------

    async def save(
        self, handle: VMHandle, spec: VMSpec, dest: Path, keep_running: bool
    ) -> SavedMachine:
        """Save the running VM into the new directory `dest` (see `Driver.save`).

        keep_running=False (suspend): `stop`, the migration stream to `dest/state.mig`, `quit`.
        A VM launched with `spec.memory_file` writes only device state; its RAM file then moves
        to `dest/memory.ram` (same filesystem), ready to be mapped copy-on-write by restores.
        keep_running=True (checkpoint): a live pre-copy of RAM while the guest runs; at the
        switchover point (guest stopped by QEMU) the writable disks (qcow2 only) become frozen
        layers `dest/root.qcow2`, `dest/work.qcow2` under new active layers at the same paths,
        then the last pages and device state, `cont`. `paused_seconds` counts from the
        switchover point (seen within 5 ms) to `cont`.
        `dest/saved.json` is written last: without it the directory is not a saved machine."""
        if dest.exists():
            raise DriverError(f"{dest} already exists: a save needs a new directory")
        if keep_running and spec.memory_file is not None:
            raise DriverError(
                "a VM whose RAM lives in a shared file cannot be checkpointed while it runs "
                "(the file keeps changing): save it with keep_running=False"
            )
        disks = snap.writable_disks(spec) if keep_running else []
        dest.mkdir(mode=0o700, parents=True)
        frozen: dict[str, Path] = {}
        staged: list[Path] = []
        resumed_at: float | None = None
        mark: Path | None = None
        try:
            staged = await snap.stage_layers(disks, dest)
            async with snap.QmpSession(handle.api_socket) as qmp:
                # A VM the caller paused stays paused after a checkpoint.
                was_running = (await qmp.execute("query-status")).get("running", True)
                mark = snap.mark_save(Path(handle.api_socket).parent, bool(was_running))
                try:
                    if keep_running:
                        # Live pre-copy; QEMU stops the guest at the switchover point, where
                        # the disks are swapped, then writes the rest and the device state.
                        await snap.start_migration(qmp, dest / snap.STATE_FILE, False, live=True)
                        await snap.wait_switchover(qmp)
                        started = time.monotonic()
                        frozen = await snap.freeze_disks(qmp, disks, staged, dest)
                        await qmp.execute("migrate-continue", {"state": "pre-switchover"})
                        await qmp.wait_migration()
                    else:
                        started = time.monotonic()
                        await qmp.execute("stop")
                        await snap.migrate_to_file(
                            qmp, dest / snap.STATE_FILE, spec.memory_file is not None
                        )
                except BaseException:
                    # The VM goes on as it was (a failed save must not leave it frozen).
                    with contextlib.suppress(Exception):
                        await qmp.execute("migrate_cancel")
                    if was_running:
                        with contextlib.suppress(Exception):
                            await qmp.execute("cont")
                    raise
                if keep_running:
                    if was_running:
                        await qmp.execute("cont")
                    resumed_at = time.monotonic()
                else:
                    with contextlib.suppress(Exception):
                        await qmp.execute("quit")
        except BaseException:
            self._discard_failed_save(dest, frozen)
            raise
        finally:
            if mark is not None:
                mark.unlink(missing_ok=True)
            for path in staged:  # the ones not swapped in (a swapped one was renamed away)
                if not path.is_symlink():  # a swapped one's kept node name (qemu_snapshot)
                    path.unlink(missing_ok=True)
        if not keep_running:
            if not await self.wait_exit(handle, 10.0):
                self.send_signal(handle, signal.SIGKILL)
                await self.wait_exit(handle, 5.0)
            if spec.memory_file is not None:
                os.replace(spec.memory_file, dest / snap.MEMORY_FILE)
        paused = (resumed_at or time.monotonic()) - started
        saved = snap.new_record(
            spec,
            dest,
            "checkpoint" if keep_running else "suspend",
            frozen,
            paused if keep_running else 0.0,
            memory_in_file=spec.memory_file is not None,
        )
        snap.write_record(saved)
        return saved

    @staticmethod
    def _discard_failed_save(dest: Path, frozen: dict[str, Path]) -> None:
        if frozen:
            # The VM's active layers are already backed by these: keep them, nothing else.
            (dest / snap.LAYERS_ONLY_MARK).write_text("a checkpoint that failed after its disks\n")
            with contextlib.suppress(FileNotFoundError):
                (dest / snap.STATE_FILE).unlink()
        else:
            shutil.rmtree(dest, ignore_errors=True)

    async def restore(self, spec: VMSpec, saved: SavedMachine) -> VMHandle:
        """Start QEMU with `-incoming defer` and load `saved` (see `Driver.restore`).

        The caller prepares `spec` as for a cold boot of the VM it wants (its own runtime dir,
        console log, network, and for a fork its own disk paths), with the same RAM size, vCPUs
        and devices as when saved. For a checkpoint, each of `spec`'s writable disks is replaced
        by a new empty layer over the checkpoint's frozen one (the current active layer is
        discarded: that is the roll back; for a fork the paths are the child's own). For a
        suspend the disks are used as they are. Saved RAM in `memory.ram` is mapped private.
        Returns once the guest runs again."""
        snap.check_restorable(spec, saved)
        state = saved.dir / snap.STATE_FILE
        if not state.is_file():
            raise DriverError(f"{saved.dir}: the machine state {snap.STATE_FILE} is missing")
        memory_from = None
        if saved.details.get("memory") == "file":
            memory_from = saved.dir / snap.MEMORY_FILE
            if spec.memory_file is not None:
                raise DriverError("a restore maps the saved RAM file: leave spec.memory_file None")
        if saved.details.get("kind") == "checkpoint":
            by_role = {d.role: d for d in snap.writable_disks(spec)}
            for role, layer in saved.disks.items():
                size = await snap.virtual_size(layer)
                await snap.create_layer(by_role[role].path, layer, size)
        handle = await self._start(spec, ["-incoming", "defer"], memory_from)
        try:
            async with snap.QmpSession(handle.api_socket) as qmp:
                await snap.migrate_from_file(
                    qmp, state, memory_from is not None, lambda: self.is_alive(handle)
                )
                await qmp.execute("cont")
        except BaseException:
            await self.force_stop(handle)
            raise
        handle.details["restored_from"] = str(saved.dir)
        return handle

    async def delete_saved(self, saved: SavedMachine, layers_in_use: list[Path]) -> bool:
        """The RAM state goes; frozen layers stay while a layer in use is backed by them."""
        return await snap.delete_saved(saved, layers_in_use)

    async def share_memory(self, spec: VMSpec, saved: SavedMachine) -> SavedMachine:
        """Move a saved machine's RAM out of its stream into `memory.ram`, so that every later
        `restore` maps it copy-on-write and forks share the pages none of them changed.

        A helper QEMU (paused throughout, never running the guest) loads the stream into RAM
        backed by the new file, then saves only the device state. Its disks are `spec`'s shape
        over throw-away overlays (`snapshot=on`): the saved layers are only read. `spec` is the
        saved VM's (runtime_dir and console_log are replaced). Returns the updated record;
        nothing changes on failure. Idempotent."""
        if saved.details.get("memory") == "file":
            return saved
        snap.check_restorable(dataclasses.replace(spec, memory_file=None), saved)
        work = Path(tempfile.mkdtemp(prefix="bgm-", dir="/tmp"))
        ram = saved.dir / f".{snap.MEMORY_FILE}.partial"
        state = saved.dir / f".{snap.STATE_FILE}.partial"
        helper = snap.helper_spec(spec, saved, work, ram)
        handle: VMHandle | None = None
        try:
            handle = await self._start(helper, ["-incoming", "defer"], None)
            live = handle
            async with snap.QmpSession(handle.api_socket) as qmp:
                await snap.migrate_from_file(
                    qmp, saved.dir / snap.STATE_FILE, False, lambda: self.is_alive(live)
                )
                state.unlink(missing_ok=True)
                await snap.migrate_to_file(qmp, state, ignore_shared=True)
            await self.force_stop(handle)
            os.replace(ram, saved.dir / snap.MEMORY_FILE)
            os.replace(state, saved.dir / snap.STATE_FILE)
        except BaseException:
            if handle is not None:
                await self.force_stop(handle)
            ram.unlink(missing_ok=True)
            state.unlink(missing_ok=True)
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)
        shared = dataclasses.replace(saved, details={**saved.details, "memory": "file"})
        snap.write_record(shared)
        return shared


_FWD_RE = re.compile(r"TCP\[HOST_FORWARD\]\s+\d+\s+(\S*)\s+(\d+)\s+\S+\s+(\d+)")


def parse_usernet_forwards(text: str) -> list[tuple[int, int]]:
    """(host_port, guest_port) of the TCP forwards listed by QEMU's `info usernet`."""
    return [(int(m.group(2)), int(m.group(3))) for m in _FWD_RE.finditer(text)]


def parse_usernet_ssh_port(text: str) -> int | None:
    """From `info usernet`: the host port of the TCP forward to guest port 22."""
    for line in text.splitlines():
        if "HOST_FORWARD" not in line:
            continue
        fields = line.split()
        # TCP[HOST_FORWARD] FD SRC_ADDR SRC_PORT DST_ADDR DST_PORT RECVQ SENDQ
        try:
            idx = next(i for i, f in enumerate(fields) if "HOST_FORWARD" in f)
            src_port, dst_port = int(fields[idx + 3]), int(fields[idx + 5])
        except (StopIteration, IndexError, ValueError):
            continue
        if dst_port == 22:
            return src_port
    return None


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_is_our_qemu(pid: int, vm_id: str) -> bool:
    """The pid is alive, not a zombie, and is the QEMU of this VM (guards against pid reuse)."""
    if pid <= 0:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0] if ")" in stat else "?"
    if state in ("Z", "X"):
        return False
    if not cmdline:
        # Mid-exit: the kernel drops the address space (cmdline reads empty) before it closes
        # the files, so the TAP and disks are still held. Still "alive" until it is a zombie.
        comm = stat[stat.find("(") + 1 : stat.rfind(")")]
        return comm.startswith("qemu")
    return not vm_id or f"process=banger-{vm_id}".encode() in cmdline


# --- control channel (host side) --------------------------------------------------------------


async def send_control(path: str, line: str, timeout: float = 2.0) -> None:
    """Write one command line to the guest's control port."""
    _reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    try:
        writer.write(line.encode() + b"\n")
        await asyncio.wait_for(writer.drain(), timeout)
        # Give the guest a moment to read it before the connection goes away.
        await asyncio.sleep(0.05)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


_READY_RE = re.compile(r"^(READY|ERROR)\b ?(.*)$")


async def wait_control_ready(path: str, timeout: float, alive: Any = None) -> str:
    """Wait for the guest's READY (returns its detail) or ERROR (raises) on the control port.

    `alive` is an optional callable: when it returns False the VM died and we stop waiting.
    """
    deadline = time.monotonic() + timeout

    def left() -> float:
        """Seconds left to wait; raises once time is up or the VM has died."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DriverError(f"the guest did not report READY within {timeout:.0f}s")
        if alive is not None and not alive():
            raise DriverError("the VM process exited before the guest reported READY")
        return remaining

    while True:
        remaining = left()
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(path), min(remaining, 2.0)
            )
        except (TimeoutError, OSError):
            await asyncio.sleep(0.05)
            continue
        try:
            while True:
                remaining = left()
                try:
                    raw = await asyncio.wait_for(reader.readline(), min(remaining, 0.5))
                except TimeoutError:
                    continue
                if not raw:
                    break  # QEMU dropped the connection: reconnect
                m = _READY_RE.match(raw.decode(errors="replace").strip())
                if not m:
                    continue
                if m.group(1) == "ERROR":
                    raise DriverError(f"guest: {m.group(2) or 'unknown error'}")
                return m.group(2)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

"""An in-memory implementation of banger's own `Driver` protocol (vmm/base.py), for lifecycle
unit tests: no process, no QEMU. Like httpx's MockTransport, a test scripts it:

- `fail[op] = exc` makes `op` ("launch", "wait_ready", "attach", "force_stop",
  "request_shutdown") raise `exc` (once, or every time with `fail_always`);
- `hold_ready()` makes `wait_ready` block until `release_ready()` (`waiting` is set while it
  blocks: a test cancels a boot there);
- `die(pid)` is a VMM that exits behind banger's back; `stubborn = True` one that ignores the
  guest's power-off request (a stop must force it).

A "VM" is a pid in `alive`; what the real drivers create on launch (the runtime dir with its
sockets) is created too, so a test can check that a failure or stop removes it.

Saved machines (`save`/`restore`, capabilities SUSPEND, SNAPSHOT, FORK unless `snapshots=False`):
a guest's "RAM" is `memory[pid]` (a dict a test writes, e.g. a tmpfs file or a process), saved as
JSON in `dest/saved.json`; a checkpoint copies the writable disk files into `dest` and a restore
copies them back to the spec's paths (the real drivers layer them: same observable result).
`open_control` is a guest agent that opens with READY and answers `ok` to every line; each VM's
lines are kept in `commands[pid]` (what re-identification and the clock fix sent).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import signal
import socket
from pathlib import Path
from typing import Any

from banger.vmm.base import (
    Alive,
    Capability,
    DriverError,
    GuestChannel,
    MissingCapability,
    SavedMachine,
    VMHandle,
    VMSpec,
)

FATAL = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT}


class MemDriver:
    name = "mem"

    def __init__(self, channel: GuestChannel | None = None, *, snapshots: bool = True) -> None:
        self.channel = channel or GuestChannel("virtio-serial")
        self.snapshots = snapshots
        self.memory: dict[int, dict[str, Any]] = {}
        self.commands: dict[int, list[str]] = {}
        self.restored: dict[int, SavedMachine] = {}
        self._servers: set[asyncio.Task[None]] = set()
        self.alive: dict[int, bool] = {}
        self.paused: set[int] = set()
        self.specs: dict[int, VMSpec] = {}
        self.fail: dict[str, BaseException] = {}
        self.fail_always = False
        self.stubborn = False
        self.waiting = asyncio.Event()
        self._ready: asyncio.Event | None = None
        self._pids = itertools.count(40000)

    # --- scripting -------------------------------------------------------------------------------

    def _maybe_fail(self, op: str) -> None:
        exc = self.fail.get(op) if self.fail_always else self.fail.pop(op, None)
        if exc is not None:
            raise exc

    def hold_ready(self) -> None:
        self._ready = asyncio.Event()

    def release_ready(self) -> None:
        if self._ready is not None:
            self._ready.set()
        self._ready = None

    def die(self, pid: int) -> None:
        self.alive[pid] = False

    def running(self) -> list[int]:
        return [pid for pid, up in self.alive.items() if up]

    # --- Driver ------------------------------------------------------------------------------

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = {Capability.PAUSE}
        if self.snapshots:
            caps |= {Capability.SUSPEND, Capability.SNAPSHOT, Capability.FORK}
        if self.channel.kind == "vsock":
            caps.add(Capability.VSOCK)
        return frozenset(caps)

    async def launch(self, spec: VMSpec) -> VMHandle:
        self._maybe_fail("launch")
        pid = next(self._pids)
        spec.runtime_dir.mkdir(parents=True, exist_ok=True)
        (spec.runtime_dir / "control.sock").touch()
        self.alive[pid] = True
        self.specs[pid] = spec
        self.memory[pid] = {}
        return self._handle(pid, spec)

    def _handle(self, pid: int, spec: VMSpec) -> VMHandle:
        return VMHandle(
            driver=self.name,
            pid=pid,
            api_socket=str(spec.runtime_dir / "api.sock"),
            control_socket=str(spec.runtime_dir / "control.sock"),
            ssh_host="127.0.0.1",
            ssh_port=pid - 20000,
        )

    async def attach(self, handle: VMHandle) -> bool:
        self._maybe_fail("attach")
        return self.alive.get(handle.pid, False)

    def is_alive(self, handle: VMHandle) -> bool:
        return self.alive.get(handle.pid, False)

    async def request_shutdown(self, handle: VMHandle) -> None:
        self._maybe_fail("request_shutdown")
        if not self.stubborn:
            self.alive[handle.pid] = False

    async def force_stop(self, handle: VMHandle) -> None:
        self._maybe_fail("force_stop")
        self.alive[handle.pid] = False

    async def wait_exit(self, handle: VMHandle, timeout: float) -> bool:
        # No clock: an exit either happened (shutdown, signal) or never will (stubborn, USR1).
        return not self.alive.get(handle.pid, False)

    def send_signal(self, handle: VMHandle, signum: int) -> None:
        if signum in FATAL:
            self.alive[handle.pid] = False

    def guest_channel(self) -> GuestChannel:
        return self.channel

    async def wait_ready(self, handle: VMHandle, timeout: float, alive: Alive) -> str:
        self._maybe_fail("wait_ready")
        if self._ready is not None:
            self.waiting.set()
            await self._ready.wait()
        if not alive():
            raise DriverError("the VMM exited before the guest was ready")
        return "mode=minimal"

    async def open_control(
        self, handle: VMHandle, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self._maybe_fail("open_control")
        if not self.alive.get(handle.pid, False):
            raise DriverError("the VMM is not running: no guest to talk to")
        host, guest = socket.socketpair()
        task = asyncio.create_task(self._agent(handle.pid, guest))
        self._servers.add(task)
        task.add_done_callback(self._servers.discard)
        return await asyncio.open_connection(sock=host)

    async def _agent(self, pid: int, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"READY mode=minimal\n")
            while line := await reader.readline():
                self.commands.setdefault(pid, []).append(line.decode().strip())
                answer = self.fail.pop("agent", None)
                writer.write(b"ok\n" if answer is None else f"error {answer}\n".encode())
                await writer.drain()
        finally:
            writer.close()

    async def pause(self, handle: VMHandle) -> None:
        self._maybe_fail("pause")
        self.paused.add(handle.pid)

    async def resume(self, handle: VMHandle) -> None:
        self.paused.discard(handle.pid)

    async def port_forwards(self, handle: VMHandle) -> list[tuple[int, int]]:
        raise MissingCapability(self.name, Capability.PORT_FORWARD)

    async def add_port_forward(self, handle: VMHandle, host_port: int, guest_port: int) -> None:
        raise MissingCapability(self.name, Capability.PORT_FORWARD)

    async def save(
        self, handle: VMHandle, spec: VMSpec, dest: Path, keep_running: bool
    ) -> SavedMachine:
        if not self.snapshots:
            raise MissingCapability(self.name, Capability.SNAPSHOT)
        self._maybe_fail("save")
        if not self.alive.get(handle.pid, False):
            raise DriverError("the VMM is not running: no machine to save")
        if dest.exists():
            raise DriverError(f"{dest} already exists: a save needs a new directory")
        dest.mkdir(mode=0o700, parents=True)
        disks: dict[str, Path] = {}
        if keep_running:
            for role, disk in (("root", spec.root_disk), ("work", spec.work_disk)):
                if disk is not None and disk.path.exists():
                    disks[role] = dest / f"{role}{disk.path.suffix}"
                    shutil.copyfile(disk.path, disks[role])
        else:
            self.alive[handle.pid] = False
        kind = "checkpoint" if keep_running else "suspend"
        saved = SavedMachine(
            driver=self.name,
            dir=dest,
            disks=disks,
            memory_mib=spec.memory_mib,
            paused_seconds=0.001 if keep_running else 0.0,
            details={"kind": kind, "vcpus": spec.vcpus, "vm_id": spec.vm_id},
        )
        record = {"saved": saved.to_json(), "memory": self.memory.get(handle.pid, {})}
        (dest / "saved.json").write_text(json.dumps(record))
        return saved

    async def restore(self, spec: VMSpec, saved: SavedMachine) -> VMHandle:
        if not self.snapshots:
            raise MissingCapability(self.name, Capability.SUSPEND)
        self._maybe_fail("restore")
        if spec.memory_mib != saved.memory_mib or spec.vcpus != saved.details.get("vcpus"):
            raise DriverError("the machine's shape changed since it was saved")
        record = json.loads((saved.dir / "saved.json").read_text())
        targets = {"root": spec.root_disk, "work": spec.work_disk}
        for role, frozen in saved.disks.items():
            target = targets.get(role)
            if target is not None:
                shutil.copyfile(frozen, target.path)
        pid = next(self._pids)
        spec.runtime_dir.mkdir(parents=True, exist_ok=True)
        (spec.runtime_dir / "control.sock").touch()
        self.alive[pid] = True
        self.specs[pid] = spec
        self.memory[pid] = dict(record["memory"])
        self.restored[pid] = saved
        return self._handle(pid, spec)

    async def delete_saved(self, saved: SavedMachine, layers_in_use: list[Path]) -> bool:
        self._maybe_fail("delete_saved")
        shutil.rmtree(saved.dir)
        return True


def check_protocol(driver: MemDriver) -> None:
    """The double must stay a `Driver` (runtime_checkable: the methods exist)."""
    from banger.vmm.base import Driver

    assert isinstance(driver, Driver)

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
"""

from __future__ import annotations

import asyncio
import itertools
import signal
from pathlib import Path
from typing import Any

from banger.vmm.base import (
    Alive,
    Capability,
    DriverError,
    GuestChannel,
    MissingCapability,
    VMHandle,
    VMSpec,
)

FATAL = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGABRT}


class MemDriver:
    name = "mem"

    def __init__(self, channel: GuestChannel | None = None) -> None:
        self.channel = channel or GuestChannel("virtio-serial")
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
        raise DriverError("the in-memory driver has no guest to talk to")

    async def pause(self, handle: VMHandle) -> None:
        self.paused.add(handle.pid)

    async def resume(self, handle: VMHandle) -> None:
        self.paused.discard(handle.pid)

    async def port_forwards(self, handle: VMHandle) -> list[tuple[int, int]]:
        raise MissingCapability(self.name, Capability.PORT_FORWARD)

    async def add_port_forward(self, handle: VMHandle, host_port: int, guest_port: int) -> None:
        raise MissingCapability(self.name, Capability.PORT_FORWARD)

    async def save(self, handle: VMHandle, spec: VMSpec, dest: Path, keep_running: bool) -> Any:
        raise MissingCapability(self.name, Capability.SNAPSHOT)

    async def restore(self, spec: VMSpec, saved: Any) -> VMHandle:
        raise MissingCapability(self.name, Capability.SUSPEND)


def check_protocol(driver: MemDriver) -> None:
    """The double must stay a `Driver` (runtime_checkable: the methods exist)."""
    from banger.vmm.base import Driver

    assert isinstance(driver, Driver)

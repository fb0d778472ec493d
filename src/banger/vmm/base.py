"""The VMM seam: the service layer hands a driver a `VMSpec`; the driver owns the argv/API calls.

A driver returns a `VMHandle` that the service persists (JSON) so a restarted daemon can re-attach
to a running VM with `attach()`, never killing it. Drivers: vmm/qemu.py, vmm/firecracker.py.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

NetworkKind = Literal["user", "tap", "none"]


@dataclass(frozen=True)
class DiskSpec:
    path: Path
    # "qcow2" (QEMU overlay over a raw image) or "raw" (Firecracker only takes raw files).
    format: Literal["raw", "qcow2"] = "raw"
    read_only: bool = False
    # QEMU: the guest may write, but into a temporary overlay QEMU discards (`snapshot=on`).
    scratch: bool = False


@dataclass(frozen=True)
class NetworkSpec:
    kind: NetworkKind
    # user-mode: host port forwarded to guest port 22 on 127.0.0.1 (0 = let QEMU pick).
    ssh_host_port: int = 0
    # extra user-mode forwards (host_port, guest_port)
    forwards: tuple[tuple[int, int], ...] = ()
    # tap: host device name and the guest MAC; the guest's address comes from the cmdline.
    tap_device: str = ""
    mac: str = ""


@dataclass(frozen=True)
class VMSpec:
    vm_id: str
    name: str
    kernel: Path
    initrd: Path | None
    cmdline: str
    root_disk: DiskSpec
    work_disk: DiskSpec | None
    vcpus: int
    memory_mib: int
    network: NetworkSpec
    console_log: Path
    # Directory for this VM's sockets (QMP / API, control channel); short path (sun_path ≤ 108).
    runtime_dir: Path
    extra: dict[str, Any] = field(default_factory=dict)
    # More disks after root and work (e.g. banger's per-VM seed disk), attached in this order.
    extra_disks: tuple[DiskSpec, ...] = ()
    # QEMU: keep guest RAM in this file, mapped shared, so that `save(keep_running=False)` writes
    # only the device state and the file itself becomes the saved RAM that restores and forks map
    # copy-on-write (a warm-create template). None: ordinary anonymous RAM.
    memory_file: Path | None = None


@dataclass
class VMHandle:
    """Everything needed to find a running VM again after a daemon restart."""

    driver: str
    pid: int
    api_socket: str  # QMP socket (QEMU) or REST API socket (Firecracker)
    control_socket: str  # host end of the guest control channel (virtio-serial / vsock UDS)
    ssh_host: str = "127.0.0.1"
    ssh_port: int = 22
    started_at: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VMHandle:
        return cls(**data)


class DriverError(Exception):
    """A VMM operation failed; the message says what and where the console log is."""


class Capability(enum.Enum):
    """What a driver can do beyond launch/stop. Callers ask for these, never for a driver name."""

    # Freeze the vCPUs with memory in place, and thaw them (`pause`, `resume`).
    PAUSE = "pause"
    # Save the whole machine (RAM and device state) to disk; the VMM exits; restore it later.
    SUSPEND = "suspend"
    # Checkpoint RAM, devices and disks while the VM keeps running (a short pause is allowed).
    SNAPSHOT = "snapshot"
    # Start new VMs from a checkpoint with their own identity.
    FORK = "fork"
    # Add host → guest port forwards to a running VM (user-mode networking).
    PORT_FORWARD = "port_forward"
    # Attach disks/devices to a running VM.
    HOTPLUG = "hotplug"
    # The guest control channel runs over vsock (the seed disk must carry the vsock agent).
    VSOCK = "vsock"


class MissingCapability(DriverError):
    """The driver cannot do this at all (as opposed to: it tried and failed)."""

    def __init__(self, driver: str, capability: Capability) -> None:
        super().__init__(f"the {driver} driver cannot {capability.value.replace('_', ' ')}")
        self.driver = driver
        self.capability = capability


@dataclass(frozen=True)
class GuestChannel:
    """How the host reaches the guest agent: QEMU's virtio-serial socket, or Firecracker's
    hybrid vsock (`CONNECT <port>` on a Unix socket). The boot pipeline puts the vsock agent on
    the seed disk when `kind == "vsock"`."""

    kind: Literal["virtio-serial", "vsock"]
    vsock_port: int | None = None


Alive = Callable[[], bool]


@dataclass(frozen=True)
class SavedMachine:
    """A machine a driver saved (Capability.SUSPEND / SNAPSHOT): RAM and device state, plus the
    frozen writable disks, all under `dir`, which the driver lays out and the caller owns (it
    lists, sizes and deletes it). Persisted as JSON next to it so a restarted daemon finds it."""

    driver: str
    dir: Path
    # Frozen copies (or copy-on-write layers) of the writable disks, keyed by role ("root",
    # "work"); empty for a suspend, whose disks stay the VM's own, untouched after the VMM exits.
    disks: dict[str, Path] = field(default_factory=dict)
    memory_mib: int = 0
    # How long the guest's vCPUs stood still while it was taken.
    paused_seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "driver": self.driver,
            "dir": str(self.dir),
            "disks": {role: str(path) for role, path in self.disks.items()},
            "memory_mib": self.memory_mib,
            "paused_seconds": self.paused_seconds,
            "details": self.details,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SavedMachine:
        return cls(
            driver=str(data["driver"]),
            dir=Path(str(data["dir"])),
            disks={str(k): Path(str(v)) for k, v in dict(data.get("disks", {})).items()},
            memory_mib=int(data.get("memory_mib", 0)),
            paused_seconds=float(data.get("paused_seconds", 0.0)),
            details=dict(data.get("details", {})),
        )


@runtime_checkable
class Driver(Protocol):
    name: str

    async def launch(self, spec: VMSpec) -> VMHandle:
        """Start the VMM process and the guest; return once the VMM runs (not the guest)."""
        ...

    async def attach(self, handle: VMHandle) -> bool:
        """Re-adopt a VM after a daemon restart; False when its process is gone."""
        ...

    def is_alive(self, handle: VMHandle) -> bool: ...

    async def request_shutdown(self, handle: VMHandle) -> None:
        """Ask the guest to power off (ACPI button / Ctrl-Alt-Del); returns at once."""
        ...

    async def force_stop(self, handle: VMHandle) -> None:
        """Stop the VMM now (quit, then SIGKILL); the guest gets no say."""
        ...

    async def wait_exit(self, handle: VMHandle, timeout: float) -> bool:
        """True when the VMM process exited within `timeout` seconds."""
        ...

    def send_signal(self, handle: VMHandle, signum: int) -> None: ...

    # --- readiness and the guest control channel ----------------------------------------------

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def guest_channel(self) -> GuestChannel:
        """How this driver's guests talk to the host (decides what goes on the seed disk)."""
        ...

    async def wait_ready(self, handle: VMHandle, timeout: float, alive: Alive) -> str:
        """Wait for the guest agent's READY (returns its detail); raise DriverError on ERROR,
        on timeout, or when `alive()` turns False."""
        ...

    async def open_control(
        self, handle: VMHandle, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A fresh stream to the guest agent (line protocol of guest/payload.py)."""
        ...

    # --- optional capabilities (raise MissingCapability when not in `capabilities`) -----------

    async def pause(self, handle: VMHandle) -> None:
        """Capability.PAUSE: freeze the vCPUs, memory stays in place."""
        ...

    async def resume(self, handle: VMHandle) -> None:
        """Capability.PAUSE: thaw a paused VM."""
        ...

    async def port_forwards(self, handle: VMHandle) -> list[tuple[int, int]]:
        """Capability.PORT_FORWARD: the (host_port, guest_port) TCP forwards in place."""
        ...

    async def add_port_forward(self, handle: VMHandle, host_port: int, guest_port: int) -> None:
        """Capability.PORT_FORWARD: forward 127.0.0.1:host_port to the guest's guest_port."""
        ...

    async def save(
        self, handle: VMHandle, spec: VMSpec, dest: Path, keep_running: bool
    ) -> SavedMachine:
        """Save the running machine under `dest` (a new directory the driver creates).

        keep_running=False (Capability.SUSPEND): RAM and device state go to `dest`, the VMM exits;
        the disks stay the VM's own (`SavedMachine.disks` is empty). keep_running=True
        (Capability.SNAPSHOT): a checkpoint; the VM is paused for `paused_seconds`, its writable
        disks become frozen layers under `dest` and new active layers take their place at the SAME
        paths, then it runs on."""
        ...

    async def restore(self, spec: VMSpec, saved: SavedMachine) -> VMHandle:
        """Start a VMM from `saved` and run the guest from where it was saved: resume a suspend
        (disks as they are), roll back to a checkpoint or start a fork (fresh active layers at
        `spec`'s disk paths over the checkpoint's frozen layers). The guest is running on return;
        identity (hostname, MAC, clock) is the caller's to fix through the control channel."""
        ...

    async def delete_saved(self, saved: SavedMachine, layers_in_use: list[Path]) -> bool:
        """Delete a saved machine's files (its directory). A driver whose disk layers others may
        be backed by (qcow2 chains) keeps those layers while any of `layers_in_use` reads
        through them, marking the directory layers-only; True when the directory is gone."""
        ...

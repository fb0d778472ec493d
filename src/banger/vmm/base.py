"""The VMM seam: the service layer hands a driver a `VMSpec`; the driver owns the argv/API calls.

A driver returns a `VMHandle` that the service persists (JSON) so a restarted daemon can re-attach
to a running VM with `attach()`, never killing it. Drivers: vmm/qemu.py, vmm/firecracker.py.
"""

from __future__ import annotations

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

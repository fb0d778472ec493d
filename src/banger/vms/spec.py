"""VM records and sizing defaults: `[vm_defaults]` config → host-aware → built-in floor."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from banger.config import Config
from banger.units import format_bytes, parse_size
from banger.vms.disks import MIN_WORK_DISK

VMState = Literal["created", "running", "paused", "suspended", "stopped", "error"]
InitMode = Literal["auto", "systemd", "minimal"]

BUILTIN_VCPUS = 1
BUILTIN_MEMORY_MIB = 512
BUILTIN_DISK = "8G"
MAX_AUTO_VCPUS = 4
MAX_AUTO_MEMORY_MIB = 8192


class VMRecord(BaseModel):
    id: str
    name: str
    state: VMState
    image_id: str
    image_name: str
    kernel: str
    vcpus: int
    memory_mib: int
    disk_size_bytes: int
    init_mode: InitMode
    network: str
    error: str | None = None
    created_at: str
    updated_at: str
    started_at: str | None = None
    pid: int | None = None
    ssh_host: str | None = None
    ssh_port: int | None = None
    ip: str | None = None
    # outbound NAT wish (bridged networking; kept by the network service)
    nat: bool = False
    # Egress policy (bridged NAT VMs): "open", or "restricted" to the allow rules.
    egress: str = "open"
    egress_rules: list[str] = Field(default_factory=list)
    vmm: str | None = None  # the driver running it ("qemu" | "firecracker"); None when stopped
    root_disk: str | None = None  # "qcow2 overlay" | "raw copy (reflink)" | "raw copy (sparse)"
    dir: Path
    console_log: Path
    # In a create's answer only: "warm" when it woke from a template, "cold" when it booted.
    boot: Literal["cold", "warm"] | None = None


@dataclass(frozen=True)
class Sizing:
    vcpus: int
    memory_mib: int
    disk_size_bytes: int
    # where each value came from: "flag" | "config" | "auto" | "builtin"
    vcpus_from: str
    memory_from: str
    disk_from: str

    def line(self) -> str:
        return (
            f"{self.vcpus} vCPU ({self.vcpus_from}) · {self.memory_mib} MiB ({self.memory_from})"
            f" · {format_bytes(self.disk_size_bytes)} work disk ({self.disk_from})"
        )


def host_cpus() -> int:
    return os.cpu_count() or 1


def host_memory_mib() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _pick(
    flag: int | None, configured: int | None, auto: Callable[[], int], floor: int
) -> tuple[int, str]:
    """The flag, else `[vm_defaults]`, else the host-aware value raised to the built-in floor."""
    if flag is not None:
        return flag, "flag"
    if configured is not None:
        return configured, "config"
    value = auto()
    return (value, "auto") if value >= floor else (floor, "builtin")


def resolve_sizing(
    config: Config,
    vcpus: int | None = None,
    memory_mib: int | None = None,
    disk_size: str | None = None,
) -> Sizing:
    d = config.vm_defaults
    v, v_from = _pick(vcpus, d.vcpu, lambda: min(MAX_AUTO_VCPUS, host_cpus() // 4), BUILTIN_VCPUS)
    m, m_from = _pick(
        memory_mib,
        d.memory_mib,
        lambda: min(MAX_AUTO_MEMORY_MIB, host_memory_mib() // 8),
        BUILTIN_MEMORY_MIB,
    )
    if disk_size is not None:
        s, s_from = parse_size(disk_size), "flag"
    elif d.disk_size is not None:
        s, s_from = parse_size(d.disk_size), "config"
    else:
        s, s_from = parse_size(BUILTIN_DISK), "builtin"
    if s < MIN_WORK_DISK:
        # Refused before any image or kernel work, as a bad request (not a failed mkfs).
        raise ValueError(f"work disk must be at least {MIN_WORK_DISK >> 20} MiB (got {s} bytes)")
    return Sizing(v, m, s, v_from, m_from, s_from)

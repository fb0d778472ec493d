"""Plain typed views of what the daemon answers (the raw answer stays in `.raw`)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any


def _int(v: object, default: int = 0) -> int:
    return int(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def _str(v: object) -> str | None:
    return v if isinstance(v, str) else None


@dataclass(frozen=True)
class SandboxInfo:
    """One sandbox (VM) as the daemon describes it (`vm.show` / `vm.list`)."""

    name: str
    id: str
    state: str  # "created" | "running" | "paused" | "suspended" | "stopped" | "error"
    image: str
    kernel: str
    vcpus: int
    memory_mib: int
    disk_size_bytes: int
    ip: str | None = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SandboxInfo:
        return cls(
            name=str(data.get("name", "")),
            id=str(data.get("id", "")),
            state=str(data.get("state", "")),
            image=str(data.get("image_name", "")),
            kernel=str(data.get("kernel", "")),
            vcpus=_int(data.get("vcpus")),
            memory_mib=_int(data.get("memory_mib")),
            disk_size_bytes=_int(data.get("disk_size_bytes")),
            ip=_str(data.get("ip")),
            error=_str(data.get("error")),
            raw=data,
        )


@dataclass(frozen=True)
class Port:
    """A listening socket in the sandbox; `url` reaches it from this host when it can."""

    proto: str
    address: str
    port: int
    process: str | None
    pid: int | None
    url: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Port:
        pid = data.get("pid")
        return cls(
            proto=str(data.get("proto", "")),
            address=str(data.get("address", "")),
            port=_int(data.get("port")),
            process=_str(data.get("process")),
            pid=pid if isinstance(pid, int) else None,
            url=_str(data.get("url")),
        )


@dataclass(frozen=True)
class Stats:
    """Resource use: `host` (the VMM process) and `guest` (None, with `guest_error`, when the
    guest could not be asked)."""

    host: dict[str, Any]
    guest: dict[str, Any] | None
    guest_error: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        host = data.get("host")
        guest = data.get("guest")
        return cls(
            host=host if isinstance(host, dict) else {},
            guest=guest if isinstance(guest, dict) else None,
            guest_error=_str(data.get("guest_error")),
            raw=data,
        )


@dataclass(frozen=True)
class PreparedWorkspace:
    """A checkout shipped into the sandbox: where it landed and at which commit."""

    guest_path: str
    base_commit: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PreparedWorkspace:
        return cls(
            guest_path=str(data.get("guest_path", "")),
            base_commit=_str(data.get("base_commit")),
            raw=data,
        )


@dataclass(frozen=True)
class WorkspacePatch:
    """Every change in the guest's checkout since `base_commit`, as a `git apply`-able patch
    (binary-safe). `files` lists the changed paths with their change kind."""

    patch: bytes
    base_commit: str | None
    guest_path: str
    files: list[dict[str, Any]]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkspacePatch:
        files = data.get("files")
        return cls(
            patch=base64.b64decode(str(data.get("patch_base64", ""))),
            base_commit=_str(data.get("base_commit")),
            guest_path=str(data.get("guest_path", "")),
            files=[f for f in files if isinstance(f, dict)] if isinstance(files, list) else [],
        )

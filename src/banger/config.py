"""banger's TOML configuration: one validated model, defaults documented in docs/config.md."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from banger.validation import describe

LOG_LEVELS = ("debug", "info", "warning", "error")


class ConfigError(Exception):
    """The config file is unreadable or invalid; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class VMDefaults(_Strict):
    vcpu: int | None = Field(default=None, ge=1, le=64)
    memory_mib: int | None = Field(default=None, ge=128, le=1024 * 1024)
    disk_size: str | None = None

    @field_validator("disk_size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        if v is not None:
            from banger.units import parse_size

            parse_size(v)
        return v


class Config(_Strict):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Which VMM runs guests: firecracker only where its binary exists and KVM really runs guests.
    vmm: Literal["auto", "qemu", "firecracker"] = "auto"
    # QEMU accelerator: `auto` only picks KVM after proving a guest can run under it.
    accel: Literal["auto", "kvm", "tcg"] = "auto"
    qemu_bin: str = "qemu-system-x86_64"
    firecracker_bin: str = "firecracker"
    jailer_bin: str = "jailer"
    jailer_enabled: bool = False
    # Firecracker under the jailer (root only; docs/firecracker.md): the unprivileged uid/gid the
    # VMM drops to, where per-VM chroots go, and cgroup settings passed as --cgroup name=value.
    jailer_uid: int | None = Field(default=None, ge=1)
    jailer_gid: int | None = Field(default=None, ge=1)
    jailer_chroot_base: str = "/srv/jailer"
    jailer_cgroup_version: Literal[1, 2] = 2
    jailer_cgroups: list[str] = Field(default_factory=list)
    jailer_parent_cgroup: str | None = None
    jailer_netns: str | None = None
    default_image: str = "debian-bookworm"
    # Warm creates (docs/snapshots.md): the first boot of an image + kernel + sizing saves a
    # template that later creates of the same wake from. False: every create boots cold.
    warm_creates: bool = True
    default_kernel: str = "debian-6.1"
    debian_mirror: str = "http://deb.debian.org/debian"
    insecure_registries: list[str] = Field(default_factory=list)
    kernel_catalog: str | None = None
    ssh_key_path: str | None = None
    network: Literal["auto", "user", "bridge"] = "auto"
    bridge_name: str = "br-banger"
    bridge_ip: str = "172.16.0.1"
    cidr: int = Field(default=24, ge=8, le=30)
    dns_port: int = Field(default=42069, ge=1, le=65535)
    default_dns: str = "1.1.1.1"
    # Where banger's egress resolver asks for names a restricted VM may reach: `IP` or `IP:port`.
    # Empty (the default): the host's /etc/resolv.conf nameservers.
    upstream_dns: list[str] = Field(default_factory=list, max_length=8)
    vm_defaults: VMDefaults = Field(default_factory=VMDefaults)
    # The most a `vm workspace export` brings back from a guest (changed-file list + patch),
    # bytes or a size like "2G": a guest's output is untrusted and may be endless.
    workspace_export_max_bytes: int = Field(default=1 << 30, ge=1, le=1 << 44)

    @field_validator("workspace_export_max_bytes", mode="before")
    @classmethod
    def _export_max(cls, v: object) -> object:
        if isinstance(v, str):
            from banger.units import parse_size

            return parse_size(v)
        return v

    @field_validator("bridge_name")
    @classmethod
    def _bridge_name(cls, v: str) -> str:
        # banger only ever creates or deletes bridges named like its own (network/privops.py).
        if not re.fullmatch(r"br-banger(-[a-z0-9]{1,5})?", v):
            raise ValueError("must be 'br-banger' or 'br-banger-<1 to 5 of a-z0-9>'")
        return v

    @field_validator("bridge_ip")
    @classmethod
    def _bridge_ip(cls, v: str) -> str:
        ip = ipaddress.IPv4Address(v)
        if not ip.is_private or ip.is_loopback or ip.is_link_local:
            raise ValueError("must be a private IPv4 address such as 172.16.0.1")
        return v

    @field_validator("jailer_chroot_base")
    @classmethod
    def _chroot_base(cls, v: str) -> str:
        if not v.startswith("/") or ".." in Path(v).parts:
            raise ValueError("must be an absolute path without '..' (e.g. /srv/jailer)")
        return v

    @field_validator("jailer_cgroups")
    @classmethod
    def _cgroups(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_.]+=\S.*", item):
                raise ValueError(f"{item!r} is not a cgroup setting like 'cpu.max=50000 100000'")
        return v

    @field_validator("upstream_dns")
    @classmethod
    def _upstream(cls, v: list[str]) -> list[str]:
        from banger.validation import parse_upstream

        for item in v:
            parse_upstream(item)
        return v

    @field_validator("default_dns")
    @classmethod
    def _dns(cls, v: str) -> str:
        ipaddress.IPv4Address(v)
        return v


def _format_error(path: Path, err: ValidationError) -> str:
    hint = " (see docs/config.md for the keys banger knows)"
    return f"{path}: " + describe(err, noun="key", top="(top level)", unknown_hint=hint)


def load_config(path: Path) -> Config:
    """Read and validate `path`; a missing file means all defaults."""
    data: dict[str, object] = {}
    if path.exists():
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from e
        except OSError as e:
            raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    env_level = os.environ.get("BANGER_LOG_LEVEL", "").strip().lower()
    if env_level:
        if env_level not in LOG_LEVELS:
            raise ConfigError(
                f"BANGER_LOG_LEVEL={env_level!r} is not one of {', '.join(LOG_LEVELS)}"
            )
        data["log_level"] = env_level
    # BANGER_NETWORK overrides `network` (tests keep daemons off the host network with `user`).
    env_net = os.environ.get("BANGER_NETWORK", "").strip().lower()
    if env_net:
        if env_net not in ("auto", "user", "bridge"):
            raise ConfigError(f"BANGER_NETWORK={env_net!r} is not one of auto, user, bridge")
        data["network"] = env_net
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_error(path, e)) from None

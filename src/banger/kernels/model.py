"""What banger records about a kernel: the manifest in `<state>/kernels/<name>/manifest.json`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from banger.errors import InvalidInput

MANIFEST = "manifest.json"
KernelFormat = Literal["bzImage", "elf-vmlinux"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    """Kernel names become directory names: letters, digits, `.`, `-`, `_`; no traversal."""
    if not _NAME_RE.match(name) or ".." in name:
        raise InvalidInput(
            f"invalid kernel name {name!r}: use 1-64 letters, digits, '.', '-' or '_', "
            "starting with a letter or digit (no '..')"
        )
    return name


class KernelRecord(BaseModel):
    """One kernel in the local store. Paths are absolute and point inside `dir`."""

    model_config = ConfigDict(extra="ignore")

    name: str
    distro: str = ""
    arch: str = "x86_64"
    kernel_version: str = ""
    format: KernelFormat
    sha256: str
    source: str
    imported_at: str
    dir: Path
    kernel: Path
    vmlinux: Path | None = None
    initrd: Path | None = None
    modules_dir: Path | None = None
    # The initrd is banger's own generated initramfs (its /init follows banger's boot contract).
    initrd_generated: bool = False
    size_bytes: int = 0

    @property
    def boot_image(self) -> Path:
        """What a VM should boot: the uncompressed vmlinux when there is one."""
        return self.vmlinux or self.kernel


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    distro: str = ""
    arch: str = "x86_64"
    kernel_version: str = ""
    tarball_url: str
    tarball_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(default=0, ge=0)
    description: str = ""


class Catalog(BaseModel):
    model_config = ConfigDict(extra="ignore")

    version: int = 1
    entries: list[CatalogEntry] = Field(default_factory=list)


class CatalogItem(CatalogEntry):
    """A catalog entry as `kernel.catalog` reports it: with its local state."""

    state: Literal["pulled", "available"]
    origin: str = ""

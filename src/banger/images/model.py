"""Image records as stored and as returned over RPC."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field


class ImageConfig(BaseModel):
    """The parts of an OCI image config a VM needs (Env, Entrypoint, Cmd, WorkingDir, User)."""

    env: list[str] = Field(default_factory=list)
    entrypoint: list[str] = Field(default_factory=list)
    cmd: list[str] = Field(default_factory=list)
    working_dir: str = ""
    user: str = ""


class TemplateInfo(BaseModel):
    """A warm-create template made from the image (`image show`; docs/snapshots.md)."""

    key: str
    kernel: str
    init_mode: str
    vcpus: int
    memory_mib: int
    disk_size_bytes: int
    driver: str
    size_bytes: int
    created_at: str
    uses: int


class ImageRecord(BaseModel):
    id: str
    name: str
    # A raw ext4 file, never modified after publish.
    rootfs: Path
    size_bytes: int
    digest: str | None = None
    source: str
    # True when banger owns the files (pulled/built/promoted); False for `image register`.
    managed: bool
    created_at: str
    config: ImageConfig = Field(default_factory=ImageConfig)
    kernel_ref: str | None = None
    # Boot artifacts given to `image register --kernel/--initrd/--modules` (absolute paths).
    kernel: Path | None = None
    initrd: Path | None = None
    modules_dir: Path | None = None
    # Warm-create templates of this image (filled by `image show` only).
    templates: list[TemplateInfo] = Field(default_factory=list)

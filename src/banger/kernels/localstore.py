"""The on-disk kernel store: `<state>/kernels/<name>/` with a manifest as the source of truth.

Layout of a kernel directory:
  manifest.json   name, distro, arch, kernel_version, format, sha256, source, imported_at, files
  vmlinuz         the kernel as imported when it is a bzImage
  vmlinux         the uncompressed ELF kernel (extracted from vmlinuz, or the kernel itself)
  initrd.img      optional: banger's generated initramfs or a user-given initrd
  modules/        optional: the kernel's /lib/modules/<version> tree

Directories are built under the staging dir, fsynced and renamed into place, so a directory either
has a complete manifest or does not exist.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import uuid
from pathlib import Path
from typing import Any

from banger import fsutil
from banger.kernels.model import MANIFEST, KernelFormat, KernelRecord, validate_name

KERNEL_BZIMAGE = "vmlinuz"
KERNEL_ELF = "vmlinux"
INITRD = "initrd.img"
MODULES = "modules"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def dir_size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            p = os.path.join(root, name)
            if not os.path.islink(p):
                total += os.lstat(p).st_size
    return total


def write_manifest(
    staged: Path,
    *,
    name: str,
    distro: str,
    arch: str,
    kernel_version: str,
    fmt: KernelFormat,
    source: str,
    initrd_generated: bool,
) -> dict[str, Any]:
    """Write manifest.json for a staged kernel dir whose files are already in place."""
    kernel = KERNEL_BZIMAGE if fmt == "bzImage" else KERNEL_ELF
    files: dict[str, str | None] = {
        "kernel": kernel,
        "vmlinux": KERNEL_ELF if (staged / KERNEL_ELF).is_file() else None,
        "initrd": INITRD if (staged / INITRD).is_file() else None,
        "modules": MODULES if (staged / MODULES).is_dir() else None,
    }
    manifest: dict[str, Any] = {
        "name": name,
        "distro": distro,
        "arch": arch,
        "kernel_version": kernel_version,
        "format": fmt,
        "sha256": sha256_file(staged / kernel),
        "source": source,
        "imported_at": now_iso(),
        "files": files,
        "initrd_generated": initrd_generated,
    }
    fsutil.write_durable(
        staged / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    )
    return manifest


class ManifestError(Exception):
    pass


def read_record(kdir: Path) -> KernelRecord:
    """The record of the kernel published at `kdir` (paths made absolute)."""
    try:
        data = json.loads((kdir / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise ManifestError(f"{kdir / MANIFEST}: {e}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{kdir / MANIFEST}: not a JSON object")
    files = data.get("files") or {}

    def rel(key: str) -> Path | None:
        value = files.get(key)
        if not value:
            return None
        p = (kdir / str(value)).resolve()
        if not p.is_relative_to(kdir.resolve()):
            raise ManifestError(f"{kdir / MANIFEST}: {key} points outside the kernel directory")
        return p

    kernel = rel("kernel")
    if kernel is None:
        raise ManifestError(f"{kdir / MANIFEST}: no kernel file recorded")
    try:
        return KernelRecord(
            name=data["name"],
            distro=data.get("distro", ""),
            arch=data.get("arch", "x86_64"),
            kernel_version=data.get("kernel_version", ""),
            format=data["format"],
            sha256=data["sha256"],
            source=data.get("source", ""),
            imported_at=data.get("imported_at", ""),
            dir=kdir.resolve(),
            kernel=kernel,
            vmlinux=rel("vmlinux"),
            initrd=rel("initrd"),
            modules_dir=rel("modules"),
            initrd_generated=bool(data.get("initrd_generated", False)),
            size_bytes=dir_size(kdir),
        )
    except (KeyError, ValueError) as e:
        raise ManifestError(f"{kdir / MANIFEST}: {e}") from None


def staging_dir(staging_root: Path, name: str) -> Path:
    staging_root.mkdir(parents=True, exist_ok=True)
    d = staging_root / f"kernel-{validate_name(name)}-{uuid.uuid4().hex[:8]}"
    d.mkdir()
    return d


def publish(staged: Path, kernels_dir: Path, name: str, *, replace: bool) -> Path:
    """Rename a complete staged dir into place; with `replace`, the old one is removed after."""
    target = kernels_dir / validate_name(name)
    kernels_dir.mkdir(parents=True, exist_ok=True)
    old: Path | None = None
    if target.exists() and replace:
        old = staged.parent / f"{staged.name}.old"
        os.rename(target, old)
    try:
        # Durable before it is visible: the manifest is the record, and it must never name
        # files whose blocks a power cut lost.
        fsutil.publish(staged, target)
    except OSError:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        fsutil.remove_tree_best_effort(old, "replaced kernel")
    return target

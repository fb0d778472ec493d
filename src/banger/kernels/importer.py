"""Fill a staged kernel directory from local files (import) or from an extracted tarball (pull).

Blocking work (copies, vmlinux extraction, initramfs generation): run it on a worker thread.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import InvalidInput, NotFound, OperationFailed
from banger.guest.initramfs import build_initramfs
from banger.kernels import localstore
from banger.kernels.model import KernelFormat
from banger.kernels.modules import GUEST_MODULES, ModuleError, module_name, resolve_modules
from banger.kernels.vmlinux import (
    KernelFormatError,
    detect_format,
    extract_vmlinux,
    kernel_version,
)

log = logging.getLogger("banger.kernels")

BOOT_DIR = Path("/boot")
MODULES_ROOT = Path("/lib/modules")
BUSYBOX = Path("/bin/busybox")

# Without these (as modules or built in) a guest cannot mount its virtio root disk.
ROOT_ESSENTIAL = ("virtio_mmio", "virtio_blk", "ext4")


@dataclass
class Prepared:
    fmt: KernelFormat
    kernel_version: str
    initrd_generated: bool
    warnings: list[str] = field(default_factory=list)


def _link_or_copy(src: str, dst: str) -> None:
    # Modules trees are large (~400 MB for Debian) and never written to: hard links are instant.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_modules(src: Path, dest: Path) -> None:
    """Copy a /lib/modules/<ver> tree; symlinks leaving it (`build`, `source`) are dropped."""
    if not (src / "modules.dep").is_file():
        raise InvalidInput(
            f"{src} has no modules.dep: give a /lib/modules/<version> directory (run `depmod` "
            "for it if needed)"
        )
    root = src.resolve()

    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = set()
        for n in names:
            p = Path(directory) / n
            if p.is_symlink() and not p.resolve().is_relative_to(root):
                skip.add(n)
        return skip

    shutil.copytree(src, dest, symlinks=True, ignore=ignore, copy_function=_link_or_copy)


def _copy_kernel(kernel: Path, staged: Path) -> KernelFormat:
    try:
        fmt = detect_format(kernel)
    except OSError as e:
        raise InvalidInput(f"cannot read kernel {kernel}: {e.strerror}") from None
    except KernelFormatError as e:
        raise InvalidInput(str(e)) from None
    name = localstore.KERNEL_BZIMAGE if fmt == "bzImage" else localstore.KERNEL_ELF
    shutil.copyfile(kernel, staged / name)
    return fmt


# cpio (newc, crc, odc) or a compressor the kernel can unpack an initramfs from.
_INITRD_MAGICS = (
    b"070701",
    b"070702",
    b"070707",
    b"\x1f\x8b",
    b"\xfd7zXZ\x00",
    b"\x28\xb5\x2f\xfd",
    b"\x02\x21\x4c\x18",
    b"BZh",
    b"\x5d\x00\x00",
    b"\x89LZO",
)


def check_initrd(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(8)
    if not head.startswith(_INITRD_MAGICS):
        raise InvalidInput(
            f"{path} does not look like an initrd (a cpio archive, possibly gzip/xz/zstd/lz4/"
            "bzip2/lzma/lzo compressed); give the initramfs file itself"
        )


def _missing_builtin_warning(modules_root: Path, found: list[Path]) -> list[str]:
    builtin_file = modules_root / "modules.builtin"
    builtin = set()
    if builtin_file.is_file():
        builtin = {module_name(x) for x in builtin_file.read_text().split()}
    have = {module_name(p.name) for p in found} | builtin
    missing = [m for m in ROOT_ESSENTIAL if m not in have]
    if not missing:
        return []
    return [
        f"modules {', '.join(missing)} are neither in {modules_root} nor listed as built in: "
        "the kernel may not find its root disk"
    ]


def finish_staged(staged: Path, *, initrd_given: bool) -> Prepared:
    """Complete a staged dir holding vmlinuz and/or vmlinux (+ modules/, initrd.img).

    Extracts vmlinux from a bzImage and, for a modular kernel without an initrd, generates the
    banger initramfs from the staged modules (so the kernel dir is self-contained).
    """
    bz = staged / localstore.KERNEL_BZIMAGE
    elf = staged / localstore.KERNEL_ELF
    warnings: list[str] = []
    if bz.is_file():
        fmt: KernelFormat = "bzImage"
        if detect_format(bz) != "bzImage":
            raise InvalidInput(f"{bz.name} is not a bzImage")
        if not elf.exists():
            try:
                compressor = extract_vmlinux(bz, elf)
                log.info("extracted vmlinux", extra={"compressor": compressor})
            except KernelFormatError as e:
                warnings.append(f"{e}; VMs will boot the bzImage (slower, not for Firecracker)")
        version = kernel_version(bz)
    elif elf.is_file():
        fmt = "elf-vmlinux"
        if detect_format(elf) != "elf-vmlinux":
            raise InvalidInput(f"{elf.name} is not an ELF vmlinux")
        version = kernel_version(elf)
    else:
        raise InvalidInput("no kernel: expected a vmlinuz (bzImage) or vmlinux (ELF) file")
    if elf.is_file() and detect_format(elf) != "elf-vmlinux":
        raise InvalidInput(f"{elf.name} is not an ELF vmlinux")
    if initrd_given:
        check_initrd(staged / localstore.INITRD)
    modules = staged / localstore.MODULES
    generated = False
    if modules.is_dir() and not initrd_given:
        try:
            found = resolve_modules(modules, GUEST_MODULES)
        except ModuleError as e:
            raise InvalidInput(str(e)) from None
        warnings += _missing_builtin_warning(modules, found)
        if found:
            if not BUSYBOX.is_file():
                raise OperationFailed(
                    f"{BUSYBOX} is missing: install busybox-static to generate the initramfs"
                )
            build_initramfs(staged / localstore.INITRD, modules=found, busybox=BUSYBOX)
            generated = True
    return Prepared(fmt, version, generated, warnings)


def import_files(
    staged: Path, *, kernel: Path, initrd: Path | None, modules: Path | None
) -> Prepared:
    """Copy user-given files into `staged` and complete it."""
    for what, p in (("kernel", kernel), ("initrd", initrd), ("modules", modules)):
        if p is not None and not p.is_absolute():
            raise InvalidInput(f"{what} path {p} must be absolute")
    if not kernel.is_file():
        raise InvalidInput(f"kernel {kernel} is not a file")
    if initrd is not None and not initrd.is_file():
        raise InvalidInput(f"initrd {initrd} is not a file")
    if modules is not None and not modules.is_dir():
        raise InvalidInput(f"modules {modules} is not a directory")
    _copy_kernel(kernel, staged)
    if initrd is not None:
        check_initrd(initrd)
        shutil.copyfile(initrd, staged / localstore.INITRD)
    if modules is not None:
        copy_modules(modules, staged / localstore.MODULES)
    return finish_staged(staged, initrd_given=initrd is not None)


_VER_SPLIT = re.compile(r"(\d+)")


def _version_key(v: str) -> list[tuple[int, int | str]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in _VER_SPLIT.split(v) if p]


def host_kernels(boot: Path = BOOT_DIR, modules_root: Path = MODULES_ROOT) -> list[str]:
    """Versions with both /boot/vmlinuz-<v> and /lib/modules/<v>/modules.dep, newest first."""
    versions = []
    for p in boot.glob("vmlinuz-*"):
        v = p.name[len("vmlinuz-") :]
        if p.is_file() and (modules_root / v / "modules.dep").is_file():
            versions.append(v)
    return sorted(versions, key=_version_key, reverse=True)


def host_kernel(
    version: str | None, boot: Path = BOOT_DIR, modules_root: Path = MODULES_ROOT
) -> tuple[str, Path, Path]:
    """(version, vmlinuz, modules dir) of an installed distro kernel; newest when not given."""
    available = host_kernels(boot, modules_root)
    if version is None:
        if not available:
            raise NotFound(
                f"no distro kernel on this host ({boot}/vmlinuz-* with {modules_root}/<version>); "
                "install one (Debian: apt-get install linux-image-amd64) or use --kernel FILE"
            )
        version = available[0]
    if "/" in version or version in ("", ".", ".."):
        raise InvalidInput(f"invalid kernel version {version!r}")
    if version not in available:
        listing = ", ".join(available) or "none"
        raise NotFound(
            f"host kernel {version} not found (need {boot}/vmlinuz-{version} and "
            f"{modules_root}/{version}/modules.dep); installed: {listing}"
        )
    return version, boot / f"vmlinuz-{version}", modules_root / version


def host_distro() -> str:
    """`debian-12` style name of the running distro, from /etc/os-release."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                fields[key] = value.strip().strip('"')
    except OSError:
        return ""
    ident = fields.get("ID", "")
    ver = fields.get("VERSION_ID", "")
    return f"{ident}-{ver}" if ident and ver else ident

"""Module ordering from modules.dep and kernel format detection / vmlinux extraction."""

from __future__ import annotations

import bz2
import gzip
import lzma
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard

from banger.kernels.modules import GUEST_MODULES, ModuleError, module_name, resolve_modules
from banger.kernels.vmlinux import (
    KernelFormatError,
    detect_format,
    extract_vmlinux,
    kernel_version,
)
from tests.kernels.conftest import HOST_KERNEL, HOST_MODULES, KVER, needs_host_kernel


def _tree(tmp: Path, dep: str, builtin: str = "") -> Path:
    (tmp / "modules.dep").write_text(dep)
    (tmp / "modules.builtin").write_text(builtin)
    return tmp


def test_module_names_normalise_dashes_and_suffixes() -> None:
    assert module_name("kernel/arch/x86/crypto/crc32c-intel.ko") == "crc32c_intel"
    assert module_name("kernel/fs/ext4/ext4.ko.xz") == "ext4"


def test_dependencies_come_first_and_builtin_or_absent_are_skipped(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        "kernel/c.ko: kernel/b.ko kernel/a.ko\n"
        "kernel/b.ko: kernel/a.ko\n"
        "kernel/a.ko:\n"
        "kernel/d-x.ko.zst: kernel/c.ko\n",
        builtin="kernel/e.ko\n",
    )
    got = resolve_modules(root, ["d_x", "e", "missing", "a"])
    assert [p.name for p in got] == ["a.ko", "b.ko", "c.ko", "d-x.ko.zst"]
    assert all(p.parent == root / "kernel" for p in got)


def test_cycles_and_missing_modules_dep_are_clear(tmp_path: Path) -> None:
    root = _tree(tmp_path, "k/a.ko: k/b.ko\nk/b.ko: k/a.ko\n")
    with pytest.raises(ModuleError, match="dependency cycle"):
        resolve_modules(root, ["a"])
    (tmp_path / "escape").mkdir()
    escape = _tree(tmp_path / "escape", "../../../etc/passwd.ko:\n")
    with pytest.raises(ModuleError, match="points outside"):
        resolve_modules(escape, ["passwd"])
    with pytest.raises(ModuleError, match="run `depmod`"):
        resolve_modules(tmp_path / "nope", ["a"])


@needs_host_kernel
def test_host_order_matches_modprobe() -> None:
    """Same order as `modprobe --show-depends` (what HOST-NOTES measured boots)."""
    got = [str(p) for p in resolve_modules(HOST_MODULES, GUEST_MODULES)]
    expected: list[str] = []
    for name in GUEST_MODULES:
        out = subprocess.run(
            ["modprobe", "-S", KVER, "--show-depends", name],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for line in out.splitlines():
            if line.startswith("insmod "):
                path = line.split()[1]
                if path not in expected:
                    expected.append(path)
    assert got == expected


def _fake_bzimage(payload: bytes) -> bytes:
    """An x86 boot sector + setup header claiming boot protocol 2.01 (no payload fields), so
    the extractor has to search for the compressor's magic like extract-vmlinux does."""
    head = bytearray(0x400)
    head[0x1F1] = 1
    head[0x1FE:0x200] = b"\x55\xaa"
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, 0x0201)
    return bytes(head) + b"\x00junk\x1f\x8b" + payload + b"\x00" * 64


def _elf() -> bytes:
    # Any x86_64 ELF with a Linux banner will do as the "vmlinux" inside.
    return Path("/bin/busybox").read_bytes()[:200_000] + b"Linux version 9.9.9-test (x) #1\0"


def _lz4_legacy(data: bytes) -> bytes:
    if shutil.which("lz4") is None:
        pytest.fail("lz4 not installed: run scripts/setup-host.sh")
    return subprocess.run(["lz4", "-l", "-c"], input=data, capture_output=True, check=True).stdout


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda b: gzip.compress(b, mtime=0),
    "xz": lambda b: lzma.compress(b, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32),
    "bzip2": bz2.compress,
    "lzma": lambda b: lzma.compress(b, format=lzma.FORMAT_ALONE),
    "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
    "lz4": _lz4_legacy,
}


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_extract_finds_each_compressor_by_magic(tmp_path: Path, kind: str) -> None:
    elf = _elf()
    bz = tmp_path / "bzImage"
    bz.write_bytes(_fake_bzimage(COMPRESSORS[kind](elf)))
    assert detect_format(bz) == "bzImage"
    out = tmp_path / "vmlinux"
    assert extract_vmlinux(bz, out) == kind
    assert out.read_bytes() == elf
    assert detect_format(out) == "elf-vmlinux"
    assert kernel_version(out) == "9.9.9-test"


def test_not_a_kernel(tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello" * 1000)
    with pytest.raises(KernelFormatError, match="neither a bzImage"):
        detect_format(junk)
    bz = tmp_path / "bzImage"
    bz.write_bytes(_fake_bzimage(gzip.compress(b"not an elf" * 100)))
    with pytest.raises(KernelFormatError, match="no compressed ELF kernel"):
        extract_vmlinux(bz, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@needs_host_kernel
def test_extract_debian_bzimage(tmp_path: Path) -> None:
    assert detect_format(HOST_KERNEL) == "bzImage"
    assert kernel_version(HOST_KERNEL) == KVER
    out = tmp_path / "vmlinux"
    assert extract_vmlinux(HOST_KERNEL, out) == "xz"
    data = out.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[18] == 62  # ELF64, x86_64
    assert kernel_version(out) == KVER
    assert struct.unpack_from("<H", data, 16)[0] == 2  # ET_EXEC: a linked kernel image

"""Kernel image formats: detect bzImage vs ELF, read the version, extract the ELF vmlinux.

Under TCG an uncompressed vmlinux boots about twice as fast as the compressed bzImage (no
in-guest decompression), and Firecracker on x86_64 only boots ELF vmlinux. This is a Python
take on the kernel's scripts/extract-vmlinux: find the compressed payload, decompress it, check
that the result is an ELF.
"""

from __future__ import annotations

import bz2
import lzma
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, Literal

ELF_MAGIC = b"\x7fELF"
_CHUNK = 1 << 20

KernelFormat = Literal["bzImage", "elf-vmlinux"]


class KernelFormatError(Exception):
    """The file is not a kernel banger can boot, or its payload cannot be decompressed."""


def detect_format(path: Path) -> KernelFormat:
    with path.open("rb") as f:
        head = f.read(0x210)
    if head.startswith(ELF_MAGIC):
        if len(head) < 5 or head[4] != 2:
            raise KernelFormatError(f"{path} is a 32-bit ELF; banger boots x86_64 kernels only")
        return "elf-vmlinux"
    if len(head) >= 0x206 and head[0x202:0x206] == b"HdrS":
        return "bzImage"
    raise KernelFormatError(
        f"{path} is neither a bzImage (no 'HdrS' boot header) nor an ELF vmlinux; "
        "give the kernel image itself (e.g. /boot/vmlinuz-<version>)"
    )


_VERSION_RE = re.compile(rb"Linux version (\S+)")


def kernel_version(path: Path) -> str:
    """The release string (`uname -r`), e.g. `6.1.0-56-amd64`; "" when it cannot be found."""
    fmt = detect_format(path)
    if fmt == "bzImage":
        with path.open("rb") as f:
            head = f.read(0x210)
            (ptr,) = struct.unpack_from("<H", head, 0x20E)
            if ptr:
                f.seek(ptr + 0x200)
                raw = f.read(256).split(b"\0", 1)[0]
                return raw.split(b" ", 1)[0].decode(errors="replace")
        return ""
    # ELF: the banner string lives in .rodata; scan in chunks with an overlap.
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            buf = tail + chunk
            m = _VERSION_RE.search(buf)
            if m and m.end() < len(buf):
                return m.group(1).decode(errors="replace")
            tail = buf[-256:]
    return ""


# Magic numbers of the compressors the kernel supports for its payload (as in extract-vmlinux).
_MAGICS: list[tuple[str, bytes]] = [
    ("gzip", b"\x1f\x8b\x08"),
    ("xz", b"\xfd7zXZ\x00"),
    ("bzip2", b"BZh"),
    ("lzma", b"\x5d\x00\x00"),
    ("zstd", b"\x28\xb5\x2f\xfd"),
    ("lz4", b"\x02\x21\x4c\x18"),
]


def _decompressor(kind: str) -> Callable[[Iterator[bytes]], Iterator[bytes]]:
    def run(obj: object, chunks: Iterator[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            out = obj.decompress(chunk)  # type: ignore[attr-defined]
            if out:
                yield out
            if getattr(obj, "eof", False):
                return

    def gz(chunks: Iterator[bytes]) -> Iterator[bytes]:
        return run(zlib.decompressobj(16 + zlib.MAX_WBITS), chunks)

    def xz(chunks: Iterator[bytes]) -> Iterator[bytes]:
        return run(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), chunks)

    def lz(chunks: Iterator[bytes]) -> Iterator[bytes]:
        return run(lzma.LZMADecompressor(format=lzma.FORMAT_ALONE), chunks)

    def bz(chunks: Iterator[bytes]) -> Iterator[bytes]:
        return run(bz2.BZ2Decompressor(), chunks)

    def zst(chunks: Iterator[bytes]) -> Iterator[bytes]:
        import zstandard

        return run(zstandard.ZstdDecompressor().decompressobj(), chunks)

    def lz4(chunks: Iterator[bytes]) -> Iterator[bytes]:
        return _lz4_legacy(b"".join(chunks))

    table: dict[str, Callable[[Iterator[bytes]], Iterator[bytes]]] = {
        "gzip": gz,
        "xz": xz,
        "lzma": lz,
        "bzip2": bz,
        "zstd": zst,
        "lz4": lz4,
    }
    return table[kind]


def _lz4_block(src: bytes, out: bytearray) -> None:
    """Decode one LZ4 block (the kernel's lz4 payload is the legacy frame of such blocks)."""
    i, n = 0, len(src)
    while i < n:
        token = src[i]
        i += 1
        lit = token >> 4
        if lit == 15:
            while True:
                b = src[i]
                i += 1
                lit += b
                if b != 255:
                    break
        out += src[i : i + lit]
        i += lit
        if i >= n:
            break
        offset = src[i] | (src[i + 1] << 8)
        i += 2
        mlen = token & 15
        if mlen == 15:
            while True:
                b = src[i]
                i += 1
                mlen += b
                if b != 255:
                    break
        mlen += 4
        start = len(out) - offset
        if offset <= 0 or start < 0:
            raise KernelFormatError("corrupt lz4 payload")
        for k in range(mlen):  # overlapping copies must go byte by byte
            out.append(out[start + k])


def _lz4_legacy(data: bytes) -> Iterator[bytes]:
    i = 4
    while i + 4 <= len(data):
        (size,) = struct.unpack_from("<I", data, i)
        if size == 0x184C2102:  # another legacy frame starts
            i += 4
            continue
        i += 4
        if size == 0 or i + size > len(data):
            return
        out = bytearray()
        _lz4_block(data[i : i + size], out)
        i += size
        yield bytes(out)


def _payload_window(f: BinaryIO) -> tuple[int, int] | None:
    """Offset and length of the compressed payload from the bzImage header (boot protocol 2.08+)."""
    f.seek(0)
    head = f.read(0x260)
    if len(head) < 0x250 or head[0x202:0x206] != b"HdrS":
        return None
    (proto,) = struct.unpack_from("<H", head, 0x206)
    if proto < 0x208:
        return None
    setup_sects = head[0x1F1] or 4
    offset, length = struct.unpack_from("<II", head, 0x248)
    return (setup_sects + 1) * 512 + offset, length


def _chunks(f: BinaryIO, start: int, length: int | None) -> Iterator[bytes]:
    f.seek(start)
    left = length
    while left is None or left > 0:
        chunk = f.read(_CHUNK if left is None else min(_CHUNK, left))
        if not chunk:
            return
        if left is not None:
            left -= len(chunk)
        yield chunk


def _try(f: BinaryIO, kind: str, start: int, length: int | None, out: Path) -> bool:
    """Decompress from `start` into `out`; True when the result is an ELF file."""
    try:
        with out.open("wb") as w:
            first = True
            for piece in _decompressor(kind)(_chunks(f, start, length)):
                if first:
                    if not piece.startswith(ELF_MAGIC) and len(piece) >= 4:
                        return False
                    first = False
                w.write(piece)
    except (OSError, EOFError, lzma.LZMAError, zlib.error, ValueError, IndexError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise
        return False
    except Exception as e:  # zstandard.ZstdError and friends: not this compressor
        if type(e).__module__.startswith("zstandard"):
            return False
        raise
    with out.open("rb") as r:
        return r.read(4) == ELF_MAGIC


def extract_vmlinux(bzimage: Path, out: Path) -> str:
    """Write the uncompressed ELF vmlinux inside `bzimage` to `out`; returns the compressor.

    The header's payload window is tried first; otherwise every compressor magic is searched for,
    like scripts/extract-vmlinux. Raises KernelFormatError (and removes `out`) when none works.
    """
    with bzimage.open("rb") as f:
        window = _payload_window(f)
        candidates: list[tuple[str, int, int | None]] = []
        if window is not None:
            f.seek(window[0])
            magic = f.read(8)
            for kind, m in _MAGICS:
                if magic.startswith(m):
                    candidates.append((kind, window[0], window[1]))
        if not candidates:
            f.seek(0)
            data = f.read()
            for kind, m in _MAGICS:
                pos = data.find(m)
                while pos != -1 and len(candidates) < 64:
                    candidates.append((kind, pos, None))
                    pos = data.find(m, pos + 1)
        for kind, start, length in candidates:
            if _try(f, kind, start, length, out):
                return kind
    out.unlink(missing_ok=True)
    raise KernelFormatError(
        f"no compressed ELF kernel found inside {bzimage} (tried gzip, xz, bzip2, lzma, zstd, lz4)"
    )

"""Download a catalog kernel tarball, verify its sha256, extract it safely.

The tarball is written to the staging dir while its sha256 is computed; nothing from it is
parsed before the digest matches the catalog's. Extraction then accepts only regular files,
directories and symlinks that stay inside the tree (absolute names, `..`, escaping links,
devices and hard links are refused), so a hostile tarball cannot write outside its directory.

Tarball layout (root of the archive): `vmlinux` (ELF) and/or `vmlinuz` (bzImage), optional
`initrd.img`, optional `modules/` (a /lib/modules/<version> tree); any `manifest.json` in it is
ignored — banger writes its own.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit

import httpx

from banger.errors import OperationFailed

Progress = Callable[[int, int | None], None]
CHUNK = 1 << 20
CONNECT_TIMEOUT_SECONDS = 30.0
READ_TIMEOUT_SECONDS = 60.0


class DigestMismatch(OperationFailed):
    pass


class UnsafeTarball(OperationFailed):
    pass


async def download(url: str, dest: Path, expected_sha256: str, progress: Progress) -> int:
    """Stream `url` into `dest`, hashing as it goes; raise DigestMismatch (dest removed)."""
    h = hashlib.sha256()
    got = 0
    scheme = urlsplit(url).scheme
    try:
        with dest.open("wb") as out:
            if scheme == "file":
                path = Path(urlsplit(url).path)
                total = path.stat().st_size
                with path.open("rb") as f:
                    while chunk := f.read(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        got += len(chunk)
                        progress(got, total)
            elif scheme in ("http", "https"):
                timeout = httpx.Timeout(READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)
                async with (
                    httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client,
                    client.stream("GET", url) as resp,
                ):
                    if resp.status_code != 200:
                        raise OperationFailed(f"download of {url} failed: HTTP {resp.status_code}")
                    length = resp.headers.get("content-length")
                    total_http = int(length) if length and length.isdigit() else None
                    async for chunk in resp.aiter_bytes(CHUNK):
                        h.update(chunk)
                        out.write(chunk)
                        got += len(chunk)
                        progress(got, total_http)
            else:
                raise OperationFailed(f"cannot download {url!r}: only http(s) and file URLs")
    except httpx.HTTPError as e:
        dest.unlink(missing_ok=True)
        raise OperationFailed(
            f"download of {url} failed after {got} bytes: {e or type(e).__name__}; "
            "nothing was kept, retry the pull"
        ) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    actual = h.hexdigest()
    if actual != expected_sha256:
        dest.unlink(missing_ok=True)
        raise DigestMismatch(
            f"sha256 mismatch for {url}: the catalog says {expected_sha256}, the download "
            f"({got} bytes) is {actual}; nothing was kept. The tarball or the catalog entry is "
            "wrong: ask its publisher, or fix kernel_catalog"
        )
    return got


def _open_decompressed(path: Path) -> IO[bytes]:
    """A readable stream of the tar inside `path` (plain, gzip, xz or zstd by magic)."""
    with path.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x28\xb5\x2f\xfd"):
        import zstandard

        raw = path.open("rb")
        reader: IO[bytes] = zstandard.ZstdDecompressor().stream_reader(raw, closefd=True)
        return reader
    return path.open("rb")


def _safe_name(name: str) -> str:
    """A member name normalised to a relative path inside the tree, or UnsafeTarball."""
    if name.startswith("/") or "\\" in name:
        raise UnsafeTarball(f"tarball member {name!r} has an absolute path; refusing the tarball")
    norm = posixpath.normpath(name)
    if norm == "." or norm == "":
        return ""
    if norm == ".." or norm.startswith("../") or "/../" in f"/{norm}/":
        raise UnsafeTarball(f"tarball member {name!r} escapes the tree; refusing the tarball")
    return norm


def extract(tarball: Path, dest: Path) -> list[str]:
    """Extract into `dest` (which must exist); returns the names written."""
    written: list[str] = []
    with (
        _open_decompressed(tarball) as stream,
        tarfile.open(fileobj=stream, mode="r|*") as tar,
    ):
        for member in tar:
            rel = _safe_name(member.name)
            if not rel:
                continue
            target = dest / rel
            # A parent that is a symlink would redirect the write: refuse it.
            parent = target.parent
            while parent != dest:
                if parent.is_symlink():
                    raise UnsafeTarball(
                        f"tarball member {member.name!r} is below a symlink; refusing the tarball"
                    )
                parent = parent.parent
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                os.chmod(target, 0o755)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise UnsafeTarball(f"tarball member {member.name!r} has no data")
                if target.is_symlink() or target.exists():
                    target.unlink()
                with target.open("wb") as out:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
            elif member.issym():
                link = member.linkname
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), link))
                if link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise UnsafeTarball(
                        f"tarball symlink {member.name!r} -> {link!r} points outside the tree; "
                        "refusing the tarball"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.is_symlink() or target.exists():
                    raise UnsafeTarball(f"tarball member {member.name!r} appears twice")
                os.symlink(link, target)
            elif member.islnk():
                raise UnsafeTarball(
                    f"tarball member {member.name!r} is a hard link; kernel tarballs must not "
                    "contain hard links"
                )
            else:
                kind = stat.filemode(member.mode | _TYPE_BITS.get(member.type, 0))[0]
                raise UnsafeTarball(
                    f"tarball member {member.name!r} is a special file ({kind}); refusing it"
                )
            written.append(rel)
    return written


_TYPE_BITS = {
    tarfile.CHRTYPE: stat.S_IFCHR,
    tarfile.BLKTYPE: stat.S_IFBLK,
    tarfile.FIFOTYPE: stat.S_IFIFO,
}

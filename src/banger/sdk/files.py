"""Files in a sandbox over SFTP on the sandbox's one SSH connection.

Binary-safe; large files stream in chunks (never held whole in memory unless you ask for the
bytes). Writes are staged next to the target and renamed into place, so a reader never sees a
half-written file and a failed write leaves the old one.

    >>> await sbx.files.write("/root/hello.txt", "hi\\n")
    >>> await sbx.files.read("/root/hello.txt")
    b'hi\\n'
    >>> await sbx.files.upload("./src", "/root/src")       # a whole directory
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import secrets
import shutil
import stat as stat_mod
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Literal, TypeVar, cast

import asyncssh

from banger.sdk.errors import (
    AlreadyExists,
    BadRequest,
    BangerError,
    GuestConnectionError,
    NotFound,
    OperationFailed,
)

if TYPE_CHECKING:
    from banger.sdk.guest import GuestSession

CHUNK = 4 * 1024 * 1024  # per SFTP read/write call; asyncssh pipelines the requests inside
T = TypeVar("T")

FileType = Literal["file", "directory", "symlink", "other"]
Data = bytes | bytearray | memoryview | str | IO[bytes]


@dataclass(frozen=True)
class FileInfo:
    """One directory entry: `name`, full `path`, `type`, `size` in bytes, `mode` bits, `mtime`."""

    name: str
    path: str
    type: FileType
    size: int
    mode: int
    mtime: float


def _check_path(path: str) -> str:
    if not isinstance(path, str) or not path:
        raise BadRequest("a sandbox path must be a non-empty string")
    if "\0" in path:
        raise BadRequest(f"sandbox path {path!r} contains a NUL byte")
    return path


def _kind(mode: int) -> FileType:
    if stat_mod.S_ISDIR(mode):
        return "directory"
    if stat_mod.S_ISREG(mode):
        return "file"
    if stat_mod.S_ISLNK(mode):
        return "symlink"
    return "other"


def _translate(name: str, path: str, e: Exception) -> BangerError:
    if isinstance(e, asyncssh.SFTPNoSuchFile):
        return NotFound(f"sandbox {name}: {path}: no such file or directory")
    if isinstance(e, asyncssh.SFTPFileAlreadyExists):
        return AlreadyExists(f"sandbox {name}: {path} already exists")
    if isinstance(e, asyncssh.SFTPError):
        return OperationFailed(f"sandbox {name}: {path}: {e.reason}")
    if isinstance(e, BangerError):
        return e
    return GuestConnectionError(f"sandbox {name}: file transfer failed: {e}")


class AsyncFiles:
    """`sandbox.files` of an AsyncSandbox."""

    def __init__(self, guest: GuestSession) -> None:
        self._guest = guest

    async def _do(self, path: str, fn: Callable[[asyncssh.SFTPClient], Awaitable[T]]) -> T:
        for attempt in (1, 2):
            sftp = await self._guest.sftp()
            try:
                return await fn(sftp)
            except (asyncssh.ConnectionLost, asyncssh.DisconnectError, BrokenPipeError) as e:
                await self._guest.close()
                if attempt == 2:
                    raise _translate(self._guest.name, path, e) from None
            except (asyncssh.Error, OSError) as e:
                raise _translate(self._guest.name, path, e) from None
        raise AssertionError("unreachable")

    async def read(self, path: str, *, limit: int | None = None) -> bytes:
        """The file's bytes, or its first `limit` bytes (use `download` to stream big files)."""
        _check_path(path)
        if limit is not None and limit < 0:
            raise BadRequest(f"limit must be >= 0 bytes, not {limit}")

        async def go(sftp: asyncssh.SFTPClient) -> bytes:
            parts: list[bytes] = []
            left = limit
            async with sftp.open(path, "rb") as f:
                while left is None or left > 0:
                    want = CHUNK if left is None else min(CHUNK, left)
                    chunk = cast(bytes, await f.read(want))
                    if not chunk:
                        break
                    parts.append(chunk)
                    if left is not None:
                        left -= len(chunk)
            return b"".join(parts)

        return await self._do(path, go)

    async def read_text(self, path: str, encoding: str = "utf-8") -> str:
        """The file decoded as text (undecodable bytes are replaced)."""
        return (await self.read(path)).decode(encoding, errors="replace")

    async def write(self, path: str, data: Data, *, mode: int = 0o644) -> int:
        """Write `data` (bytes, str as UTF-8, or a binary file object, streamed) to `path`.

        Missing parent directories are created. Returns the number of bytes written.
        """
        _check_path(path)
        if isinstance(data, str):
            data = data.encode()
        source: IO[bytes] | None = None
        if not isinstance(data, bytes | bytearray | memoryview):
            source = data
        payload = bytes(data) if source is None else b""  # type: ignore[arg-type]

        async def go(sftp: asyncssh.SFTPClient) -> int:
            parent = posixpath.dirname(path) or "."
            await sftp.makedirs(parent, exist_ok=True)
            staged = posixpath.join(
                parent, f".{posixpath.basename(path)}.banger-{secrets.token_hex(4)}"
            )
            written = 0
            try:
                async with sftp.open(staged, "wb") as f:
                    if source is None:
                        await f.write(payload, 0)
                        written = len(payload)
                    else:
                        while chunk := source.read(CHUNK):
                            await f.write(chunk, written)
                            written += len(chunk)
                await sftp.chmod(staged, mode)
                await sftp.posix_rename(staged, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(staged)
                raise
            return written

        return await self._do(path, go)

    async def list(self, path: str = ".") -> list[FileInfo]:
        """The entries of a directory (without `.` and `..`), sorted by name."""
        _check_path(path)

        async def go(sftp: asyncssh.SFTPClient) -> list[FileInfo]:
            out: list[FileInfo] = []
            for entry in await sftp.readdir(path):
                name = str(entry.filename)
                if name in (".", ".."):
                    continue
                a = entry.attrs
                out.append(
                    FileInfo(
                        name=name,
                        path=posixpath.join(path, name),
                        type=_kind(a.permissions or 0),
                        size=int(a.size or 0),
                        mode=stat_mod.S_IMODE(a.permissions or 0),
                        mtime=float(a.mtime or 0),
                    )
                )
            return sorted(out, key=lambda i: i.name)

        return await self._do(path, go)

    async def exists(self, path: str) -> bool:
        _check_path(path)
        return await self._do(path, lambda sftp: sftp.exists(path))

    async def remove(self, path: str, *, recursive: bool = False) -> None:
        """Remove a file, an empty directory, or (recursive=True) a whole tree."""
        _check_path(path)
        if posixpath.normpath(path) in ("/", ".", ""):
            raise BadRequest(f"refusing to remove {path!r}")

        async def go(sftp: asyncssh.SFTPClient) -> None:
            attrs = await sftp.lstat(path)
            if stat_mod.S_ISDIR(attrs.permissions or 0):
                if recursive:
                    await sftp.rmtree(path)
                else:
                    await sftp.rmdir(path)
            else:
                await sftp.remove(path)

        await self._do(path, go)

    async def upload(self, local: str | os.PathLike[str], remote: str) -> None:
        """Copy a host file or directory tree to `remote` in the sandbox.

        A file replaces `remote`. A directory is staged next to `remote` and renamed into place;
        `remote` must not exist yet.
        """
        _check_path(remote)
        src = Path(local)
        if src.is_file():
            with src.open("rb") as f:
                await self.write(remote, f, mode=stat_mod.S_IMODE(src.stat().st_mode))
            return
        if not src.is_dir():
            raise BadRequest(f"{src}: no such file or directory on this host")

        async def go(sftp: asyncssh.SFTPClient) -> None:
            if await sftp.exists(remote):
                raise AlreadyExists(
                    f"sandbox {self._guest.name}: {remote} already exists; remove it first "
                    "or upload to a new path"
                )
            parent = posixpath.dirname(remote.rstrip("/")) or "."
            await sftp.makedirs(parent, exist_ok=True)
            staged = posixpath.join(
                parent, f".{posixpath.basename(remote.rstrip('/'))}.banger-{secrets.token_hex(4)}"
            )
            try:
                await sftp.put(str(src), staged, recurse=True, preserve=True)
                await sftp.posix_rename(staged, remote)
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.rmtree(staged)
                raise

        await self._do(remote, go)

    async def download(self, remote: str, local: str | os.PathLike[str] | IO[bytes]) -> int:
        """Copy a sandbox file to a host path or binary file object (streamed), or a sandbox
        directory tree to a host path that does not exist yet. Returns the bytes copied (files).
        """
        _check_path(remote)
        if not isinstance(local, str | os.PathLike):
            sink = local
            return await self._do(remote, lambda sftp: self._stream_to(sftp, remote, sink))
        dest = Path(local)

        async def go(sftp: asyncssh.SFTPClient) -> int:
            attrs = await sftp.stat(remote)
            dest.parent.mkdir(parents=True, exist_ok=True)
            if stat_mod.S_ISDIR(attrs.permissions or 0):
                if dest.exists():
                    raise AlreadyExists(f"{dest} already exists on this host; choose a new path")
                staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
                try:
                    await sftp.get(remote, str(staged / "d"), recurse=True, preserve=True)
                    os.rename(staged / "d", dest)
                finally:
                    shutil.rmtree(staged, ignore_errors=True)
                return 0
            fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", dir=dest.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    n = await self._stream_to(sftp, remote, f)
                os.chmod(tmp, stat_mod.S_IMODE(attrs.permissions or 0o644))
                os.replace(tmp, dest)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                raise
            return n

        return await self._do(remote, go)

    async def _stream_to(self, sftp: asyncssh.SFTPClient, remote: str, sink: IO[bytes]) -> int:
        total = 0
        async with sftp.open(remote, "rb") as f:
            while chunk := cast(bytes, await f.read(CHUNK)):
                sink.write(chunk)
                total += len(chunk)
        return total

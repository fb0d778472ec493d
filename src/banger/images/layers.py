"""Apply OCI layers (tar, tar+gzip, tar+zstd) onto a directory tree, oldest first.

Our own applier because Python's tarfile filters either strip setuid bits or reject absolute
symlinks. Layers are hostile input and the applier often runs as root, so:

- Every path is resolved as if chrooted into the tree: parents are walked from the tree root one
  component at a time through directory file descriptors opened with `O_NOFOLLOW`, symlinks are
  followed by hand (absolute targets re-rooted at the tree, `..` stopping at its root).
- Every create, remove and attribute change (owner, mode, times, xattrs) goes through such a
  descriptor (`dir_fd=` calls, `f*` calls on the object's own descriptor, or `/proc/self/fd/N`
  for an `O_PATH` one): no host path is ever handed to the kernel to resolve again.
- Directory modes and mtimes are applied last. Each record keeps the symlink-free path it was
  made for and the directory's (dev, ino); it is dropped when that directory is removed, and is
  applied only if walking that path again without following anything reaches the same inode.
- File data is bounded: every member counts at its full size (sparse files at their apparent
  size, hard links at their target's) against one limit, checked before anything is written;
  sparse members are written as sparse files.

Ownership needs root or a fakeroot session (see build.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal, cast

from banger.units import format_bytes

log = logging.getLogger("banger.images.layers")

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40
# Directories below the root a path may nest: real images stay far below; bounds the descriptors
# a walk holds and the recursion of removal and finalize.
MAX_DEPTH = 256
COPY_CHUNK = 1 << 20
# Unpacked bytes an image may hold when the puller gives no larger --size (build.py): far above
# real images (the largest common ones unpack to ~15 GB), low enough that a layer bomb fails
# long before it fills a typical disk.
DEFAULT_MAX_UNPACKED = 32 << 30

# Directories are opened readable (fchmod, listdir, futimens need a real descriptor); other
# objects only as O_PATH (opening a device node for real could have side effects).
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# A path inside the tree with no symlink in it: what a directory record is keyed by.
Phys = tuple[str, ...]


class LayerError(Exception):
    """A layer could not be applied; the message names the layer and the member."""


class HostileLayer(LayerError):
    """A member tried to escape the tree or is otherwise unsafe."""


class TooLarge(LayerError):
    """The layers unpack to more file data than the image's limit; the message names both."""


class BudgetExceeded(Exception):
    """The scratch tree cannot take these layers: more file data than its budget, or an xattr
    its filesystem does not support (tmpfs before Linux 6.6 has no user.* xattrs); build.py
    starts over on the disk."""


@dataclass(frozen=True)
class Layer:
    path: Path
    # Shown in errors (usually the blob digest).
    name: str
    # "tar" | "gzip" | "zstd" | "auto" (sniff the magic bytes)
    compression: str = "auto"


@dataclass
class ApplyStats:
    members: int = 0
    # Every member at its full size (what the limit counts).
    bytes: int = 0
    # Bytes actually written (sparse holes and hard links cost nothing; what the scratch budget
    # counts).
    data_bytes: int = 0
    xattr_failures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _DirRecord:
    mode: int
    mtime: float
    dev: int
    ino: int


@dataclass
class _RecordNode:
    """Deferred directory attributes, as a tree of symlink-free paths: removing a directory
    drops its whole subtree of records in one step."""

    rec: _DirRecord | None = None
    kids: dict[str, _RecordNode] = field(default_factory=dict)


class _Dir:
    """An open directory of the tree and its symlink-free path; closes with the context."""

    def __init__(self, fd: int, phys: Phys) -> None:
        self.fd = fd
        self.phys = phys

    def __enter__(self) -> _Dir:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _sniff(f: IO[bytes]) -> str:
    head = f.read(4)
    f.seek(0)
    if head[:2] == b"\x1f\x8b":
        return "gzip"
    if head == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "tar"


@contextlib.contextmanager
def open_layer(layer: Layer) -> Iterator[tarfile.TarFile]:
    with layer.path.open("rb") as raw:
        kind = layer.compression if layer.compression != "auto" else _sniff(raw)
        if kind == "zstd":
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            with reader, tarfile.open(fileobj=reader, mode="r|") as tf:
                yield tf
        elif kind == "gzip":
            with tarfile.open(fileobj=raw, mode="r|gz") as tf:
                yield tf
        else:
            with tarfile.open(fileobj=raw, mode="r|") as tf:
                yield tf


def _proc(fd: int, name: str = "") -> str:
    """A path the kernel resolves to what `fd` is open on (and `name` in it, not followed)."""
    return f"/proc/self/fd/{fd}" + (f"/{name}" if name else "")


def _segments(m: tarfile.TarInfo) -> list[tuple[int, int]]:
    """(offset, length) of the data a regular member stores; holes in between for sparse ones."""
    # typeshed types TarInfo.sparse as bytes; tarfile sets a list of (offset, numbytes).
    sparse = cast("list[tuple[int, int]] | None", m.sparse)
    return [(0, m.size)] if sparse is None else sparse


class Applier:
    def __init__(
        self,
        root: Path,
        budget: int | None = None,
        *,
        max_bytes: int | None = None,
        image: str = "",
    ) -> None:
        self.root = os.path.realpath(root)
        self.root_fd = os.open(self.root, _DIR)
        # Private while the image's files (device nodes included) sit in it as root.
        os.chmod(self.root_fd, 0o700)
        self.stats = ApplyStats()
        # Bytes the scratch tree may take before build.py moves to the disk (None: unlimited).
        self.budget = budget
        # Bytes of file data the image may hold at all (None: unlimited).
        self.max_bytes = max_bytes
        self.image = image
        # Directory modes and mtimes are set last: children change mtimes, and a read-only dir
        # must stay writable while later layers add to it.
        self._records = _RecordNode()
        # Entries this layer created, and their ancestors (for opaque whiteouts).
        self._created: set[Phys] = set()
        self._created_above: set[Phys] = set()
        self._layer = ""
        self._member = ""

    def close(self) -> None:
        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    # --- errors ---

    def _hostile(self, reason: str) -> HostileLayer:
        return HostileLayer(
            f"layer {self._layer}: member {self._member!r}: {reason}; refusing to unpack this image"
        )

    # --- chroot-style resolution through descriptors ---

    def _split(self, name: str, what: str = "name") -> list[str]:
        if name.startswith("/"):
            raise self._hostile(f"absolute {what} {name!r}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._hostile(f"{what} {name!r} contains '..'")
        return parts

    def _resolve(self, parts: Sequence[str], create: bool) -> _Dir:
        """Open the directory `parts` names inside the tree, following symlinks chroot-style.

        Missing directories are created when `create` (tars may omit parents), else the member
        is hostile. The caller closes the result."""
        d = self._walk(parts, "create" if create else "fail")
        assert d is not None
        return d

    def _walk(
        self, parts: Sequence[str], missing: Literal["create", "fail", "none"]
    ) -> _Dir | None:
        stack: list[tuple[str, int]] = []  # (component, fd) below the root
        todo = list(parts)
        hops = 0
        try:
            while todo:
                comp = todo.pop(0)
                if comp in ("", "."):
                    continue
                if comp == "..":
                    if stack:
                        os.close(stack.pop()[1])
                    continue
                if len(stack) >= MAX_DEPTH:
                    raise self._hostile(f"path nests deeper than {MAX_DEPTH} directories")
                parent = stack[-1][1] if stack else self.root_fd
                try:
                    st = os.stat(comp, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    if missing == "none":
                        return None
                    if missing == "fail":
                        raise self._hostile(f"{'/'.join(parts)!r} does not exist") from None
                    os.mkdir(comp, 0o700, dir_fd=parent)
                    stack.append((comp, os.open(comp, _DIR, dir_fd=parent)))
                    self._record_dir(tuple(c for c, _ in stack), stack[-1][1], 0o755, 0.0)
                    continue
                if stat.S_ISLNK(st.st_mode):
                    hops += 1
                    if hops > MAX_SYMLINK_HOPS:
                        raise self._hostile("too many levels of symbolic links")
                    target = os.readlink(comp, dir_fd=parent)
                    if target.startswith("/"):
                        for _, fd in stack:
                            os.close(fd)
                        stack = []
                    todo = [p for p in target.split("/") if p] + todo
                elif stat.S_ISDIR(st.st_mode):
                    # O_NOFOLLOW: even if the entry changed since the stat, no link is followed.
                    stack.append((comp, os.open(comp, _DIR, dir_fd=parent)))
                else:
                    here = "/".join([*(c for c, _ in stack), comp])
                    raise self._hostile(f"parent {here!r} is not a directory")
            top = stack[-1][1] if stack else self.root_fd
            return _Dir(os.dup(top), tuple(c for c, _ in stack))
        finally:
            for _, fd in stack:
                os.close(fd)

    def _remove(self, d: _Dir, name: str) -> None:
        try:
            st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            # The fd-based rmtree: it never follows a symlink inside the removed tree.
            shutil.rmtree(name, dir_fd=d.fd)
            self._drop_records((*d.phys, name))
        else:
            os.unlink(name, dir_fd=d.fd)

    def _record_dir(self, phys: Phys, fd: int, mode: int, mtime: float) -> None:
        node = self._records
        for comp in phys:
            node = node.kids.setdefault(comp, _RecordNode())
        st = os.fstat(fd)
        node.rec = _DirRecord(mode, mtime, st.st_dev, st.st_ino)

    def _drop_records(self, phys: Phys) -> None:
        node: _RecordNode | None = self._records
        for comp in phys[:-1]:
            node = node.kids.get(comp) if node is not None else None
        if node is not None:
            node.kids.pop(phys[-1], None)

    # --- applying ---

    def apply(self, layer: Layer) -> None:
        self._layer = layer.name
        self._created = set()
        self._created_above = set()
        self._member = ""
        try:
            with open_layer(layer) as tf:
                for member in tf:
                    self._member = member.name
                    self._apply_member(tf, member)
                    self.stats.members += 1
        except (LayerError, BudgetExceeded):
            raise
        except (tarfile.TarError, EOFError, OSError) as e:
            where = f"member {self._member!r}" if self._member else "header"
            raise LayerError(f"layer {layer.name}: {where}: {e}") from e
        except Exception as e:  # zstandard raises its own error type on corrupt frames
            raise LayerError(f"layer {layer.name}: cannot read: {e}") from e

    def _apply_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        parts = self._split(m.name)
        if not parts:
            # "./": mkfs.ext4 -d makes the image's root 0755 root:root whatever the tree root
            # says, so the layer's mode and owner would only open the tree to other host users.
            return
        *parent_parts, base = parts
        if len(os.fsencode(base)) > 255:
            raise self._hostile("name component longer than 255 bytes")
        if base.startswith(WHITEOUT):
            self._whiteout(parent_parts, base)
            return
        with self._resolve(parent_parts, create=True) as d:
            self._apply_entry(tf, m, d, base)

    def _whiteout(self, parent_parts: list[str], base: str) -> None:
        target = base[len(WHITEOUT) :]
        if base != OPAQUE and target in ("", ".", ".."):
            raise self._hostile(
                f"whiteout {base!r} names {target!r}, which is not an entry of the directory"
            )
        if base != OPAQUE and target.startswith(WHITEOUT):
            return  # AUFS bookkeeping (.wh..wh.plnk etc.): not content
        # Nothing to hide below a directory that does not exist.
        d = self._walk(parent_parts, "none")
        if d is None:
            return
        with d:
            if base == OPAQUE:
                self._opaque(d)
            elif (*d.phys, target) not in self._created:
                self._remove(d, target)

    def _apply_entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo, d: _Dir, name: str) -> None:
        phys = (*d.phys, name)
        self._mark_created(phys)
        if m.isdir():
            try:
                st = os.stat(name, dir_fd=d.fd, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    self._remove(d, name)
                    os.mkdir(name, 0o700, dir_fd=d.fd)
            except FileNotFoundError:
                os.mkdir(name, 0o700, dir_fd=d.fd)
            fd = os.open(name, _DIR, dir_fd=d.fd)
            try:
                os.chown(fd, m.uid, m.gid)
                # Owner-writable until finalize: later layers may still add to it.
                os.chmod(fd, (m.mode & 0o7777) | 0o700)
                self._set_xattrs(m, lambda k, v: os.setxattr(fd, k, v))
                self._record_dir(phys, fd, m.mode & 0o7777, float(m.mtime))
            finally:
                os.close(fd)
            return
        if m.islnk():
            self._hardlink(d, name, m)
            return
        if m.isreg():
            self._check_sparse(tf, m)
            data = sum(n for _, n in _segments(m))
            self._charge(m.size, data)
            self._remove(d, name)
            self._write_file(tf, m, d, name)
            return
        self._remove(d, name)
        if m.issym():
            # The target is kept as written: it means something in the guest.
            os.symlink(m.linkname, name, dir_fd=d.fd)
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(name, kind | 0o600, os.makedev(m.devmajor, m.devminor), dir_fd=d.fd)
        elif m.isfifo():
            os.mkfifo(name, 0o600, dir_fd=d.fd)
        else:
            log.warning("skipping unsupported tar member type %r: %s", m.type, m.name)
            self._created.discard(phys)
            return
        self._finish_special(d, name, m)

    # --- regular files, sparse or not ---

    def _check_sparse(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        """Refuse sparse members this applier cannot write faithfully or whose map lies."""
        if m.sparse is None:
            if any(k.startswith("GNU.sparse.") for k in m.pax_headers):
                version = (
                    f"{m.pax_headers.get('GNU.sparse.major', '?')}."
                    f"{m.pax_headers.get('GNU.sparse.minor', '?')}"
                )
                raise self._hostile(
                    f"unsupported GNU sparse format {version} (0.0, 0.1, 1.0 and old GNU"
                    " sparse members are supported)"
                )
            return
        # The member's data occupies the blocks up to the next header (tarfile has read ahead).
        stored = tf.offset - m.offset_data
        end = 0
        total = 0
        for offset, size in _segments(m):
            if size == 0:
                continue  # GNU tar ends a map with (file size, 0); empty header slots read so
            if offset < end or offset + size > m.size:
                raise self._hostile(
                    f"sparse map entry ({offset}, {size}) overlaps another or lies beyond the "
                    f"file's size {m.size}"
                )
            end = offset + size
            total += size
        if total > stored:
            raise self._hostile(
                f"sparse map claims {total} bytes of data but the member stores {stored}"
            )

    def _charge(self, full: int, written: int) -> None:
        """Count a member against the image's limit (full size) and the scratch budget
        (written bytes), before anything of it is written."""
        self.stats.bytes += full
        if self.max_bytes is not None and self.stats.bytes > self.max_bytes:
            raise TooLarge(
                f"image {self.image or '(unnamed)'!r} unpacks to more than its "
                f"{format_bytes(self.max_bytes)} limit: layer {self._layer}, member "
                f"{self._member!r} brings it to {format_bytes(self.stats.bytes)} (sparse and "
                "hard-linked files count at their full size); refusing to unpack it. If it "
                "really is that big, pull it with a --size above its unpacked size"
            )
        self.stats.data_bytes += written
        if self.budget is not None and self.stats.data_bytes > self.budget:
            raise BudgetExceeded(f"more than {self.budget} bytes of file data")

    def _write_file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, d: _Dir, name: str) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(name, flags, 0o600, dir_fd=d.fd)
        try:
            segments = _segments(m)
            src = tf.fileobj
            assert src is not None
            src.seek(m.offset_data)
            for offset, size in segments:
                pos, left = offset, size
                while left:
                    chunk = src.read(min(COPY_CHUNK, left))
                    if not chunk:
                        raise LayerError(
                            f"layer {self._layer}: member {self._member!r}: unexpected end of data"
                        )
                    view = memoryview(chunk)
                    while view:
                        n = os.pwrite(fd, view, pos)
                        view = view[n:]
                        pos += n
                    left -= len(chunk)
            # Holes stay holes: only the length is set.
            os.ftruncate(fd, m.size)
            os.chown(fd, m.uid, m.gid)
            # After chown: chown clears setuid/setgid.
            os.chmod(fd, m.mode & 0o7777)
            self._set_xattrs(m, lambda k, v: os.setxattr(fd, k, v))
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)

    def _finish_special(self, d: _Dir, name: str, m: tarfile.TarInfo) -> None:
        """Owner, mode, xattrs and mtime of a symlink, device or fifo just created in `d`."""
        os.chown(name, m.uid, m.gid, dir_fd=d.fd, follow_symlinks=False)
        if not m.issym():
            # No fchmodat(AT_SYMLINK_NOFOLLOW) on Linux: chmod the O_PATH descriptor's inode.
            fd = os.open(name, _PATH, dir_fd=d.fd)
            try:
                if stat.S_ISLNK(os.fstat(fd).st_mode):
                    raise self._hostile("entry turned into a symlink while being created")
                os.chmod(_proc(fd), m.mode & 0o7777)
            finally:
                os.close(fd)
        self._set_xattrs(
            m, lambda k, v: os.setxattr(_proc(d.fd, name), k, v, follow_symlinks=False)
        )
        os.utime(name, (m.mtime, m.mtime), dir_fd=d.fd, follow_symlinks=False)

    def _hardlink(self, d: _Dir, name: str, m: tarfile.TarInfo) -> None:
        parts = self._split(m.linkname, "hardlink target")
        if not parts:
            raise self._hostile("hardlink to the root directory")
        *tparent, tbase = parts
        missing = self._hostile(f"hardlink target {m.linkname!r} does not exist in the image")
        try:
            target = self._resolve(tparent, create=False)
        except HostileLayer:
            raise missing from None
        with target:
            try:
                st = os.stat(tbase, dir_fd=target.fd, follow_symlinks=False)
            except FileNotFoundError:
                raise missing from None
            if stat.S_ISDIR(st.st_mode):
                raise self._hostile(f"hardlink to directory {m.linkname!r}")
            if (*target.phys, tbase) == (*d.phys, name):
                return
            # A link adds no data, but whatever reads the tree sees the file again.
            self._charge(st.st_size, 0)
            self._remove(d, name)
            # follow_symlinks=False: a link to a symlink links the symlink, never its target.
            os.link(tbase, name, src_dir_fd=target.fd, dst_dir_fd=d.fd, follow_symlinks=False)

    def _opaque(self, d: _Dir) -> None:
        """Hide everything lower layers put in `d` (this layer's own entries stay)."""
        for entry in os.listdir(d.fd):
            phys = (*d.phys, entry)
            if phys in self._created or phys in self._created_above:
                st = os.stat(entry, dir_fd=d.fd, follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    with _Dir(os.open(entry, _DIR, dir_fd=d.fd), phys) as sub:
                        self._opaque(sub)
            else:
                self._remove(d, entry)

    def _mark_created(self, phys: Phys) -> None:
        self._created.add(phys)
        for i in range(len(phys) - 1, 0, -1):
            above = phys[:i]
            if above in self._created_above:
                break
            self._created_above.add(above)

    def _set_xattrs(self, m: tarfile.TarInfo, setx: Callable[[str, bytes], None]) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            try:
                setx(name, value.encode("utf-8", "surrogateescape"))
            except OSError as e:
                if e.errno == errno.ENOTSUP and self.budget is not None:
                    raise BudgetExceeded(f"xattr {name}: {e.strerror}") from e
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise
                self.stats.xattr_failures.append(f"{m.name}: {name}: {e.strerror}")

    def finalize(self) -> None:
        """Set directory modes and mtimes, children before their parent, each only on the very
        directory it was recorded for: walked again from the root without following anything,
        and with the same (dev, ino)."""
        self._finalize(self.root_fd, self._records)

    def _finalize(self, fd: int, node: _RecordNode) -> None:
        for name, kid in node.kids.items():
            try:
                kid_fd = os.open(name, _DIR, dir_fd=fd)
            except OSError as e:
                # Gone, or now a symlink or a file: nothing below it is what was recorded.
                if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue
                raise
            try:
                self._finalize(kid_fd, kid)
            finally:
                os.close(kid_fd)
        rec = node.rec
        if rec is None:
            return
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (rec.dev, rec.ino):
            return
        os.chmod(fd, rec.mode)
        if rec.mtime:
            os.utime(fd, (rec.mtime, rec.mtime))


def apply_layers(
    root: Path,
    layers: Sequence[Layer],
    on_layer: Callable[[int, Layer], None] | None = None,
    budget: int | None = None,
    *,
    max_bytes: int | None = None,
    image: str = "",
) -> ApplyStats:
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    applier = Applier(root, budget, max_bytes=max_bytes, image=image)
    try:
        for i, layer in enumerate(layers):
            if on_layer:
                on_layer(i, layer)
            applier.apply(layer)
        applier.finalize()
    finally:
        applier.close()
    return applier.stats

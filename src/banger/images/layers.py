"""Apply OCI layers (tar, tar+gzip, tar+zstd) onto a directory tree, oldest first.

Our own applier because Python's tarfile filters either strip setuid bits or reject absolute
symlinks. Every path is resolved as if chrooted into the tree: parents are walked component by
component with `lstat`, symlinks are followed by hand (absolute targets re-rooted at the tree,
`..` stopping at its root), so nothing a layer plants can make a later entry land outside.
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
from typing import IO

log = logging.getLogger("banger.images.layers")

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40
COPY_CHUNK = 1 << 20


class LayerError(Exception):
    """A layer could not be applied; the message names the layer and the member."""


class HostileLayer(LayerError):
    """A member tried to escape the tree or is otherwise unsafe."""


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
    bytes: int = 0
    xattr_failures: list[str] = field(default_factory=list)


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


class Applier:
    def __init__(self, root: Path, budget: int | None = None) -> None:
        self.root = os.path.realpath(root)
        self.stats = ApplyStats()
        # Bytes of file data the tree may take (None: unlimited).
        self.budget = budget
        # Directory modes and mtimes are set last: children change mtimes, and a read-only dir
        # must stay writable while later layers add to it.
        self._dir_attrs: dict[str, tuple[int, float]] = {}
        # Host paths this layer created, and their ancestors (for opaque whiteouts).
        self._created: set[str] = set()
        self._created_above: set[str] = set()
        self._resolved: dict[tuple[str, ...], str] = {}
        self._layer = ""
        self._member = ""

    # --- errors ---

    def _hostile(self, reason: str) -> HostileLayer:
        return HostileLayer(
            f"layer {self._layer}: member {self._member!r}: {reason}; refusing to unpack this image"
        )

    # --- chroot-style resolution ---

    def _split(self, name: str, what: str = "name") -> list[str]:
        if name.startswith("/"):
            raise self._hostile(f"absolute {what} {name!r}")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self._hostile(f"{what} {name!r} contains '..'")
        return parts

    def _resolve_dir(self, parts: Sequence[str], create: bool) -> str:
        """Host path of the directory `parts` inside the tree, following symlinks chroot-style."""
        key = tuple(parts)
        hit = self._resolved.get(key)
        if hit is not None:
            return hit
        cur: list[str] = []
        todo = list(parts)
        hops = 0
        while todo:
            comp = todo.pop(0)
            if comp in ("", "."):
                continue
            if comp == "..":
                if cur:
                    cur.pop()
                continue
            host = os.path.join(self.root, *cur, comp)
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                if not create:
                    raise self._hostile(f"{'/'.join(parts)!r} does not exist") from None
                # Tars may omit parent directories: create them like tar does.
                os.mkdir(host, 0o755)
                self._dir_attrs.setdefault(host, (0o755, 0.0))
                cur.append(comp)
                continue
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise self._hostile("too many levels of symbolic links")
                target = os.readlink(host)
                if target.startswith("/"):
                    cur = []
                todo = [p for p in target.split("/") if p] + todo
            elif stat.S_ISDIR(st.st_mode):
                cur.append(comp)
            else:
                raise self._hostile(f"parent {'/'.join([*cur, comp])!r} is not a directory")
        result = os.path.join(self.root, *cur)
        self._resolved[key] = result
        return result

    def _remove(self, host: str) -> None:
        try:
            st = os.lstat(host)
        except FileNotFoundError:
            return
        self._resolved.clear()
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(host)
        else:
            os.unlink(host)

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
        if not parts:  # "./": the root's own attributes
            if m.isdir():
                self._set_owner(self.root, m)
                self._dir_attrs[self.root] = (m.mode & 0o7777, float(m.mtime))
            return
        *parent_parts, base = parts
        if len(base.encode()) > 255:
            raise self._hostile("name component longer than 255 bytes")
        parent = self._resolve_dir(parent_parts, create=True)
        if base == OPAQUE:
            self._opaque(parent)
            return
        if base.startswith(WHITEOUT):
            target = base[len(WHITEOUT) :]
            if target.startswith(".wh.") or not target:
                return  # AUFS bookkeeping (.wh..wh.plnk etc.): not content
            host = os.path.join(parent, target)
            if host not in self._created:
                self._remove(host)
            return
        host = os.path.join(parent, base)
        self._mark_created(host)
        if m.isdir():
            try:
                st = os.lstat(host)
                if not stat.S_ISDIR(st.st_mode):
                    self._remove(host)
                    os.mkdir(host, 0o700)
            except FileNotFoundError:
                os.mkdir(host, 0o700)
            self._set_owner(host, m)
            os.chmod(host, (m.mode & 0o7777) | 0o700)
            self._dir_attrs[host] = (m.mode & 0o7777, float(m.mtime))
            self._set_xattrs(host, m)
            return
        if m.islnk():
            self._hardlink(host, m)
            return
        self._remove(host)
        if m.isreg():
            if self.budget is not None and self.stats.bytes + m.size > self.budget:
                raise BudgetExceeded(f"more than {self.budget} bytes of file data")
            fd = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as out:
                src = tf.extractfile(m)
                if src is not None:
                    shutil.copyfileobj(src, out, COPY_CHUNK)
            self.stats.bytes += m.size
        elif m.issym():
            os.symlink(m.linkname, host)  # target kept as written: it means something in the guest
            self._resolved.clear()
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(host, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(host, 0o600)
        else:
            log.warning("skipping unsupported tar member type %r: %s", m.type, m.name)
            self._created.discard(host)
            return
        self._finish(host, m)

    def _hardlink(self, host: str, m: tarfile.TarInfo) -> None:
        parts = self._split(m.linkname, "hardlink target")
        if not parts:
            raise self._hostile("hardlink to the root directory")
        *tparent, tbase = parts
        try:
            src = os.path.join(self._resolve_dir(tparent, create=False), tbase)
            st = os.lstat(src)
        except (HostileLayer, FileNotFoundError):
            raise self._hostile(
                f"hardlink target {m.linkname!r} does not exist in the image"
            ) from None
        if stat.S_ISDIR(st.st_mode):
            raise self._hostile(f"hardlink to directory {m.linkname!r}")
        if src == host:
            return
        self._remove(host)
        os.link(src, host, follow_symlinks=False)

    def _opaque(self, directory: str) -> None:
        """Hide everything lower layers put in `directory` (this layer's own entries stay)."""
        for entry in os.listdir(directory):
            host = os.path.join(directory, entry)
            if host in self._created or host in self._created_above:
                if os.path.isdir(host) and not os.path.islink(host):
                    self._opaque(host)
            else:
                self._remove(host)

    def _mark_created(self, host: str) -> None:
        self._created.add(host)
        parent = os.path.dirname(host)
        while len(parent) > len(self.root) and parent not in self._created_above:
            self._created_above.add(parent)
            parent = os.path.dirname(parent)

    def _set_owner(self, host: str, m: tarfile.TarInfo) -> None:
        os.lchown(host, m.uid, m.gid)

    def _set_xattrs(self, host: str, m: tarfile.TarInfo) -> None:
        for key, value in m.pax_headers.items():
            if not key.startswith("SCHILY.xattr."):
                continue
            name = key[len("SCHILY.xattr.") :]
            try:
                os.setxattr(
                    host, name, value.encode("utf-8", "surrogateescape"), follow_symlinks=False
                )
            except OSError as e:
                if e.errno == errno.ENOTSUP and self.budget is not None:
                    raise BudgetExceeded(f"xattr {name}: {e.strerror}") from e
                if e.errno not in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
                    raise
                self.stats.xattr_failures.append(f"{m.name}: {name}: {e.strerror}")

    def _finish(self, host: str, m: tarfile.TarInfo) -> None:
        self._set_owner(host, m)
        if not m.issym():
            # After chown: chown clears setuid/setgid.
            os.chmod(host, m.mode & 0o7777)
        self._set_xattrs(host, m)
        os.utime(host, (m.mtime, m.mtime), follow_symlinks=False)

    def finalize(self) -> None:
        """Set directory modes and mtimes, deepest first."""
        for host in sorted(self._dir_attrs, key=len, reverse=True):
            mode, mtime = self._dir_attrs[host]
            try:
                st = os.lstat(host)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            os.chmod(host, mode)
            if mtime:
                os.utime(host, (mtime, mtime), follow_symlinks=False)


def apply_layers(
    root: Path,
    layers: Sequence[Layer],
    on_layer: Callable[[int, Layer], None] | None = None,
    budget: int | None = None,
) -> ApplyStats:
    root.mkdir(parents=True, exist_ok=True)
    applier = Applier(root, budget)
    for i, layer in enumerate(layers):
        if on_layer:
            on_layer(i, layer)
        applier.apply(layer)
    applier.finalize()
    return applier.stats

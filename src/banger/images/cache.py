"""The blob cache: an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/<hex>`).

Blobs land only after their sha256 was verified (written to a temp name, renamed into place), so
anything under `blobs/` is trusted. Per-digest locks make concurrent pulls fetch a blob once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
LAYOUT = {"imageLayoutVersion": "1.0.0"}
# Bump when the layer applier or ext4 builder changes what they produce.
ROOTFS_BUILD = "b1"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_ANNOTATION = "org.opencontainers.image.ref.name"


class DigestMismatch(Exception):
    def __init__(self, digest: str, actual: str, what: str) -> None:
        super().__init__(
            f"{what} {digest} failed verification: its content hashes to {actual}; nothing was "
            "cached. The registry served corrupt data: retry, or report it to the registry owner"
        )
        self.digest = digest
        self.actual = actual


def hex_of(digest: str) -> str:
    m = _DIGEST.match(digest)
    if not m:
        raise ValueError(f"unsupported digest {digest!r}: only sha256:<64 hex> is accepted")
    return m.group(1)


@dataclass(frozen=True)
class PruneTally:
    blobs: int
    bytes: int


class BlobCache:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._locks: dict[str, asyncio.Lock] = {}
        self._index_lock = threading.Lock()

    @property
    def blobs_dir(self) -> Path:
        return self.root / "blobs" / "sha256"

    def ensure(self) -> None:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        layout = self.root / "oci-layout"
        if not layout.exists():
            layout.write_text(json.dumps(LAYOUT))
        index = self.root / "index.json"
        if not index.exists():
            self._write_index({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []})

    def path(self, digest: str) -> Path:
        return self.blobs_dir / hex_of(digest)

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file()

    @contextlib.asynccontextmanager
    async def lock(self, digest: str) -> AsyncIterator[None]:
        """Serialise work on one digest within this daemon."""
        lk = self._locks.setdefault(digest, asyncio.Lock())
        async with lk:
            yield

    def temp_path(self, digest: str) -> Path:
        self.ensure()
        return self.blobs_dir / f".tmp-{hex_of(digest)[:16]}-{secrets.token_hex(4)}"

    def commit(self, tmp: Path, digest: str) -> Path:
        """Move a verified temp file into place."""
        final = self.path(digest)
        # A file moved in (mmdebstrap's tarball) keeps its tool's 0644: blobs are private too.
        os.chmod(tmp, 0o600)
        os.replace(tmp, final)
        return final

    def put_bytes(self, data: bytes, digest: str | None = None) -> str:
        """Store `data` (verifying it against `digest` when given); returns its digest."""
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if digest is not None and digest != actual:
            raise DigestMismatch(digest, actual, "blob")
        if not self.has(actual):
            tmp = self.temp_path(actual)
            tmp.write_bytes(data)
            self.commit(tmp, actual)
        return actual

    def read_bytes(self, digest: str) -> bytes:
        return self.path(digest).read_bytes()

    def put_file(self, src: Path) -> str:
        """Move `src` into the cache under its sha256 (hashing it here); returns the digest."""
        h = hashlib.sha256()
        with src.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        self.ensure()
        if self.has(digest):
            src.unlink()
        else:
            tmp = self.temp_path(digest)
            shutil.move(src, tmp)
            self.commit(tmp, digest)
        return digest

    # --- index.json: ref name → manifest, so the layout is usable by skopeo/umoci too ---

    def _write_index(self, index: dict[str, Any]) -> None:
        tmp = self.root / f".index-{secrets.token_hex(4)}.json"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, self.root / "index.json")

    def _read_index(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "index.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            data = {}
        if not isinstance(data, dict) or not isinstance(data.get("manifests"), list):
            data = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
        index: dict[str, Any] = data
        return index

    def tag(self, ref: str, digest: str, media_type: str, size: int) -> None:
        with self._index_lock:
            self.ensure()
            index = self._read_index()
            kept = [
                m
                for m in index["manifests"]
                if (m.get("annotations") or {}).get(REF_ANNOTATION) != ref
            ]
            kept.append(
                {
                    "mediaType": media_type,
                    "digest": digest,
                    "size": size,
                    "annotations": {REF_ANNOTATION: ref},
                }
            )
            index["manifests"] = kept
            self._write_index(index)

    def lookup(self, ref: str) -> str | None:
        with self._index_lock:
            for m in self._read_index()["manifests"]:
                if (m.get("annotations") or {}).get(REF_ANNOTATION) == ref:
                    digest = m.get("digest")
                    if isinstance(digest, str) and _DIGEST.match(digest) and self.has(digest):
                        return digest
        return None

    # --- built root filesystems, keyed by manifest digest ---
    # A published rootfs is never modified, so the cache keeps a hard link to it: re-pulling the
    # same image (under another name, or after a delete) links it instead of rebuilding. It costs
    # no disk while the image exists; prune frees it.

    def _rootfs_entry(self, digest: str, size: int | None) -> Path:
        return self.root / "banger-rootfs" / f"{ROOTFS_BUILD}-{hex_of(digest)}-{size or 'auto'}"

    def has_rootfs(self, digest: str, size: int | None) -> bool:
        return self._rootfs_entry(digest, size).is_file()

    def link_rootfs(self, digest: str, size: int | None, dest: Path) -> bool:
        entry = self._rootfs_entry(digest, size)
        try:
            os.link(entry, dest)
        except OSError:
            return False
        return True

    def keep_rootfs(self, digest: str, size: int | None, built: Path) -> None:
        entry = self._rootfs_entry(digest, size)
        tmp = entry.with_name(f".tmp-{secrets.token_hex(4)}")
        try:
            entry.parent.mkdir(parents=True, exist_ok=True)
            os.link(built, tmp)
            os.replace(tmp, entry)
        except OSError:  # e.g. cache and state on different filesystems: just no reuse
            with contextlib.suppress(OSError):
                tmp.unlink()

    # --- prune ---

    def tally(self) -> PruneTally:
        blobs = size = 0
        if self.blobs_dir.is_dir():
            for entry in os.scandir(self.blobs_dir):
                if entry.is_file(follow_symlinks=False):
                    blobs += 1
                    size += entry.stat(follow_symlinks=False).st_size
        rootfs_dir = self.root / "banger-rootfs"
        if rootfs_dir.is_dir():
            for entry in os.scandir(rootfs_dir):
                st = entry.stat(follow_symlinks=False)
                # Only disk the cache alone holds is freed (an image may share the inode).
                if entry.is_file(follow_symlinks=False) and st.st_nlink == 1:
                    blobs += 1
                    size += st.st_blocks * 512
        return PruneTally(blobs, size)

    def prune(self) -> PruneTally:
        """Rename the cache aside, recreate it empty, then delete the aside copy."""
        tally = self.tally()
        if self.root.exists():
            aside = self.root.with_name(f".{self.root.name}.pruning-{secrets.token_hex(4)}")
            os.rename(self.root, aside)
            self.ensure()
            shutil.rmtree(aside)
        self._locks.clear()
        return tally

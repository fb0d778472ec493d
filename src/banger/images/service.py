"""ImageService: pull, build, register, promote, list, delete, cache prune.

Built by the daemon's composition root with what it uses (paths, config, store, the kernels it
checks a kernel ref against, the reference checks a delete asks); it imports nothing above it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from banger import fsutil
from banger.config import Config
from banger.errors import AlreadyExists, Conflict, InvalidInput, NotFound, OperationFailed
from banger.images import debian
from banger.images.cache import BlobCache, DigestMismatch
from banger.images.model import ImageConfig, ImageRecord
from banger.images.reference import ReferenceError, parse_reference
from banger.images.registry import (
    LAYER_TYPES,
    OCI_MANIFEST,
    AuthRequired,
    Descriptor,
    ManifestNotFound,
    RegistryClient,
    RegistryError,
)
from banger.paths import Paths
from banger.proc import kill_tree, run, spawn
from banger.request import RequestContext
from banger.store.db import Store

log = logging.getLogger("banger.images")

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
ROOTFS_NAME = "rootfs.ext4"
DOWNLOAD_CONCURRENCY = 4
PROGRESS_INTERVAL = 0.1
BUILD_TIMEOUT = 1800
EXT4_MAGIC_OFFSET = 1080
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def validate_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise InvalidInput(
            f"image name {name!r} is invalid: use 1-63 lowercase letters, digits, '.', '_' or '-',"
            " starting with a letter or digit"
        )
    return name


def _builtin_hint(ref_text: str) -> str:
    """A typo of a built-in name (`debian-bookwrm`) goes to Docker Hub and fails there; say what
    was probably meant."""
    import difflib

    close = difflib.get_close_matches(ref_text, sorted(debian.BUILTINS), n=1, cutoff=0.8)
    if not close:
        return ""
    return f"; did you mean banger's built-in {close[0]!r}?"


def _not_builtin(name: str) -> str:
    # VMs get the built-in image by this name; another image under it would silently replace it.
    if name in debian.BUILTINS:
        raise InvalidInput(
            f"the name {name!r} is reserved for banger's built-in offline image; "
            "choose another name"
        )
    return name


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _new_id() -> str:
    return secrets.token_hex(8)


def parse_image_config(raw: bytes) -> ImageConfig:
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as e:
        raise OperationFailed(f"image config is not valid JSON: {e}") from e
    cfg = (doc.get("config") if isinstance(doc, dict) else None) or {}

    def strs(key: str) -> list[str]:
        value = cfg.get(key)
        return [str(x) for x in value] if isinstance(value, list) else []

    return ImageConfig(
        env=strs("Env"),
        entrypoint=strs("Entrypoint"),
        cmd=strs("Cmd"),
        working_dir=str(cfg.get("WorkingDir") or ""),
        user=str(cfg.get("User") or ""),
    )


def is_ext4(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            f.seek(EXT4_MAGIC_OFFSET)
            return f.read(2) == b"\x53\xef"
    except OSError:
        return False


# The unpacked tree is scratch (only the ext4 built from it is kept): on tmpfs when it fits
# comfortably, because creating thousands of inodes on a disk filesystem is the slow part of a
# pull (measured here: ~1 ms per file on the state disk, ~7 us on tmpfs).
SCRATCH_ROOT = Path("/dev/shm")
SCRATCH_PREFIX = "banger-scratch-"
# Compressed layers expand roughly this much; plain tars are counted as they are.
EXPANSION = 4
SCRATCH_SHARE = 0.25
SCRATCH_BUDGET = 0.5


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


# mmdebstrap's chroot plus the downloaded packages, with headroom.
DEBIAN_SCRATCH_NEED = 2 << 30


# Kept under these names for callers and tests; the mechanism lives in `banger.fsutil`.
_mounts_under = fsutil.mounts_under


def rmtree_no_mounts(path: Path) -> None:
    """Delete `path` (a symlink is unlinked, never followed) unless something is mounted below
    it (a leaked chroot bind mount of /dev or /proc): then leave it and log loudly."""
    fsutil.remove_entry(path)


def _mem_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _scratch_dir(image_id: str, layers: list[Descriptor]) -> tuple[Path | None, int]:
    """A private tmpfs dir for the unpacked tree and the bytes it may take, or None to unpack
    on the state disk."""
    estimate = sum(
        x.size * (1 if LAYER_TYPES.get(x.media_type) == "tar" else EXPANSION) for x in layers
    )
    try:
        st = os.statvfs(SCRATCH_ROOT)
    except OSError:
        return None, 0
    room = min(st.f_bavail * st.f_frsize, _mem_available())
    if estimate > room * SCRATCH_SHARE:
        return None, 0
    path = SCRATCH_ROOT / f"{SCRATCH_PREFIX}{os.getpid()}-{image_id}"
    try:
        path.mkdir(mode=0o700)
    except OSError:
        return None, 0
    # The estimate can be far off (zeros compress 1000:1): the build falls back to the disk when
    # the data outgrows this.
    return path, int(room * SCRATCH_BUDGET)


async def _both(build: asyncio.Task[dict[str, Any]], other: asyncio.Task[None] | None) -> Any:
    """Wait for the build and the downloads; the first failure cancels the other."""
    tasks: set[asyncio.Task[Any]] = {build} if other is None else {build, other}
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        if other is not None:
            await other
        return await build
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class KernelLookup(Protocol):
    """What images need of the kernel service: does a kernel ref name a kernel (NotFound)."""

    async def get(self, name: str) -> object: ...


class References(Protocol):
    """Who still uses a thing: ("image", id) -> names like "vm devbox" (empty: unused)."""

    def __call__(self, kind: str, ident: str) -> list[str]: ...


class ImageService:
    def __init__(
        self,
        paths: Paths,
        config: Config,
        store: Store,
        *,
        kernels: KernelLookup,
        references: References,
    ) -> None:
        self.paths = paths
        self.config = config
        self.store = store
        self.kernels = kernels
        self.references = references
        self.cache = BlobCache(paths.oci_cache_dir)
        self._names_in_flight: set[str] = set()
        self._cache_users = 0
        self._build_lock = asyncio.Lock()

    # --- lifecycle ---

    async def start(self) -> None:
        """Drop staging left by an interrupted pull and image dirs no record points at."""
        paths = self.paths
        paths.staging_dir.mkdir(parents=True, exist_ok=True)
        for entry in paths.staging_dir.glob("image-*"):
            await asyncio.to_thread(rmtree_no_mounts, entry)
        for entry in SCRATCH_ROOT.glob(f"{SCRATCH_PREFIX}*"):
            pid = entry.name.removeprefix(SCRATCH_PREFIX).split("-", 1)[0]
            if entry.is_dir() and entry.stat().st_uid == os.geteuid() and not _alive(pid):
                await asyncio.to_thread(rmtree_no_mounts, entry)
        # Unverified partial downloads and an interrupted prune's aside copy.
        for entry in self.cache.blobs_dir.glob(".tmp-*"):
            entry.unlink(missing_ok=True)
        for entry in self.cache.root.parent.glob(f".{self.cache.root.name}.pruning-*"):
            await asyncio.to_thread(fsutil.remove_tree_best_effort, entry, "image")
        known = {r["id"] for r in self.store.query("SELECT id FROM images")}
        if paths.images_dir.is_dir() and not paths.images_dir.is_symlink():
            for entry in paths.images_dir.iterdir():
                if entry.name not in known:
                    # A crash between the rename into place and the record (or a planted
                    # entry): nothing points at it. A symlink is unlinked, never followed.
                    log.info("removing orphaned image dir", extra={"path": str(entry)})
                    await asyncio.to_thread(fsutil.remove_entry, entry)

    async def stop(self) -> None:
        return None

    # --- records ---

    @staticmethod
    def _record(row: sqlite3.Row) -> ImageRecord:
        return ImageRecord(
            id=row["id"],
            name=row["name"],
            rootfs=Path(row["rootfs"]),
            size_bytes=row["size_bytes"],
            digest=row["digest"],
            source=row["source"],
            managed=bool(row["managed"]),
            created_at=row["created_at"],
            config=ImageConfig.model_validate_json(row["config"]),
            kernel_ref=row["kernel_ref"],
            kernel=Path(row["kernel"]) if row["kernel"] else None,
            initrd=Path(row["initrd"]) if row["initrd"] else None,
            modules_dir=Path(row["modules_dir"]) if row["modules_dir"] else None,
        )

    def _insert(self, rec: ImageRecord) -> None:
        with self.store.tx() as conn:
            conn.execute(
                "INSERT INTO images (id, name, rootfs, size_bytes, digest, source, managed,"
                " created_at, config, kernel_ref, kernel, initrd, modules_dir)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rec.id,
                    rec.name,
                    str(rec.rootfs),
                    rec.size_bytes,
                    rec.digest,
                    rec.source,
                    int(rec.managed),
                    rec.created_at,
                    rec.config.model_dump_json(),
                    rec.kernel_ref,
                    str(rec.kernel) if rec.kernel else None,
                    str(rec.initrd) if rec.initrd else None,
                    str(rec.modules_dir) if rec.modules_dir else None,
                ),
            )

    async def list(self) -> list[ImageRecord]:
        rows = self.store.query("SELECT * FROM images ORDER BY name")
        return [self._record(r) for r in rows]

    async def get(self, ref: str) -> ImageRecord:
        """Exact name, then exact id, then a unique id prefix; NotFound otherwise."""
        store = self.store
        row = store.query_one("SELECT * FROM images WHERE name = ?", (ref,))
        if row is None:
            row = store.query_one("SELECT * FROM images WHERE id = ?", (ref,))
        if row is None and re.fullmatch(r"[0-9a-f]{1,16}", ref):
            rows = store.query("SELECT * FROM images WHERE id LIKE ? || '%'", (ref,))
            if len(rows) > 1:
                raise NotFound(
                    f"image id prefix {ref!r} is ambiguous ({len(rows)} images match); "
                    "give more characters or the name"
                )
            row = rows[0] if rows else None
        if row is None:
            raise NotFound(f"image {ref!r} not found")
        return self._record(row)

    async def ensure(self, name: str, ctx: RequestContext) -> ImageRecord:
        """Resolve `name`; build the built-in offline image when it is the one missing."""
        try:
            return await self.get(name)
        except NotFound:
            if name not in debian.BUILTINS:
                raise NotFound(
                    f"image {name!r} not found; pull it under that name or use the built-in "
                    f"{debian.BUILTIN_NAME!r}"
                ) from None
        async with self._build_lock:
            with contextlib.suppress(NotFound):
                return await self.get(name)
            return await self._build_debian(name, name, None, ctx)

    # --- pull ---

    @contextlib.contextmanager
    def _reserve(self, name: str) -> Iterator[None]:
        if name in self._names_in_flight:
            raise AlreadyExists(f"image {name!r} is being created right now; wait for it")
        if self.store.query_one("SELECT id FROM images WHERE name = ?", (name,)):
            raise AlreadyExists(f"image {name!r} already exists; delete it or choose another name")
        self._names_in_flight.add(name)
        self._cache_users += 1
        try:
            yield
        finally:
            self._names_in_flight.discard(name)
            self._cache_users -= 1

    async def pull(
        self, ref_text: str, name: str | None, size_bytes: int | None, ctx: RequestContext
    ) -> ImageRecord:
        if ref_text in debian.BUILTINS:
            target = validate_name(name or ref_text)
            async with self._build_lock:
                return await self._build_debian(ref_text, target, size_bytes, ctx)
        try:
            ref = parse_reference(ref_text)
        except ReferenceError as e:
            raise InvalidInput(str(e)) from None
        target = _not_builtin(validate_name(name or ref.default_name()))
        with self._reserve(target):
            ctx.progress(stage="resolve", ref=str(ref))
            try:
                async with RegistryClient(ref, self.config.insecure_registries) as client:
                    self.cache.ensure()
                    image = await client.resolve(self.cache)
                    reuse = self.cache.has_rootfs(image.manifest_digest, size_bytes)
                    layers = [] if reuse else image.layers
                    ctx.progress(
                        stage="layers",
                        layers=[{"digest": b.digest, "size": b.size} for b in layers],
                    )
                    # Layers are applied while later ones still download (the build child waits
                    # for each verified blob to appear in the cache).
                    downloads = asyncio.create_task(
                        self._download_all(client, [image.config, *layers], ctx)
                    )
                    try:
                        rec = await self._materialize(
                            name=target,
                            layers=image.layers,
                            config_digest=image.config.digest,
                            digest=image.manifest_digest,
                            source=str(ref),
                            size_bytes=size_bytes,
                            ctx=ctx,
                            downloads=downloads,
                            expect_reuse=reuse,
                        )
                    finally:
                        downloads.cancel()
                        await asyncio.gather(downloads, return_exceptions=True)
            except ManifestNotFound as e:
                raise NotFound(str(e) + _builtin_hint(ref_text)) from None
            except (AuthRequired, RegistryError, DigestMismatch) as e:
                raise OperationFailed(str(e) + _builtin_hint(ref_text)) from None
            self.cache.tag(str(ref), image.manifest_digest, image.manifest_media_type,
                           image.manifest_size)  # fmt: skip
            return rec

    async def _download_all(
        self, client: RegistryClient, blobs: builtins.list[Descriptor], ctx: RequestContext
    ) -> None:
        sem = asyncio.Semaphore(DOWNLOAD_CONCURRENCY)

        async def one(desc: Descriptor) -> None:
            last = 0.0

            def on_progress(done: int, total: int) -> None:
                nonlocal last
                now = time.monotonic()
                if done >= total or now - last >= PROGRESS_INTERVAL:
                    last = now
                    ctx.progress(stage="download", digest=desc.digest, current=done, total=total)

            async with sem:
                await client.fetch_blob(desc, self.cache, on_progress)

        tasks = [asyncio.create_task(one(b)) for b in blobs]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _materialize(
        self,
        *,
        name: str,
        layers: builtins.list[Descriptor],
        config_digest: str,
        digest: str | None,
        source: str,
        size_bytes: int | None,
        ctx: RequestContext,
        downloads: asyncio.Task[None] | None = None,
        expect_reuse: bool = False,
    ) -> ImageRecord:
        """Layers in the cache → ext4 in staging → renamed into images/<id> → record.

        `downloads`, when given, is still fetching the config and layers into the cache."""
        image_id = _new_id()
        paths = self.paths
        stage = paths.staging_dir / f"image-{image_id}"
        out_dir = stage / "out"
        final_dir = paths.images_dir / image_id
        try:
            out_dir.mkdir(parents=True)
            spec = {
                "layers": [
                    {
                        "path": str(self.cache.path(x.digest)),
                        "name": x.digest,
                        "compression": LAYER_TYPES.get(x.media_type, "auto"),
                    }
                    for x in layers
                ],
                "tree": str(stage / "tree"),
                "out": str(out_dir / ROOTFS_NAME),
                "size_bytes": size_bytes,
                "label": "rootfs",
                "image": name,
            }
            scratch, budget = _scratch_dir(image_id, layers)
            tree = scratch / "tree" if scratch is not None else stage / "tree"
            spec["tree"] = str(tree)
            if scratch is not None:
                spec["fallback_tree"] = str(stage / "tree")
                spec["tree_budget"] = budget
            (stage / "spec.json").write_text(json.dumps(spec))
            out = out_dir / ROOTFS_NAME
            if digest is not None and self.cache.link_rootfs(digest, size_bytes, out):
                ctx.progress(stage="reuse", digest=digest)
                result: dict[str, Any] = {"size_bytes": out.stat().st_size}
                if downloads is not None:
                    await downloads
            elif expect_reuse:
                # Only the config is being downloaded: building now would wait for layers forever.
                raise OperationFailed(
                    "the cached root filesystem for this image vanished; run the pull again"
                )
            else:
                try:
                    build = asyncio.create_task(
                        self._run_build(stage / "spec.json", len(layers), ctx)
                    )
                    result = await _both(build, downloads)
                    lost: list[str] = result.get("xattr_failures") or []
                    if lost:
                        msg = f"{len(lost)} xattr(s) could not be kept, e.g. {lost[0]}"
                        log.warning(msg, extra={"image": name})
                        ctx.progress(stage="warning", message=msg)
                finally:
                    await asyncio.to_thread(fsutil.remove_tree_best_effort, tree, "image")
                    await asyncio.to_thread(fsutil.remove_tree_best_effort, stage / "tree", "image")
                    if scratch is not None:
                        await asyncio.to_thread(fsutil.remove_tree_best_effort, scratch, "image")
                if digest is not None:
                    self.cache.keep_rootfs(digest, size_bytes, out)
            config = parse_image_config(self.cache.read_bytes(config_digest))
            paths.images_dir.mkdir(parents=True, exist_ok=True)
            # On disk before the record that points at it (a power cut cannot leave a row
            # naming an ext4 whose blocks were never written).
            await asyncio.to_thread(fsutil.publish, out_dir, final_dir)
            rec = ImageRecord(
                id=image_id,
                name=name,
                rootfs=final_dir / ROOTFS_NAME,
                size_bytes=int(result["size_bytes"]),
                digest=digest,
                source=source,
                managed=True,
                created_at=_now(),
                config=config,
            )
            try:
                self._insert(rec)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"image {name!r} already exists") from None
            ctx.progress(stage="done", name=name, id=image_id)
            return rec
        except BaseException:
            await asyncio.to_thread(fsutil.remove_tree_best_effort, final_dir, "image")
            raise
        finally:
            await asyncio.to_thread(fsutil.remove_tree_best_effort, stage, "image")

    async def _run_build(self, spec: Path, n_layers: int, ctx: RequestContext) -> dict[str, Any]:
        argv = [sys.executable, "-m", "banger.images.build", str(spec)]
        if os.geteuid() != 0:
            # One fakeroot session for chown/mknod in the applier and for mkfs.ext4 -d.
            fakeroot = shutil.which("fakeroot")
            if fakeroot is None:
                raise OperationFailed(
                    "building an image as a non-root user needs fakeroot; install it "
                    "(apt-get install fakeroot) or run the daemon as root"
                )
            argv = [fakeroot, "--", *argv]
        # Guarded: the builder, fakeroot's faked and mkfs die with the daemon (`banger.proc`).
        proc = await spawn(argv)
        result: dict[str, Any] | None = None
        error: dict[str, Any] | None = None
        try:
            assert proc.stdout is not None and proc.stderr is not None

            async def read_events() -> None:
                nonlocal result, error
                assert proc.stdout is not None
                async for line in proc.stdout:
                    try:
                        ev = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    kind = ev.get("event")
                    if kind == "layer":
                        ctx.progress(
                            stage="apply", current=ev["index"], total=n_layers, digest=ev["name"]
                        )
                    elif kind == "mkfs":
                        ctx.progress(stage="mkfs", size_bytes=ev["size_bytes"])
                    elif kind == "done":
                        result = ev
                    elif kind == "error":
                        error = ev

            stderr_task = asyncio.create_task(proc.stderr.read())
            await asyncio.wait_for(read_events(), BUILD_TIMEOUT)
            await proc.wait()
            stderr = await stderr_task
        except BaseException:
            kill_tree(proc)
            await proc.wait()
            raise
        if error is not None:
            raise OperationFailed(str(error.get("message")))
        if proc.returncode != 0 or result is None:
            tail = " | ".join(stderr.decode(errors="replace").strip().splitlines()[-3:])
            raise OperationFailed(f"image build exited {proc.returncode}: {tail or '(no output)'}")
        return result

    # --- the built-in offline image ---

    async def _build_debian(
        self, builtin: str, name: str, size_bytes: int | None, ctx: RequestContext
    ) -> ImageRecord:
        recipe = debian.Recipe.builtin(builtin, self.config.debian_mirror)
        with self._reserve(validate_name(name)):
            self.cache.ensure()
            manifest_digest = self.cache.lookup(recipe.cache_ref)
            if manifest_digest is None:
                manifest_digest = await self._debootstrap(recipe, ctx)
            else:
                ctx.progress(stage="build", message=f"reusing cached {recipe.cache_ref}")
            manifest = json.loads(self.cache.read_bytes(manifest_digest))
            layers = [
                Descriptor(x["mediaType"], x["digest"], int(x["size"])) for x in manifest["layers"]
            ]
            return await self._materialize(
                name=name,
                layers=layers,
                config_digest=manifest["config"]["digest"],
                digest=manifest_digest,
                source=f"mmdebstrap:{recipe.suite}@{recipe.mirror}",
                size_bytes=size_bytes,
                ctx=ctx,
            )

    async def _debootstrap(self, recipe: debian.Recipe, ctx: RequestContext) -> str:
        """Build the rootfs tar and store it in the cache as a one-layer OCI image."""
        token = secrets.token_hex(4)
        work = self.paths.staging_dir / f"image-debian-{token}"
        work.mkdir(parents=True)
        scratch: Path | None = None
        if _mem_available() > DEBIAN_SCRATCH_NEED:
            scratch = SCRATCH_ROOT / f"{SCRATCH_PREFIX}{os.getpid()}-debian-{token}"
            try:
                scratch.mkdir(mode=0o700)
            except OSError:
                scratch = None
        try:
            tar = work / "rootfs.tar"
            ctx.progress(stage="build", message=f"mmdebstrap {recipe.suite} from {recipe.mirror}")
            await debian.build_tarball(
                recipe, tar, lambda line: ctx.progress(stage="build", message=line), scratch
            )
            size = tar.stat().st_size
            layer_digest = await asyncio.to_thread(self.cache.put_file, tar)
            config_blob = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "config": {"Env": debian.ENV, "Cmd": ["/bin/bash"], "WorkingDir": "/root"},
                    "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
                },
                sort_keys=True,
            ).encode()
            config_digest = self.cache.put_bytes(config_blob)
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": OCI_CONFIG,
                        "digest": config_digest,
                        "size": len(config_blob),
                    },
                    "layers": [{"mediaType": OCI_LAYER_TAR, "digest": layer_digest, "size": size}],
                },
                sort_keys=True,
            ).encode()
            manifest_digest = self.cache.put_bytes(manifest)
            self.cache.tag(recipe.cache_ref, manifest_digest, OCI_MANIFEST, len(manifest))
            return manifest_digest
        finally:
            await asyncio.to_thread(rmtree_no_mounts, work)
            if scratch is not None:
                await asyncio.to_thread(rmtree_no_mounts, scratch)

    # --- delete / register / promote ---

    async def delete(self, ref: str) -> ImageRecord:
        rec = await self.get(ref)
        users = self.references("image", rec.id)
        if users:
            raise Conflict(
                f"image {rec.name!r} is in use by {', '.join(users)}; delete those first"
            )
        with self.store.tx() as conn:
            conn.execute("DELETE FROM images WHERE id = ?", (rec.id,))
        if rec.managed:
            image_dir = self.paths.images_dir / rec.id
            if image_dir.exists():
                aside = self.paths.staging_dir / f"image-deleting-{rec.id}"
                os.rename(image_dir, aside)
                await asyncio.to_thread(fsutil.remove_tree_best_effort, aside, "image")
        return rec

    async def register(
        self,
        *,
        name: str,
        rootfs: str,
        kernel_ref: str | None,
        kernel: str | None,
        initrd: str | None,
        modules: str | None,
    ) -> ImageRecord:
        _not_builtin(validate_name(name))
        if kernel_ref and (kernel or initrd or modules):
            raise InvalidInput("give either a kernel ref or kernel/initrd/modules files, not both")
        if (initrd or modules) and not kernel:
            raise InvalidInput("an initrd or modules directory needs a kernel file")

        def path_of(value: str, what: str, want_dir: bool = False) -> Path:
            p = Path(value)
            if not p.is_absolute():
                raise InvalidInput(f"{what} path {value!r} must be absolute")
            p = Path(os.path.realpath(p))
            ok = p.is_dir() if want_dir else p.is_file()
            if not ok:
                kind = "directory" if want_dir else "file"
                raise InvalidInput(f"{what} {value!r} is not an existing {kind}")
            return p

        rootfs_path = path_of(rootfs, "rootfs")
        if not is_ext4(rootfs_path):
            raise InvalidInput(f"rootfs {rootfs!r} is not an ext4 filesystem image")
        kernel_path = path_of(kernel, "kernel") if kernel else None
        initrd_path = path_of(initrd, "initrd") if initrd else None
        modules_path = path_of(modules, "modules", want_dir=True) if modules else None
        if kernel_ref:
            await self.kernels.get(kernel_ref)
        with self._reserve(name):
            rec = ImageRecord(
                id=_new_id(),
                name=name,
                rootfs=rootfs_path,
                size_bytes=rootfs_path.stat().st_size,
                digest=None,
                source=f"register:{rootfs_path}",
                managed=False,
                created_at=_now(),
                kernel_ref=kernel_ref,
                kernel=kernel_path,
                initrd=initrd_path,
                modules_dir=modules_path,
            )
            self._insert(rec)
        return rec

    async def promote(self, ref: str, ctx: RequestContext) -> ImageRecord:
        rec = await self.get(ref)
        if rec.managed:
            raise Conflict(f"image {rec.name!r} is already managed by banger")
        for p in (rec.rootfs, rec.kernel, rec.initrd, rec.modules_dir):
            if p is not None and not p.exists():
                raise OperationFailed(f"image {rec.name!r}: {p} no longer exists; cannot promote")
        paths = self.paths
        stage = paths.staging_dir / f"image-promote-{rec.id}"
        final_dir = paths.images_dir / rec.id
        try:
            stage.mkdir(parents=True)
            ctx.progress(stage="copy", what="rootfs", total=rec.rootfs.stat().st_size)
            await run(
                ["cp", "--sparse=always", "--", str(rec.rootfs), str(stage / ROOTFS_NAME)],
                timeout=BUILD_TIMEOUT,
                what="copying the rootfs",
            )
            new: dict[str, Path | None] = {"kernel": None, "initrd": None, "modules_dir": None}
            for key, src, dest in (
                ("kernel", rec.kernel, "kernel"),
                ("initrd", rec.initrd, "initrd"),
                ("modules_dir", rec.modules_dir, "modules"),
            ):
                if src is not None:
                    await run(
                        ["cp", "-a", "--", str(src), str(stage / dest)], what=f"copying {key}"
                    )
                    new[key] = final_dir / dest
            await asyncio.to_thread(fsutil.publish, stage, final_dir)
            try:
                with self.store.tx() as conn:
                    conn.execute(
                        "UPDATE images SET rootfs = ?, managed = 1, kernel = ?, initrd = ?,"
                        " modules_dir = ? WHERE id = ?",
                        (
                            str(final_dir / ROOTFS_NAME),
                            *(str(v) if v else None for v in new.values()),
                            rec.id,
                        ),
                    )
            except BaseException:
                await asyncio.to_thread(fsutil.remove_tree_best_effort, final_dir, "image")
                raise
        finally:
            await asyncio.to_thread(fsutil.remove_tree_best_effort, stage, "image")
        return await self.get(rec.id)

    # --- cache ---

    async def prune(self, dry_run: bool) -> dict[str, Any]:
        if self._cache_users and not dry_run:
            raise Conflict("an image pull or build is using the cache; retry when it finishes")
        if dry_run:
            tally = await asyncio.to_thread(self.cache.tally)
        else:
            tally = await asyncio.to_thread(self.cache.prune)
        return {
            "dry_run": dry_run,
            "bytes": tally.bytes,
            "blobs": tally.blobs,
            "dir": str(self.cache.root),
        }

    # --- kernels attached at pull time (images/kernel_attach.py) ---

    def check_name_free(self, name: str) -> None:
        """AlreadyExists when `image pull --name NAME` would be refused."""
        with self._reserve(name):
            pass

    async def set_kernel_ref(self, image_id: str, kernel_ref: str) -> ImageRecord:
        with self.store.tx() as c:
            c.execute("UPDATE images SET kernel_ref = ? WHERE id = ?", (kernel_ref, image_id))
        return await self.get(image_id)

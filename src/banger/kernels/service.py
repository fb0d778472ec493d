"""KernelService: the local kernel store, catalog pulls and imports.

The manifests under `<state>/kernels/` are the source of truth (no database table): a kernel
exists exactly when its directory with a valid manifest does. Every change is staged under the
staging dir and renamed into place while holding the name's lock.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from banger import fsutil
from banger.config import Config
from banger.errors import AlreadyExists, Conflict, InvalidInput, NotFound
from banger.kernels import catalog as catalog_mod
from banger.kernels import importer, localstore, pull
from banger.kernels.model import MANIFEST, CatalogItem, KernelRecord, validate_name
from banger.kernels.vmlinux import KernelFormatError
from banger.paths import Paths
from banger.request import RequestContext

log = logging.getLogger("banger.kernels")

T = TypeVar("T")


async def _blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run `fn` on a thread; if the request is cancelled, let it finish before cleanup runs."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args, **kwargs))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            await task
        except BaseException as e:  # the request is cancelled anyway; its cleanup runs next
            log.warning("cancelled kernel work failed while finishing", extra={"error": repr(e)})
        raise


class References(Protocol):
    """Who still uses a thing: ("kernel", name) -> names like "vm devbox" (empty: unused)."""

    def __call__(self, kind: str, ident: str) -> list[str]: ...


class KernelService:
    def __init__(self, paths: Paths, config: Config, *, references: References) -> None:
        self.paths = paths
        self.config = config
        self.references = references
        self._locks: dict[str, asyncio.Lock] = {}

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.paths.kernels_dir

    async def start(self) -> None:
        """Remove staging leftovers of interrupted pulls/imports (a crash mid-way)."""
        staging = self.paths.staging_dir
        if staging.is_dir():
            for p in staging.glob("kernel-*"):
                log.info("removing interrupted kernel staging", extra={"path": str(p)})
                if p.is_dir() and not p.is_symlink():
                    fsutil.remove_tree_best_effort(p, "kernel staging")
                else:
                    p.unlink(missing_ok=True)

    async def stop(self) -> None:
        return None

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # --- queries ---------------------------------------------------------------------------

    def _read(self, name: str) -> KernelRecord | None:
        kdir = self.root / name
        if not (kdir / MANIFEST).is_file():
            return None
        try:
            return localstore.read_record(kdir)
        except localstore.ManifestError as e:
            log.warning("unreadable kernel manifest", extra={"error": str(e)})
            return None

    async def list(self) -> list[KernelRecord]:
        def scan() -> list[KernelRecord]:
            if not self.root.is_dir():
                return []
            out = []
            for p in sorted(self.root.iterdir()):
                rec = self._read(p.name) if p.is_dir() else None
                if rec is not None:
                    out.append(rec)
            return out

        return await asyncio.to_thread(scan)

    async def get(self, name: str) -> KernelRecord:
        validate_name(name)
        rec = await asyncio.to_thread(self._read, name)
        if rec is None:
            raise NotFound(f"kernel {name!r} not found")
        return rec

    def _published(self, name: str) -> KernelRecord:
        """The record just renamed into place, read without an await: the kernel exists from
        the rename on, so a cancel (Ctrl-C) must not land after it and report the work undone."""
        rec = self._read(name)
        if rec is None:
            raise NotFound(f"kernel {name!r} vanished right after it was installed")
        return rec

    async def catalog(self) -> builtins.list[CatalogItem]:
        entries = await catalog_mod.load(self.config.kernel_catalog)
        local = {r.name for r in await self.list()}
        return [
            CatalogItem(
                **e.model_dump(),
                state="pulled" if e.name in local else "available",
                origin=origin,
            )
            for e, origin in entries
        ]

    # --- changes ---------------------------------------------------------------------------

    def _check_free(self, name: str, force: bool) -> None:
        if (self.root / name).exists() and not force:
            raise AlreadyExists(
                f"kernel {name!r} already exists; delete it first or replace it (force)"
            )

    async def pull(self, name: str, ctx: RequestContext, *, force: bool = False) -> dict[str, Any]:
        validate_name(name)
        entry = await catalog_mod.lookup(self.config.kernel_catalog, name)
        if entry is None:
            raise NotFound(
                f"kernel {name!r} is not in the catalog (set kernel_catalog in the config to "
                "add a catalog)"
            )
        async with self._lock(name):
            self._check_free(name, force)
            expected_size = entry.size_bytes
            staged = localstore.staging_dir(self.paths.staging_dir, name)
            try:
                tarball = staged.parent / f"{staged.name}.tar"
                try:

                    def report(got: int, total: int | None) -> None:
                        ctx.progress(
                            stage="download",
                            current=got,
                            total=total or expected_size or None,
                            unit="bytes",
                        )

                    ctx.progress(stage="download", current=0, total=entry.size_bytes or None)
                    await pull.download(entry.tarball_url, tarball, entry.tarball_sha256, report)
                    ctx.progress(stage="extract")
                    try:
                        await _blocking(pull.extract, tarball, staged)
                    except (OSError, EOFError, ValueError) as e:
                        # tarfile errors subclass these; a verified but broken tarball lands here.
                        raise pull.UnsafeTarball(
                            f"kernel tarball {entry.tarball_url} cannot be extracted: {e}"
                        ) from None
                finally:
                    tarball.unlink(missing_ok=True)
                (staged / MANIFEST).unlink(missing_ok=True)
                initrd_given = (staged / localstore.INITRD).is_file()
                ctx.progress(stage="prepare")
                try:
                    prep = await _blocking(
                        importer.finish_staged, staged, initrd_given=initrd_given
                    )
                except KernelFormatError as e:
                    raise InvalidInput(f"kernel tarball {entry.tarball_url}: {e}") from None
                await _blocking(
                    localstore.write_manifest,
                    staged,
                    name=name,
                    distro=entry.distro,
                    arch=entry.arch,
                    kernel_version=prep.kernel_version or entry.kernel_version,
                    fmt=prep.fmt,
                    source=f"pull:{entry.tarball_url}",
                    initrd_generated=prep.initrd_generated,
                )
                localstore.publish(staged, self.root, name, replace=force)
            finally:
                fsutil.remove_tree_best_effort(staged, "kernel staging")
        log.info("kernel pulled", extra={"kernel": name, "url": entry.tarball_url})
        return {"kernel": self._published(name), "warnings": prep.warnings}

    async def import_(
        self,
        name: str,
        ctx: RequestContext,
        *,
        kernel: Path | None = None,
        initrd: Path | None = None,
        modules: Path | None = None,
        from_host: bool = False,
        host_version: str | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        validate_name(name)
        if from_host:
            if kernel is not None or initrd is not None or modules is not None:
                raise InvalidInput(
                    "importing the host's kernel takes its kernel, modules and initramfs "
                    "itself; do not give kernel, initrd or modules files too"
                )
            version, kernel, modules = importer.host_kernel(host_version)
            source = f"host:{kernel}"
            distro = importer.host_distro()
        else:
            if host_version is not None:
                raise InvalidInput(
                    "a host kernel version applies only to importing the host's kernel"
                )
            if kernel is None:
                raise InvalidInput(
                    "give a kernel file (optionally an initrd and a modules directory), "
                    "or import the host's kernel"
                )
            source = f"import:{kernel}"
            distro = ""
        async with self._lock(name):
            self._check_free(name, force)
            staged = localstore.staging_dir(self.paths.staging_dir, name)
            try:
                ctx.progress(stage="import", detail=str(kernel))
                prep = await _blocking(
                    importer.import_files, staged, kernel=kernel, initrd=initrd, modules=modules
                )
                await _blocking(
                    localstore.write_manifest,
                    staged,
                    name=name,
                    distro=distro,
                    arch="x86_64",
                    kernel_version=prep.kernel_version,
                    fmt=prep.fmt,
                    source=source,
                    initrd_generated=prep.initrd_generated,
                )
                localstore.publish(staged, self.root, name, replace=force)
            finally:
                fsutil.remove_tree_best_effort(staged, "kernel staging")
        log.info("kernel imported", extra={"kernel": name, "source": source})
        return {"kernel": self._published(name), "warnings": prep.warnings}

    async def delete(self, name: str) -> KernelRecord:
        async with self._lock(name):
            rec = await self.get(name)
            users = self.references("kernel", name)
            if users:
                raise Conflict(
                    f"kernel {name!r} is in use by {', '.join(users)}; delete those first"
                )
            trash = localstore.staging_dir(self.paths.staging_dir, name)
            # Rename first so the kernel disappears at once; remove the files afterwards.
            rec.dir.rename(trash / "old")
            await _blocking(fsutil.remove_tree_best_effort, trash, "deleted kernel")
        log.info("kernel deleted", extra={"kernel": name})
        return rec

    async def ensure(self, name: str, ctx: RequestContext) -> KernelRecord:
        """The kernel `name`; the default kernel is imported from the host on first use."""
        with contextlib.suppress(NotFound):
            return await self.get(name)
        if name != self.config.default_kernel:
            raise NotFound(f"kernel {name!r} not found; pull it from the catalog or import one")
        # Another request may be importing it right now: wait for it rather than race.
        async with self._lock(name):
            with contextlib.suppress(NotFound):
                return await self.get(name)
        ctx.progress(stage="kernel", detail=f"importing the host kernel as {name}")
        with contextlib.suppress(AlreadyExists):
            await self.import_(name, ctx, from_host=True)
        return await self.get(name)

"""Warm creates: the first boot of an image + kernel + init + sizing combination leaves a READY
template (a live checkpoint of that VM taken right after it answered SSH); later creates of the
same combination restore it under their own identity instead of booting (docs/snapshots.md,
"Warm creates").

A template lives under `<state>/templates/<key>-<random>/`: the driver's saved machine (RAM and
device state, frozen disk layers) plus the seed disk the guest had mounted. The first VM's active
disks are layers over those frozen ones, and so are every warm-created VM's: deleting a template
keeps the files some VM still reads through (vms/layers.py remains), swept once none does.

Which combination a create has is `combination()`: the image's and kernel's *versions* are the
identity of their files on disk (size, mtime, inode), so a re-pulled image or a re-imported
kernel never matches an older template; such a template is deleted when a lookup meets it.

A VM made from a template is shaped like a fork's child: `provision_child` fills its dir, and
it takes `fork.child_identity` at the wake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

from banger.guest.ssh import generate_host_key
from banger.paths import Paths
from banger.vmm.base import Capability, Driver, SavedMachine, VMHandle, VMSpec
from banger.vms import layers
from banger.vms.fork import disk_placeholders
from banger.vms.ports import Image, Kernel
from banger.vms.saved import Combination, TemplateRecord, TemplateRepository, size_on_disk
from banger.vms.spec import InitMode, Sizing

log = logging.getLogger("banger.vms")

SEED = "seed.ext4"
# How long a create waits for a template's RAM to be moved into its shared file.
SHARE_WAIT = 120.0


def file_version(*files: Path | None) -> str:
    """What changes when a file is replaced or rewritten: (size, mtime_ns, inode) of each."""
    parts = []
    for path in files:
        if path is None:
            parts.append("-")
            continue
        try:
            st = os.stat(path)
        except OSError:
            parts.append(f"{path.name}:missing")
            continue
        parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}")
    return "/".join(parts)


def combination(
    image: Image,
    kernel: Kernel,
    init_mode: InitMode,
    sizing: Sizing,
    driver: Driver,
    network: str,
) -> Combination:
    """The combination a create boots (what must match for a template to be its machine)."""
    return Combination(
        image_id=image.id,
        image_version=file_version(image.rootfs),
        kernel=kernel.name,
        kernel_version=file_version(kernel.boot_image, kernel.initrd, kernel.vmlinux),
        init_mode=init_mode,
        vcpus=sizing.vcpus,
        memory_mib=sizing.memory_mib,
        disk_size_bytes=sizing.disk_size_bytes,
        # The driver and the network kind decide the device set the saved state fits.
        driver=f"{driver.name}/{network}",
    )


def can_warm(driver: Driver) -> bool:
    """Templates need a live checkpoint and restores under a new identity."""
    caps = driver.capabilities
    return Capability.SNAPSHOT in caps and Capability.FORK in caps


class Templates:
    """The templates on disk and on record: make, find, delete (callers hold what locks apply)."""

    def __init__(self, repo: TemplateRepository, paths: Paths) -> None:
        self.repo, self.paths = repo, paths
        # Templates whose RAM is being moved into a shared file: their state file is replaced
        # under a restore's feet, so a create waits for that (seconds) before using one.
        self.sharing: dict[str, asyncio.Event] = {}

    async def find(self, combo: Combination) -> TemplateRecord | None:
        """The ready template of `combo`, None when there is none (or its files are gone)."""
        busy = self.sharing.get(combo.key())
        if busy is not None:
            try:
                await asyncio.wait_for(busy.wait(), SHARE_WAIT)
            except TimeoutError:
                return None  # boot cold rather than wait longer
        rec = self.repo.ready(combo)
        if rec is None or rec.saved is None:
            return None
        if not self.contained(rec):
            log.warning("template names files elsewhere: dropped", extra={"template": rec.key})
            self.repo.delete(rec.key)  # its files are not followed
            return None
        if not (rec.dir / SEED).is_file():
            log.warning("template lost its files; removing it", extra={"template": rec.key})
            await self.delete(rec)
            return None
        return rec

    async def invalidate_stale(self, combo: Combination) -> None:
        """Delete the image's templates made from other versions of its image or kernel."""
        for rec in self.repo.of_image(combo.image_id):
            if rec.state != "ready" or rec.key == combo.key():
                continue
            old = parse_combination(rec.combination)
            if not old:
                continue
            same_kernel = old.get("kernel") == combo.kernel
            if old.get("image_version") != combo.image_version or (
                same_kernel and old.get("kernel_version") != combo.kernel_version
            ):
                log.info("removing an outdated template", extra={"template": rec.key})
                await self.delete(rec)

    async def make(
        self,
        driver: Driver,
        handle: VMHandle,
        spec: VMSpec,
        vdir: Path,
        combo: Combination,
        hold: Callable[[str], Awaitable[None]] | None = None,
        before_ready: Callable[[], Awaitable[None]] | None = None,
    ) -> TemplateRecord | None:
        """Checkpoint the running VM as `combo`'s template (the caller holds the VM's lock);
        `before_ready` runs once the files are there, before the row is ready.
        None when another create claimed it first. On failure the pending row and the files
        go (except layers the VM's own disks now read through: kept as remains) and the error
        is raised; the VM runs on untouched."""
        # A new dir each time: a removed template of the same key may still have remains there.
        dest = self.paths.templates_dir / f"{combo.key()}-{secrets.token_hex(4)}"
        rec = self.repo.begin(combo, dest)
        if rec is None:
            return None  # made already, or being made by a concurrent create
        try:
            saved = await driver.save(handle, spec, dest, keep_running=True)
            # The guest has this seed mounted: a restore needs the very same disk.
            await asyncio.to_thread(shutil.copyfile, vdir / SEED, dest / f".{SEED}.tmp")
            os.replace(dest / f".{SEED}.tmp", dest / SEED)
            if hold is not None:
                await hold("template")  # test-only: a crash with the files there, row pending
            size = await asyncio.to_thread(size_on_disk, dest)
            if before_ready is not None:
                await before_ready()  # fails: the template goes, as any failed save's
            self.repo.finish(rec.key, saved, size)
        except BaseException:
            await asyncio.shield(self._discard(rec))
            raise
        log.info(
            "saved a warm-create template",
            extra={"template": rec.key, "paused_ms": round(saved.paused_seconds * 1000)},
        )
        return self.repo.ready(combo)

    async def share_memory(self, driver: Driver, spec: VMSpec, rec: TemplateRecord) -> None:
        """Move the template's RAM into a file later restores map copy-on-write (drivers that
        can; the others restore from the stream, just slower)."""
        done = self.sharing.setdefault(rec.key, asyncio.Event())
        try:
            share = getattr(driver, "share_memory", None)
            if share is None or rec.saved is None:
                return
            saved: SavedMachine = await share(spec, rec.saved)
            self.repo.finish(rec.key, saved, await asyncio.to_thread(size_on_disk, rec.dir))
        finally:
            self.sharing.pop(rec.key, None)
            done.set()

    def contained(self, rec: TemplateRecord) -> bool:
        """A record names only files in its own dir under templates/ (never followed else)."""
        home = self.paths.templates_dir.resolve()
        own = rec.dir.resolve()
        if own.parent != home:
            return False
        if rec.saved is None:
            return True
        named = [rec.saved.dir, *rec.saved.disks.values()]
        return all(p.resolve().is_relative_to(own) for p in named)

    async def delete(self, rec: TemplateRecord) -> None:
        """Row first (no create finds it any more), then the files nothing reads through."""
        self.repo.delete(rec.key)
        if not self.contained(rec):
            return  # a record naming files elsewhere: only the row goes
        await layers.remove_keeping_backers(rec.dir, self.paths)
        await layers.sweep(self.paths)

    async def _discard(self, rec: TemplateRecord) -> None:
        self.repo.delete(rec.key)
        if not self.contained(rec):
            return
        try:
            await layers.remove_keeping_backers(rec.dir, self.paths)
        except Exception as e:
            log.warning("removing a failed template failed: %s", e, extra={"path": str(rec.dir)})

    async def recover(self) -> None:
        """Daemon start: templates a crash cut short go (their layers the first VM's disks read
        through stay as remains); a dir under templates/ no row owns goes too."""
        for rec in list(self.repo.all()):
            if rec.state == "pending":
                log.warning("removing an interrupted template", extra={"template": rec.key})
                await self._discard(rec)
        owned = {rec.dir.name for rec in self.repo.all()}
        root = self.paths.templates_dir
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if d.name not in owned and not layers.is_remains(d):
                    await layers.remove_keeping_backers(d, self.paths)
        await layers.sweep(self.paths)


def parse_combination(text: str) -> dict[str, object]:
    """A template's recorded combination (`Combination.describe`); {} when unreadable."""
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


# --- the child: a new VM made from a template (the same shape as a fork child) -----------------


def provision_child(staged: Path, template: TemplateRecord) -> tuple[str, str]:
    """Fill a new VM's (staged) dir to wake from `template`: its own host key and console log,
    a copy of the template's seed (the guest has that one mounted), and placeholders naming
    the disk formats (the restore puts the VM's own layers at those paths, over the template's
    frozen ones). Returns the host key (private, public)."""
    assert template.saved is not None
    priv, pub = generate_host_key(staged)
    (staged / "console.log").touch()
    shutil.copyfile(template.dir / SEED, staged / SEED)
    disk_placeholders(staged, template.saved)
    return priv, pub

"""Make a catalog tarball from a local kernel, and the catalog entry that describes it.

    python -m banger.kernels.publish <state>/kernels/NAME OUT_DIR [--catalog OUT_DIR/catalog.json]
        [--url-base https://host/path/] [--compression zst|gz] [--modules guest|all|none]
        [--description TEXT]

The tarball is reproducible (sorted members, mtime 0, root-owned), so anyone can rebuild it from
the same kernel files and check the published sha256. A generated initramfs is left out: `kernel
pull` regenerates it with the installed banger, so its boot contract always matches.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import shutil
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, Literal

from banger.kernels import localstore
from banger.kernels.modules import GUEST_MODULES, resolve_modules

Compression = Literal["zst", "gz"]
ModulesMode = Literal["guest", "all", "none"]

# Metadata a trimmed modules tree keeps (modules.dep is rewritten for the subset).
_META = ("modules.builtin", "modules.builtin.modinfo", "modules.order")


def _members(kdir: Path, modules: ModulesMode) -> Iterator[tuple[str, bytes | Path]]:
    rec = localstore.read_record(kdir)
    yield rec.kernel.name, rec.kernel
    if rec.initrd is not None and not rec.initrd_generated:
        yield localstore.INITRD, rec.initrd
    mdir = rec.modules_dir
    if mdir is None or modules == "none":
        return
    if modules == "all":
        for root, dirs, files in os.walk(mdir):
            dirs.sort()
            for f in sorted(files):
                p = Path(root) / f
                if p.is_file() and not p.is_symlink():
                    yield f"{localstore.MODULES}/{p.relative_to(mdir)}", p
        return
    kos = resolve_modules(mdir, GUEST_MODULES)
    rels = {str(p.relative_to(mdir)) for p in kos}
    dep_lines = [
        line
        for line in (mdir / "modules.dep").read_text().splitlines()
        if line.partition(":")[0].strip() in rels
    ]
    yield f"{localstore.MODULES}/modules.dep", ("\n".join(dep_lines) + "\n").encode()
    for meta in _META:
        if (mdir / meta).is_file():
            yield f"{localstore.MODULES}/{meta}", mdir / meta
    for rel in sorted(rels):
        yield f"{localstore.MODULES}/{rel}", mdir / rel


def _add(tar: tarfile.TarFile, name: str, data: bytes | Path, dirs: set[str]) -> None:
    parts = name.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        d = "/".join(parts[:i])
        if d not in dirs:
            dirs.add(d)
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            tar.addfile(info)
    info = tarfile.TarInfo(name)
    info.mode = 0o644
    if isinstance(data, Path):
        info.size = data.stat().st_size
        with data.open("rb") as f:
            tar.addfile(info, f)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def make_tarball(
    kdir: Path, out: Path, *, compression: Compression = "zst", modules: ModulesMode = "guest"
) -> tuple[str, int]:
    """Write the tarball for the kernel at `kdir`; returns (sha256, size)."""
    plain = out.with_name(out.name + ".tar.tmp")
    tmp = out.with_name(out.name + ".tmp")
    try:
        with tarfile.open(plain, mode="w", format=tarfile.GNU_FORMAT) as tar:
            dirs: set[str] = set()
            for name, data in _members(kdir, modules):
                _add(tar, name, data, dirs)
        with plain.open("rb") as src, tmp.open("wb") as dst:
            if compression == "zst":
                import zstandard

                zstandard.ZstdCompressor(level=19, threads=-1).copy_stream(src, dst)
            else:
                with gzip.GzipFile(
                    filename="", fileobj=dst, mode="wb", compresslevel=9, mtime=0
                ) as gz:
                    shutil.copyfileobj(src, gz, 1 << 20)
        os.replace(tmp, out)
    finally:
        plain.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return localstore.sha256_file(out), out.stat().st_size


def catalog_entry(
    kdir: Path, tarball_url: str, sha256: str, size: int, description: str = ""
) -> dict[str, Any]:
    rec = localstore.read_record(kdir)
    return {
        "name": rec.name,
        "distro": rec.distro,
        "arch": rec.arch,
        "kernel_version": rec.kernel_version,
        "tarball_url": tarball_url,
        "tarball_sha256": sha256,
        "size_bytes": size,
        "description": description,
    }


def upsert(catalog_file: Path, entry: dict[str, Any]) -> None:
    """Add or replace `entry` in a catalog file (created if missing), entries sorted by name."""
    data: dict[str, Any] = {"version": 1, "entries": []}
    if catalog_file.exists():
        data = json.loads(catalog_file.read_text())
    entries = [e for e in data.get("entries", []) if e.get("name") != entry["name"]]
    entries.append(entry)
    data["entries"] = sorted(entries, key=lambda e: str(e["name"]))
    tmp = catalog_file.with_name(catalog_file.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, catalog_file)


def main(argv: list[str] | None = None, stdout: IO[str] = sys.stdout) -> int:
    ap = argparse.ArgumentParser(prog="python -m banger.kernels.publish", description=__doc__)
    ap.add_argument("kernel_dir", type=Path)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--catalog", type=Path)
    ap.add_argument("--url-base", default="")
    ap.add_argument("--compression", choices=("zst", "gz"), default="zst")
    ap.add_argument("--modules", choices=("guest", "all", "none"), default="guest")
    ap.add_argument("--description", default="")
    a = ap.parse_args(argv)
    rec = localstore.read_record(a.kernel_dir)
    a.out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{rec.name}-{rec.arch}.tar.{a.compression}"
    sha, size = make_tarball(
        a.kernel_dir, a.out_dir / name, compression=a.compression, modules=a.modules
    )
    entry = catalog_entry(a.kernel_dir, a.url_base + name, sha, size, a.description)
    if a.catalog:
        upsert(a.catalog, entry)
    print(json.dumps(entry, indent=2), file=stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Catalog tarballs are reproducible and their catalog entries match the file."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import zstandard

from banger.kernels import publish
from tests.kernels.conftest import needs_host_kernel

pytestmark = needs_host_kernel


def test_tarball_is_reproducible_and_entry_matches(host_kernel_dir: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    out = io.StringIO()
    args = [str(host_kernel_dir), str(tmp_path / "a"), "--catalog", str(catalog)]
    assert publish.main([*args, "--url-base", "https://k.example/"], stdout=out) == 0
    entry = json.loads(out.getvalue())
    tarball = tmp_path / "a" / "debian-host-x86_64.tar.zst"
    assert entry["tarball_url"] == "https://k.example/debian-host-x86_64.tar.zst"
    assert entry["tarball_sha256"] == hashlib.sha256(tarball.read_bytes()).hexdigest()
    assert entry["size_bytes"] == tarball.stat().st_size
    assert json.loads(catalog.read_text()) == {"version": 1, "entries": [entry]}
    # Same kernel, second build: byte-identical, so anyone can check a published sha256.
    sha2, _ = publish.make_tarball(host_kernel_dir, tmp_path / "again.tar.zst")
    assert sha2 == entry["tarball_sha256"]

    raw = zstandard.ZstdDecompressor().stream_reader(tarball.open("rb")).read()
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert "vmlinuz" in names and "modules/modules.dep" in names
    assert "initrd.img" not in names  # generated: the puller regenerates it
    assert "modules/kernel/fs/ext4/ext4.ko" in names
    assert all(m.uid == 0 and m.mtime == 0 for m in members)
    kos = [n for n in names if n.endswith(".ko")]
    assert len(kos) == 19  # GUEST_MODULES on Debian 6.1: none built in

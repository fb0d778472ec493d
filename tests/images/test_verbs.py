"""register / promote / list / show / delete / cache prune through the real CLI and daemon."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from banger.config import Config
from banger.daemon.app import Daemon
from banger.errors import Conflict, NotFound
from banger.request import RequestContext
from tests.conftest import BangerEnv
from tests.images.ocifix import Entry, Registry, cat


def _ext4(path: Path, size_mib: int = 64) -> Path:
    src = path.parent / (path.name + ".src")
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("registered\n")
    with path.open("wb") as f:
        f.truncate(size_mib << 20)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-d", str(src), str(path)], check=True)
    shutil.rmtree(src)
    return path


def _json(env: BangerEnv, *args: str) -> Any:
    return json.loads(env.banger(*args, "--json", check=True).stdout)


def test_register_promote_delete(daemon: BangerEnv, tmp_path: Path) -> None:
    rootfs = _ext4(tmp_path / "mine.ext4")
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"kernel")
    mods = tmp_path / "modules"
    (mods / "6.1").mkdir(parents=True)
    (mods / "6.1" / "modules.dep").write_text("")

    # Relative paths are made absolute by the CLI.
    p = subprocess.run(
        [*daemon_cli(), "image", "register", "--name", "mine", "--rootfs", "mine.ext4",
         "--kernel", "vmlinuz", "--modules", "modules"],
        cwd=tmp_path, env=daemon.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    rec = _json(daemon, "image", "show", "mine")
    assert rec["managed"] is False and rec["rootfs"] == str(rootfs)
    assert rec["kernel"] == str(kernel) and rec["modules_dir"] == str(mods)
    assert rec["source"] == f"register:{rootfs}" and rec["size_bytes"] == 64 << 20

    # Bad input: clear errors, nothing recorded.
    bad = tmp_path / "notext4"
    bad.write_bytes(b"\0" * 4096)
    for args, expect in [
        (["--name", "x1", "--rootfs", str(bad)], "is not an ext4"),
        (["--name", "x2", "--rootfs", str(tmp_path / "missing.ext4")], "is not an existing file"),
        (["--name", "x3", "--rootfs", str(rootfs), "--kernel-ref", "k", "--kernel", str(kernel)],
         "not both"),
        (["--name", "x4", "--rootfs", str(rootfs), "--initrd", str(kernel)],
         "hint: --initrd and --modules need --kernel"),
        (["--name", "mine", "--rootfs", str(rootfs)], "already exists"),
        (["--name", "Bad Name", "--rootfs", str(rootfs)], "image name"),
        (["--name", "debian-bookworm-systemd", "--rootfs", str(rootfs)], "reserved for banger"),
    ]:  # fmt: skip
        p = daemon.banger("image", "register", *args)
        assert p.returncode == 1 and expect in p.stderr, (args, p.stderr)
    assert [i["name"] for i in _json(daemon, "image", "list")] == ["mine"]

    out = daemon.banger("image", "promote", "mine", check=True).stdout
    assert "promoted mine" in out
    promoted = _json(daemon, "image", "show", rec["id"])
    new_root = Path(promoted["rootfs"])
    assert promoted["managed"] is True and new_root.parent == daemon.paths.images_dir / rec["id"]
    assert new_root.stat().st_size == 64 << 20
    # Sparse-aware copy: allocation stays far below the apparent size.
    assert new_root.stat().st_blocks * 512 < 32 << 20
    assert cat(new_root, "/etc/hostname") == b"registered\n"
    assert Path(promoted["kernel"]).read_bytes() == b"kernel"
    assert (Path(promoted["modules_dir"]) / "6.1" / "modules.dep").exists()
    assert rootfs.exists()  # the user's files stay
    p = daemon.banger("image", "promote", "mine")
    assert p.returncode == 1 and "already managed" in p.stderr

    assert "deleted mine" in daemon.banger("image", "delete", "mine", check=True).stdout
    assert not new_root.parent.exists() and rootfs.exists()
    p = daemon.banger("image", "show", "mine")
    assert p.returncode == 1 and "not found" in p.stderr

    # Deleting a registered (unmanaged) image never touches the user's file.
    daemon.banger("image", "register", "--name", "again", "--rootfs", str(rootfs), check=True)
    daemon.banger("image", "delete", "again", check=True)
    assert rootfs.exists()


def daemon_cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "banger.cli.main"]


@pytest.mark.slow
def test_cache_prune(daemon: BangerEnv, registry: Registry) -> None:
    # A missing cache counts as zero.
    out = daemon.banger("image", "cache", "prune", "--dry-run", check=True).stdout.strip()
    assert re.fullmatch(r"would free 0 B across 0 blob\(s\) in \S+/oci", out), out

    pushed = registry.push_image(
        "fixtures/prune", "v1", [([Entry("f", data=b"x" * 10000)], "gzip")]
    )
    rec = json.loads(
        daemon.banger(
            "image", "pull", f"{registry.host}/fixtures/prune:v1", "--json", check=True
        ).stdout
    )
    oci = daemon.paths.oci_cache_dir
    blobs = list((oci / "blobs/sha256").iterdir())
    total = sum(p.stat().st_size for p in blobs)
    assert len(blobs) == 3  # manifest, config, layer
    assert total == pushed["size"] + pushed["config"]["size"] + pushed["layers"][0]["size"]

    out = daemon.banger("image", "cache", "prune", "--dry-run", check=True).stdout.strip()
    assert out == f"would free {_fmt(total)} across 3 blob(s) in {oci}"
    assert len(list((oci / "blobs/sha256").iterdir())) == 3
    out = daemon.banger("image", "cache", "prune", check=True).stdout.strip()
    assert out == f"freed {_fmt(total)} across 3 blob(s) in {oci}"
    assert list((oci / "blobs/sha256").iterdir()) == []
    assert (oci / "oci-layout").exists()
    assert not [p for p in oci.parent.iterdir() if "pruning" in p.name]
    # Pulled images do not depend on the cache.
    assert cat(Path(rec["rootfs"]), "/f") == b"x" * 10000

    # The cache's link to a built rootfs counts once no image shares it any more.
    daemon.banger("image", "pull", f"{registry.host}/fixtures/prune:v1", "--name", "p2", check=True)
    daemon.banger("image", "delete", "p2", check=True)
    daemon.banger("image", "delete", rec["name"], check=True)
    kept = list((oci / "banger-rootfs").iterdir())
    assert len(kept) == 1 and kept[0].stat().st_nlink == 1
    allocated = kept[0].stat().st_blocks * 512
    out = daemon.banger("image", "cache", "prune", check=True).stdout.strip()
    assert out == f"freed {_fmt(total + allocated)} across 4 blob(s) in {oci}"


def _fmt(n: int) -> str:
    from banger.units import format_bytes

    return format_bytes(n)


async def test_resolve_and_delete_conflict(banger_env: BangerEnv, tmp_path: Path) -> None:
    d = Daemon(banger_env.paths, Config())
    d.paths.ensure()
    await d.start_services()
    try:
        rootfs = _ext4(tmp_path / "r.ext4", 16)
        a = await d.images.register(
            name="img-a",
            rootfs=str(rootfs),
            kernel_ref=None,
            kernel=None,
            initrd=None,
            modules=None,
        )
        b = await d.images.register(
            name="img-b",
            rootfs=str(rootfs),
            kernel_ref=None,
            kernel=None,
            initrd=None,
            modules=None,
        )
        assert (await d.images.get("img-a")).id == a.id
        assert (await d.images.get(b.id)).name == "img-b"
        # Shortest unique prefix of a's id (names are not hex, so no name can shadow it).
        n = next(i for i in range(1, 17) if not b.id.startswith(a.id[:i]))
        assert (await d.images.get(a.id[:n])).name == "img-a"
        with pytest.raises(NotFound, match="not found"):
            await d.images.get("zzz")
        # The contract VMs rely on: ensure() resolves what exists, NotFound with a hint otherwise.
        ctx = RequestContext(op_id="op-test", method="test")
        assert (await d.images.ensure("img-a", ctx)).id == a.id
        with pytest.raises(NotFound, match="pull it under that name"):
            await d.images.ensure("nope", ctx)

        d.reference_checks.append(lambda kind, ident: ["vm devbox"] if ident == a.id else [])
        with pytest.raises(Conflict, match="vm devbox"):
            await d.images.delete("img-a")
        assert (await d.images.get("img-a")).id == a.id
        await d.images.delete("img-b")
    finally:
        await d.stop_services()


async def test_start_sweeps_interrupted_work(banger_env: BangerEnv) -> None:
    paths = banger_env.paths
    paths.ensure()
    stale = [
        paths.staging_dir / "image-0123456789abcdef" / "out",
        paths.images_dir / "feedfacefeedface",
        paths.oci_cache_dir.parent / ".oci.pruning-1234abcd",
    ]
    for p in stale:
        p.mkdir(parents=True)
    blobs = paths.oci_cache_dir / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    (blobs / ".tmp-0123456789abcdef-aaaa").write_bytes(b"partial")
    kept = blobs / ("a" * 64)
    kept.write_bytes(b"verified")
    d = Daemon(paths, Config())
    await d.start_services()
    try:
        assert not any(p.exists() for p in stale)
        assert sorted(blobs.iterdir()) == [kept]
    finally:
        await d.stop_services()

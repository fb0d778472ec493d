"""The built-in offline image `debian-bookworm` (mmdebstrap from the configured mirror)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, BuiltImage
from tests.images.ocifix import debugfs, ls, stat_inode

pytestmark = pytest.mark.slow


def test_debian_bookworm_contents(debian_image: BuiltImage) -> None:
    img = debian_image.rootfs
    rec = debian_image.record
    assert rec["name"] == "debian-bookworm" and rec["managed"] is True
    assert str(rec["source"]).startswith("mmdebstrap:bookworm@")
    for path in ("/usr/sbin/sshd", "/usr/bin/git", "/usr/bin/make", "/usr/bin/less",
                 "/usr/bin/ps", "/usr/bin/ip", "/etc/ssl/certs/ca-certificates.crt"):  # fmt: skip
        assert "Inode:" in debugfs(img, f"stat {path}"), path
    # No host keys baked in: banger supplies one per VM.
    assert not [n for n in ls(img, "/etc/ssh") if n.startswith("ssh_host_")]
    # Docs, man pages, locales and apt lists stripped.
    assert ls(img, "/usr/share/doc") == []
    assert ls(img, "/usr/share/man") == []
    assert [
        n for n in ls(img, "/var/lib/apt/lists") if n not in ("lock", "partial", "auxfiles")
    ] == []
    passwd = stat_inode(img, "/usr/bin/passwd")
    assert (passwd["mode"], passwd["uid"]) == (0o4755, 0)
    shadow = stat_inode(img, "/etc/shadow")
    assert shadow["gid"] == 42 and shadow["mode"] == 0o640
    assert stat_inode(img, "/dev/null")["type"] == "character"


def test_debian_bookworm_systemd_contents(
    debian_image: BuiltImage, debian_systemd_image: BuiltImage
) -> None:
    img = debian_systemd_image.rootfs
    rec = debian_systemd_image.record
    assert rec["name"] == "debian-bookworm-systemd" and rec["managed"] is True
    assert rec["digest"] != debian_image.record["digest"]
    for path in ("/usr/lib/systemd/systemd", "/usr/sbin/sshd", "/usr/bin/git"):
        assert "Inode:" in debugfs(img, f"stat {path}"), path
    assert stat_inode(img, "/usr/sbin/init")["type"] == "symlink"  # systemd-sysv
    # No Recommends: no D-Bus (the guest payload handles the power button instead of logind).
    assert "dbus.service" not in ls(img, "/usr/lib/systemd/system")
    assert not [n for n in ls(img, "/etc/ssh") if n.startswith("ssh_host_")]


def test_rebuild_from_cache_is_fast(banger_env: BangerEnv, debian_image: BuiltImage) -> None:
    banger_env.env["XDG_CACHE_HOME"] = str(debian_image.cache_home)
    start = time.monotonic()
    p = banger_env.banger("image", "pull", "debian-bookworm", "--json", check=True, timeout=600)
    elapsed = time.monotonic() - start
    rec = json.loads(p.stdout)
    assert "reusing cached" in p.stderr
    assert "mmdebstrap bookworm" not in p.stderr
    # Same bits as the first build: the digest names the cached one-layer image.
    assert rec["digest"] == debian_image.record["digest"]
    assert Path(rec["rootfs"]).is_file()
    print(f"debian-bookworm from cache: {elapsed:.1f}s")
    p = banger_env.banger("image", "pull", "debian-bookworm")
    assert p.returncode == 1 and "already exists" in p.stderr


async def test_ensure_builds_the_builtin_when_missing(
    banger_env: BangerEnv, debian_image: BuiltImage
) -> None:
    from banger.config import Config
    from banger.daemon.app import Daemon
    from banger.request import RequestContext

    banger_env.env["XDG_CACHE_HOME"] = str(debian_image.cache_home)
    d = Daemon(banger_env.paths, Config())
    d.paths.ensure()
    await d.start_services()
    try:
        events: list[dict[str, object]] = []
        ctx = RequestContext(op_id="op-test", method="vm.create", emit=events.append)
        rec = await d.images.ensure("debian-bookworm", ctx)
        assert rec.name == "debian-bookworm" and rec.rootfs.is_file()
        assert rec.digest == debian_image.record["digest"]
        assert any(e.get("stage") in ("build", "reuse") for e in events)
        # Present now: resolved, not rebuilt.
        events.clear()
        assert (await d.images.ensure("debian-bookworm", ctx)).id == rec.id
        assert events == []
    finally:
        await d.stop_services()


def _mounts_below(path: Path) -> list[str]:
    from banger.images.service import _mounts_under

    return _mounts_under(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="mount needs root")
def test_rmtree_refuses_to_cross_mounts(tmp_path: Path) -> None:
    from banger.images.service import rmtree_no_mounts

    work = tmp_path / "work"
    mnt = work / "chroot" / "dev"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(mnt)], check=True)
    try:
        (mnt / "precious").write_text("host data")
        rmtree_no_mounts(work)
        assert (mnt / "precious").read_text() == "host data"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    rmtree_no_mounts(work)
    assert not work.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="root-mode mmdebstrap")
async def test_killed_mmdebstrap_leaks_no_mounts(tmp_path: Path) -> None:
    """Cancel a build while mmdebstrap works in its chroot: its bind mounts live in a private
    mount namespace, so none is ever visible here and the work dir can be deleted."""
    from banger.config import Config
    from banger.images import debian

    out = tmp_path / "rootfs.tar"
    lines: list[str] = []
    task = asyncio.create_task(
        debian.build_tarball(debian.Recipe(mirror=Config().debian_mirror), out, lines.append)
    )
    seen_mounts: list[str] = []
    deadline = time.monotonic() + 120
    # Wait until the chroot is populated (mounts exist by then), then kill the build.
    while not any(x.startswith("installing") for x in lines):
        assert time.monotonic() < deadline and not task.done(), lines
        seen_mounts += _mounts_below(tmp_path)
        await asyncio.sleep(0.1)
    for _ in range(10):  # dpkg runs inside the chroot now, with /dev and /proc mounted
        seen_mounts += _mounts_below(tmp_path)
        await asyncio.sleep(0.1)  # sampling a window in which no mount may show (not a wait)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen_mounts == [] and _mounts_below(tmp_path) == []
    chroots = list(tmp_path.glob("mmdebstrap.*"))
    assert chroots, "mmdebstrap's chroot should be under TMPDIR (the output's dir)"

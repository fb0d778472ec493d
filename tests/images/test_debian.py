"""The built-in offline image `debian-bookworm` (mmdebstrap from the configured mirror)."""

from __future__ import annotations

import json
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
    from banger.daemon.context import RequestContext

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

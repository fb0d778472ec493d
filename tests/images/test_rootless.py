"""Ownership without privileges: the build child runs applier + mkfs in one fakeroot session.

/root (where the venv's interpreter lives) is closed to other uids here, so the test stays uid 0
but drops every capability (no CAP_CHOWN, CAP_MKNOD, CAP_DAC_OVERRIDE): exactly what an
unprivileged daemon lacks. A control run without fakeroot shows the privileges really are gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.images.ocifix import Entry, cat, compress, stat_inode, tar_bytes

NO_CAPS = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop capabilities in a child")
def test_unprivileged_build_keeps_tar_ownership(tmp_path: Path) -> None:
    shared_dir = tmp_path
    if shutil.which("setpriv") is None or shutil.which("fakeroot") is None:
        pytest.fail("setpriv and fakeroot are needed (util-linux, fakeroot)")
    blob = shared_dir / "layer.blob"
    blob.write_bytes(
        compress(
            tar_bytes(
                [
                    Entry("usr/bin/su", data=b"su", mode=0o4755),
                    Entry("home/bob/", "dir", mode=0o700, uid=1001, gid=1002),
                    Entry("home/bob/.profile", data=b"p", mode=0o640, uid=1001, gid=1002),
                    Entry("dev/null", "char", mode=0o666, major=1, minor=3),
                    Entry("ro/", "dir", mode=0o500, uid=3, gid=3),
                    Entry("ro/file", data=b"r", mode=0o400, uid=3, gid=3),
                ]
            ),
            "gzip",
        )
    )
    os.chmod(blob, 0o644)
    spec = shared_dir / "spec.json"
    out = shared_dir / "out"
    out.mkdir()
    spec.write_text(
        json.dumps(
            {
                "layers": [{"path": str(blob), "name": "sha256:rootless", "compression": "gzip"}],
                "tree": str(out / "tree"),
                "out": str(out / "rootfs.ext4"),
                "size_bytes": None,
            }
        )
    )
    build = [sys.executable, "-m", "banger.images.build", str(spec)]
    control = subprocess.run([*NO_CAPS, *build], capture_output=True, text=True, timeout=120)
    assert control.returncode == 2 and "Operation not permitted" in control.stdout
    shutil.rmtree(out / "tree")
    # Exactly the argv the daemon uses when it is not root.
    p = subprocess.run(
        [*NO_CAPS, "fakeroot", "--", *build], capture_output=True, text=True, timeout=120
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["event"] == "done"
    img = out / "rootfs.ext4"
    su = stat_inode(img, "/usr/bin/su")
    assert (su["mode"], su["uid"], su["gid"]) == (0o4755, 0, 0)
    bob = stat_inode(img, "/home/bob/.profile")
    assert (bob["mode"], bob["uid"], bob["gid"]) == (0o640, 1001, 1002)
    assert stat_inode(img, "/home/bob")["uid"] == 1001
    null = stat_inode(img, "/dev/null")
    assert null["type"] == "character" and null["dev"] == (1, 3)
    ro = stat_inode(img, "/ro")
    assert (ro["mode"], ro["uid"]) == (0o500, 3)
    assert cat(img, "/ro/file") == b"r"

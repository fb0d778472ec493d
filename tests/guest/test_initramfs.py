"""banger's initramfs: archive contents, and real TCG boots of the host's Debian kernel with it."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from banger.guest.initramfs import build_initramfs, strip_module_signature
from tests.guest import bootkit

ROOT_INIT = """#!/bin/busybox sh
/bin/busybox echo "ROOT-MOUNTED $(/bin/busybox grep ' / ' /proc/mounts)"
/bin/busybox echo "SEED-MOUNT $(/bin/busybox grep ' /.banger ' /proc/mounts)"
/bin/busybox echo "SEED-FILE $(/bin/busybox cat /.banger/hello 2>&1)"
/bin/busybox poweroff -f
"""


@pytest.fixture(scope="module")
def initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("initrd") / "initrd.img"
    build_initramfs(out, modules=bootkit.resolve_modules())
    return out


def _root(tmp: Path, init: str = ROOT_INIT) -> Path:
    tree = tmp / "tree"
    for d in ("bin", "sbin", "proc", "sys", "dev"):
        (tree / d).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    (tree / "sbin/init").write_text(init)
    (tree / "sbin/init").chmod(0o755)
    img = tmp / "root.ext4"
    bootkit.make_ext4(img, tree, label="bangerroot")
    return img


def test_archive_is_newc_with_init_busybox_and_ordered_modules(initrd: Path) -> None:
    data = gzip.decompress(initrd.read_bytes())
    assert data.startswith(b"070701")
    for name in (b"init\0", b"bin/busybox\0", b"lib/modules/order\0", b"dev/console\0"):
        assert name in data
    order_at = data.index(b"lib/modules/order\0")
    order = data[order_at:].split(b"\0", 1)[1].lstrip(b"\0").split(b"\0", 1)[0].decode()
    names = order.split()
    # dependency order: virtio_ring before virtio before virtio_mmio; ext4's deps before ext4
    assert names.index("virtio_ring.ko") < names.index("virtio.ko") < names.index("virtio_mmio.ko")
    assert names.index("jbd2.ko") < names.index("ext4.ko")
    assert "virtio_console.ko" in names


def test_rejects_a_dynamic_busybox(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="busybox-static"):
        build_initramfs(tmp_path / "x.img", modules=[], busybox=Path("/bin/ls"))
    assert not (tmp_path / "x.img").exists()


def test_strip_module_signature_removes_only_the_trailer() -> None:
    body = b"\x7fELF" + b"x" * 100
    sig = b"S" * 37
    info = b"\0" * 8 + len(sig).to_bytes(4, "big")
    signed = body + sig + info + b"~Module signature appended~\n"
    assert strip_module_signature(signed) == body
    assert strip_module_signature(body) == body


@pytest.mark.slow
def test_boots_debian_kernel_to_root_and_seed(initrd: Path, tmp_path: Path) -> None:
    root = _root(tmp_path)
    seed_tree = tmp_path / "seed"
    seed_tree.mkdir()
    (seed_tree / "hello").write_text("from-seed\n")
    seed = tmp_path / "seed.ext4"
    bootkit.make_ext4(seed, seed_tree, size_mib=4)
    console = tmp_path / "console.log"
    res = bootkit.boot(
        initrd,
        [root, seed],
        "quiet root=LABEL=bangerroot banger.seed=/dev/vdb",
        console,
    )
    log = console.read_text(errors="replace")
    assert res.returncode == 0, res.stderr
    assert "ROOT-MOUNTED /dev/vda / ext4 rw" in log, log
    assert "SEED-MOUNT /dev/vdb /.banger ext4 ro" in log, log
    assert "SEED-FILE from-seed" in log, log
    assert "banger-initramfs:" not in log


@pytest.mark.slow
def test_missing_init_fails_fast_with_a_reason(initrd: Path, tmp_path: Path) -> None:
    root = _root(tmp_path)
    console = tmp_path / "console.log"
    res = bootkit.boot(initrd, [root], "quiet banger.init=/no/such/init", console, timeout=60)
    log = console.read_text(errors="replace")
    assert res.returncode == 0
    assert "banger-initramfs: init /no/such/init not found in the root filesystem" in log, log

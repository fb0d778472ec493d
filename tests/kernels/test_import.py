"""`banger kernel import|list|show|delete` against a real daemon, and the service's contract."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from banger.config import Config
from banger.daemon.app import Daemon
from banger.errors import Conflict, InvalidInput, NotFound
from banger.kernels.modules import GUEST_MODULES
from banger.request import RequestContext
from tests.conftest import BangerEnv
from tests.kernels.conftest import HOST_KERNEL, HOST_MODULES, KVER, needs_host_kernel

pytestmark = needs_host_kernel


def cpio_files(initrd: Path) -> dict[str, bytes]:
    """name -> data of a gzip'd newc archive (what the kernel unpacks)."""
    data = gzip.decompress(initrd.read_bytes())
    out: dict[str, bytes] = {}
    i = 0
    while True:
        assert data[i : i + 6] == b"070701"
        namesize = int(data[i + 94 : i + 102], 16)
        filesize = int(data[i + 54 : i + 62], 16)
        name = data[i + 110 : i + 110 + namesize - 1].decode()
        i = (i + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = data[i : i + filesize]
        i = (i + filesize + 3) & ~3


def test_import_from_host(daemon: BangerEnv) -> None:
    r = daemon.banger("kernel", "import", "deb", "--from-host", check=True)
    assert f"imported kernel deb ({KVER}; boots vmlinux, generated initramfs)" in r.stdout
    k = json.loads(daemon.banger("kernel", "show", "deb", "--json", check=True).stdout)
    assert k["format"] == "bzImage" and k["kernel_version"] == KVER
    assert k["source"] == f"host:{HOST_KERNEL}"
    assert k["distro"].startswith("debian")
    assert Path(k["kernel"]).read_bytes() == HOST_KERNEL.read_bytes()
    assert Path(k["vmlinux"]).read_bytes()[:4] == b"\x7fELF"
    assert (Path(k["modules_dir"]) / "modules.dep").read_text() == (
        HOST_MODULES / "modules.dep"
    ).read_text()
    # The generated initramfs: busybox, /init, the guest modules in dependency order.
    files = cpio_files(Path(k["initrd"]))
    assert files["bin/busybox"] == Path("/bin/busybox").read_bytes()
    assert b"switch_root" in files["init"]
    order = files["lib/modules/order"].decode().split()
    names = [o.removesuffix(".ko").replace("-", "_") for o in order]
    assert set(names) == {m.replace("-", "_") for m in GUEST_MODULES}
    for before, after in [
        ("virtio_ring", "virtio"),
        ("virtio", "virtio_mmio"),
        ("virtio", "virtio_blk"),
        ("jbd2", "ext4"),
        ("mbcache", "ext4"),
        ("crc16", "ext4"),
        ("net_failover", "virtio_net"),
        ("vsock", "vmw_vsock_virtio_transport_common"),
        ("vmw_vsock_virtio_transport_common", "vmw_vsock_virtio_transport"),
    ]:
        assert names.index(before) < names.index(after), (before, after)
    # Signatures stripped: the copies in the initramfs are smaller than the signed originals.
    ext4 = files["lib/modules/ext4.ko"]
    assert len(ext4) < (HOST_MODULES / "kernel/fs/ext4/ext4.ko").stat().st_size
    assert not ext4.endswith(b"~Module signature appended~\n")

    listed = json.loads(daemon.banger("kernel", "list", "--json", check=True).stdout)
    assert [x["name"] for x in listed] == ["deb"]
    table = daemon.banger("kernel", "list", check=True).stdout
    assert "deb" in table and KVER in table and "generated" in table

    again = daemon.banger("kernel", "import", "deb", "--from-host")
    assert again.returncode == 1 and "already exists" in again.stderr

    daemon.banger("kernel", "delete", "deb", check=True)
    assert json.loads(daemon.banger("kernel", "list", "--json").stdout) == []
    gone = daemon.banger("kernel", "show", "deb")
    assert gone.returncode == 1 and "not found" in gone.stderr
    assert list(daemon.paths.staging_dir.iterdir()) == []


def test_import_files_elf_and_user_initrd(daemon: BangerEnv, tmp_path: Path) -> None:
    daemon.banger("kernel", "import", "deb", "--from-host", KVER, check=True)
    k = json.loads(daemon.banger("kernel", "show", "deb", "--json").stdout)
    # An ELF vmlinux with a user initrd and no modules: recorded as is, nothing generated.
    shutil.copy(k["vmlinux"], tmp_path / "vmlinux")
    (tmp_path / "my-initrd").write_bytes(b"070701" + b"0" * 200)
    (tmp_path / "text").write_text("not an initrd")
    bad = daemon.banger(
        "kernel", "import", "elf", "--kernel", str(tmp_path / "vmlinux"),
        "--initrd", str(tmp_path / "text"),
    )  # fmt: skip
    assert bad.returncode == 1 and "does not look like an initrd" in bad.stderr
    r = daemon.banger(
        "kernel", "import", "elf", "--kernel", str(tmp_path / "vmlinux"),
        "--initrd", str(tmp_path / "my-initrd"), check=True,
    )  # fmt: skip
    assert "boots vmlinux, initrd" in r.stdout
    e = json.loads(daemon.banger("kernel", "show", "elf", "--json").stdout)
    assert e["format"] == "elf-vmlinux" and e["kernel_version"] == KVER
    assert e["kernel"] == e["vmlinux"]
    assert Path(e["initrd"]).read_bytes() == b"070701" + b"0" * 200
    assert e["initrd_generated"] is False and e["modules_dir"] is None
    # bzImage + a modules dir given by path (relative paths are made absolute by the CLI).
    r = daemon.banger(
        "kernel", "import", "files", "--kernel", str(HOST_KERNEL), "--modules", str(HOST_MODULES),
        check=True,
    )  # fmt: skip
    assert "generated initramfs" in r.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bad/../name", "--from-host"], "invalid kernel name"),
        (["..", "--from-host"], "invalid kernel name"),
        (["x", "--kernel", "/etc/passwd"], "neither a bzImage"),
        (["x", "--kernel", "/nonexistent/vmlinuz"], "is not a file"),
        (["x", "--from-host", "9.9.9-nope"], "host kernel 9.9.9-nope not found"),
        (["x", "--from-host", "--kernel", str(HOST_KERNEL)], "hint: --from-host does not combine"),
        (["x"], "hint: banger kernel import NAME --kernel FILE"),
        (["x", "--kernel", str(HOST_KERNEL), "--modules", "/etc"], "no modules.dep"),
    ],
)
def test_bad_imports_are_clear_and_leave_nothing(
    daemon: BangerEnv, args: list[str], message: str
) -> None:
    r = daemon.banger("kernel", "import", *args)
    assert r.returncode == 1
    assert message in r.stderr
    assert list(daemon.paths.kernels_dir.iterdir()) == []
    assert list(daemon.paths.staging_dir.iterdir()) == []


async def test_service_ensure_and_delete_conflict(banger_env: BangerEnv) -> None:
    d = Daemon(banger_env.paths, Config())
    d.paths.ensure()
    await d.start_services()
    try:
        ctx = RequestContext(op_id="op-test", method="test")
        with pytest.raises(NotFound, match="kernel 'other' not found"):
            await d.kernels.ensure("other", ctx)
        rec = await d.kernels.ensure("debian-6.1", ctx)  # the default: imported from the host
        assert rec.name == "debian-6.1" and rec.kernel_version == KVER
        assert rec.vmlinux is not None and rec.initrd is not None and rec.initrd_generated
        assert (await d.kernels.ensure("debian-6.1", ctx)).imported_at == rec.imported_at
        assert (await d.kernels.get("debian-6.1")).dir == rec.dir

        d.reference_checks.append(
            lambda kind, ident: ["vm devbox"] if (kind, ident) == ("kernel", "debian-6.1") else []
        )
        with pytest.raises(Conflict, match="in use by vm devbox"):
            await d.kernels.delete("debian-6.1")
        assert rec.dir.is_dir()
        d.reference_checks.clear()
        await d.kernels.delete("debian-6.1")
        assert not rec.dir.exists()
        with pytest.raises(InvalidInput):
            await d.kernels.get("../etc")
    finally:
        await d.stop_services()

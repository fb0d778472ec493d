"""The QEMU driver: argv shape, `info usernet` parsing, and a real TCG boot through the driver
(console log, control channel READY + stop, QMP, re-attach by pid, force stop)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.guest.initramfs import build_initramfs
from banger.vmm.base import DiskSpec, NetworkSpec, VMHandle, VMSpec
from banger.vmm.qemu import QemuDriver, parse_usernet_ssh_port, send_control, wait_control_ready
from tests.guest import bootkit

# A test init: answers on the control port like banger's guest agent, serves a TCP banner.
TEST_INIT = r"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc; $B mount -t sysfs sysfs /sys
$B mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
  $B ln -sf "../${p##*/}" "/dev/virtio-ports/$($B cat $p/name)"
done
$B ip link set lo up; $B ip link set eth0 up; $B ip addr add 10.0.2.15/24 dev eth0
(while :; do echo "SSH-2.0-fake" | $B nc -l -p 22; done) &
echo "TEST-GUEST-UP"
exec 3<>/dev/virtio-ports/banger.ctl
echo "READY mode=test" >&3
while :; do
  if read -r cmd <&3; then
    [ "$cmd" = stop ] && { echo "TEST-GUEST-STOP"; $B poweroff -f; }
  else $B sleep 0.2; fi
done
"""


def _spec(tmp: Path, initrd: Path, root: Path, port: int = 0) -> VMSpec:
    run = Path(tempfile.mkdtemp(prefix="bgq-", dir="/tmp"))
    return VMSpec(
        vm_id="testvm0123",
        name="drivertest",
        kernel=bootkit.KERNEL,
        initrd=initrd,
        cmdline="console=ttyS0 panic=-1 quiet banger.init=/sbin/init",
        root_disk=DiskSpec(root, "raw"),
        work_disk=None,
        vcpus=1,
        memory_mib=256,
        network=NetworkSpec(kind="user", ssh_host_port=port),
        console_log=tmp / "console.log",
        runtime_dir=run,
    )


def test_argv_uses_microvm_acpi_tcg_and_pins_tsc(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tmp_path / "initrd", tmp_path / "root.ext4", port=2222)
    argv = QemuDriver(accel="tcg").build_argv(spec)
    assert argv[argv.index("-M") + 1] == "microvm,acpi=on"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert argv[argv.index("-cpu") + 1] == "max"
    append = argv[argv.index("-append") + 1]
    assert "tsc_early_khz=" in append and "tsc=reliable" in append
    assert any("hostfwd=tcp:127.0.0.1:2222-:22" in a for a in argv)
    assert any(a.startswith("virtserialport,") and "name=banger.ctl" in a for a in argv)
    assert "-daemonize" in argv


def test_auto_accel_never_picks_pvm_kvm(tmp_path: Path) -> None:
    spec = _spec(tmp_path, tmp_path / "initrd", tmp_path / "root.ext4")
    argv = QemuDriver(accel="auto").build_argv(spec)
    if Path("/sys/module/kvm_pvm").exists():
        assert argv[argv.index("-accel") + 1] == "tcg"


def test_parse_usernet() -> None:
    text = (
        "Hub -1 (n0):\n"
        "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\n"
        "  TCP[HOST_FORWARD]  13       127.0.0.1 40459       10.0.2.15    22     0     0\n"
    )
    assert parse_usernet_ssh_port(text) == 40459
    assert parse_usernet_ssh_port("nothing here") is None


@pytest.fixture(scope="module")
def guest_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    d = tmp_path_factory.mktemp("qemu-guest")
    initrd = d / "initrd.img"
    build_initramfs(initrd, modules=bootkit.resolve_modules())
    tree = d / "tree"
    for sub in ("bin", "sbin", "proc", "sys", "dev"):
        (tree / sub).mkdir(parents=True)
    shutil.copy("/bin/busybox", tree / "bin/busybox")
    (tree / "sbin/init").write_text(TEST_INIT)
    (tree / "sbin/init").chmod(0o755)
    root = d / "root.ext4"
    bootkit.make_ext4(root, tree)
    yield initrd, root


@pytest.mark.slow
async def test_real_boot_ready_stop_and_reattach(
    guest_files: tuple[Path, Path], tmp_path: Path
) -> None:
    from banger.guest.ssh import wait_ssh_banner

    initrd, root = guest_files
    spec = _spec(tmp_path, initrd, root)
    driver = QemuDriver(accel="tcg")
    handle = await driver.launch(spec)
    try:
        assert driver.is_alive(handle)
        assert handle.ssh_port > 0  # picked by QEMU, read back over QMP
        detail = await wait_control_ready(
            handle.control_socket, 90, alive=lambda: driver.is_alive(handle)
        )
        assert detail == "mode=test"
        await wait_ssh_banner("127.0.0.1", handle.ssh_port, 30)
        status = await driver.qmp(handle, "query-status")
        assert status["status"] == "running"
        # A second driver instance (a restarted daemon) re-attaches from the persisted handle.
        again = VMHandle.from_json(handle.to_json())
        assert await QemuDriver(accel="tcg").attach(again)
        await driver.request_shutdown(handle)
        assert await driver.wait_exit(handle, 30), "guest did not power off on the stop request"
        assert not driver.is_alive(handle)
        assert not await driver.attach(again)
        log = spec.console_log.read_text(errors="replace")
        assert "TEST-GUEST-UP" in log and "TEST-GUEST-STOP" in log
    finally:
        await driver.force_stop(handle)
        shutil.rmtree(spec.runtime_dir, ignore_errors=True)


@pytest.mark.slow
async def test_force_stop_kills_a_guest_that_ignores_requests(
    guest_files: tuple[Path, Path], tmp_path: Path
) -> None:
    initrd, root = guest_files
    spec = _spec(tmp_path, initrd, root)
    # force_stop does not ask the guest: QMP quit, then SIGKILL.
    driver = QemuDriver(accel="tcg")
    handle = await driver.launch(spec)
    try:
        await send_control(handle.control_socket, "ping")
        await driver.force_stop(handle)
        assert not driver.is_alive(handle)
        # Gone or a zombie awaiting its reaper (QEMU daemonized away from us): never running.
        stat = Path(f"/proc/{handle.pid}/stat")
        assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX"
    finally:
        await driver.force_stop(handle)
        shutil.rmtree(spec.runtime_dir, ignore_errors=True)

"""The payload as it runs on Firecracker (`banger.vmm=firecracker`), in a real TCG guest.

QEMU here has no vsock device without /dev/vhost-vsock, so the guest reaches its own vsockd over
the kernel's vsock loopback transport (CID 1; `vsock_loopback` is added to the initramfs for
this test only): the real AF_VSOCK helper and ctl.sh answer a real vsock connection. The same
boot checks the virtio-serial agent (READY for each new host connection, ping) and that the
shutdown path ends in a reboot, which ends the VM (QEMU's -no-reboot stands in for Firecracker's
exit on reboot=k): a power-off would leave a Firecracker process running.

The root is a bare busybox tree whose `sshd` is a stand-in (SSH is not what this tests); it
starts the in-guest vsock probe and returns, as sshd would, so the init carries on.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from banger.guest import probes
from banger.guest.initramfs import build_initramfs
from banger.guest.payload import GUEST_INIT, GuestNetwork, SeedConfig, build_seed
from banger.guest.ssh import generate_host_key
from banger.guest.vsockd import ensure_vsockd
from banger.kernels.modules import GUEST_MODULES
from banger.vmm.firecracker import CONTROL_VSOCK_PORT
from banger.vmm.qemu import send_control, wait_control_ready
from tests.guest import bootkit

# Started by the stand-in sshd: wait for vsockd, then one session over vsock loopback.
FAKE_SSHD = f"""#!/.banger/bin/busybox sh
BB=/.banger/bin/busybox
(
    n=0
    while [ $n -lt 200 ]; do
        if out="$(/usr/local/bin/vsock_probe 1 {CONTROL_VSOCK_PORT} bogus ping 2>&1)"; then
            echo "$out" | while read -r l; do echo "vsock-probe: $l"; done >/dev/console
            exit 0
        fi
        $BB usleep 100000
        n=$((n + 1))
    done
    echo "vsock-probe: gave up: $out" >/dev/console
) </dev/null >/dev/null 2>&1 &
exit 0
"""


def _wait_console(console: Path, needle: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = console.read_text(errors="replace") if console.exists() else ""
        if needle in text:
            return text
        assert time.monotonic() < deadline, f"{needle!r} not on the console:\n{text[-3000:]}"
        time.sleep(0.1)


@pytest.mark.slow
def test_firecracker_payload_serves_vsock_and_reboots_to_end_the_vm(tmp_path: Path) -> None:
    initrd = tmp_path / "initrd.img"
    build_initramfs(initrd, modules=bootkit.resolve_modules([*GUEST_MODULES, "vsock_loopback"]))

    tree = tmp_path / "root"
    for d in ("proc", "sys", "dev", "run", "tmp", "etc", "root", "usr/sbin", "usr/local/bin"):
        (tree / d).mkdir(parents=True)
    (tree / "usr/sbin/sshd").write_text(FAKE_SSHD)
    (tree / "usr/sbin/sshd").chmod(0o755)
    subprocess.run(
        ["gcc", "-static", "-Os", "-o", str(tree / "usr/local/bin/vsock_probe"),
         str(Path(__file__).with_name("vsock_probe.c"))],
        check=True, capture_output=True,
    )  # fmt: skip
    root = tmp_path / "root.ext4"
    bootkit.make_ext4(root, tree, size_mib=16)

    priv, pub = generate_host_key(tmp_path / "hk")
    seed = tmp_path / "seed.ext4"
    cfg = SeedConfig(
        vm_id="fcguest",
        hostname="fc-guest",
        authorized_keys="ssh-ed25519 AAAAtest banger",
        host_key_private=priv,
        host_key_public=pub,
        init_mode="auto",
        network=GuestNetwork(kind="none"),
        has_work_disk=False,
        vsockd=ensure_vsockd(tmp_path / "cache"),
        vsock_port=CONTROL_VSOCK_PORT,
    )
    build_seed(seed, cfg)

    console = tmp_path / "console.log"
    ctl = tmp_path / "ctl.sock"
    # reboot=t (triple fault): microvm has no i8042 for Firecracker's reboot=k, and the kernel's
    # default chain can end in a BIOS warm restart that QEMU never sees as a reset.
    cmdline = (
        f"console=ttyS0 panic=-1 quiet tsc_early_khz={bootkit.host_tsc_khz()} tsc=reliable "
        "root=/dev/vda rootfstype=ext4 banger.seed=LABEL=banger-seed "
        f"banger.init={GUEST_INIT} banger.vmm=firecracker reboot=t"
    )
    argv = [
        "qemu-system-x86_64", "-M", "microvm,acpi=on", "-accel", "tcg", "-cpu", "max",
        "-m", "256", "-smp", "1", "-nodefaults", "-no-reboot", "-display", "none",
        "-kernel", str(bootkit.KERNEL), "-initrd", str(initrd), "-append", cmdline,
        "-serial", f"file:{console}",
        "-drive", f"id=root,file={root},format=raw,if=none",
        "-device", "virtio-blk-device,drive=root",
        "-drive", f"id=seed,file={seed},format=raw,if=none,readonly=on",
        "-device", "virtio-blk-device,drive=seed",
        "-device", "virtio-serial-device",
        "-chardev", f"socket,id=ctl,path={ctl},server=on,wait=off",
        "-device", "virtserialport,chardev=ctl,name=banger.ctl",
    ]  # fmt: skip
    qemu = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        mode = asyncio.run(wait_control_ready(str(ctl), 120, alive=lambda: qemu.poll() is None))
        assert mode == "mode=minimal"
        # The virtio-serial agent serves one session per host connection, each answered at
        # once (printed for the record; timing is the bench's business).
        rtts = [asyncio.run(probes.control_ping(str(ctl), 10)) for _ in range(5)]
        print("virtio-serial ping ms:", [round(r * 1000, 1) for r in rtts])

        text = _wait_console(console, "vsock-probe: pong", 60)
        assert "banger-vsockd: listening on vsock port 1024" in text
        # The vsock session is ctl.sh's protocol: READY first, unknown lines ignored, pong.
        assert "vsock-probe: READY mode=minimal\nvsock-probe: pong" in text.replace("\r", "")

        asyncio.run(send_control(str(ctl), "stop"))
        qemu.wait(timeout=60)  # -no-reboot: the guest's reboot ends QEMU, as it ends Firecracker
        text = console.read_text(errors="replace")
        assert "banger-guest: shutting down" in text
        assert "reboot: Restarting system" in text and "reboot: Power down" not in text
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait(timeout=10)

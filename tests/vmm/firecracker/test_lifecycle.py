"""The Firecracker driver's lifecycle, run against the contract double and (where it can run) the
real binary: launch → documented config order → InstanceStart → pause/resume → graceful stop →
attach after a daemon restart → force stop, and the inputs it must refuse."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from banger.vmm.base import DriverError, NetworkSpec, VMHandle
from banger.vmm.fc_api import FirecrackerAPIError
from banger.vmm.firecracker import FirecrackerDriver, firecracker_kernel, open_control
from tests.vmm.firecracker.conftest import Backend
from tests.vmm.firecracker.fcutil import GuestFiles, make_spec

HERE = Path(__file__).resolve().parent
BOOT_TIMEOUT = 60.0

DOCUMENTED_ORDER = [
    ("GET", "/"),
    ("PUT", "/logger"),
    ("PUT", "/metrics"),
    ("PUT", "/machine-config"),
    ("PUT", "/boot-source"),
    ("PUT", "/drives/rootfs"),
    ("PUT", "/drives/work"),
    ("PUT", "/vsock"),
    ("GET", "/vm/config"),
    ("PUT", "/actions"),
]


def up_marker(fc: Backend) -> str:
    return "fake-guest: up" if fc.kind == "double" else "banger-fc-guest-up"


async def wait_console(path: Path, text: str, timeout: float = BOOT_TIMEOUT) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = path.read_text(errors="replace") if path.exists() else ""
        if text in content:
            return content
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"{text!r} not on the console within {timeout}s: {path.read_text()[-500:]}"
    )


def pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


async def test_launch_configures_in_documented_order_then_stops_gracefully(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await driver.launch(spec)
    try:
        assert driver.is_alive(handle)
        assert handle.driver == "firecracker"
        assert Path(handle.api_socket).is_socket()
        assert Path(handle.control_socket).is_socket()
        assert await driver.state(handle) == "Running"

        cfg = await driver.inspect(handle)
        assert cfg["machine-config"]["vcpu_count"] == 1
        assert cfg["machine-config"]["mem_size_mib"] == 256
        boot = cfg["boot-source"]
        assert boot["kernel_image_path"] == str(guest_files.vmlinux)
        assert boot["initrd_path"] == str(guest_files.initrd)
        args = boot["boot_args"].split()
        for needed in ("console=ttyS0", "reboot=k", "panic=1", "root=/dev/vda"):
            assert needed in args
        drives = {d["drive_id"]: d for d in cfg["drives"]}
        assert drives["rootfs"]["is_root_device"] is True
        # Named relative to the runtime dir (where Firecracker runs) so snapshots can be forked.
        assert drives["rootfs"]["path_on_host"] == "rootfs.img"
        assert (spec.runtime_dir / "rootfs.img").resolve() == spec.root_disk.path.resolve()
        assert drives["work"]["is_root_device"] is False
        assert cfg["vsock"]["uds_path"] == "v.sock"
        assert spec.runtime_dir / "v.sock" == Path(handle.control_socket)

        if fc.kind == "double":
            calls = [(c["method"], c["path"]) for c in fc.calls()]
            # GET / may be polled more than once while the socket comes up.
            while calls[:2] == [("GET", "/"), ("GET", "/")]:
                calls.pop(0)
            assert calls[: len(DOCUMENTED_ORDER)] == DOCUMENTED_ORDER
            assert all(c["status"] < 300 for c in fc.calls()), fc.calls()
            assert fc.calls()[len(DOCUMENTED_ORDER) - 1]["body"] == {"action_type": "InstanceStart"}

        # The serial console lands in the VM log.
        await wait_console(spec.console_log, up_marker(fc))

        # Graceful stop: Ctrl-Alt-Del, the guest reboots, reboot=k makes the process exit.
        assert await driver.stop(handle, timeout=30) == "graceful"
        assert not driver.is_alive(handle)
        assert not Path(handle.api_socket).exists()
        assert not Path(handle.control_socket).exists()
    finally:
        await driver.force_stop(handle)


async def test_pause_resume_and_stop_while_paused(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    driver = FirecrackerDriver()
    spec = make_spec(guest_files, vm_dir)
    handle = await driver.launch(spec)
    try:
        await wait_console(spec.console_log, up_marker(fc))
        await driver.pause(handle)
        assert await driver.state(handle) == "Paused"
        await driver.pause(handle)  # idempotent, as documented
        assert await driver.state(handle) == "Paused"
        await driver.resume(handle)
        assert await driver.state(handle) == "Running"
        await driver.pause(handle)
        # A paused guest cannot see Ctrl-Alt-Del: the driver resumes it first.
        assert await driver.stop(handle, timeout=30) == "graceful"
        if fc.kind == "double":
            tail = [(c["method"], c["path"], c["body"]) for c in fc.calls()[-3:]]
            assert tail == [
                ("GET", "/", None),
                ("PATCH", "/vm", {"state": "Resumed"}),
                ("PUT", "/actions", {"action_type": "SendCtrlAltDel"}),
            ]
    finally:
        await driver.force_stop(handle)


async def test_attach_after_daemon_restart_then_force_stop(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    # A separate process launches the VM and exits, as a daemon that restarts would.
    args = {
        "vmlinux": str(guest_files.vmlinux),
        "initrd": str(guest_files.initrd),
        "root": str(guest_files.root),
        "vm_dir": str(vm_dir),
        "name": "fc-restart",
    }
    out = subprocess.run(
        [sys.executable, str(HERE / "launch_detached.py"), json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    handle = VMHandle.from_json(json.loads(out.stdout))
    assert pid_running(handle.pid), "the VM died with the process that launched it"

    driver = FirecrackerDriver()  # a fresh daemon: no child processes of its own
    try:
        assert await driver.attach(handle)
        assert driver.is_alive(handle)
        assert await driver.state(handle) == "Running"
        cfg = await driver.inspect(handle)
        assert cfg["drives"][0]["drive_id"] == "rootfs"
        await driver.force_stop(handle)
        assert not pid_running(handle.pid)
        assert not driver.is_alive(handle)
        assert not await driver.attach(handle)
        assert not Path(handle.api_socket).exists()
    finally:
        if pid_running(handle.pid):
            os.kill(handle.pid, signal.SIGKILL)


async def test_attach_refuses_a_recycled_pid(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    driver = FirecrackerDriver()
    handle = await driver.launch(make_spec(guest_files, vm_dir))
    try:
        stale = VMHandle.from_json(handle.to_json())
        stale.details["create_time"] = float(stale.details["create_time"]) - 3600
        assert not await FirecrackerDriver().attach(stale)
    finally:
        await driver.force_stop(handle)


async def test_force_stop_kills_a_guest_that_ignores_ctrl_alt_del(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await driver.launch(spec)
    try:
        await wait_console(spec.console_log, up_marker(fc))
        await driver.pause(handle)  # a paused guest never acts on the keypress
        async with driver._client(handle) as api:
            await api.action("SendCtrlAltDel")
        assert not await driver.wait_exit(handle, 0.5)
        await asyncio.wait_for(driver.force_stop(handle), 60)  # bounds a hang; no timing claim
        assert not driver.is_alive(handle)
    finally:
        await driver.force_stop(handle)


async def test_vsock_control_channel(fc: Backend, guest_files: GuestFiles, vm_dir: Path) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await driver.launch(spec)
    try:
        await wait_console(spec.console_log, up_marker(fc))
        # Nothing listens on guest port 9: Firecracker drops the stream without an OK.
        with pytest.raises(DriverError, match="nothing listens on that guest port"):
            await open_control(handle, port=9)
        if fc.kind == "double":
            # The double's guest listens on the control port and echoes lines.
            reader, writer = await open_control(handle)
            writer.write(b"PING\n")
            await writer.drain()
            assert await asyncio.wait_for(reader.readline(), 5) == b"echo PING\n"
            writer.close()
    finally:
        await driver.force_stop(handle)


async def test_tap_network_interface(fc: Backend, guest_files: GuestFiles, vm_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a TAP device needs root")
    tap = f"bgfc{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "tuntap", "add", "dev", tap, "mode", "tap"], check=True)
    try:
        net = NetworkSpec(kind="tap", tap_device=tap, mac="06:00:ac:10:00:02")
        spec = make_spec(guest_files, vm_dir, network=net)
        spec.extra["guest_ip"] = "172.16.0.2"
        driver = FirecrackerDriver()
        handle = await driver.launch(spec)
        try:
            assert handle.ssh_host == "172.16.0.2"
            cfg = await driver.inspect(handle)
            (iface,) = cfg["network-interfaces"]
            assert (iface["iface_id"], iface["host_dev_name"], iface["guest_mac"].lower()) == (
                "eth0",
                tap,
                "06:00:ac:10:00:02",
            )
        finally:
            await driver.force_stop(handle)
    finally:
        subprocess.run(["ip", "link", "del", tap], check=False)


async def test_refusal_from_firecracker_is_reported_and_cleaned_up(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    # A TAP device that does not exist: Firecracker cannot open it at PUT /network-interfaces.
    net = NetworkSpec(kind="tap", tap_device="bgfc-missing0")
    spec = make_spec(guest_files, vm_dir, network=net)
    with pytest.raises(DriverError) as err:
        await FirecrackerDriver().launch(spec)
    msg = str(err.value)
    assert "PUT /network-interfaces/eth0 failed (400)" in msg
    assert "bgfc-missing0" in msg and str(spec.console_log) in msg
    assert not (spec.runtime_dir / "fc.sock").exists()
    assert not (spec.runtime_dir / "v.sock").exists()
    if fc.kind == "double":
        assert not any(c["path"] == "/actions" for c in fc.calls())


# ---- inputs refused before any process starts (backend-independent) --------------------------


async def test_bzimage_kernel_is_refused_naming_the_kernel(
    guest_files: GuestFiles, vm_dir: Path
) -> None:
    spec = make_spec(guest_files, vm_dir, kernel=guest_files.bzimage)
    with pytest.raises(DriverError, match=r"kernel 'debian-host'.*not an uncompressed ELF vmlinux"):
        await FirecrackerDriver(firecracker_bin="/nonexistent/firecracker").launch(spec)
    with pytest.raises(DriverError, match=r"kernel 'debian-6.1' has no uncompressed ELF vmlinux"):
        firecracker_kernel("debian-6.1", None)
    assert firecracker_kernel("k", guest_files.vmlinux) == guest_files.vmlinux


async def test_user_mode_network_is_refused(guest_files: GuestFiles, vm_dir: Path) -> None:
    spec = make_spec(guest_files, vm_dir, network=NetworkSpec(kind="user"))
    with pytest.raises(DriverError, match=r"user-mode networking.*TAP only"):
        await FirecrackerDriver(firecracker_bin="/nonexistent/firecracker").launch(spec)
    assert not spec.runtime_dir.exists()  # nothing was started or created


async def test_qcow2_disk_is_refused(guest_files: GuestFiles, vm_dir: Path) -> None:
    spec = make_spec(guest_files, vm_dir, root_format="qcow2")
    with pytest.raises(DriverError, match="raw disk files only"):
        await FirecrackerDriver(firecracker_bin="/nonexistent/firecracker").launch(spec)


async def test_missing_binary_is_reported(guest_files: GuestFiles, vm_dir: Path) -> None:
    spec = make_spec(guest_files, vm_dir)
    with pytest.raises(
        DriverError, match="firecracker binary '/nonexistent/firecracker' not found"
    ):
        await FirecrackerDriver(firecracker_bin="/nonexistent/firecracker").launch(spec)
    assert not (spec.runtime_dir / "fc.sock").exists()


async def test_api_error_type_carries_the_fault() -> None:
    e = FirecrackerAPIError("PUT", "/boot-source", 400, "The kernel file cannot be opened")
    assert e.status == 400 and "kernel file cannot be opened" in str(e)


async def test_firecracker_refuses_what_the_contract_forbids(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    """Bypassing banger's own check, the process itself answers 400 with a fault_message."""
    import httpx

    driver = FirecrackerDriver()
    handle = await driver.launch(make_spec(guest_files, vm_dir))
    try:
        transport = httpx.AsyncHTTPTransport(uds=handle.api_socket)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as http:
            bad = [
                ("PUT", "/machine-config", {"vcpu_count": 2, "mem_size_mib": 512}),  # post-boot
                ("PATCH", "/vm", {"state": "Sleeping"}),  # not in the enum
                ("PUT", "/actions", {"action_type": "InstanceStart"}),  # already started
            ]
            for method, path, body in bad:
                r = await http.request(method, path, json=body)
                assert r.status_code == 400, (method, path, r.text)
                assert r.json()["fault_message"], r.text
        assert await driver.state(handle) == "Running"
    finally:
        await driver.force_stop(handle)


@pytest.fixture
def fake_jailer(fake_bin_dir: Path, tmp_path: Path) -> Path:
    exe = fake_bin_dir / "jailer"
    exe.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{HERE / "fake_jailer.py"}" "$@"\n')
    exe.chmod(0o755)
    return exe


async def test_jailer_mode_links_files_into_the_chroot(
    fc: Backend,
    guest_files: GuestFiles,
    vm_dir: Path,
    fake_jailer: Path,
    fake_bin_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if fc.kind != "double" or os.geteuid() != 0:
        pytest.skip("jailer mode is exercised with the fake jailer, as root")
    from banger.vmm.firecracker import JailerSettings

    argv_file = vm_dir / "jailer-argv.json"
    monkeypatch.setenv("BANGER_FAKE_JAILER_ARGV", str(argv_file))
    base = vm_dir / "jail"
    jailer = JailerSettings(
        binary=str(fake_jailer),
        uid=12345,
        gid=12346,
        chroot_base=base,
        cgroups=("cpu.max=50000 100000",),
    )
    # Through a symlink, as release binaries often are: the jail is named after the target.
    link = vm_dir / "fc"
    link.symlink_to(fake_bin_dir / "firecracker")
    driver = FirecrackerDriver(str(link), jailer=jailer)
    spec = make_spec(guest_files, vm_dir, name="fc-jail")
    handle = await driver.launch(spec)
    root = base / "firecracker" / handle.details["instance_id"] / "root"
    try:
        argv = json.loads(argv_file.read_text())
        assert argv[argv.index("--uid") + 1] == "12345"
        assert argv[argv.index("--gid") + 1] == "12346"
        assert argv[argv.index("--cgroup") + 1] == "cpu.max=50000 100000"
        assert argv[argv.index("--") + 1 :][:2] == ["--api-sock", "fc.sock"]
        assert handle.api_socket == str(root / "fc.sock")
        assert handle.control_socket == str(root / "v.sock")
        # Paths in API calls are relative to the jail.
        cfg = await driver.inspect(handle)
        assert cfg["boot-source"]["kernel_image_path"] == "vmlinux"
        assert cfg["boot-source"]["initrd_path"] == "initrd"
        assert {d["drive_id"]: d["path_on_host"] for d in cfg["drives"]} == {
            "rootfs": "rootfs.img",
            "work": "work.img",
        }
        assert cfg["vsock"]["uds_path"] == "v.sock"
        # Hard links, not copies; the writable disks belong to the jail's uid:gid.
        root_img = (root / "rootfs.img").stat()
        assert root_img.st_ino == spec.root_disk.path.stat().st_ino
        assert (root_img.st_uid, root_img.st_gid) == (12345, 12346)
        assert (root / "vmlinux").stat().st_ino == guest_files.vmlinux.stat().st_ino
        assert (root / "vmlinux").stat().st_uid == guest_files.vmlinux.stat().st_uid
        await wait_console(spec.console_log, up_marker(fc))
        assert await driver.stop(handle, timeout=30) == "graceful"
        assert not root.parent.exists()  # the jail is gone, the VM's own disks are not
        assert (spec.console_log.parent / "firecracker.log").exists()  # its VMM log was kept
        assert spec.root_disk.path.exists()
    finally:
        await driver.force_stop(handle)


async def test_readiness_from_the_console(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if fc.kind != "double":
        pytest.skip("the READY line comes from banger's guest payload, which this root lacks")
    from banger.vmm.firecracker import wait_console_ready

    spec = make_spec(guest_files, vm_dir)
    # A READY from an earlier boot in the same log must not count.
    spec.console_log.write_text("banger-guest: READY mode=old\n")
    driver = FirecrackerDriver()
    handle = await driver.launch(spec)
    try:
        assert await wait_console_ready(handle, 30, lambda: driver.is_alive(handle)) == "mode=fake"
    finally:
        await driver.force_stop(handle)
    # Nothing new on the console and the process gone: no waiting out the timeout.
    handle.details["console_offset"] = spec.console_log.stat().st_size
    with pytest.raises(DriverError, match="exited before the guest reported READY"):
        await wait_console_ready(handle, 30, lambda: driver.is_alive(handle))

    monkeypatch.setenv("BANGER_FC_DOUBLE_GUEST", "error")
    handle = await driver.launch(spec)
    try:
        with pytest.raises(DriverError, match="guest: the image has no OpenSSH server"):
            await wait_console_ready(handle, 30, lambda: driver.is_alive(handle))
    finally:
        await driver.force_stop(handle)


async def test_guest_that_powers_off_ends_its_firecracker(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """x86 Firecracker has no power-off device: the driver ends the process on the kernel's
    power-down line instead of waiting for the timeout."""
    if fc.kind != "double":
        pytest.skip("needs a guest whose init powers off on Ctrl-Alt-Del")
    monkeypatch.setenv("BANGER_FC_DOUBLE_GUEST", "poweroff")
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    handle = await driver.launch(spec)
    try:
        await wait_console(spec.console_log, "fake-guest: up")
        assert await driver.stop(handle, timeout=30) == "graceful"
        assert not driver.is_alive(handle)
        assert "reboot: Power down" in spec.console_log.read_text()
    finally:
        await driver.force_stop(handle)


async def test_unreachable_api_still_stops(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path
) -> None:
    driver = FirecrackerDriver()
    handle = await driver.launch(make_spec(guest_files, vm_dir))
    try:
        Path(handle.api_socket).unlink()  # the API can no longer be reached
        await driver.request_shutdown(handle)  # logs, does not raise
        assert driver.is_alive(handle)
        assert await driver.attach(handle)  # the VM still runs: signals reach it
        assert await driver.stop(handle, timeout=5) == "forced"
        assert not driver.is_alive(handle)
    finally:
        await driver.force_stop(handle)


async def test_cancelled_launch_leaves_no_process(
    fc: Backend, guest_files: GuestFiles, vm_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = make_spec(guest_files, vm_dir)
    driver = FirecrackerDriver()
    configuring = asyncio.Event()

    async def slow_configure(*args: object) -> None:
        configuring.set()  # the process runs and its API answered: now hang, as a slow VMM would
        await asyncio.Event().wait()

    monkeypatch.setattr(driver, "_configure", slow_configure)
    task = asyncio.create_task(driver.launch(spec))
    await asyncio.wait_for(configuring.wait(), 30)
    pids = [p for p, child in list(driver._children.items()) if child.poll() is None]
    assert pids and (spec.runtime_dir / "fc.sock").exists()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for pid in pids:
        assert not pid_running(pid)
    assert not (spec.runtime_dir / "fc.sock").exists()

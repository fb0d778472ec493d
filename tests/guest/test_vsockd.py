"""The guest vsock helper: its on-demand build, and the control protocol it serves.

This host has no vsock device for a guest (no /dev/vhost-vsock, no Firecracker), so the protocol
runs over the helper's AF_UNIX build (`-DVSOCKD_UNIX`, the same code path) with the payload's real
ctl.sh, as PID 1 of a private PID namespace (ctl.sh's `stop` signals PID 1, as in the guest). A
UDS peer plays Firecracker's hybrid-vsock side (`CONNECT <port>` → `OK <n>`, then bridged), so the
driver's `open_control()` and the daemon's ping reach the real handler. The real AF_VSOCK build
runs in a TCG guest in test_vsock_guest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from banger.errors import OperationFailed
from banger.guest import probes
from banger.guest.payload import CTL_SCRIPT, SeedConfig, build_seed
from banger.guest.ssh import generate_host_key
from banger.guest.vsockd import binary_path, doctor_status, ensure_vsockd
from banger.vmm.base import DriverError, VMHandle
from banger.vmm.firecracker import (
    CONTROL_VSOCK_PORT,
    FirecrackerDriver,
    open_control,
    send_control_stop,
)

UNIX = ("-DVSOCKD_UNIX",)
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def test_build_is_static_cached_by_source_hash_and_leaves_no_staging(cache: Path) -> None:
    out = ensure_vsockd(cache)
    assert out == binary_path(cache) and out.name.startswith("vsockd-")
    # Static: the guest has no libc of banger's choosing.
    ldd = subprocess.run(["ldd", str(out)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in (ldd.stdout + ldd.stderr)
    mtime = out.stat().st_mtime_ns
    assert ensure_vsockd(cache) == out and out.stat().st_mtime_ns == mtime  # not rebuilt
    unix = ensure_vsockd(cache, UNIX)
    assert unix != out  # the variant has its own key
    assert sorted(p.name for p in (cache / "guest").iterdir()) == sorted([out.name, unix.name])


def test_no_compiler_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(OperationFailed, match=r"no C compiler \(gcc\).*install gcc and libc6-dev"):
        ensure_vsockd(tmp_path / "cache")
    assert not (tmp_path / "cache" / "guest").exists() or not any(
        (tmp_path / "cache" / "guest").iterdir()
    )


def test_doctor_says_whether_firecracker_vms_can_get_the_helper(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ensure_vsockd(cache)
    assert doctor_status(cache) == (True, f"built at {binary_path(cache)}")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert doctor_status(tmp_path / "fresh") == (False, "no C compiler (gcc) on PATH to build it")


def _debugfs(img: Path, cmd: str) -> str:
    p = subprocess.run(["debugfs", "-R", cmd, str(img)], capture_output=True, text=True)
    return p.stdout + p.stderr


def test_seed_carries_the_helper_only_when_given(cache: Path, tmp_path: Path) -> None:
    priv, pub = generate_host_key(tmp_path / "hk")
    base = SeedConfig("id1", "fc-1", "ssh-ed25519 AAAAtest banger", priv, pub)
    qemu_seed, fc_seed = tmp_path / "q.ext4", tmp_path / "f.ext4"
    build_seed(qemu_seed, base)
    assert "File not found" in _debugfs(qemu_seed, "stat /bin/vsockd")
    assert "BANGER_VSOCK_PORT=''" in _debugfs(qemu_seed, "cat /vm.env")
    assert "ctl_serve" in _debugfs(qemu_seed, "cat /ctl.sh")
    helper = ensure_vsockd(cache)
    build_seed(fc_seed, dataclasses.replace(base, vsockd=helper, vsock_port=CONTROL_VSOCK_PORT))
    assert "Mode:  0755" in _debugfs(fc_seed, "stat /bin/vsockd")
    assert "BANGER_VSOCK_PORT='1024'" in _debugfs(fc_seed, "cat /vm.env")
    with pytest.raises(ValueError, match="invalid vsock port"):
        build_seed(tmp_path / "x.ext4", dataclasses.replace(base, vsockd=helper, vsock_port=0))


def test_vsock_build_refuses_a_bad_port(cache: Path) -> None:
    for bad in ("abc", "0", "4294967295", "12x"):
        p = subprocess.run(
            [str(ensure_vsockd(cache)), bad, "/bin/true"], capture_output=True, text=True
        )
        assert p.returncode == 1 and f"invalid vsock port {bad}" in p.stderr
    usage = subprocess.run([str(ensure_vsockd(cache))], capture_output=True, text=True)
    assert usage.returncode == 2 and "usage: vsockd PORT CMD" in usage.stderr


class Guest:
    """vsockd (AF_UNIX build) + ctl.sh under a PID-1 shell that records signals, like init."""

    def __init__(self, root: Path, vsockd: Path) -> None:
        self.root = root
        (root / "bin").mkdir()
        shutil.copy("/bin/busybox", root / "bin/busybox")
        (root / "ctl.sh").write_text(CTL_SCRIPT)
        self.listener = root / f"guest-{CONTROL_VSOCK_PORT}.sock"
        self.marker = root / "pid1-got-USR2"
        bb = str(root / "bin/busybox")
        pid1 = (
            f"trap '{bb} touch {self.marker}' USR2\n"
            f"{vsockd} {self.listener} {bb} sh {root / 'ctl.sh'} minimal &\n"
            f"while :; do {bb} sleep 1 & wait $!; done\n"
        )
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", bb, "sh", "-c", pid1],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while not self.listener.exists():
            assert self.proc.poll() is None, self.proc.stderr.read()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "vsockd did not listen within 10s"
            time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()


@contextlib.asynccontextmanager
async def hybrid_vsock(uds: Path, guest_dir: Path) -> AsyncIterator[None]:
    """Firecracker's host side of vsock: `CONNECT <port>\\n` → connect to the guest listener on
    that port → `OK <host port>\\n` and bridge; closed without an answer when nothing listens."""
    next_port = [1 << 30]

    async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        line = (await r.readline()).decode()
        parts = line.split()
        target = guest_dir / f"guest-{parts[1]}.sock" if len(parts) == 2 else None
        if parts[:1] != ["CONNECT"] or target is None:
            w.close()
            return
        try:
            gr, gw = await asyncio.open_unix_connection(target)
        except OSError:
            w.close()  # what Firecracker does: no answer, the stream just closes
            return
        next_port[0] += 1
        w.write(f"OK {next_port[0]}\n".encode())
        await w.drain()
        await asyncio.gather(_pipe(r, gw), _pipe(gr, w))
        w.close()
        gw.close()

    server = await asyncio.start_unix_server(serve, path=str(uds))
    try:
        yield
    finally:
        server.close()


@pytest.fixture
def guest(cache: Path, tmp_path: Path) -> Iterator[Guest]:
    (tmp_path / "g").mkdir()
    g = Guest(tmp_path / "g", ensure_vsockd(cache, UNIX))
    try:
        yield g
    finally:
        g.stop()


def _handle(uds: Path) -> VMHandle:
    return VMHandle(
        driver="firecracker",
        pid=0,
        api_socket="",
        control_socket=str(uds),
        details={"control_port": CONTROL_VSOCK_PORT},
    )


@needs_root
async def test_open_control_reaches_the_real_handler_over_hybrid_vsock(
    guest: Guest, tmp_path: Path
) -> None:
    uds = tmp_path / "v.sock"
    async with hybrid_vsock(uds, guest.root):
        handle = _handle(uds)
        # Every connection gets its own handler session: READY first, then answers.
        reader, writer = await open_control(handle, timeout=5)
        assert await asyncio.wait_for(reader.readline(), 5) == b"READY mode=minimal\n"
        writer.write(b"bogus\nping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"pong\n"
        # A second connection while the first is open is served too (one handler each).
        r2, w2 = await open_control(handle, timeout=5)
        assert await probes.ping_stream(r2, w2, 5) >= 0
        writer.write(b"ping\n")
        assert await asyncio.wait_for(reader.readline(), 5) == b"pong\n"
        writer.close()
        for _ in range(5):
            await probes.ping_stream(*await open_control(handle, timeout=5), 5)
        assert not guest.marker.exists()


@needs_root
async def test_stop_over_vsock_signals_init(guest: Guest, tmp_path: Path) -> None:
    uds = tmp_path / "v.sock"
    async with hybrid_vsock(uds, guest.root):
        reader, writer = await open_control(_handle(uds), timeout=5)
        await asyncio.wait_for(reader.readline(), 5)
        writer.write(b"stop\n")
        await writer.drain()
        deadline = time.monotonic() + 10
        while not guest.marker.exists():
            assert time.monotonic() < deadline, "PID 1 never got the stop (USR2)"
            await asyncio.sleep(0.02)
        writer.close()


@needs_root
async def test_connect_to_a_port_nobody_listens_on_is_a_clear_error(
    guest: Guest, tmp_path: Path
) -> None:
    uds = tmp_path / "v.sock"
    async with hybrid_vsock(uds, guest.root):
        with pytest.raises(DriverError, match="CONNECT 2000 .* nothing listens on that guest port"):
            await open_control(_handle(uds), port=2000, timeout=5)


@needs_root
async def test_driver_shutdown_request_reaches_init_over_vsock(
    guest: Guest, tmp_path: Path
) -> None:
    """request_shutdown sends Ctrl-Alt-Del (here the API is gone: logged) and `stop` over vsock."""
    uds = tmp_path / "v.sock"
    async with hybrid_vsock(uds, guest.root):
        handle = _handle(uds)
        handle.api_socket = str(tmp_path / "no-api.sock")
        # Returns (the deadline only stops a hang) although the API socket is gone.
        await asyncio.wait_for(FirecrackerDriver("firecracker").request_shutdown(handle), 60)
        deadline = time.monotonic() + 10
        while not guest.marker.exists():
            assert time.monotonic() < deadline, "PID 1 never got the stop (USR2)"
            await asyncio.sleep(0.02)
        # Nothing listening on the port: reported, not raised.
        assert not await send_control_stop(_handle(tmp_path / "nobody.sock"), timeout=1)

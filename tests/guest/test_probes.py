"""The guest probe script and its parsers, run for real against this host's /proc with busybox."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from banger.guest import probes


def run_script_here() -> probes.GuestSnapshot:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is not installed: run the suite as root after scripts/setup-host.sh")
    out = subprocess.run(
        ["sh", "-c", probes.guest_script(busybox)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    return probes.parse_snapshot(out)


def test_listening_sockets_with_owner_process() -> None:
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    tcp6 = socket.socket(socket.AF_INET6)
    tcp6.bind(("::1", 0))
    tcp6.listen()
    connected = socket.create_connection(tcp.getsockname())  # not listening: must not show
    try:
        snap = run_script_here()
        me = os.getpid()
        by_key = {(s.proto, s.address, s.port): s for s in snap.sockets}
        t = by_key[("tcp", "127.0.0.1", tcp.getsockname()[1])]
        with open(f"/proc/{me}/comm") as f:
            assert t.pid == me and t.process == f.read().strip()
        assert t.loopback_only
        u = by_key[("udp", "127.0.0.1", udp.getsockname()[1])]
        assert u.pid == me
        assert ("tcp", "::1", tcp6.getsockname()[1]) in by_key
        assert ("tcp", "127.0.0.1", connected.getsockname()[1]) not in by_key
    finally:
        for s in (tcp, udp, tcp6, connected):
            s.close()


def test_load_memory_disk_and_uptime() -> None:
    snap = run_script_here()
    assert snap.mem_total_bytes > 0 and 0 < snap.mem_used_bytes < snap.mem_total_bytes
    assert all(x >= 0 for x in snap.load)
    assert snap.uptime_seconds > 0
    root = [d for d in snap.disks if d.mount == "/"]
    assert root and root[0].total_bytes >= root[0].used_bytes > 0


def test_proc_net_parsing_of_known_lines() -> None:
    tcp = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
        "timeout inode\n"
        "   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 "
        "       0 1234 1 0000000000000000 100 0 0 10 0\n"
        "   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0 "
        "       0 1235 1 0000000000000000 100 0 0 10 0\n"
    )
    assert probes.parse_proc_net(tcp, "tcp") == [("0.0.0.0", 22, 1234)]
    tcp6 = (
        "header\n"
        "   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A "
        "00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0\n"
    )
    assert probes.parse_proc_net(tcp6, "tcp") == [("::1", 8080, 77)]


def test_incomplete_output_is_an_error() -> None:
    with pytest.raises(ValueError, match="incomplete"):
        probes.parse_snapshot(probes.MARK + "loadavg\n0.1 0.2 0.3 1/2 3\n")


def test_remote_command_quotes_the_script() -> None:
    cmd = probes.remote_command("echo 'a b'; exit 3")
    assert cmd.startswith(probes.BUSYBOX + " sh -c ")
    out = subprocess.run(["sh", "-c", cmd.replace(probes.BUSYBOX, "busybox")], capture_output=True)
    assert out.returncode == 3 and out.stdout == b"a b\n"


async def test_control_ping_against_a_real_unix_socket(tmp_path: Path) -> None:
    """The agent's protocol: a queued READY line may come first; `ping` is answered by `pong`."""
    path = str(tmp_path / "ctl.sock")

    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"READY mode=minimal\n")
        if (await reader.readline()).strip() == b"ping":
            writer.write(b"pong\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(agent, path)
    async with server:
        assert await probes.control_ping(path, timeout=2) >= 0


async def test_control_ping_times_out_when_nobody_answers(tmp_path: Path) -> None:
    path = str(tmp_path / "ctl.sock")

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(5)  # an agent that never answers is what this test is about

    server = await asyncio.start_unix_server(mute, path)
    async with server:
        with pytest.raises(TimeoutError):
            await probes.control_ping(path, timeout=0.3)
    with pytest.raises(OSError):
        await probes.control_ping(str(tmp_path / "absent.sock"), timeout=0.3)


def test_host_sampling_of_a_busy_process(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    idle = subprocess.Popen(["sleep", "60"])
    try:
        first, _, _ = probes.sample_process(busy.pid)
        idle_first, _, _ = probes.sample_process(idle.pid)
        # CPU time has to pass between the samples: wait until the busy one has used some
        # (a loaded host gives it a small share; only the comparison with an idle one counts).
        deadline = time.monotonic() + 30
        while True:
            second, rss, threads = probes.sample_process(busy.pid)
            if probes.cpu_percent(first, second) > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        idle_second, _, _ = probes.sample_process(idle.pid)
        assert probes.cpu_percent(first, second) > probes.cpu_percent(idle_first, idle_second)
        # RSS from the later sample: the first may catch the child still in exec (~300 KiB).
        assert rss > 1_000_000 and threads >= 1
    finally:
        for p in (busy, idle):
            p.kill()
            p.wait()
    f = tmp_path / "sparse"
    with f.open("wb") as fh:
        fh.truncate(100 * 1024 * 1024)
        fh.write(b"x" * 8192)
    allocated = probes.allocated_bytes(str(f))
    assert allocated is not None and 8192 <= allocated < 1024 * 1024
    assert probes.allocated_bytes(str(tmp_path / "missing")) is None


def test_guest_cpu_share_from_proc_stat() -> None:
    a = "cpu  100 0 100 800 0 0 0 0 0 0"
    b = "cpu  200 0 150 850 0 0 0 0 0 0"  # 150 busy of 200
    assert probes.parse_cpu_percent(a, b) == 75.0
    assert probes.parse_cpu_percent(a, a) == 0.0
    with pytest.raises(ValueError):
        probes.parse_cpu_percent("intr 1 2", b)
    snap = run_script_here()
    assert 0.0 <= snap.cpu_percent <= 100.0


def test_script_without_cpu_window_skips_the_sleep() -> None:
    fast = probes.guest_script("busybox", cpu=False)
    assert "sleep" not in fast and "cpu1" not in fast
    assert "/proc/net/$f" in fast and "sleep 0.5" in probes.guest_script("busybox")

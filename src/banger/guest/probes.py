"""Guest observations (load, memory, disk, listening sockets) with nothing in the guest beyond
banger's payload: one SSH command runs the payload's static busybox, which prints /proc files and
`df`; everything is parsed here, on the host. Every probe has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import shlex
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from banger import proc

BUSYBOX = "/.banger/bin/busybox"
MARK = "@@banger-probe "


# POSIX sh run by the payload's busybox. `ls -l /proc/*/fd` in one process (not one readlink per
# fd: forks are slow under TCG) maps socket inodes to pids; `grep -H` names each pid's command.
def guest_script(busybox: str = BUSYBOX, *, cpu: bool = True) -> str:
    """The probe script; `cpu=False` skips the half-second CPU window (ports need no CPU)."""
    script = _SCRIPT if cpu else _CPU_RE.sub("", _SCRIPT)
    return script.replace("@BUSYBOX@", shlex.quote(busybox))


_SCRIPT = f"""\
B=@BUSYBOX@
echo '{MARK}loadavg'; $B cat /proc/loadavg
echo '{MARK}meminfo'; $B cat /proc/meminfo
echo '{MARK}df'; $B df -P -k / /root 2>/dev/null
echo '{MARK}uptime'; $B cat /proc/uptime
# cpu>
echo '{MARK}cpu1'; $B head -n 1 /proc/stat
$B sleep 0.5
echo '{MARK}cpu2'; $B head -n 1 /proc/stat
# <cpu
for f in tcp tcp6 udp udp6; do
  echo "{MARK}net $f"; $B cat /proc/net/$f 2>/dev/null
done
echo '{MARK}fds'; $B ls -l /proc/[0-9]*/fd 2>/dev/null
echo '{MARK}comm'; $B grep -H '' /proc/[0-9]*/comm 2>/dev/null
echo '{MARK}end'
"""


_CPU_RE = re.compile(r"# cpu>\n.*?# <cpu\n", re.S)


@dataclass(frozen=True)
class ListeningSocket:
    proto: str  # "tcp" | "udp"
    address: str
    port: int
    inode: int
    pid: int | None = None
    process: str | None = None

    @property
    def loopback_only(self) -> bool:
        return ipaddress.ip_address(self.address).is_loopback


@dataclass(frozen=True)
class DiskUsage:
    mount: str
    total_bytes: int
    used_bytes: int


@dataclass
class GuestSnapshot:
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    mem_total_bytes: int = 0
    mem_available_bytes: int = 0
    uptime_seconds: float = 0.0
    # Share of guest CPU time spent busy over a half-second window, as the guest sees it (0-100,
    # all vCPUs): unlike host CPU % it does not depend on how loaded the host is.
    cpu_percent: float = 0.0
    disks: list[DiskUsage] = field(default_factory=list)
    sockets: list[ListeningSocket] = field(default_factory=list)

    @property
    def mem_used_bytes(self) -> int:
        return max(0, self.mem_total_bytes - self.mem_available_bytes)


def split_sections(text: str) -> dict[str, str]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith(MARK):
            current = sections.setdefault(line[len(MARK) :].strip(), [])
            continue
        if current is not None:
            current.append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def _hex_addr(hex_ip: str) -> str:
    """/proc/net address words are host-endian (little-endian on x86) 32-bit groups."""
    raw = bytes.fromhex(hex_ip)
    swapped = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(swapped))


def parse_proc_net(text: str, proto: str) -> list[tuple[str, int, int]]:
    """Listening sockets from /proc/net/{tcp,tcp6,udp,udp6}: (address, port, inode).

    TCP: state 0A (LISTEN). UDP: state 07 with no remote peer (a bound, unconnected socket)."""
    out = []
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 10 or ":" not in parts[1]:
            continue
        local, remote, state = parts[1], parts[2], parts[3]
        if proto == "tcp" and state != "0A":
            continue
        if proto == "udp" and (state != "07" or not set(remote.split(":")[1]) <= {"0"}):
            continue
        hex_ip, hex_port = local.split(":")
        try:
            out.append((_hex_addr(hex_ip), int(hex_port, 16), int(parts[9])))
        except ValueError:
            continue
    return out


_FD_DIR_RE = re.compile(r"^/proc/(\d+)/fd:$")
_SOCKET_RE = re.compile(r"-> socket:\[(\d+)\]$")


def parse_fd_listing(text: str) -> dict[int, int]:
    """socket inode → pid, from `ls -l /proc/[0-9]*/fd` (directory headers, then entries)."""
    owners: dict[int, int] = {}
    pid: int | None = None
    for line in text.splitlines():
        m = _FD_DIR_RE.match(line.strip())
        if m:
            pid = int(m.group(1))
            continue
        s = _SOCKET_RE.search(line.strip())
        if s and pid is not None:
            owners.setdefault(int(s.group(1)), pid)
    return owners


def parse_comm(text: str) -> dict[int, str]:
    names = {}
    for line in text.splitlines():
        m = re.match(r"^/proc/(\d+)/comm:(.*)$", line)
        if m:
            names[int(m.group(1))] = m.group(2).strip()
    return names


def parse_meminfo(text: str) -> tuple[int, int]:
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            values[key.strip()] = int(fields[0]) * 1024
    total = values.get("MemTotal", 0)
    available = values.get("MemAvailable", values.get("MemFree", 0))
    return total, available


def parse_cpu_percent(first: str, second: str) -> float:
    """Busy share between two `cpu` lines of /proc/stat (idle + iowait count as idle)."""

    def fields(line: str) -> list[int]:
        parts = line.split()
        if not parts or parts[0] != "cpu":
            raise ValueError(f"not a /proc/stat cpu line: {line!r}")
        return [int(x) for x in parts[1:9]]

    a, b = fields(first.strip()), fields(second.strip())
    delta = [y - x for x, y in zip(a, b, strict=True)]
    total = sum(delta)
    if total <= 0:
        return 0.0
    idle = delta[3] + delta[4]
    return round(100.0 * (total - idle) / total, 1)


def parse_df(text: str) -> list[DiskUsage]:
    out, seen = [], set()
    for line in text.splitlines()[1:]:
        parts = line.split()
        if len(parts) < 6 or not parts[1].isdigit():
            continue
        mount = parts[5]
        if mount in seen:
            continue
        seen.add(mount)
        out.append(DiskUsage(mount, int(parts[1]) * 1024, int(parts[2]) * 1024))
    return out


def parse_snapshot(text: str) -> GuestSnapshot:
    s = split_sections(text)
    if "end" not in s:
        raise ValueError("the guest probe output is incomplete")
    snap = GuestSnapshot()
    load = s.get("loadavg", "").split()
    if len(load) >= 3:
        snap.load = (float(load[0]), float(load[1]), float(load[2]))
    snap.mem_total_bytes, snap.mem_available_bytes = parse_meminfo(s.get("meminfo", ""))
    up = s.get("uptime", "").split()
    snap.uptime_seconds = float(up[0]) if up else 0.0
    snap.disks = parse_df(s.get("df", ""))
    if s.get("cpu1") and s.get("cpu2"):
        snap.cpu_percent = parse_cpu_percent(s["cpu1"], s["cpu2"])
    owners = parse_fd_listing(s.get("fds", ""))
    names = parse_comm(s.get("comm", ""))
    found: dict[tuple[str, str, int], ListeningSocket] = {}
    for key in ("tcp", "tcp6", "udp", "udp6"):
        proto = key.rstrip("6")
        for addr, port, inode in parse_proc_net(s.get(f"net {key}", ""), proto):
            pid = owners.get(inode)
            sock = ListeningSocket(proto, addr, port, inode, pid, names.get(pid) if pid else None)
            found.setdefault((proto, addr, port), sock)
    snap.sockets = sorted(found.values(), key=lambda x: (x.proto, x.port, x.address))
    return snap


def remote_command(script: str) -> str:
    """One remote command string (ssh joins argv with spaces for the remote shell)."""
    return f"{BUSYBOX} sh -c {shlex.quote(script)}"


async def run_ssh(ssh_argv: Sequence[str], *, timeout: float) -> tuple[proc.Result, float]:
    """Run an ssh argv (built by guest.ssh.ssh_argv) with a hard timeout; (result, seconds)."""
    started = time.monotonic()
    result = await proc.run(ssh_argv, check=False, timeout=timeout, what="ssh")
    return result, time.monotonic() - started


# --- control channel (virtio-serial port; the payload's agent answers `ping` with `pong`) ---


async def ping_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float = 2.0
) -> float:
    """`ping` → `pong` on an open control stream (closed afterwards); seconds taken.

    The agent may have queued a READY line for whoever connects first: skip anything but pong."""
    started = time.monotonic()

    async def exchange() -> None:
        writer.write(b"ping\n")
        await writer.drain()
        while True:
            line = await reader.readline()
            if not line:
                raise ConnectionError("the control channel closed without answering")
            if line.strip() == b"pong":
                return

    try:
        await asyncio.wait_for(exchange(), timeout)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return time.monotonic() - started


async def control_ping(path: str, timeout: float = 2.0) -> float:
    """Round trip of `ping` on a virtio-serial control socket (QEMU), in seconds."""
    started = time.monotonic()
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(path), timeout)
    remaining = max(0.1, timeout - (time.monotonic() - started))
    await ping_stream(reader, writer, remaining)
    return time.monotonic() - started


# --- host side of a VM: the VMM process and its disk files ---


@dataclass
class HostSample:
    cpu_seconds: float
    at: float


@dataclass(frozen=True)
class HostStats:
    cpu_percent: float
    rss_bytes: int
    threads: int


def sample_process(pid: int) -> tuple[HostSample, int, int]:
    """(cpu sample, rss bytes, threads) of the VMM process; psutil.Error when it is gone."""
    import psutil

    p = psutil.Process(pid)
    with p.oneshot():
        t = p.cpu_times()
        rss = p.memory_info().rss
        threads = p.num_threads()
    return HostSample(t.user + t.system, time.monotonic()), rss, threads


def cpu_percent(prev: HostSample, cur: HostSample) -> float:
    """CPU use between two samples, in percent of one core (QEMU TCG threads can exceed 100)."""
    elapsed = cur.at - prev.at
    if elapsed <= 0:
        return 0.0
    return round(100.0 * max(0.0, cur.cpu_seconds - prev.cpu_seconds) / elapsed, 1)


def allocated_bytes(path: str | None) -> int | None:
    """Bytes a (sparse / qcow2) disk file really occupies on the host."""
    if not path:
        return None
    try:
        return os.stat(path).st_blocks * 512
    except OSError:
        return None

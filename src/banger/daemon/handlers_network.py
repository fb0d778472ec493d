"""RPC handlers: vm.ping, vm.health, vm.stats, vm.ports (guest observability).

Every probe is bounded by a timeout and a stopped VM answers `not_running`. Guest data comes from
the banger payload only (control channel, busybox over SSH; see guest/probes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from pydantic import Field

from banger.daemon.context import RequestContext
from banger.daemon.params import MAX_LIST_ITEMS, Params, Ref, parse_params
from banger.guest import probes
from banger.rpc.errors import NotRunning, OperationFailed, RPCError
from banger.vmm.base import DriverError
from banger.vms import rootdisk

if TYPE_CHECKING:
    from banger.daemon.app import Daemon
    from banger.guest.ssh import SSHTarget
    from banger.vmm.base import VMHandle
    from banger.vms.spec import VMRecord

CONTROL_TIMEOUT = 3.0
SSH_TIMEOUT = 15.0
PROBE_TIMEOUT = 30.0
CPU_WINDOW = 0.5  # seconds between two CPU samples when there is no recent earlier sample


class RefParams(Params):
    ref: Ref


class PortsParams(Params):
    # Empty: every running VM.
    refs: list[Ref] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)


@dataclass(frozen=True)
class VMView:
    """What observability needs to know about one VM (built from the VM service's record)."""

    id: str
    name: str
    running: bool
    pid: int | None = None
    control_socket: str | None = None
    network: str = "user"  # "user" | "tap" | "none"
    disks: dict[str, str] = field(default_factory=dict)  # label -> host path


class _VMService(Protocol):
    """What observability needs from the VM service (`d.vms`)."""

    async def get(self, ref: str) -> VMRecord: ...
    async def list(self) -> list[VMRecord]: ...
    async def ssh_target(self, ref: str) -> SSHTarget: ...
    def handle(self, vm_id: str) -> VMHandle | None: ...


def _vms(d: Daemon) -> _VMService:
    vms = getattr(d, "vms", None)
    if vms is None:
        raise OperationFailed("this daemon has no VM service")
    return cast(_VMService, vms)


def _handle(d: Daemon, vm_id: str) -> VMHandle | None:
    return _vms(d).handle(vm_id)


def _to_view(d: Daemon, vm: VMRecord) -> VMView:
    handle = _handle(d, vm.id) if vm.state == "running" else None
    return VMView(
        id=vm.id,
        name=vm.name,
        running=vm.state == "running" and handle is not None,
        pid=handle.pid if handle else vm.pid,
        control_socket=handle.control_socket if handle else None,
        network=vm.network,
        disks={
            "root_disk": str(rootdisk.root_disk(vm.dir).path),
            "work_disk": str(vm.dir / "work.ext4"),
        },
    )


async def _view(d: Daemon, ref: str) -> VMView:
    # get() refreshes liveness: a VM whose VMM died reads as stopped here.
    return _to_view(d, await _vms(d).get(ref))


async def _running_views(d: Daemon) -> list[VMView]:
    return [_to_view(d, vm) for vm in await _vms(d).list() if vm.state == "running"]


async def _hmp(d: Daemon, vm_id: str, command: str) -> str | None:
    """A QEMU monitor command for the VM, or None when its VMM has no monitor (Firecracker)."""
    handle = _handle(d, vm_id)
    if handle is None:
        return None
    from banger.vmm.select import driver_by_name

    driver = driver_by_name(d.config, handle.driver)
    hmp = getattr(driver, "hmp", None)
    if hmp is None:
        return None
    return cast(str, await asyncio.wait_for(hmp(handle, command), CONTROL_TIMEOUT))


def _require_running(vm: VMView) -> None:
    if not vm.running:
        raise NotRunning(
            f"vm {vm.name!r} is not running; start it with `banger vm start {vm.name}`"
        )


async def _control_rtt(d: Daemon, vm: VMView) -> float:
    handle = _handle(d, vm.id)
    if handle is not None and handle.driver == "firecracker":
        # Hybrid vsock: CONNECT to the agent's port first, then the same line protocol.
        from banger.vmm.firecracker import open_control

        started = time.monotonic()
        reader, writer = await open_control(handle, timeout=CONTROL_TIMEOUT)
        await probes.ping_stream(reader, writer, CONTROL_TIMEOUT)
        return time.monotonic() - started
    assert vm.control_socket is not None
    return await probes.control_ping(vm.control_socket, CONTROL_TIMEOUT)


async def _check_control(d: Daemon, vm: VMView) -> dict[str, Any]:
    if not vm.control_socket:
        return {"name": "control", "ok": False, "error": "this VM has no control channel"}
    try:
        rtt = await _control_rtt(d, vm)
        return {"name": "control", "ok": True, "latency_ms": round(rtt * 1000, 1)}
    except TimeoutError:
        err = f"no answer within {CONTROL_TIMEOUT:.0f}s"
    except (OSError, ConnectionError, DriverError) as e:
        err = str(e) or type(e).__name__
    return {"name": "control", "ok": False, "error": err}


async def _ssh(d: Daemon, vm: VMView, script: str, timeout: float) -> tuple[str, float]:
    from banger.guest.ssh import ssh_argv

    target = await _vms(d).ssh_target(vm.id)
    argv = ssh_argv(target, [probes.remote_command(script)], tty=False)
    result, seconds = await probes.run_ssh(argv, timeout=timeout)
    if result.returncode != 0:
        tail = " | ".join(result.err.strip().splitlines()[-2:]) or f"exit {result.returncode}"
        raise OperationFailed(f"ssh to {vm.name}: {tail}")
    return result.out, seconds


async def _check_ssh(d: Daemon, vm: VMView) -> dict[str, Any]:
    try:
        _, seconds = await _ssh(d, vm, "true", SSH_TIMEOUT)
        return {"name": "ssh", "ok": True, "latency_ms": round(seconds * 1000, 1)}
    except RPCError as e:
        return {"name": "ssh", "ok": False, "error": e.message}


async def vm_ping(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    p = parse_params(RefParams, params)
    vm = await _view(d, p.ref)
    _require_running(vm)
    check = await _check_control(d, vm)
    return {
        "vm": vm.name,
        "alive": check["ok"],
        "latency_ms": check.get("latency_ms"),
        "error": check.get("error"),
    }


async def vm_health(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    p = parse_params(RefParams, params)
    vm = await _view(d, p.ref)
    _require_running(vm)
    checks = list(await asyncio.gather(_check_control(d, vm), _check_ssh(d, vm)))
    return {"vm": vm.name, "healthy": all(c["ok"] for c in checks), "checks": checks}


# --- stats ---------------------------------------------------------------------------------------

# vm id -> last CPU sample, so `--watch` reports the CPU used between two refreshes.
_cpu_samples: dict[str, probes.HostSample] = {}


async def _host_stats(vm: VMView) -> dict[str, Any]:
    if vm.pid is None:
        raise NotRunning(f"vm {vm.name!r} has no VMM process")
    try:
        cur, rss, threads = await asyncio.to_thread(probes.sample_process, vm.pid)
        prev = _cpu_samples.get(vm.id)
        if prev is None or cur.at - prev.at > 60:
            await asyncio.sleep(CPU_WINDOW)
            prev, (cur, rss, threads) = cur, await asyncio.to_thread(probes.sample_process, vm.pid)
    except Exception as e:  # psutil.NoSuchProcess and friends: the VM just went away
        raise NotRunning(f"vm {vm.name!r} stopped while being measured ({e})") from None
    _cpu_samples[vm.id] = cur
    disks = {label: probes.allocated_bytes(path) for label, path in vm.disks.items()}
    return {
        "pid": vm.pid,
        "cpu_percent": probes.cpu_percent(prev, cur),
        "cpu_seconds": round(cur.cpu_seconds, 2),
        "rss_bytes": rss,
        "threads": threads,
        "disk_allocated_bytes": disks,
    }


async def _guest_snapshot(d: Daemon, vm: VMView, *, cpu: bool = True) -> probes.GuestSnapshot:
    out, _ = await _ssh(d, vm, probes.guest_script(cpu=cpu), PROBE_TIMEOUT)
    try:
        return probes.parse_snapshot(out)
    except ValueError as e:
        raise OperationFailed(f"{vm.name}: {e}") from None


async def vm_stats(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    p = parse_params(RefParams, params)
    vm = await _view(d, p.ref)
    _require_running(vm)
    host_task = asyncio.create_task(_host_stats(vm))
    guest: dict[str, Any] | None = None
    guest_error: str | None = None
    try:
        snap = await _guest_snapshot(d, vm)
        guest = {
            "cpu_percent": snap.cpu_percent,
            "load": list(snap.load),
            "mem_total_bytes": snap.mem_total_bytes,
            "mem_used_bytes": snap.mem_used_bytes,
            "uptime_seconds": snap.uptime_seconds,
            "disks": [
                {"mount": u.mount, "total_bytes": u.total_bytes, "used_bytes": u.used_bytes}
                for u in snap.disks
            ],
        }
    except RPCError as e:
        guest_error = e.message
    host = await host_task
    return {
        "vm": vm.name,
        "at": time.time(),
        "host": host,
        "guest": guest,
        "guest_error": guest_error,
    }


# --- ports ---------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_FWD_RE = re.compile(r"TCP\[HOST_FORWARD\]\s+\d+\s+(\S*)\s+(\d+)\s+\S+\s+(\d+)")


def parse_usernet_forwards(text: str) -> dict[int, int]:
    """guest port -> host port of the TCP forwards listed by QEMU's `info usernet`."""
    out: dict[int, int] = {}
    for m in _FWD_RE.finditer(text):
        out.setdefault(int(m.group(3)), int(m.group(2)))
    return out


async def _user_forwards(d: Daemon, vm: VMView, wanted: set[int]) -> dict[int, int]:
    """Host ports forwarded to `wanted` guest ports on a user-mode VM, adding missing ones."""
    info = await _hmp(d, vm.id, "info usernet")
    if info is None:
        return {}
    current = parse_usernet_forwards(info)
    for port in sorted(wanted - set(current)):
        host_port = _free_port()
        # netdev id "n0" is the QEMU driver's (vmm/qemu.py); an empty reply means it worked.
        reply = await _hmp(d, vm.id, f"hostfwd_add n0 tcp:127.0.0.1:{host_port}-:{port}")
        if reply is not None and reply.strip():
            raise OperationFailed(f"cannot forward guest port {port}: {reply.strip()}")
        current[port] = host_port
    return current


async def _vm_ports(d: Daemon, vm: VMView) -> list[dict[str, Any]]:
    snap = await _guest_snapshot(d, vm, cpu=False)
    reachable = {s.port for s in snap.sockets if s.proto == "tcp" and not s.loopback_only}
    forwards: dict[int, int] = {}
    if vm.network == "user" and reachable:
        with contextlib.suppress(RPCError):
            forwards = await _user_forwards(d, vm, reachable)
    rows = []
    for s in snap.sockets:
        url: str | None = None
        if s.proto == "tcp" and not s.loopback_only:
            if vm.network == "tap":
                url = f"{vm.name}.vm:{s.port}"
            elif s.port in forwards:
                url = f"127.0.0.1:{forwards[s.port]}"
            if url is not None:
                url = f"ssh://root@{url}" if s.port == 22 else f"http://{url}"
        rows.append(
            {
                "vm": vm.name,
                "proto": s.proto,
                "address": s.address,
                "port": s.port,
                "pid": s.pid,
                "process": s.process,
                "url": url,
            }
        )
    return rows


async def vm_ports(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    p = parse_params(PortsParams, params)
    if p.refs:
        views = [await _view(d, ref) for ref in p.refs]
        for vm in views:
            _require_running(vm)
    else:
        views = await _running_views(d)
    results = await asyncio.gather(*(_vm_ports(d, vm) for vm in views), return_exceptions=True)
    rows: list[dict[str, Any]] = []
    for vm, res in zip(views, results, strict=True):
        if isinstance(res, BaseException):
            if isinstance(res, asyncio.CancelledError):
                raise res
            if p.refs:  # asked for by name: say why it failed
                raise res if isinstance(res, RPCError) else OperationFailed(f"{vm.name}: {res}")
            rows.append({"vm": vm.name, "error": getattr(res, "message", str(res))})
            continue
        rows.extend(res)
    return rows

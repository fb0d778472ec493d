"""Guest observability: ping, health, stats and ports of running VMs.

Every probe is bounded by a timeout and a stopped VM raises `NotRunning`. Guest data comes from
the banger payload only (the control channel through the VM's driver, busybox over SSH; see
guest/probes.py). Collaborators come through the constructor as small Protocols; the driver is
asked for capabilities, never for its name.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from banger.errors import BangerError, Conflict, NotRunning, OperationFailed
from banger.guest import probes
from banger.vmm.base import Capability, Driver, DriverError
from banger.vms import disks, rootdisk

if TYPE_CHECKING:
    from banger.guest.ssh import SSHTarget
    from banger.vmm.base import VMHandle
    from banger.vms.spec import VMRecord

log = logging.getLogger("banger.vms.observe")

CONTROL_TIMEOUT = 3.0
SSH_TIMEOUT = 15.0
PROBE_TIMEOUT = 30.0
CPU_WINDOW = 0.5  # seconds between two CPU samples when there is no recent earlier sample
CPU_SAMPLE_MAX_AGE = 60.0  # an older sample says nothing about the CPU used "now"


class VMLookup(Protocol):
    """What observation needs from the VM service."""

    async def get(self, ref: str) -> VMRecord:
        """The VM by name or id, its liveness refreshed (a dead VMM reads as stopped)."""
        ...

    async def list(self) -> list[VMRecord]: ...

    def handle(self, vm_id: str) -> VMHandle | None: ...

    async def ssh_target(self, ref: str) -> SSHTarget: ...


class Drivers(Protocol):
    """The daemon's driver registry (vmm/registry.py)."""

    def get(self, name: str) -> Driver: ...


class URLHosts(Protocol):
    """The network service: where a user on this host reaches a bridged guest's port."""

    def url_host(self, vm_id: str, guest_port: int) -> tuple[str, int] | None: ...


@dataclass(frozen=True)
class VMView:
    """What observation knows about one VM (built from the VM service's record and handle)."""

    id: str
    name: str
    network: str = "user"  # "user" | "tap" | "none"
    handle: VMHandle | None = None  # None: not running
    pid: int | None = None
    disks: dict[str, str] = field(default_factory=dict)  # label -> host path

    @property
    def running(self) -> bool:
        return self.handle is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forwards_by_guest_port(pairs: Sequence[tuple[int, int]]) -> dict[int, int]:
    """guest port -> host port from a driver's (host_port, guest_port) list (first one wins)."""
    out: dict[int, int] = {}
    for host_port, guest_port in pairs:
        out.setdefault(guest_port, host_port)
    return out


def _message(e: BaseException) -> str:
    message = getattr(e, "message", None)
    return str(message) if message else (str(e) or type(e).__name__)


class ObservationService:
    def __init__(
        self,
        vms: VMLookup,
        drivers: Drivers,
        network: URLHosts | None,
        *,
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        self._vms = vms
        self._drivers = drivers
        self._network = network
        self._pick_port = pick_port
        # vm id -> last CPU sample, so `--watch` reports the CPU used between two refreshes.
        self._cpu_samples: dict[str, probes.HostSample] = {}

    # --- views -----------------------------------------------------------------------------------

    def _to_view(self, vm: VMRecord) -> VMView:
        handle = self._vms.handle(vm.id) if vm.state == "running" else None
        return VMView(
            id=vm.id,
            name=vm.name,
            network=vm.network,
            handle=handle,
            pid=handle.pid if handle else vm.pid,
            disks={
                "root_disk": str(rootdisk.root_disk(vm.dir).path),
                "work_disk": str(disks.work_disk(vm.dir).path),
            },
        )

    async def _running(self, ref: str) -> VMView:
        # get() refreshes liveness: a VM whose VMM died reads as stopped here.
        vm = await self._vms.get(ref)
        if vm.state == "paused":
            raise Conflict(f"vm {vm.name} is paused: resume it to reach the guest")
        view = self._to_view(vm)
        if not view.running:
            raise NotRunning(f"vm {view.name!r} is not running")
        return view

    def _driver(self, vm: VMView) -> Driver:
        assert vm.handle is not None
        return self._drivers.get(vm.handle.driver)

    # --- control channel and SSH -----------------------------------------------------------------

    async def _check_control(self, vm: VMView) -> dict[str, Any]:
        if vm.handle is None or not vm.handle.control_socket:
            return {"name": "control", "ok": False, "error": "this VM has no control channel"}
        try:
            started = time.monotonic()
            reader, writer = await self._driver(vm).open_control(vm.handle, CONTROL_TIMEOUT)
            remaining = max(0.1, CONTROL_TIMEOUT - (time.monotonic() - started))
            await probes.ping_stream(reader, writer, remaining)
            rtt = time.monotonic() - started
            return {"name": "control", "ok": True, "latency_ms": round(rtt * 1000, 1)}
        except TimeoutError:
            err = f"no answer within {CONTROL_TIMEOUT:.0f}s"
        except (OSError, ConnectionError, DriverError) as e:
            err = str(e) or type(e).__name__
        return {"name": "control", "ok": False, "error": err}

    async def _ssh(self, vm: VMView, script: str, timeout: float) -> tuple[str, float]:
        from banger.guest.ssh import ssh_argv

        target = await self._vms.ssh_target(vm.id)
        argv = ssh_argv(target, [probes.remote_command(script)], tty=False)
        result, seconds = await probes.run_ssh(argv, timeout=timeout)
        if result.returncode != 0:
            tail = " | ".join(result.err.strip().splitlines()[-2:]) or f"exit {result.returncode}"
            raise OperationFailed(f"ssh to {vm.name}: {tail}")
        return result.out, seconds

    async def _check_ssh(self, vm: VMView) -> dict[str, Any]:
        try:
            _, seconds = await self._ssh(vm, "true", SSH_TIMEOUT)
            return {"name": "ssh", "ok": True, "latency_ms": round(seconds * 1000, 1)}
        except Exception as e:  # a failed check is part of the answer, not an error of the call
            return {"name": "ssh", "ok": False, "error": _message(e)}

    async def ping(self, ref: str) -> dict[str, Any]:
        """Round trip on the guest control channel."""
        vm = await self._running(ref)
        check = await self._check_control(vm)
        return {
            "vm": vm.name,
            "alive": check["ok"],
            "latency_ms": check.get("latency_ms"),
            "error": check.get("error"),
        }

    async def health(self, ref: str) -> dict[str, Any]:
        """The control channel and SSH, each with its latency or why it failed."""
        vm = await self._running(ref)
        checks = list(await asyncio.gather(self._check_control(vm), self._check_ssh(vm)))
        return {"vm": vm.name, "healthy": all(c["ok"] for c in checks), "checks": checks}

    # --- stats -----------------------------------------------------------------------------------

    async def _host_stats(self, vm: VMView) -> dict[str, Any]:
        if vm.pid is None:
            raise NotRunning(f"vm {vm.name!r} has no VMM process")
        pid = vm.pid
        try:
            cur, rss, threads = await asyncio.to_thread(probes.sample_process, pid)
            prev = self._cpu_samples.get(vm.id)
            if prev is None or cur.at - prev.at > CPU_SAMPLE_MAX_AGE:
                await asyncio.sleep(CPU_WINDOW)  # a measuring window, not synchronisation
                prev, (cur, rss, threads) = cur, await asyncio.to_thread(probes.sample_process, pid)
        except Exception as e:  # psutil.NoSuchProcess and friends: the VM just went away
            raise NotRunning(f"vm {vm.name!r} stopped while being measured ({e})") from None
        self._cpu_samples[vm.id] = cur
        disks = {label: probes.allocated_bytes(path) for label, path in vm.disks.items()}
        return {
            "pid": pid,
            "cpu_percent": probes.cpu_percent(prev, cur),
            "cpu_seconds": round(cur.cpu_seconds, 2),
            "rss_bytes": rss,
            "threads": threads,
            "disk_allocated_bytes": disks,
        }

    async def _guest_snapshot(self, vm: VMView, *, cpu: bool = True) -> probes.GuestSnapshot:
        out, _ = await self._ssh(vm, probes.guest_script(cpu=cpu), PROBE_TIMEOUT)
        try:
            return probes.parse_snapshot(out)
        except ValueError as e:
            raise OperationFailed(f"{vm.name}: {e}") from None

    async def stats(self, ref: str) -> dict[str, Any]:
        """The VMM process on the host, and the guest's own view (or why it is missing)."""
        vm = await self._running(ref)
        host_task = asyncio.create_task(self._host_stats(vm))
        guest: dict[str, Any] | None = None
        guest_error: str | None = None
        try:
            snap = await self._guest_snapshot(vm)
            guest = guest_row(snap)
        except asyncio.CancelledError:
            host_task.cancel()
            raise
        except Exception as e:  # the host half still answers when the guest cannot
            guest_error = _message(e)
        host = await host_task
        return {
            "vm": vm.name,
            "at": time.time(),
            "host": host,
            "guest": guest,
            "guest_error": guest_error,
        }

    # --- ports -----------------------------------------------------------------------------------

    async def _forwards(self, vm: VMView, wanted: set[int], op_id: str) -> dict[int, int]:
        """Host ports forwarded to `wanted` guest ports, adding the missing ones (best effort:
        a VM whose driver cannot forward, or whose forward fails, lists its ports without URL)."""
        if vm.handle is None or vm.network != "user" or not wanted:
            return {}
        driver = self._driver(vm)
        if Capability.PORT_FORWARD not in driver.capabilities:
            return {}
        current: dict[int, int] = {}
        try:
            current = forwards_by_guest_port(
                await asyncio.wait_for(driver.port_forwards(vm.handle), CONTROL_TIMEOUT)
            )
            for port in sorted(wanted - set(current)):
                host_port = self._pick_port()
                await asyncio.wait_for(
                    driver.add_port_forward(vm.handle, host_port, port), CONTROL_TIMEOUT
                )
                current[port] = host_port
        except (DriverError, OSError, TimeoutError) as e:
            log.warning("op %s: vm %s: port forwards: %s", op_id or "-", vm.name, _message(e))
        return current

    def _url(self, vm: VMView, port: int, forwards: dict[int, int]) -> str | None:
        hostport: str | None = None
        bridged = self._network.url_host(vm.id, port) if self._network is not None else None
        if bridged is not None:
            hostport = f"{bridged[0]}:{bridged[1]}"
        elif port in forwards:
            hostport = f"127.0.0.1:{forwards[port]}"
        if hostport is None:
            return None
        return f"ssh://root@{hostport}" if port == 22 else f"http://{hostport}"

    async def _vm_ports(self, vm: VMView, op_id: str) -> list[dict[str, Any]]:
        snap = await self._guest_snapshot(vm, cpu=False)
        return await self.port_rows(vm, snap.sockets, op_id=op_id)

    async def port_rows(
        self, vm: VMView, sockets: Sequence[probes.ListeningSocket], *, op_id: str = ""
    ) -> list[dict[str, Any]]:
        """One row per listening socket; reachable TCP ports get a URL (forwarding as needed)."""
        reachable = {s.port for s in sockets if s.proto == "tcp" and not s.loopback_only}
        forwards = await self._forwards(vm, reachable, op_id)
        rows = []
        for s in sockets:
            reach = s.proto == "tcp" and not s.loopback_only
            rows.append(
                {
                    "vm": vm.name,
                    "proto": s.proto,
                    "address": s.address,
                    "port": s.port,
                    "pid": s.pid,
                    "process": s.process,
                    "url": self._url(vm, s.port, forwards) if reach else None,
                }
            )
        return rows

    async def ports(self, refs: Sequence[str], *, op_id: str = "") -> list[dict[str, Any]]:
        """Listening sockets of the named VMs (each must run), or of every running VM (`refs`
        empty: a VM that fails gets an error row instead of failing the call)."""
        if refs:
            views = [await self._running(ref) for ref in refs]
        else:
            views = [self._to_view(vm) for vm in await self._vms.list() if vm.state == "running"]
            views = [v for v in views if v.running]
        results = await asyncio.gather(
            *(self._vm_ports(vm, op_id) for vm in views), return_exceptions=True
        )
        rows: list[dict[str, Any]] = []
        for vm, res in zip(views, results, strict=True):
            if isinstance(res, BaseException):
                if not isinstance(res, Exception):  # cancellation and friends
                    raise res
                if refs:  # asked for by name: say why it failed
                    if isinstance(res, BangerError):
                        raise res
                    raise OperationFailed(f"{vm.name}: {_message(res)}") from res
                rows.append({"vm": vm.name, "error": _message(res)})
                continue
            rows.extend(res)
        return rows


def guest_row(snap: probes.GuestSnapshot) -> dict[str, Any]:
    return {
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

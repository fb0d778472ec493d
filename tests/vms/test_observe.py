"""The observation service (vms/observe.py) without a guest: an in-memory double of banger's own
Driver protocol (vmm/base.py) behind the real DriverRegistry, a VM lookup holding records, and a
control-channel agent on a socketpair answering `ping` with `pong` as guest/payload.py does.

The real QEMU paths (vm.ping/health/stats/ports against booted guests) stay in
tests/network/test_vm_network_e2e.py and tests/vms/test_cli_tty.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from banger.config import Config
from banger.errors import NotFound, NotRunning, OperationFailed
from banger.guest.probes import ListeningSocket
from banger.guest.ssh import SSHTarget
from banger.vmm.base import (
    Alive,
    Capability,
    Driver,
    DriverError,
    GuestChannel,
    MissingCapability,
    VMHandle,
    VMSpec,
)
from banger.vmm.registry import DriverRegistry
from banger.vms.observe import ObservationService, forwards_by_guest_port
from banger.vms.spec import VMRecord


class MemDriver:
    """banger's Driver protocol in memory: forwards are a list, the control channel a socketpair
    whose far end is a tiny agent task (`ping` → `pong`, or silence when `mute`)."""

    name = "mem"

    def __init__(self, caps: frozenset[Capability] = frozenset({Capability.PORT_FORWARD})) -> None:
        self.caps = caps
        self.forwards: list[tuple[int, int]] = []
        self.fail_add: set[int] = set()  # guest ports whose forward the "VMM" refuses
        self.mute = False
        self.agents: list[asyncio.Task[None]] = []
        self.opened = 0

    async def launch(self, spec: VMSpec) -> VMHandle:
        raise AssertionError("observation never launches")

    async def attach(self, handle: VMHandle) -> bool:
        return True

    def is_alive(self, handle: VMHandle) -> bool:
        return True

    async def request_shutdown(self, handle: VMHandle) -> None:
        raise AssertionError("observation never stops a VM")

    async def force_stop(self, handle: VMHandle) -> None:
        raise AssertionError("observation never stops a VM")

    async def wait_exit(self, handle: VMHandle, timeout: float) -> bool:
        return False

    def send_signal(self, handle: VMHandle, signum: int) -> None:
        raise AssertionError("observation never signals a VM")

    @property
    def capabilities(self) -> frozenset[Capability]:
        return self.caps

    def guest_channel(self) -> GuestChannel:
        return GuestChannel("virtio-serial")

    async def wait_ready(self, handle: VMHandle, timeout: float, alive: Alive) -> str:
        return "ready"

    async def open_control(
        self, handle: VMHandle, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        host, guest = socket.socketpair()
        self.agents.append(asyncio.create_task(self._agent(guest)))
        return await asyncio.open_connection(sock=host)

    async def _agent(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            writer.write(b"READY booted\n")  # a queued READY the prober must skip
            while line := await reader.readline():
                if line.strip() == b"ping" and not self.mute:
                    writer.write(b"pong\n")
                    await writer.drain()
        finally:
            writer.close()

    async def pause(self, handle: VMHandle) -> None:
        raise MissingCapability(self.name, Capability.PAUSE)

    async def resume(self, handle: VMHandle) -> None:
        raise MissingCapability(self.name, Capability.PAUSE)

    async def port_forwards(self, handle: VMHandle) -> list[tuple[int, int]]:
        if Capability.PORT_FORWARD not in self.caps:
            raise MissingCapability(self.name, Capability.PORT_FORWARD)
        return list(self.forwards)

    async def add_port_forward(self, handle: VMHandle, host_port: int, guest_port: int) -> None:
        if Capability.PORT_FORWARD not in self.caps:
            raise MissingCapability(self.name, Capability.PORT_FORWARD)
        if guest_port in self.fail_add:
            raise DriverError(f"cannot forward guest port {guest_port}: refused")
        self.forwards.append((host_port, guest_port))

    async def save(self, handle: VMHandle, spec: Any, dest: Path, keep_running: bool) -> Any:
        raise MissingCapability(self.name, Capability.SNAPSHOT)

    async def restore(self, spec: Any, saved: Any) -> VMHandle:
        raise MissingCapability(self.name, Capability.SUSPEND)

    async def delete_saved(self, saved: Any, layers_in_use: Any) -> bool:
        raise MissingCapability(self.name, Capability.SNAPSHOT)


def test_the_double_is_a_driver() -> None:
    assert isinstance(MemDriver(), Driver)


@dataclass
class Lookup:
    """The VM service as observation sees it: records by name, handles of the running ones."""

    records: dict[str, VMRecord] = field(default_factory=dict)
    handles: dict[str, VMHandle] = field(default_factory=dict)
    ssh_error: str = "ssh is not reachable in this test"

    async def get(self, ref: str) -> VMRecord:
        for vm in self.records.values():
            if ref in (vm.id, vm.name):
                return vm
        raise NotFound(f"no vm {ref!r}")

    async def list(self) -> list[VMRecord]:
        return list(self.records.values())

    def handle(self, vm_id: str) -> VMHandle | None:
        return self.handles.get(vm_id)

    async def ssh_target(self, ref: str) -> SSHTarget:
        raise OperationFailed(self.ssh_error)


@dataclass
class Network:
    bridged: set[str] = field(default_factory=set)

    def url_host(self, vm_id: str, guest_port: int) -> tuple[str, int] | None:
        return (f"{vm_id}.vm", guest_port) if vm_id in self.bridged else None


def record(tmp: Path, name: str, *, state: str = "running", network: str = "user") -> VMRecord:
    return VMRecord.model_validate(
        {
            "id": name,
            "name": name,
            "state": state,
            "image_id": "img",
            "image_name": "debian",
            "kernel": "k",
            "vcpus": 1,
            "memory_mib": 256,
            "disk_size_bytes": 1 << 30,
            "init_mode": "auto",
            "network": network,
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "pid": os.getpid() if state == "running" else None,
            "dir": tmp / name,
            "console_log": tmp / name / "console.log",
        }
    )


@dataclass
class World:
    tmp: Path
    driver: MemDriver
    lookup: Lookup
    network: Network
    svc: ObservationService
    picked: list[int]

    def add(self, name: str, *, state: str = "running", network: str = "user") -> None:
        self.lookup.records[name] = record(self.tmp, name, state=state, network=network)
        if state == "running":
            # The "VMM" is this test process: host stats sample a real, live pid.
            self.lookup.handles[name] = VMHandle(
                driver="mem",
                pid=os.getpid(),
                api_socket="",
                control_socket=f"{name}-control",
                details={"network": network},
            )


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    driver = MemDriver()
    lookup, network = Lookup(), Network()
    picked: list[int] = []

    def pick() -> int:
        picked.append(41000 + len(picked))
        return picked[-1]

    registry = DriverRegistry(Config(), factory=lambda _config, _name: driver)
    svc = ObservationService(lookup, registry, network, pick_port=pick)
    yield World(tmp_path, driver, lookup, network, svc, picked)
    for task in driver.agents:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await task


def tcp(port: int, address: str = "0.0.0.0") -> ListeningSocket:
    return ListeningSocket("tcp", address, port, inode=port, pid=100 + port, process="srv")


# --- forwards ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairs", "expected"),
    [
        ([], {}),
        ([(40555, 8080), (45057, 22)], {8080: 40555, 22: 45057}),
        # Two forwards to one guest port: the first listed is the one reported.
        ([(40555, 8080), (40999, 8080)], {8080: 40555}),
    ],
)
def test_forwards_by_guest_port(pairs: list[tuple[int, int]], expected: dict[int, int]) -> None:
    assert forwards_by_guest_port(pairs) == expected


# --- port rows -----------------------------------------------------------------------------------


async def test_user_mode_rows_reuse_forwards_and_add_the_missing_ones(world: World) -> None:
    world.add("um")
    world.driver.forwards = [(45057, 22)]
    vm = world.svc._to_view(await world.lookup.get("um"))
    sockets = [
        tcp(22),
        tcp(8080),
        tcp(5432, "127.0.0.1"),  # loopback only: not reachable from the host
        ListeningSocket("udp", "0.0.0.0", 53, inode=1),
    ]
    rows = await world.svc.port_rows(vm, sockets)
    assert [(r["port"], r["url"]) for r in rows] == [
        (22, "ssh://root@127.0.0.1:45057"),
        (8080, "http://127.0.0.1:41000"),
        (5432, None),
        (53, None),
    ]
    assert rows[1] == {
        "vm": "um",
        "proto": "tcp",
        "address": "0.0.0.0",
        "port": 8080,
        "pid": 8180,
        "process": "srv",
        "url": "http://127.0.0.1:41000",
    }
    assert world.driver.forwards == [(45057, 22), (41000, 8080)]
    # Asking again adds nothing: the forward in place is reused.
    again = await world.svc.port_rows(vm, sockets)
    assert [r["url"] for r in again] == [r["url"] for r in rows]
    assert world.picked == [41000]


async def test_bridged_rows_use_the_vm_name_and_add_no_forward(world: World) -> None:
    world.add("web", network="tap")
    world.network.bridged.add("web")
    vm = world.svc._to_view(await world.lookup.get("web"))
    rows = await world.svc.port_rows(vm, [tcp(22), tcp(80, "::")])
    assert [r["url"] for r in rows] == ["ssh://root@web.vm:22", "http://web.vm:80"]
    assert world.driver.forwards == [] and world.picked == []


async def test_a_driver_without_port_forwarding_lists_ports_without_urls(world: World) -> None:
    world.driver.caps = frozenset()
    world.add("fc")
    vm = world.svc._to_view(await world.lookup.get("fc"))
    rows = await world.svc.port_rows(vm, [tcp(8080)])
    assert [(r["port"], r["url"]) for r in rows] == [(8080, None)]


async def test_a_refused_forward_leaves_that_port_without_url(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.add("um")
    world.driver.fail_add = {9000}
    vm = world.svc._to_view(await world.lookup.get("um"))
    rows = await world.svc.port_rows(vm, [tcp(8080), tcp(9000)], op_id="op-7")
    # Ports are forwarded in order: 8080 got one before 9000 was refused.
    assert [(r["port"], r["url"]) for r in rows] == [
        (8080, "http://127.0.0.1:41000"),
        (9000, None),
    ]
    assert "op op-7: vm um: port forwards: cannot forward guest port 9000" in caplog.text


# --- ports of several VMs ------------------------------------------------------------------------


async def test_ports_of_every_vm_skips_stopped_ones_and_reports_failures_as_rows(
    world: World,
) -> None:
    world.add("up")
    world.add("down", state="stopped")
    world.lookup.ssh_error = "ssh to up: Connection refused"
    assert await world.svc.ports([]) == [{"vm": "up", "error": "ssh to up: Connection refused"}]


async def test_ports_of_a_named_vm_raise_its_failure(world: World) -> None:
    world.add("up")
    with pytest.raises(OperationFailed, match="ssh is not reachable"):
        await world.svc.ports(["up"])


# --- stopped VMs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("probe", ["ping", "health", "stats", "ports"])
async def test_a_stopped_vm_is_not_running_for_every_probe(world: World, probe: str) -> None:
    world.add("idle", state="stopped")
    call = {
        "ping": lambda: world.svc.ping("idle"),
        "health": lambda: world.svc.health("idle"),
        "stats": lambda: world.svc.stats("idle"),
        "ports": lambda: world.svc.ports(["idle"]),
    }[probe]
    with pytest.raises(NotRunning) as err:
        await call()
    assert err.value.message == "vm 'idle' is not running"
    assert world.driver.opened == 0


async def test_running_state_without_a_handle_is_not_running(world: World) -> None:
    world.add("ghost")
    del world.lookup.handles["ghost"]
    with pytest.raises(NotRunning):
        await world.svc.ping("ghost")


async def test_an_unknown_vm_is_not_found(world: World) -> None:
    with pytest.raises(NotFound):
        await world.svc.ping("nope")


# --- ping, health, stats -------------------------------------------------------------------------


async def test_ping_goes_through_the_drivers_control_channel(world: World) -> None:
    world.add("um")
    answer = await world.svc.ping("um")
    assert answer["vm"] == "um" and answer["alive"] is True and answer["error"] is None
    assert answer["latency_ms"] >= 0
    assert world.driver.opened == 1


async def test_a_silent_agent_reads_as_not_alive(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from banger.vms import observe

    monkeypatch.setattr(observe, "CONTROL_TIMEOUT", 1.0)
    world.add("um")
    world.driver.mute = True
    answer = await world.svc.ping("um")
    assert answer == {
        "vm": "um",
        "alive": False,
        "latency_ms": None,
        "error": "no answer within 1s",
    }


async def test_health_reports_each_check(world: World) -> None:
    world.add("um")
    world.lookup.ssh_error = "ssh to um: Permission denied"
    answer = await world.svc.health("um")
    assert answer["healthy"] is False
    control, ssh = answer["checks"]
    assert control["name"] == "control" and control["ok"] is True
    assert ssh == {"name": "ssh", "ok": False, "error": "ssh to um: Permission denied"}


async def test_stats_keeps_the_host_half_when_the_guest_cannot_answer(world: World) -> None:
    world.add("um")
    Path(world.tmp / "um").mkdir()
    (world.tmp / "um" / "work.ext4").write_bytes(b"\0" * 4096)
    first = await world.svc.stats("um")
    assert first["vm"] == "um"
    assert first["guest"] is None and first["guest_error"] == "ssh is not reachable in this test"
    host = first["host"]
    assert host["pid"] == os.getpid() and host["rss_bytes"] > 0 and host["threads"] >= 1
    assert host["cpu_percent"] >= 0
    assert host["disk_allocated_bytes"]["work_disk"] == 4096
    assert host["disk_allocated_bytes"]["root_disk"] is None  # no root disk file here

"""`NetworkService` end to end on the real tools, inside a test namespace (bridge mode)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dnslib import RCODE, DNSRecord

from banger.config import Config
from banger.network.privops import LocalPrivOps
from banger.network.service import NetworkService, RunningVM
from banger.network.tap import tap_name
from banger.paths import Paths
from banger.store.db import Store
from tests.network.conftest import in_ns


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "banger.db")
    s.open()
    yield s
    s.close()


@pytest.fixture
async def service(netns: str, tmp_path: Path, store: Store) -> AsyncIterator[NetworkService]:
    paths = Paths(tmp_path / "cfg", tmp_path / "st", tmp_path / "cache", tmp_path / "run")
    cfg = Config(network="bridge", dns_port=free_udp_port())
    svc = NetworkService(paths, cfg, store, LocalPrivOps(netns))
    await svc.start()
    yield svc
    await svc.stop()


def taps(ns: str) -> list[str]:
    out = in_ns(ns, "ip", "-o", "link", "show").stdout
    return sorted(
        line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if "tap-bg-" in line
    )


def nft(ns: str) -> str:
    return in_ns(ns, "nft", "list", "ruleset").stdout


def forwarding(ns: str) -> str:
    return in_ns(ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()


async def resolve(port: int, name: str) -> tuple[int, list[str]]:
    def ask() -> tuple[int, list[str]]:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(DNSRecord.question(name).pack(), ("127.0.0.1", port))
            r = DNSRecord.parse(s.recvfrom(4096)[0])
        return r.header.rcode, [str(a.rdata) for a in r.rr]

    return await asyncio.to_thread(ask)


async def test_attach_publish_detach_forget(service: NetworkService, netns: str) -> None:
    a = await service.attach("id-a", "alpha")
    b = await service.attach("id-b", "beta")
    assert (a.ip, b.ip) == ("172.16.0.2", "172.16.0.3")
    assert a.gateway == "172.16.0.1" and a.prefix == 24 and a.dns == ("1.1.1.1",)
    assert a.to_seed()["address"] == "172.16.0.2/24"
    assert taps(netns) == sorted([a.tap, b.tap])
    assert await resolve(service.dns.port, "alpha.vm") == (RCODE.NOERROR, ["172.16.0.2"])
    # No VM wants NAT: the table holds only the isolation rule, forwarding stays off.
    assert "masquerade" not in nft(netns) and forwarding(netns) == "0"

    await service.published("id-a", "alpha", "tap", a.ip, 22)
    conf = service.ssh_config_path.read_text()
    assert "Host alpha.vm\n  HostName 172.16.0.2\n  Port 22" in conf

    await service.detach("id-a")
    assert taps(netns) == [b.tap]
    assert (await resolve(service.dns.port, "alpha.vm"))[0] == RCODE.NXDOMAIN
    assert "alpha.vm" not in service.ssh_config_path.read_text()
    # Restart keeps the address; only delete frees it.
    assert (await service.attach("id-a", "alpha")).ip == "172.16.0.2"
    await service.forget("id-a")
    assert (await service.attach("id-c", "gamma")).ip == "172.16.0.2"
    await service.detach("id-b")
    await service.detach("id-c")
    assert taps(netns) == []
    assert "table ip banger" not in nft(netns)


async def test_nat_follows_the_running_vm(service: NetworkService, netns: str) -> None:
    await service.set_nat("id-n", True)
    g = await service.attach("id-n", "natty")
    assert f"ip saddr {g.ip}" in nft(netns) and "masquerade" in nft(netns)
    assert forwarding(netns) == "1"
    await service.set_nat("id-n", False)
    assert "masquerade" not in nft(netns)
    assert forwarding(netns) == "0"
    await service.set_nat("id-n", True)
    assert "masquerade" in nft(netns) and forwarding(netns) == "1"
    await service.detach("id-n")
    assert "masquerade" not in nft(netns) and forwarding(netns) == "0"
    assert service.nat("id-n") is True  # the wish persists for the next start


async def test_admin_enabled_forwarding_is_left_alone(service: NetworkService, netns: str) -> None:
    in_ns(netns, "sysctl", "-w", "net.ipv4.ip_forward=1")
    await service.set_nat("id-n", True)
    await service.attach("id-n", "natty")
    await service.detach("id-n")
    assert forwarding(netns) == "1"


async def test_reconcile_removes_leaks_and_rebuilds_dns(
    service: NetworkService, netns: str
) -> None:
    await service.set_nat("id-keep", True)
    await service.set_nat("id-gone", True)
    keep = await service.attach("id-keep", "keeper")
    gone = await service.attach("id-gone", "goner")
    # Simulate a daemon restart: fresh in-memory state, only "keeper" still runs.
    service.dns.replace_all({})
    await service.reconcile([RunningVM("id-keep", "keeper", "tap")])
    assert taps(netns) == [keep.tap]
    assert gone.tap != keep.tap and tap_name("id-gone") == gone.tap
    ruleset = nft(netns)
    assert f"ip saddr {keep.ip}" in ruleset and f"ip saddr {gone.ip}" not in ruleset
    assert await resolve(service.dns.port, "keeper.vm") == (RCODE.NOERROR, [keep.ip])
    assert (await resolve(service.dns.port, "goner.vm"))[0] == RCODE.NXDOMAIN
    # Nothing running at all: no TAP, no table, forwarding back off.
    await service.reconcile([])
    assert taps(netns) == [] and "table ip banger" not in nft(netns)
    assert forwarding(netns) == "0"


async def test_user_mode_aliases_in_ssh_config(service: NetworkService) -> None:
    await service.published("id-u", "usr", "user", "127.0.0.1", 40222)
    text = service.ssh_config_path.read_text()
    assert "Host usr.vm\n  HostName 127.0.0.1\n  Port 40222" in text
    await service.detach("id-u")
    assert "usr.vm" not in service.ssh_config_path.read_text()


def test_user_mode_refuses_nat(tmp_path: Path, store: Store) -> None:
    paths = Paths(tmp_path / "c", tmp_path / "s", tmp_path / "k", tmp_path / "r")
    svc = NetworkService(paths, Config(network="user"), store)
    assert svc.mode == "user"
    with pytest.raises(Exception, match="NAT needs bridged networking"):
        asyncio.run(svc.set_nat("x", True))


async def test_dns_only_in_bridge_mode_and_a_taken_port_is_not_fatal(
    tmp_path: Path, store: Store, netns: str
) -> None:
    paths = Paths(tmp_path / "c", tmp_path / "s", tmp_path / "k", tmp_path / "r")
    user = NetworkService(paths, Config(network="user"), store)
    await user.start()
    assert not user.dns.running
    await user.stop()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        cfg = Config(network="bridge", dns_port=port)
        svc = NetworkService(paths, cfg, store, LocalPrivOps(netns))
        await svc.start()  # the daemon still starts; names just do not resolve
        assert not svc.dns.running
        assert svc.dns_error is not None and str(port) in svc.dns_error
        g = await svc.attach("id-x", "x")  # and VMs still get their network
        assert g.ip == "172.16.0.2"
        await svc.detach("id-x")
        await svc.stop()

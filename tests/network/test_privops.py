"""Bridge, TAP, NAT and ip_forward through the real tools, inside a test network namespace."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from banger.errors import InvalidInput
from banger.network.nat import NatRule
from banger.network.privops import LocalPrivOps, PrivOps
from banger.network.tap import guest_mac, tap_name
from tests.network.conftest import in_ns

BR = "br-banger"


def links(ns: str) -> dict[str, dict[str, object]]:
    out = in_ns(ns, "ip", "-d", "-j", "link", "show").stdout
    return {link["ifname"]: link for link in json.loads(out)}


def addrs(ns: str, dev: str) -> list[str]:
    out = in_ns(ns, "ip", "-j", "addr", "show", "dev", dev).stdout
    return [
        f"{a['local']}/{a['prefixlen']}"
        for link in json.loads(out)
        for a in link["addr_info"]
        if a["family"] == "inet"
    ]


def nft_table(ns: str) -> str | None:
    p = in_ns(ns, "nft", "list", "table", "ip", "banger")
    return p.stdout if p.returncode == 0 else None


def test_local_adapter_satisfies_protocol() -> None:
    assert isinstance(LocalPrivOps(), PrivOps)


async def test_bridge_and_tap_lifecycle_is_idempotent(netns: str) -> None:
    ops = LocalPrivOps(netns)
    await ops.ensure_bridge(BR, "172.16.0.1", 24)
    await ops.ensure_bridge(BR, "172.16.0.1", 24)  # second call changes nothing
    link = links(netns)[BR]
    assert link["linkinfo"]["info_kind"] == "bridge"  # type: ignore[index]
    assert "UP" in link["flags"]  # type: ignore[operator]
    assert addrs(netns, BR) == ["172.16.0.1/24"]

    tap = tap_name("vm-one")
    await ops.ensure_tap(tap, BR, 0)
    await ops.ensure_tap(tap, BR, 0)
    link = links(netns)[tap]
    assert link["linkinfo"]["info_kind"] == "tun"  # type: ignore[index]
    assert link["master"] == BR
    assert await ops.list_taps() == [tap]

    await ops.delete_tap(tap)
    await ops.delete_tap(tap)  # already gone: no error
    assert tap not in links(netns)
    assert await ops.list_taps() == []

    await ops.delete_bridge(BR)
    await ops.delete_bridge(BR)
    assert BR not in links(netns)


async def test_bridge_name_taken_by_non_bridge_is_refused(netns: str) -> None:
    # veth: the dummy module may not be loadable here.
    assert (
        in_ns(netns, "ip", "link", "add", BR, "type", "veth", "peer", "name", "bgpeer").returncode
        == 0
    )
    ops = LocalPrivOps(netns)
    with pytest.raises(Exception, match="not a bridge"):
        await ops.ensure_bridge(BR, "172.16.0.1", 24)
    with pytest.raises(Exception, match="not a bridge"):
        await ops.delete_bridge(BR)
    assert BR in links(netns)


async def test_nat_rules_present_then_absent(netns: str) -> None:
    ops = LocalPrivOps(netns)
    await ops.ensure_bridge(BR, "172.16.0.1", 24)
    a = NatRule("172.16.0.2", tap_name("a"))
    b = NatRule("172.16.0.3", tap_name("b"))
    await ops.sync_nat(BR, [a, b])
    await ops.sync_nat(BR, [a, b])  # idempotent: no duplicated rules
    table = nft_table(netns)
    assert table is not None
    assert table.count("masquerade") == 2
    assert "ip saddr 172.16.0.2" in table and "ip saddr 172.16.0.3" in table
    assert await ops.list_nat() == [a, b]

    await ops.sync_nat(BR, [b])
    table = nft_table(netns)
    assert table is not None and "172.16.0.2" not in table
    assert await ops.list_nat() == [b]

    await ops.sync_nat(BR, [])
    assert await ops.list_nat() == []
    await ops.remove_nat_table()
    await ops.remove_nat_table()
    assert nft_table(netns) is None


async def test_ip_forward_is_per_namespace(netns: str) -> None:
    ops = LocalPrivOps(netns)
    host_value = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()
    await ops.set_ip_forward(True)
    assert await ops.get_ip_forward() is True
    await ops.set_ip_forward(False)
    assert await ops.get_ip_forward() is False
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == host_value


@pytest.mark.parametrize(
    "call",
    [
        lambda o: o.ensure_bridge("eth0", "172.16.0.1", 24),
        lambda o: o.ensure_bridge("br-banger; rm", "172.16.0.1", 24),
        lambda o: o.ensure_bridge("br-banger", "8.8.8.1", 24),
        lambda o: o.ensure_bridge("br-banger", "127.0.0.1", 24),
        lambda o: o.ensure_bridge("br-banger", "172.16.0.0", 24),
        lambda o: o.ensure_bridge("br-banger", "172.16.0.1", 31),
        lambda o: o.ensure_bridge("br-banger", "not-an-ip", 24),
        lambda o: o.delete_bridge("docker0"),
        lambda o: o.ensure_tap("eth0", "br-banger", 0),
        lambda o: o.ensure_tap("tap-bg-0000000g", "br-banger", 0),
        lambda o: o.ensure_tap(tap_name("x"), "br-banger", -1),
        lambda o: o.delete_tap("lo"),
        lambda o: o.sync_nat("br-banger", [NatRule("1.2.3.4", tap_name("x"))]),
        lambda o: o.sync_nat("br-banger", [NatRule("172.16.0.2", "eth0")]),
        lambda o: o.sync_nat("br-banger", [NatRule('172.16.0.2"; flush ruleset', tap_name("x"))]),
    ],
)
async def test_bad_arguments_are_refused_before_any_tool_runs(call: object) -> None:
    # No namespace: validation must fail before anything could touch the host.
    with pytest.raises(InvalidInput):
        await call(LocalPrivOps())  # type: ignore[operator]


def test_tap_names_and_macs_are_stable_and_valid() -> None:
    assert tap_name("abc") == tap_name("abc") != tap_name("abd")
    assert len(tap_name("abc")) <= 15
    mac = guest_mac("abc")
    assert mac.startswith("52:54:00:") and mac == guest_mac("abc") != guest_mac("abd")


_SERVER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.77.0.2", 9000))
s.listen()
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""

_CLIENT = """
import socket, sys
try:
    c = socket.create_connection(("10.77.0.2", 9000), timeout=2)
    print(c.recv(100).decode())
except OSError as e:
    print("failed", e)
"""


async def test_masquerade_really_translates_between_namespaces(make_netns: Any) -> None:
    """host ns: bridge + uplink; guest ns on the bridge; outside ns behind the uplink."""
    import subprocess
    import sys

    host, guest, outside = make_netns(), make_netns(), make_netns()
    ops = LocalPrivOps(host)
    await ops.ensure_bridge(BR, "172.16.0.1", 24)
    steps = [
        ["ip", "link", "add", "gh", "netns", host, "type", "veth", "peer", "gv", "netns", guest],
        ["ip", "-n", host, "link", "set", "gh", "master", BR, "up"],
        ["ip", "-n", guest, "addr", "add", "172.16.0.2/24", "dev", "gv"],
        ["ip", "-n", guest, "link", "set", "gv", "up"],
        ["ip", "-n", guest, "route", "add", "default", "via", "172.16.0.1"],
        ["ip", "link", "add", "oh", "netns", host, "type", "veth", "peer", "ov", "netns", outside],
        ["ip", "-n", host, "addr", "add", "10.77.0.1/24", "dev", "oh"],
        ["ip", "-n", host, "link", "set", "oh", "up"],
        ["ip", "-n", outside, "addr", "add", "10.77.0.2/24", "dev", "ov"],
        ["ip", "-n", outside, "link", "set", "ov", "up"],
    ]
    for argv in steps:
        subprocess.run(argv, check=True, capture_output=True, timeout=20)
    server = subprocess.Popen(
        ["ip", "netns", "exec", outside, sys.executable, "-c", _SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        await ops.set_ip_forward(True)
        # Forwarding on but the guest has no NAT: banger's forward chain keeps it in.
        await ops.sync_nat(BR, [])
        assert in_ns(guest, sys.executable, "-c", _CLIENT).stdout.startswith("failed")
        # NAT on: the outside sees the host's uplink address, not the guest's.
        await ops.sync_nat(BR, [NatRule("172.16.0.2", tap_name("g"))])
        assert in_ns(guest, sys.executable, "-c", _CLIENT).stdout.strip() == "10.77.0.1"
        await ops.sync_nat(BR, [])
        assert in_ns(guest, sys.executable, "-c", _CLIENT).stdout.startswith("failed")
    finally:
        server.kill()
        server.wait()

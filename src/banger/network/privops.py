"""The one door to privileged network operations (bridge, TAP, nftables, sysctl).

Everything that needs CAP_NET_ADMIN goes through `PrivOps`. `LocalPrivOps` runs the tools in the
daemon's own process (the daemon is root); a root-helper adapter can implement the same protocol
later. Every argument is validated here, tightly, before any tool runs: only banger-named
interfaces, only private IPv4 ranges, so a confused caller cannot touch other host interfaces.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from banger.network import bridge as bridge_mod
from banger.network import nat as nat_mod
from banger.network import tap as tap_mod
from banger.network.cmd import Runner
from banger.network.nat import NatRule
from banger.network.tap import TAP_RE
from banger.rpc.errors import BadRequest

# Bridges banger may create or delete: "br-banger" or "br-banger-<up to 5>" (IFNAMSIZ 15).
BRIDGE_RE = re.compile(r"^br-banger(-[a-z0-9]{1,5})?$")
MIN_PREFIX, MAX_PREFIX = 8, 30


def validate_bridge(name: str) -> str:
    if not BRIDGE_RE.fullmatch(name):
        raise BadRequest(
            f"bridge name {name!r} is not allowed: use 'br-banger' or 'br-banger-<1-5 of a-z0-9>'"
        )
    return name


def validate_tap(name: str) -> str:
    if not TAP_RE.fullmatch(name):
        raise BadRequest(f"TAP name {name!r} is not a banger TAP (tap-bg-<8 hex>)")
    return name


def _private_ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise BadRequest(f"{what} {value!r} is not an IPv4 address") from None
    if not ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast:
        raise BadRequest(f"{what} {value} must be a private address (e.g. in 172.16.0.0/12)")
    return ip


def validate_interface(address: str, prefix: int) -> ipaddress.IPv4Interface:
    """A bridge address: private IPv4, prefix 8..30, not the network or broadcast address."""
    if not isinstance(prefix, int) or not MIN_PREFIX <= prefix <= MAX_PREFIX:
        raise BadRequest(f"prefix length {prefix!r} must be between {MIN_PREFIX} and {MAX_PREFIX}")
    ip = _private_ipv4(address, "bridge address")
    iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    if ip in (iface.network.network_address, iface.network.broadcast_address):
        raise BadRequest(f"bridge address {ip} is the network or broadcast address of /{prefix}")
    return iface


def validate_nat_rule(rule: NatRule) -> NatRule:
    _private_ipv4(rule.ip, "guest address")
    validate_tap(rule.tap)
    return rule


def validate_uid(uid: int) -> int:
    if not isinstance(uid, int) or uid < 0 or uid > 2**31:
        raise BadRequest(f"owner uid {uid!r} is not a valid uid")
    return uid


@runtime_checkable
class PrivOps(Protocol):
    async def ensure_bridge(self, name: str, address: str, prefix: int) -> None: ...

    async def delete_bridge(self, name: str) -> None: ...

    async def ensure_tap(self, name: str, bridge: str, owner_uid: int) -> None: ...

    async def delete_tap(self, name: str) -> None: ...

    async def list_taps(self) -> list[str]: ...

    async def sync_nat(self, bridge: str, rules: Sequence[NatRule]) -> None:
        """Make banger's nftables table hold exactly `rules` (atomic, idempotent)."""
        ...

    async def remove_nat_table(self) -> None: ...

    async def list_nat(self) -> list[NatRule]: ...

    async def get_ip_forward(self) -> bool: ...

    async def set_ip_forward(self, enabled: bool) -> None: ...


class LocalPrivOps:
    """Runs `ip`, `nft` and `sysctl` directly (the daemon has CAP_NET_ADMIN)."""

    def __init__(self, netns: str | None = None) -> None:
        self.run = Runner(netns)

    async def ensure_bridge(self, name: str, address: str, prefix: int) -> None:
        iface = validate_interface(address, prefix)
        await bridge_mod.ensure_bridge(
            self.run, validate_bridge(name), str(iface.ip), iface.network.prefixlen
        )

    async def delete_bridge(self, name: str) -> None:
        await bridge_mod.delete_bridge(self.run, validate_bridge(name))

    async def ensure_tap(self, name: str, bridge: str, owner_uid: int) -> None:
        await tap_mod.ensure_tap(
            self.run, validate_tap(name), validate_bridge(bridge), validate_uid(owner_uid)
        )

    async def delete_tap(self, name: str) -> None:
        await tap_mod.delete_tap(self.run, validate_tap(name))

    async def list_taps(self) -> list[str]:
        return await tap_mod.list_taps(self.run)

    async def sync_nat(self, bridge: str, rules: Sequence[NatRule]) -> None:
        checked = [validate_nat_rule(r) for r in rules]
        await nat_mod.apply(self.run, validate_bridge(bridge), checked)

    async def remove_nat_table(self) -> None:
        await nat_mod.remove_table(self.run)

    async def list_nat(self) -> list[NatRule]:
        return await nat_mod.current_rules(self.run)

    async def get_ip_forward(self) -> bool:
        return await nat_mod.get_ip_forward(self.run)

    async def set_ip_forward(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise BadRequest("ip_forward must be true or false")
        await nat_mod.set_ip_forward(self.run, enabled)

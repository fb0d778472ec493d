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

from banger.errors import InvalidInput
from banger.network import bridge as bridge_mod
from banger.network import nat as nat_mod
from banger.network import tap as tap_mod
from banger.network.cmd import Runner
from banger.network.nat import Admit, Denied, DnsRedirect, EgressSpec, NatRule
from banger.network.tap import TAP_RE

# Bridges banger may create or delete: "br-banger" or "br-banger-<up to 5>" (IFNAMSIZ 15).
BRIDGE_RE = re.compile(r"^br-banger(-[a-z0-9]{1,5})?$")
MIN_PREFIX, MAX_PREFIX = 8, 30


def validate_bridge(name: str) -> str:
    if not BRIDGE_RE.fullmatch(name):
        raise InvalidInput(
            f"bridge name {name!r} is not allowed: use 'br-banger' or 'br-banger-<1-5 of a-z0-9>'"
        )
    return name


def validate_tap(name: str) -> str:
    if not TAP_RE.fullmatch(name):
        raise InvalidInput(f"TAP name {name!r} is not a banger TAP (tap-bg-<8 hex>)")
    return name


def _private_ipv4(value: str, what: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        raise InvalidInput(f"{what} {value!r} is not an IPv4 address") from None
    if not ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast:
        raise InvalidInput(f"{what} {value} must be a private address (e.g. in 172.16.0.0/12)")
    return ip


def validate_interface(address: str, prefix: int) -> ipaddress.IPv4Interface:
    """A bridge address: private IPv4, prefix 8..30, not the network or broadcast address."""
    if not isinstance(prefix, int) or not MIN_PREFIX <= prefix <= MAX_PREFIX:
        raise InvalidInput(
            f"prefix length {prefix!r} must be between {MIN_PREFIX} and {MAX_PREFIX}"
        )
    ip = _private_ipv4(address, "bridge address")
    iface = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    if ip in (iface.network.network_address, iface.network.broadcast_address):
        raise InvalidInput(f"bridge address {ip} is the network or broadcast address of /{prefix}")
    return iface


def validate_nat_rule(rule: NatRule) -> NatRule:
    _private_ipv4(rule.ip, "guest address")
    validate_tap(rule.tap)
    return rule


MAX_ADMITS = 1024
MAX_CIDRS = 256


def validate_tag(tag: str) -> str:
    if not isinstance(tag, str) or not nat_mod.TAG_RE.fullmatch(tag):
        raise InvalidInput(f"egress tag {tag!r} is not a VM id (12 hex digits)")
    return tag


def _port(port: object, what: str) -> int | None:
    if port is None:
        return None
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidInput(f"{what} {port!r} is not a port (1-65535)")
    return port


def _ipv4(value: object, what: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except (ValueError, TypeError):
        raise InvalidInput(f"{what} {value!r} is not an IPv4 address") from None


def validate_admit(a: Admit) -> Admit:
    t = a.timeout
    if not isinstance(t, int) or isinstance(t, bool) or not 1 <= t <= nat_mod.MAX_TIMEOUT:
        raise InvalidInput(f"admission timeout {t!r} must be 1..{nat_mod.MAX_TIMEOUT} seconds")
    return Admit(_ipv4(a.ip, "admitted address"), _port(a.port, "admitted port"), t)


def validate_egress(e: EgressSpec) -> EgressSpec:
    validate_tag(e.tag)
    _private_ipv4(e.ip, "guest address")
    g = e.generation
    if not isinstance(g, int) or isinstance(g, bool) or not 1 <= g < 2**31:
        raise InvalidInput(f"egress generation {g!r} must be 1..2^31-1")
    if len(e.cidrs) > MAX_CIDRS or len(e.admitted) > MAX_ADMITS:
        raise InvalidInput(f"at most {MAX_CIDRS} CIDR rules and {MAX_ADMITS} admitted addresses")
    cidrs = []
    for net, port in e.cidrs:
        try:
            parsed = ipaddress.IPv4Network(net, strict=True)
        except (ValueError, TypeError):
            raise InvalidInput(f"egress CIDR {net!r} is not an IPv4 network") from None
        cidrs.append((str(parsed), _port(port, "CIDR port")))
    admitted = tuple(validate_admit(a) for a in e.admitted)
    return EgressSpec(e.tag, e.ip, g, tuple(cidrs), admitted)


def validate_dns(d: DnsRedirect) -> DnsRedirect:
    _private_ipv4(d.gateway, "resolver address")
    if _port(d.port, "resolver port") is None:
        raise InvalidInput("resolver port is required")
    if len(d.resolvers) > 8:
        raise InvalidInput("at most 8 guest resolver addresses")
    return DnsRedirect(d.gateway, d.port, tuple(_ipv4(r, "guest resolver") for r in d.resolvers))


def validate_uid(uid: int) -> int:
    if not isinstance(uid, int) or uid < 0 or uid > 2**31:
        raise InvalidInput(f"owner uid {uid!r} is not a valid uid")
    return uid


@runtime_checkable
class PrivOps(Protocol):
    async def ensure_bridge(self, name: str, address: str, prefix: int) -> None: ...

    async def delete_bridge(self, name: str) -> None: ...

    async def ensure_tap(self, name: str, bridge: str, owner_uid: int) -> None: ...

    async def delete_tap(self, name: str) -> None: ...

    async def list_taps(self) -> list[str]: ...

    async def sync_nat(
        self,
        bridge: str,
        rules: Sequence[NatRule],
        egress: Sequence[EgressSpec] = (),
        dns: DnsRedirect | None = None,
    ) -> None:
        """Make banger's nftables table hold exactly `rules` and the egress policies (atomic)."""
        ...

    async def egress_admit(self, tag: str, items: Sequence[Admit]) -> None:
        """Admit resolver answers for one VM (its sets, with timeouts)."""
        ...

    async def egress_denied(self, tag: str) -> list[Denied]:
        """What the VM's egress drop rule counted."""
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

    async def sync_nat(
        self,
        bridge: str,
        rules: Sequence[NatRule],
        egress: Sequence[EgressSpec] = (),
        dns: DnsRedirect | None = None,
    ) -> None:
        checked = [validate_nat_rule(r) for r in rules]
        policies = [validate_egress(e) for e in egress]
        redirect = validate_dns(dns) if dns is not None else None
        await nat_mod.apply(self.run, validate_bridge(bridge), checked, policies, redirect)

    async def egress_admit(self, tag: str, items: Sequence[Admit]) -> None:
        if len(items) > MAX_ADMITS:
            raise InvalidInput(f"at most {MAX_ADMITS} addresses per admission")
        checked = [validate_admit(a) for a in items]
        await nat_mod.admit(self.run, validate_tag(tag), checked)

    async def egress_denied(self, tag: str) -> list[Denied]:
        return await nat_mod.denied_entries(self.run, validate_tag(tag))

    async def remove_nat_table(self) -> None:
        await nat_mod.remove_table(self.run)

    async def list_nat(self) -> list[NatRule]:
        return await nat_mod.current_rules(self.run)

    async def get_ip_forward(self) -> bool:
        return await nat_mod.get_ip_forward(self.run)

    async def set_ip_forward(self, enabled: bool) -> None:
        if not isinstance(enabled, bool):
            raise InvalidInput("ip_forward must be true or false")
        await nat_mod.set_ip_forward(self.run, enabled)

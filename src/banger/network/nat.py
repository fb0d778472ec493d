"""Opt-in NAT for guests: an nftables table banger owns (`ip banger`), rewritten atomically.

The whole table is rendered from the desired state and loaded with one `nft -f -` transaction,
so applying it twice changes nothing and rules from a crashed daemon cannot survive a reconcile.
Chains:
- postrouting (nat): masquerade each NAT guest's /32 when it leaves through another interface;
- forward (filter): accept NAT guests' outbound traffic and its replies, then drop anything else
  the bridge would route off-host, so guests without NAT stay isolated even when the host forwards.
- prerouting (nat) and one chain + three sets per VM with a restricted egress policy (see
  `EgressSpec`): its DNS is redirected to banger's resolver, its packets pass only to addresses
  the resolver admitted (sets with timeouts) or to CIDR rules, and what it was denied is counted
  in a dynamic set the daemon reads back (`denied_entries`).
nft 1.0.6 wants one statement per line (HOST-NOTES), which is how this is rendered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from banger.network.cmd import Runner

FAMILY = "ip"
TABLE = "banger"
_COMMENT_RE = re.compile(r"^banger-nat ip=(\S+) tap=(\S+)$")
TAG_RE = re.compile(r"^[0-9a-f]{12}$")  # a VM id: names the VM's egress chain and sets
MAX_TIMEOUT = 86400


@dataclass(frozen=True, order=True)
class NatRule:
    ip: str
    tap: str


@dataclass(frozen=True, order=True)
class Admit:
    """An address the resolver admitted for a VM: any port, or only `port` (TCP and UDP)."""

    ip: str
    port: int | None
    timeout: int  # seconds


def admit_to_wire(a: Admit) -> dict[str, Any]:
    return {"ip": a.ip, "port": a.port, "timeout": a.timeout}


@dataclass(frozen=True)
class EgressSpec:
    """A running NAT VM whose egress is restricted."""

    tag: str  # the VM id
    ip: str  # the guest's address
    generation: int  # bumped on every policy change: flows marked with an older one are re-checked
    cidrs: tuple[tuple[str, int | None], ...] = ()
    admitted: tuple[Admit, ...] = ()

    def to_wire(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "ip": self.ip,
            "generation": self.generation,
            "cidrs": [[n, p] for n, p in self.cidrs],
            "admitted": [admit_to_wire(a) for a in self.admitted],
        }


@dataclass(frozen=True)
class DnsRedirect:
    """Where restricted guests' DNS goes: banger's resolver on the bridge."""

    gateway: str
    port: int
    resolvers: tuple[str, ...]  # the addresses guests were told to use (redirected too)


@dataclass(frozen=True)
class Denied:
    ip: str
    proto: str
    port: int
    packets: int


def set_names(tag: str) -> tuple[str, str, str]:
    return f"eg_{tag}_any", f"eg_{tag}_port", f"eg_{tag}_denied"


def _elements(items: list[str]) -> list[str]:
    return [f"    elements = {{ {', '.join(items)} }}"] if items else []


def _egress_chain(e: EgressSpec) -> list[str]:
    any_set, port_set, denied = set_names(e.tag)
    mark = f"ct mark set {e.generation} accept"
    lines = [
        f"  set {any_set} {{",
        "    type ipv4_addr",
        "    flags timeout",
        *_elements([f"{a.ip} timeout {a.timeout}s" for a in sorted(e.admitted) if a.port is None]),
        "  }",
        f"  set {port_set} {{",
        "    type ipv4_addr . inet_service",
        "    flags timeout",
        *_elements(
            [f"{a.ip} . {a.port} timeout {a.timeout}s" for a in sorted(e.admitted) if a.port]
        ),
        "  }",
        f"  set {denied} {{",
        "    type ipv4_addr . inet_proto . inet_service",
        "    size 4096",
        "    flags dynamic",
        "    counter",
        "  }",
        f"  chain eg_{e.tag} {{",
        # Flows admitted under the current policy go on; older ones are checked again below.
        f"    ct state established,related ct mark {e.generation} accept",
        # DNS anywhere but banger's resolver (the redirect happened in prerouting) is refused.
        f"    meta l4proto {{ tcp, udp }} th dport 53 update @{denied} "
        "{ ip daddr . meta l4proto . th dport counter }",
        "    meta l4proto { tcp, udp } th dport 53 drop",
        f"    ip daddr @{any_set} {mark}",
        f"    meta l4proto {{ tcp, udp }} ip daddr . th dport @{port_set} {mark}",
    ]
    for net, port in e.cidrs:
        if port is None:
            lines.append(f"    ip daddr {net} {mark}")
        else:
            lines.append(f"    ip daddr {net} meta l4proto {{ tcp, udp }} th dport {port} {mark}")
    lines += [
        f"    meta l4proto {{ tcp, udp }} update @{denied} "
        "{ ip daddr . meta l4proto . th dport counter }",
        "    drop",
        "  }",
    ]
    return lines


def render(
    bridge: str,
    rules: list[NatRule],
    egress: list[EgressSpec] | None = None,
    dns: DnsRedirect | None = None,
) -> str:
    nat_ips = {r.ip for r in rules}
    # Egress rules apply to NAT guests only: a guest without NAT reaches nothing off-host anyway.
    restricted = sorted((e for e in egress or [] if e.ip in nat_ips), key=lambda e: e.tag)
    by_ip = {e.ip: e for e in restricted}
    lines = [
        # Declaring then deleting makes the load idempotent whether or not the table exists.
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    for e in restricted:
        lines += _egress_chain(e)
    if restricted and dns is not None:
        targets = ", ".join(sorted({dns.gateway, *dns.resolvers}))
        lines += [
            "  chain prerouting {",
            "    type nat hook prerouting priority dstnat; policy accept;",
        ]
        for e in restricted:
            for proto in ("udp", "tcp"):
                lines.append(
                    f'    iifname "{bridge}" ip saddr {e.ip} ip daddr {{ {targets} }} '
                    f"{proto} dport 53 dnat to {dns.gateway}:{dns.port}"
                )
        lines.append("  }")
    lines += [
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
    ]
    for r in sorted(set(rules)):
        lines.append(
            f'    ip saddr {r.ip} oifname != "{bridge}" masquerade '
            f'comment "banger-nat ip={r.ip} tap={r.tap}"'
        )
    lines += [
        "  }",
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
    ]
    for r in sorted(set(rules)):
        spec = by_ip.get(r.ip)
        if spec is None:
            lines.append(f'    iifname "{bridge}" oifname != "{bridge}" ip saddr {r.ip} accept')
            lines.append(
                f'    oifname "{bridge}" ip daddr {r.ip} ct state established,related accept'
            )
            continue
        lines.append(
            f'    iifname "{bridge}" oifname != "{bridge}" ip saddr {r.ip} jump eg_{spec.tag}'
        )
        # Replies only for flows admitted under the current policy: a disallowed flow is cut.
        lines.append(
            f'    oifname "{bridge}" ip daddr {r.ip} ct state established,related '
            f"ct mark {spec.generation} accept"
        )
        lines.append(f'    oifname "{bridge}" iifname != "{bridge}" ip daddr {r.ip} drop')
    lines += [
        f'    iifname "{bridge}" oifname != "{bridge}" drop',
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)


async def apply(
    run: Runner,
    bridge: str,
    rules: list[NatRule],
    egress: list[EgressSpec] | None = None,
    dns: DnsRedirect | None = None,
) -> None:
    await run(["nft", "-f", "-"], input=render(bridge, rules, egress, dns).encode())


async def admit(run: Runner, tag: str, items: list[Admit]) -> None:
    """Add resolver answers to a VM's sets (one transaction; refreshes the timeout of old ones)."""
    any_set, port_set, _ = set_names(tag)
    lines = []
    for a in items:
        name, key = (any_set, a.ip) if a.port is None else (port_set, f"{a.ip} . {a.port}")
        # `add` alone keeps an existing element's old timeout: add (so the delete cannot fail),
        # delete, add again with the new timeout; one transaction, so no packet sees a gap.
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {key} timeout {a.timeout}s }}")
        lines.append(f"delete element {FAMILY} {TABLE} {name} {{ {key} }}")
        lines.append(f"add element {FAMILY} {TABLE} {name} {{ {key} timeout {a.timeout}s }}")
    if lines:
        await run(["nft", "-f", "-"], input=("\n".join(lines) + "\n").encode())


async def denied_entries(run: Runner, tag: str) -> list[Denied]:
    """What the VM's drop rule counted: (address, protocol, port, packets)."""
    _, _, denied = set_names(tag)
    r = await run(["nft", "-j", "list", "set", FAMILY, TABLE, denied], check=False)
    if r.returncode != 0:
        return []
    out = []
    for item in json.loads(r.out).get("nftables", []):
        for elem in (item.get("set") or {}).get("elem", []):
            body = elem.get("elem", elem) if isinstance(elem, dict) else {}
            val = body.get("val", {}) if isinstance(body, dict) else {}
            parts = val.get("concat") if isinstance(val, dict) else None
            if not isinstance(parts, list) or len(parts) != 3:
                continue
            packets = int((body.get("counter") or {}).get("packets", 0))
            out.append(Denied(str(parts[0]), str(parts[1]), int(parts[2]), packets))
    return out


async def remove_table(run: Runner) -> None:
    r = await run(["nft", "list", "table", FAMILY, TABLE], check=False)
    if r.returncode == 0:
        await run(["nft", "delete", "table", FAMILY, TABLE])


async def table_json(run: Runner) -> list[dict[str, Any]] | None:
    """The table's objects from `nft -j`, or None when banger's table does not exist."""
    r = await run(["nft", "-j", "list", "table", FAMILY, TABLE], check=False)
    if r.returncode != 0:
        return None
    items: list[dict[str, Any]] = json.loads(r.out).get("nftables", [])
    return items


async def current_rules(run: Runner) -> list[NatRule]:
    """The NAT guests the kernel currently masquerades (parsed back from the rule comments)."""
    items = await table_json(run)
    out = []
    for item in items or []:
        rule = item.get("rule")
        if not rule or rule.get("chain") != "postrouting":
            continue
        m = _COMMENT_RE.match(str(rule.get("comment", "")))
        if m:
            out.append(NatRule(ip=m.group(1), tap=m.group(2)))
    return sorted(out)


async def get_ip_forward(run: Runner) -> bool:
    r = await run(["sysctl", "-n", "net.ipv4.ip_forward"])
    return r.out.strip() == "1"


async def set_ip_forward(run: Runner, enabled: bool) -> None:
    await run(["sysctl", "-q", "-w", f"net.ipv4.ip_forward={1 if enabled else 0}"])

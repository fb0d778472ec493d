"""Opt-in NAT for guests: an nftables table banger owns (`ip banger`), rewritten atomically.

The whole table is rendered from the desired state and loaded with one `nft -f -` transaction,
so applying it twice changes nothing and rules from a crashed daemon cannot survive a reconcile.
Chains:
- postrouting (nat): masquerade each NAT guest's /32 when it leaves through another interface;
- forward (filter): accept NAT guests' outbound traffic and its replies, then drop anything else
  the bridge would route off-host, so guests without NAT stay isolated even when the host forwards.
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


@dataclass(frozen=True, order=True)
class NatRule:
    ip: str
    tap: str


def render(bridge: str, rules: list[NatRule]) -> str:
    lines = [
        # Declaring then deleting makes the load idempotent whether or not the table exists.
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
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
        lines.append(f'    iifname "{bridge}" oifname != "{bridge}" ip saddr {r.ip} accept')
        lines.append(f'    oifname "{bridge}" ip daddr {r.ip} ct state established,related accept')
    lines += [
        f'    iifname "{bridge}" oifname != "{bridge}" drop',
        "  }",
        "}",
        "",
    ]
    return "\n".join(lines)


async def apply(run: Runner, bridge: str, rules: list[NatRule]) -> None:
    await run(["nft", "-f", "-"], input=render(bridge, rules).encode())


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

"""Egress policy: allow rules, their parsing and matching, and which answers may be admitted.

A RULE is a name (`pypi.org`), a wildcard (`*.githubusercontent.com`: any name below it, not the
name itself), an IPv4 address or CIDR (`10.0.0.0/8`), each optionally with `:port`. Any rule makes
a VM's egress `restricted`: it reaches what the rules allow and nothing else. Names are enforced
through banger's resolver (network/egress_dns.py); addresses and CIDRs directly in nftables.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from banger.errors import InvalidInput
from banger.validation import quote

Mode = Literal["open", "restricted"]
Kind = Literal["name", "wildcard", "cidr"]

MAX_RULES = 256
MAX_RULE_CHARS = 260
_LABEL_RE = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")
_PORT_RE = re.compile(r"^[0-9]{1,5}$")

# Answers in these ranges are never admitted for a name unless a CIDR rule covers them
# (DNS rebinding: an allowed name must not become a way into the host's or the LAN's services).
UNSAFE_NETS = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)


@dataclass(frozen=True, order=True)
class Rule:
    kind: Kind
    value: str  # lower-case name, "*.suffix", or a network like 10.0.0.0/8
    port: int | None = None

    @property
    def text(self) -> str:
        return self.value if self.port is None else f"{self.value}:{self.port}"

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.value)

    def matches_name(self, name: str) -> bool:
        name = name.lower().rstrip(".")
        if self.kind == "name":
            return name == self.value
        if self.kind == "wildcard":
            return name.endswith(self.value[1:])  # "*.example.com" -> ".example.com"
        return False


def _bad(text: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"egress rule {quote(text)}: {why}; a rule is a name (pypi.org), a wildcard "
        "(*.githubusercontent.com), an IPv4 address or CIDR (10.0.0.0/8), optionally with :PORT"
    )


def _port(text: str, raw: str) -> int:
    if not _PORT_RE.fullmatch(raw):
        raise _bad(text, f"port {quote(raw)} is not a number")
    port = int(raw)
    if not 1 <= port <= 65535:
        raise _bad(text, f"port {port} is out of range (1-65535)")
    return port


def _name(text: str, host: str) -> str:
    if len(host) > 253:
        raise _bad(text, "the name is longer than 253 characters")
    labels = host.split(".")
    for label in labels:
        if not label:
            raise _bad(text, "the name has an empty label (two dots, or a leading dot)")
        if not _LABEL_RE.fullmatch(label):
            raise _bad(
                text,
                f"label {quote(label)} is not a DNS label (letters, digits, '-' and '_', "
                "at most 63, not starting or ending with '-')",
            )
    if labels[-1].isdigit():
        raise _bad(text, "the name looks like an address but is not a valid IPv4 address")
    if labels[-1] == "vm":
        raise _bad(text, "'.vm' names are banger's own VMs, not egress destinations")
    return host


def parse_rule(text: str) -> Rule:
    """One rule, normalised (lower case, no trailing dot); InvalidInput saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise InvalidInput("an egress rule must be a non-empty string")
    if len(text) > MAX_RULE_CHARS:
        raise _bad(text[:40] + "…", f"it is longer than {MAX_RULE_CHARS} characters")
    if any(c.isspace() or not c.isprintable() for c in text):
        raise _bad(text, "it contains whitespace or control characters")
    if "[" in text or text.count(":") > 1:
        raise _bad(text, "IPv6 is not supported (guests have IPv4 only)")
    host, sep, raw_port = text.partition(":")
    port = _port(text, raw_port) if sep else None
    if not host:
        raise _bad(text, "there is nothing before the port")
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]  # a fully qualified name ("pypi.org.") is the same name
    if not host:
        raise _bad(text, "there is no name or address")
    if host[0].isdigit() and all(c.isdigit() or c in "./" for c in host):
        try:
            net = ipaddress.IPv4Network(host, strict=True)
        except ValueError as e:
            if "host bits set" in str(e):
                fixed = ipaddress.IPv4Network(host, strict=False)
                raise _bad(text, f"it has host bits set; did you mean {fixed}?") from None
            raise _bad(text, "it is not a valid IPv4 address or CIDR") from None
        return Rule("cidr", str(net), port)
    if "/" in host:
        raise _bad(text, "only an IPv4 network can have a /prefix")
    if host.startswith("*."):
        suffix = _name(text, host[2:])
        if "." not in suffix:
            raise _bad(
                text, "a wildcard must name at least a domain and its suffix (*.example.com)"
            )
        return Rule("wildcard", f"*.{suffix}", port)
    if "*" in host:
        raise _bad(text, "a wildcard may only be a leading '*.' (e.g. *.example.com)")
    return Rule("name", _name(text, host), port)


def parse_rules(texts: Iterable[str]) -> list[Rule]:
    out: list[Rule] = []
    for t in texts:
        r = parse_rule(t)
        if r not in out:
            out.append(r)
    if len(out) > MAX_RULES:
        raise InvalidInput(f"at most {MAX_RULES} egress rules per VM (got {len(out)})")
    return out


@dataclass(frozen=True)
class Policy:
    mode: Mode
    rules: tuple[Rule, ...] = ()

    @property
    def restricted(self) -> bool:
        return self.mode == "restricted"

    def name_rules(self, name: str) -> list[Rule]:
        return [r for r in self.rules if r.kind != "cidr" and r.matches_name(name)]

    def cidr_rules(self) -> list[Rule]:
        return [r for r in self.rules if r.kind == "cidr"]

    def covered_by_cidr(self, ip: str) -> bool:
        addr = ipaddress.IPv4Address(ip)
        return any(addr in r.network for r in self.cidr_rules())

    def to_json(self) -> dict[str, object]:
        return {"mode": self.mode, "rules": [r.text for r in self.rules]}


def updated(
    current: Policy,
    allow: Sequence[str] = (),
    disallow: Sequence[str] = (),
    mode: Mode | None = None,
) -> Policy:
    """The policy after `vm set --allow/--disallow/--egress`: a clear error for contradictions."""
    add = parse_rules(allow)
    remove = parse_rules(disallow)
    if mode == "open" and add:
        raise InvalidInput("--egress open contradicts --allow: open egress has no rules")
    both = set(add) & set(remove)
    if both:
        raise InvalidInput(f"rule {sorted(both)[0].text} is both allowed and disallowed")
    rules = list(current.rules)
    for r in remove:
        if r not in rules:
            have = ", ".join(x.text for x in rules) or "none"
            raise InvalidInput(f"rule {r.text} is not in the policy (rules: {have})")
        rules.remove(r)
    rules += [r for r in add if r not in rules]
    if len(rules) > MAX_RULES:
        raise InvalidInput(f"at most {MAX_RULES} egress rules per VM (got {len(rules)})")
    if mode == "open":
        return Policy("open", ())
    if mode == "restricted" or add or current.restricted:
        return Policy("restricted", tuple(rules))
    return Policy("open", ())


def unsafe_address(ip: str) -> bool:
    """Loopback, link-local, private, CGNAT, multicast or reserved: never admitted for a name."""
    addr = ipaddress.IPv4Address(ip)
    return any(addr in n for n in UNSAFE_NETS)

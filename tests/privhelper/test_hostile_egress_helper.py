"""Hostile egress calls to the real `bangerd-root` (egress issue): admissions, denied-set reads
and egress tables, each refused with its exact code and a message naming the argument, with the
helper still answering `priv.ping` and the namespace's nftables ruleset left exactly as it was
(a working table with one restricted guest is loaded first, so a refused call must not touch it).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.privhelper.conftest import Helper

BRIDGE = "br-banger-t"
TAP = "tap-bg-0000abcd"
TAG = "0123456789ab"
GUEST = "172.30.0.5"


def spec(**change: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "tag": TAG,
        "ip": GUEST,
        "generation": 1,
        "cidrs": [["10.0.0.0/8", 443]],
        "admitted": [{"ip": "203.0.113.9", "port": None, "timeout": 60}],
    }
    return {**base, **change}


def table(**change: Any) -> dict[str, Any]:
    p: dict[str, Any] = {
        "bridge": BRIDGE,
        "rules": [{"ip": GUEST, "tap": TAP}],
        "egress": [spec()],
        "dns": {"gateway": "172.30.0.1", "port": 5300, "resolvers": ["1.1.1.1"]},
    }
    return {**p, **change}


def admit(**item: Any) -> dict[str, Any]:
    return {"tag": TAG, "items": [{"ip": "203.0.113.9", "port": 443, "timeout": 60, **item}]}


CASES: list[tuple[str, str, dict[str, Any], str]] = [
    ("admit-tag-traversal", "priv.egress_admit", {"tag": "../x", "items": []}, "not a VM id"),
    (
        "admit-tag-nft-injection",
        "priv.egress_admit",
        {"tag": "0123456789ab; flush ruleset", "items": []},
        "not a VM id",
    ),
    ("admit-items-not-list", "priv.egress_admit", {"tag": TAG, "items": "all"}, "list"),
    (
        "admit-item-missing-key",
        "priv.egress_admit",
        {"tag": TAG, "items": [{"ip": "203.0.113.9"}]},
        "must be an object with ip, port, timeout",
    ),
    ("admit-ip-injection", "priv.egress_admit", admit(ip="1.2.3.4 } ; flush"), "not an IPv4"),
    ("admit-ip-v6", "priv.egress_admit", admit(ip="::1"), "not an IPv4"),
    ("admit-port-zero", "priv.egress_admit", admit(port=0), "not a port"),
    ("admit-port-string", "priv.egress_admit", admit(port="443"), "not a port"),
    ("admit-port-bool", "priv.egress_admit", admit(port=True), "not a port"),
    ("admit-timeout-zero", "priv.egress_admit", admit(timeout=0), "1..86400"),
    ("admit-timeout-huge", "priv.egress_admit", admit(timeout=10**12), "1..86400"),
    (
        "admit-too-many",
        "priv.egress_admit",
        {"tag": TAG, "items": [{"ip": "203.0.113.9", "port": 1, "timeout": 1}] * 1025},
        "at most 1024",
    ),
    ("admit-extra-arg", "priv.egress_admit", {**admit(), "table": "filter"}, "unknown argument"),
    ("denied-tag-wildcard", "priv.egress_denied", {"tag": "*"}, "not a VM id"),
    ("denied-tag-number", "priv.egress_denied", {"tag": 123456789012}, "non-empty string"),
    (
        "table-egress-outside-subnet",
        "priv.sync_nat",
        table(egress=[spec(ip="172.30.1.5")]),
        "not a host of br-banger-t's subnet",
    ),
    (
        "table-egress-public-guest",
        "priv.sync_nat",
        table(egress=[spec(ip="8.8.8.8")]),
        "private range",
    ),
    ("table-generation-zero", "priv.sync_nat", table(egress=[spec(generation=0)]), "generation"),
    (
        "table-generation-string",
        "priv.sync_nat",
        table(egress=[spec(generation="1")]),
        "generation",
    ),
    (
        "table-cidr-injection",
        "priv.sync_nat",
        table(egress=[spec(cidrs=[["0.0.0.0/0 accept; flush ruleset", None]])]),
        "not an IPv4 network",
    ),
    (
        "table-cidr-host-bits",
        "priv.sync_nat",
        table(egress=[spec(cidrs=[["10.0.0.1/8", None]])]),
        "not an IPv4 network",
    ),
    (
        "table-cidr-not-pair",
        "priv.sync_nat",
        table(egress=[spec(cidrs=["10.0.0.0/8"])]),
        "[network, port|null]",
    ),
    (
        "table-cidr-port-huge",
        "priv.sync_nat",
        table(egress=[spec(cidrs=[["10.0.0.0/8", 70000]])]),
        "not a port",
    ),
    (
        "table-egress-extra-key",
        "priv.sync_nat",
        table(egress=[{**spec(), "chain": "input"}]),
        "must be an object with",
    ),
    (
        "table-dns-public-gateway",
        "priv.sync_nat",
        table(dns={"gateway": "8.8.8.8", "port": 53, "resolvers": []}),
        "private range",
    ),
    (
        "table-dns-gateway-elsewhere",
        "priv.sync_nat",
        table(dns={"gateway": "10.1.1.1", "port": 53, "resolvers": []}),
        "is not on br-banger-t",
    ),
    (
        "table-dns-port-huge",
        "priv.sync_nat",
        table(dns={"gateway": "172.30.0.1", "port": 70000, "resolvers": []}),
        "not a port",
    ),
    (
        "table-dns-resolver-injection",
        "priv.sync_nat",
        table(dns={"gateway": "172.30.0.1", "port": 53, "resolvers": ["1.1.1.1 } ; flush"]}),
        "not an IPv4",
    ),
    (
        "table-dns-too-many-resolvers",
        "priv.sync_nat",
        table(dns={"gateway": "172.30.0.1", "port": 53, "resolvers": ["1.1.1.1"] * 9}),
        "at most 8",
    ),
    ("table-unknown-arg", "priv.sync_nat", table(hook="input"), "unknown argument"),
]


def _ruleset(helper: Helper) -> str:
    # The countdown of an element's timeout moves on its own: compare everything else.
    return re.sub(r" expires \S+", "", helper.ns("nft", "list", "ruleset").stdout)


@pytest.fixture
def loaded(helper: Helper) -> Helper:
    ok = helper.call("priv.ensure_bridge", {"name": BRIDGE, "address": "172.30.0.1", "prefix": 24})
    assert ok["ok"], ok
    ok = helper.call("priv.sync_nat", table())
    assert ok["ok"], ok
    return helper


def test_a_valid_egress_table_admission_and_read(loaded: Helper) -> None:
    rules = _ruleset(loaded)
    assert f"chain eg_{TAG}" in rules and "203.0.113.9 timeout 1m" in rules
    ok = loaded.call("priv.egress_admit", admit())
    assert ok["ok"], ok
    assert "203.0.113.9 . 443 timeout 1m" in _ruleset(loaded)
    got = loaded.call("priv.egress_denied", {"tag": TAG})
    assert got["ok"] and got["result"] == [], got


@pytest.mark.parametrize(
    ("method", "params", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_hostile_egress_call(
    loaded: Helper, method: str, params: dict[str, Any], fragment: str
) -> None:
    before = _ruleset(loaded)
    resp = loaded.call(method, params)
    assert resp["ok"] is False, resp
    assert resp["error"]["code"] == "bad_request", resp
    assert fragment in resp["error"]["message"], resp
    assert loaded.call("priv.ping")["ok"] is True
    assert _ruleset(loaded) == before

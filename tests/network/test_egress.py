"""Egress policy pieces on real tools: rule parsing, policy changes, the nftables table (loaded
into a test namespace), and banger's resolver answering guests (with a stand-in upstream)."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RCODE, RR, A, DNSRecord

from banger.config import Config
from banger.errors import InvalidInput
from banger.network.egress import Policy, Rule, parse_rule, unsafe_address, updated
from banger.network.nat import Admit, DnsRedirect, EgressSpec, NatRule
from banger.network.privops import LocalPrivOps
from banger.network.service import NetworkService, _Active
from banger.paths import Paths
from banger.store.db import Store
from tests.network.conftest import in_ns

VM_ID = "0123456789ab"
GUEST = "172.16.0.2"


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("pypi.org", Rule("name", "pypi.org")),
        ("PyPI.org.", Rule("name", "pypi.org")),
        ("*.githubusercontent.com", Rule("wildcard", "*.githubusercontent.com")),
        ("pypi.org:443", Rule("name", "pypi.org", 443)),
        ("10.0.0.0/8:443", Rule("cidr", "10.0.0.0/8", 443)),
        ("203.0.113.7", Rule("cidr", "203.0.113.7/32")),
        ("_acme.example.com", Rule("name", "_acme.example.com")),
    ],
)
def test_rules_parse_and_normalise(text: str, rule: Rule) -> None:
    assert parse_rule(text) == rule


def test_wildcard_matches_below_not_the_apex() -> None:
    r = parse_rule("*.example.com")
    assert r.matches_name("a.example.com") and r.matches_name("a.b.EXAMPLE.com.")
    assert not r.matches_name("example.com") and not r.matches_name("badexample.com")


def test_policy_changes() -> None:
    p = updated(Policy("open"), ["pypi.org", "10.0.0.0/8"])
    assert p == Policy("restricted", (parse_rule("pypi.org"), parse_rule("10.0.0.0/8")))
    # Removing the last rule keeps it restricted (to nothing) until --egress open.
    q = updated(p, [], ["pypi.org", "10.0.0.0/8"])
    assert q == Policy("restricted", ())
    assert updated(q, mode="open") == Policy("open", ())
    with pytest.raises(InvalidInput, match=r"rule files\.org is not in the policy"):
        updated(p, [], ["files.org"])
    with pytest.raises(InvalidInput, match="contradicts"):
        updated(p, ["a.org"], [], "open")


def test_unsafe_addresses() -> None:
    for ip in ("127.0.0.1", "169.254.169.254", "10.1.2.3", "192.168.1.1", "172.20.0.1", "0.0.0.0"):
        assert unsafe_address(ip), ip
    assert not unsafe_address("203.0.113.7") and not unsafe_address("151.101.0.223")


def test_rendered_table_loads_and_admits(netns: str) -> None:
    async def go() -> None:
        ops = LocalPrivOps(netns)
        await ops.ensure_bridge("br-banger", "172.16.0.1", 24)
        spec = EgressSpec(
            VM_ID, GUEST, 7, (("10.0.0.0/8", 443),), (Admit("203.0.113.9", None, 60),)
        )
        dns = DnsRedirect("172.16.0.1", 5300, ("1.1.1.1",))
        await ops.sync_nat("br-banger", [NatRule(GUEST, "tap-bg-00000001")], [spec], dns)
        await ops.egress_admit(VM_ID, [Admit("203.0.113.10", 443, 30)])
        await ops.egress_admit(VM_ID, [Admit("203.0.113.10", 443, 90)])  # refreshed, not doubled
        table = in_ns(netns, "nft", "list", "table", "ip", "banger").stdout
        assert "203.0.113.9 timeout 1m" in table
        assert table.count("203.0.113.10 . 443 timeout") == 1
        assert "203.0.113.10 . 443 timeout 1m30s" in table
        assert f"jump eg_{VM_ID}" in table and "ct mark 0x00000007" in table
        assert "dnat to 172.16.0.1:5300" in table
        assert await ops.egress_denied(VM_ID) == []
        # The open path is unchanged: no egress, no chain.
        await ops.sync_nat("br-banger", [NatRule(GUEST, "tap-bg-00000001")])
        assert "eg_" not in in_ns(netns, "nft", "list", "table", "ip", "banger").stdout

    asyncio.run(go())


# --- the resolver ---------------------------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[int]:
    """A stand-in upstream on 127.0.0.1: names -> addresses, TTL 5."""
    records = {"pypi.org": "151.101.0.223", "inside.example.com": "10.9.9.9"}
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, addr = sock.recvfrom(4096)
            except TimeoutError:
                continue
            req = DNSRecord.parse(data)
            reply = req.reply()
            name = str(req.q.qname).rstrip(".")
            if name in records:
                reply.add_answer(RR(req.q.qname, QTYPE.A, rdata=A(records[name]), ttl=5))
            else:
                reply.header.rcode = RCODE.NXDOMAIN
            sock.sendto(reply.pack(), addr)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield int(sock.getsockname()[1])
    stop.set()
    t.join()
    sock.close()


@pytest.fixture
async def service(
    tmp_path: Path, upstream: int, netns: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[NetworkService]:
    caplog.set_level(logging.INFO, "banger.network")  # as in the daemon: log calls must not fail
    store = Store(tmp_path / "banger.db")
    store.open()
    paths = Paths(tmp_path / "cfg", tmp_path / "st", tmp_path / "cache", tmp_path / "run")
    cfg = Config(network="bridge", upstream_dns=[f"127.0.0.1:{upstream}"])
    # Policy changes rebuild the table: in the test namespace, never on the host.
    svc = NetworkService(paths, cfg, store, LocalPrivOps(netns))
    svc._active[VM_ID] = _Active(VM_ID, "box", "tap", GUEST, "tap-bg-00000001", GUEST, 22)
    await asyncio.to_thread(
        svc.egress.set_policy, VM_ID, updated(Policy("open"), ["pypi.org", "*.example.com"])
    )
    yield svc
    await svc.stop()
    store.close()


async def ask(svc: NetworkService, name: str, qtype: str = "A", src: str = GUEST) -> DNSRecord:
    raw = await svc._egress_answer(DNSRecord.question(name, qtype).pack(), src)
    assert raw is not None
    return DNSRecord.parse(raw)


async def test_allowed_name_answered_and_admitted(service: NetworkService) -> None:
    r = await ask(service, "pypi.org")
    assert r.header.rcode == RCODE.NOERROR and [str(a.rdata) for a in r.rr] == ["151.101.0.223"]
    report = await service.egress_report(VM_ID, "box")
    assert report["resolved"][0]["name"] == "pypi.org"
    assert report["resolved"][0]["addresses"] == ["151.101.0.223"]
    # Admitted for at least the floor, not the record's 5 s.
    assert report["resolved"][0]["expires_in"] >= 29
    aaaa = await ask(service, "pypi.org", "AAAA")
    assert aaaa.header.rcode == RCODE.NOERROR and aaaa.rr == []


async def test_other_names_refused_and_recorded(service: NetworkService) -> None:
    r = await ask(service, "evil.org")
    assert r.header.rcode == RCODE.REFUSED
    await ask(service, "evil.org")
    rows = {d["target"]: d for d in (await service.egress_report(VM_ID, "box"))["denied"]}
    assert rows["evil.org"]["count"] == 2 and rows["evil.org"]["reason"] == "name not allowed"


async def test_rebinding_answer_refused(service: NetworkService) -> None:
    r = await ask(service, "inside.example.com")
    assert r.header.rcode == RCODE.REFUSED and r.rr == []
    rows = {d["target"] for d in (await service.egress_report(VM_ID, "box"))["denied"]}
    assert "inside.example.com -> 10.9.9.9" in rows
    # A CIDR rule covering the range lets it through.
    await service.set_egress(VM_ID, ["10.9.0.0/16"])
    r = await ask(service, "inside.example.com")
    assert [str(a.rdata) for a in r.rr] == ["10.9.9.9"]


async def test_unknown_source_and_garbage(service: NetworkService) -> None:
    assert (await ask(service, "pypi.org", src="172.16.0.99")).header.rcode == RCODE.REFUSED
    assert await service._egress_answer(b"\x00\x01garbage", GUEST) is None
    two = DNSRecord.question("pypi.org")
    two.add_question(DNSRecord.question("evil.org").q)
    raw = await service._egress_answer(two.pack(), GUEST)
    assert raw is not None and DNSRecord.parse(raw).header.rcode == RCODE.REFUSED


async def test_disallow_forgets_admitted_addresses(service: NetworkService) -> None:
    await ask(service, "pypi.org")
    await service.set_egress(VM_ID, [], ["pypi.org"])
    assert (await service.egress_report(VM_ID, "box"))["resolved"] == []

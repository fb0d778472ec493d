"""The `.vm` DNS server answering real UDP queries on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import pytest
from dnslib import QTYPE, RCODE, DNSRecord

from banger.network.dns import DNSServer


@pytest.fixture
async def server() -> AsyncIterator[DNSServer]:
    s = DNSServer("127.0.0.1", 0)
    await s.start()
    yield s
    await s.stop()


async def query(port: int, name: str, qtype: str = "A") -> DNSRecord:
    def ask() -> DNSRecord:
        q = DNSRecord.question(name, qtype)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(2)
            sock.sendto(q.pack(), ("127.0.0.1", port))
            data, _ = sock.recvfrom(4096)
        reply = DNSRecord.parse(data)
        assert reply.header.id == q.header.id
        return reply

    return await asyncio.to_thread(ask)


async def test_registered_vm_resolves(server: DNSServer) -> None:
    server.set("devbox", "172.16.0.2")
    r = await query(server.port, "devbox.vm")
    assert r.header.rcode == RCODE.NOERROR
    assert r.header.aa == 1
    assert [str(a.rdata) for a in r.rr] == ["172.16.0.2"]
    assert r.rr[0].rtype == QTYPE.A
    # Case-insensitive, trailing dot or not.
    r = await query(server.port, "DevBox.VM.")
    assert [str(a.rdata) for a in r.rr] == ["172.16.0.2"]


async def test_unknown_and_removed_names_are_nxdomain(server: DNSServer) -> None:
    r = await query(server.port, "ghost.vm")
    assert r.header.rcode == RCODE.NXDOMAIN and not r.rr
    server.set("devbox", "172.16.0.2")
    server.remove("devbox")
    r = await query(server.port, "devbox.vm")
    assert r.header.rcode == RCODE.NXDOMAIN


async def test_other_types_for_known_name_are_empty_noerror(server: DNSServer) -> None:
    server.set("devbox", "172.16.0.2")
    r = await query(server.port, "devbox.vm", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and not r.rr


async def test_other_zones_are_refused(server: DNSServer) -> None:
    r = await query(server.port, "example.com")
    assert r.header.rcode == RCODE.REFUSED


async def test_replace_all_rebuilds_the_zone(server: DNSServer) -> None:
    server.set("old", "172.16.0.9")
    server.replace_all({"a": "172.16.0.2", "b": "172.16.0.3"})
    assert (await query(server.port, "old.vm")).header.rcode == RCODE.NXDOMAIN
    assert [str(x.rdata) for x in (await query(server.port, "b.vm")).rr] == ["172.16.0.3"]


async def test_garbage_is_ignored_and_server_keeps_answering(server: DNSServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"\x00\x01garbage", ("127.0.0.1", server.port))
    server.set("devbox", "172.16.0.2")
    assert (await query(server.port, "devbox.vm")).rr

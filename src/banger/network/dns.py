"""The daemon's `.vm` DNS server: an asyncio UDP responder on 127.0.0.1:<dns_port>.

Authoritative for the `vm` zone only: `<name>.vm` A → the running VM's guest address; a known name
asked for another type gets an empty NOERROR answer; unknown names NXDOMAIN; other zones REFUSED
(it is not a recursive resolver, route only `.vm` to it; see docs/networking.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from dnslib import QTYPE, RCODE, RR, A, DNSRecord

log = logging.getLogger("banger.network.dns")

ZONE = "vm"
TTL = 5  # short: records follow VM start/stop


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DNSServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport is not a registered DatagramTransport subclass: cast, not check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.server.answer(data)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class DNSServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 42069) -> None:
        self.host = host
        self.port = port
        self.records: dict[str, str] = {}
        self._transport: asyncio.DatagramTransport | None = None

    @property
    def running(self) -> bool:
        return self._transport is not None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Protocol(self), local_addr=(self.host, self.port)
        )
        self._transport = transport
        # Port 0 (tests) binds an ephemeral port: report the real one.
        self.port = int(transport.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def set(self, name: str, ip: str) -> None:
        self.records[name.lower()] = ip

    def remove(self, name: str) -> None:
        self.records.pop(name.lower(), None)

    def replace_all(self, records: dict[str, str]) -> None:
        self.records = {k.lower(): v for k, v in records.items()}

    def answer(self, data: bytes) -> bytes | None:
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None  # not DNS: nothing sensible to answer
        reply = request.reply()  # sets QR, RD, AA; copies the question
        if len(request.questions) != 1:
            reply.header.rcode = RCODE.FORMERR
            return bytes(reply.pack())
        q = request.questions[0]
        labels = [str(label, "ascii", "replace").lower() for label in q.qname.label]
        if not labels or labels[-1] != ZONE:
            reply.header.rcode = RCODE.REFUSED
            reply.header.aa = 0
            return bytes(reply.pack())
        name = ".".join(labels[:-1])
        ip = self.records.get(name)
        if ip is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(ip), ttl=TTL))
        return bytes(reply.pack())

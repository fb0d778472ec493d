"""banger's egress resolver: restricted guests' DNS, answered on the bridge.

The nftables prerouting chain redirects a restricted guest's DNS (to the bridge or to the resolver
it was told to use) here. The resolver asks `decide` (the network service) what to do with each
query: the service knows which VM an address belongs to, its policy, and admits the answered
addresses in that VM's nftables sets before the answer leaves. Upstream queries go to the
configured `upstream_dns` servers (default: the host's /etc/resolv.conf nameservers).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

from banger.validation import parse_upstream

log = logging.getLogger("banger.network.egress_dns")

UPSTREAM_TIMEOUT = 2.0
MAX_INFLIGHT = 256  # queries answered concurrently; more are dropped (the guest retries)

Decide = Callable[[bytes, str], Awaitable[bytes | None]]


def host_nameservers(path: Path = Path("/etc/resolv.conf")) -> list[tuple[str, int]]:
    """The IPv4 nameservers of the host's resolv.conf (IPv6 ones are skipped)."""
    out = []
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    out.append(parse_upstream(parts[1]))
    return out


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def ask_upstream(query: bytes, servers: list[tuple[str, int]]) -> bytes:
    """The first answer from `servers`, tried in order; OSError when none answers."""
    loop = asyncio.get_running_loop()
    last: Exception = OSError("no upstream DNS server configured")
    for server in servers:
        transport, proto = await loop.create_datagram_endpoint(_Upstream, remote_addr=server)
        try:
            transport.sendto(query)
            return await asyncio.wait_for(proto.reply, UPSTREAM_TIMEOUT)
        except (TimeoutError, OSError) as e:
            last = e if isinstance(e, OSError) else OSError(f"{server[0]}:{server[1]} timed out")
        finally:
            transport.close()
    raise OSError(str(last))


class _Listener(asyncio.DatagramProtocol):
    def __init__(self, server: EgressResolver) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.server.received(data, addr)


class EgressResolver:
    """A UDP listener on the bridge address; each query is answered by `decide` in a task."""

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.host = ""
        self.port = 0
        self._listener: _Listener | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> bool:
        return self._listener is not None

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Listener(self), local_addr=(host, 0)
        )
        self._listener = proto
        self.host = host
        self.port = int(transport.get_extra_info("sockname")[1])

    async def stop(self) -> None:
        if self._listener is not None and self._listener.transport is not None:
            self._listener.transport.close()
        self._listener = None
        for t in list(self._tasks):
            t.cancel()

    def received(self, data: bytes, addr: Any) -> None:
        if len(self._tasks) >= MAX_INFLIGHT:
            return
        task = asyncio.create_task(self._answer(data, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, data: bytes, addr: Any) -> None:
        try:
            reply = await self.decide(data, str(addr[0]))
        except Exception:
            log.exception("egress resolver failed to answer")
            return
        listener = self._listener
        if reply is not None and listener is not None and listener.transport is not None:
            listener.transport.sendto(reply, addr)

"""Host-side networking costs, banger next to the raw tools, inside a throwaway namespace.

    .venv/bin/python bench/bench_network.py [--runs 20]

- TAP up/down: banger's `ensure_tap` + `delete_tap` (validation, existence checks, idempotent
  adds) vs the bare `ip tuntap add` / `ip link set master … up` / `ip tuntap del` sequence.
- NAT sync: one atomic `nft -f` rewrite of banger's table vs a bare `nft add rule` of the same
  masquerade rule.
- DNS: one `<name>.vm` query answered by the daemon's server vs a UDP echo round trip on the same
  loopback (the floor any UDP server pays).
Needs root (creates and deletes a network namespace; the host's own network is not touched).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable

from dnslib import DNSRecord

from banger.network.dns import DNSServer
from banger.network.nat import NatRule
from banger.network.privops import LocalPrivOps
from banger.network.tap import tap_name

BR = "br-banger"


def ns_run(ns: str, *argv: str, input: bytes | None = None) -> None:
    subprocess.run(["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, input=input)


async def timed(fn: Callable[[], Awaitable[None]], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def line(label: str, ours: float, raw: float) -> None:
    ms = f"banger {ours * 1000:8.2f} ms   raw {raw * 1000:8.2f} ms"
    print(f"{label:<12} {ms}   ratio {ours / raw:5.2f}")


async def main(runs: int) -> None:
    ns = f"bgb-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        ns_run(ns, "ip", "link", "set", "lo", "up")
        ops = LocalPrivOps(ns)
        await ops.ensure_bridge(BR, "172.16.0.1", 24)
        tap = tap_name("bench")

        async def ours_tap() -> None:
            await ops.ensure_tap(tap, BR, 0)
            await ops.delete_tap(tap)

        async def raw_tap() -> None:
            ns_run(ns, "ip", "tuntap", "add", "dev", tap, "mode", "tap")
            ns_run(ns, "ip", "link", "set", "dev", tap, "master", BR, "up")
            ns_run(ns, "ip", "tuntap", "del", "dev", tap, "mode", "tap")

        line("tap up/down", await timed(ours_tap, runs), await timed(raw_tap, runs))

        rule = NatRule("172.16.0.2", tap)

        async def ours_nat() -> None:
            await ops.sync_nat(BR, [rule])

        ns_run(ns, "nft", "add", "table", "ip", "rawb")
        ns_run(
            ns, "nft", "add", "chain", "ip", "rawb", "post",
            "{ type nat hook postrouting priority srcnat; }",
        )  # fmt: skip

        async def raw_nat() -> None:
            ns_run(ns, "nft", "add", "rule", "ip", "rawb", "post", "ip", "saddr", rule.ip,
                   "oifname", "!=", BR, "masquerade")  # fmt: skip

        line("nat sync", await timed(ours_nat, runs), await timed(raw_nat, runs))

        server = DNSServer("127.0.0.1", 0)
        await server.start()
        server.set("bench", "172.16.0.2")
        query = DNSRecord.question("bench.vm").pack()
        echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        echo.bind(("127.0.0.1", 0))
        echo.setblocking(False)
        loop = asyncio.get_running_loop()

        async def ask(port: int) -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_sendto(s, query, ("127.0.0.1", port))
                await loop.sock_recv(s, 4096)

        async def echo_once() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setblocking(False)
                await loop.sock_sendto(s, query, echo.getsockname())
                data, addr = await loop.sock_recvfrom(echo, 4096)
                await loop.sock_sendto(echo, data, addr)
                await loop.sock_recv(s, 4096)

        dns_ours = await timed(lambda: ask(server.port), runs * 10)
        line("dns query", dns_ours, await timed(echo_once, runs * 10))
        await server.stop()
        echo.close()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    asyncio.run(main(ap.parse_args().runs))

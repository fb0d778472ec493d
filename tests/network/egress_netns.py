"""Two network namespaces for egress tests and the egress bench: `vm_ns` (the daemon, its bridge
and VMs) and `net_ns` (a stand-in internet: upstream resolver and web servers, egress_world.py),
joined by a veth pair. Nothing is routed anywhere else: every address lives in these namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.netns import add_netns

VM_SIDE = "198.51.100.1"  # vm_ns end of the veth (TEST-NET-2): its default route
NET_SIDE = "198.51.100.2"  # net_ns end: the upstream resolver
ALLOWED_IP = "203.0.113.10"  # TEST-NET-3 "public" web servers
OTHER_IP = "203.0.113.20"
RAW_IP = "203.0.113.30"
LATER_IP = "203.0.113.40"
RECORDS = {
    "allowed.test": ALLOWED_IP,
    "other.test": OTHER_IP,
    "later.test": LATER_IP,
    "private.test": "10.99.0.5",  # rebinding: a private address behind an allowed name
    "meta.test": "169.254.169.254",  # the cloud metadata address
}
WORLD = Path(__file__).with_name("egress_world.py")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=20)


@dataclass
class World:
    vm_ns: str
    net_ns: str
    server: subprocess.Popen[str]

    def close(self) -> None:
        self.server.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.server.wait(10)
        for ns in (self.vm_ns, self.net_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)


def make_world(log: Path | None = None) -> World:
    tag = secrets.token_hex(3)
    vm_ns, net_ns = f"bgt-eg-{tag}", f"bgt-in-{tag}"
    made: list[str] = []
    try:
        for ns in (vm_ns, net_ns):
            add_netns(ns)
            made.append(ns)
        _ip("-n", vm_ns, "link", "add", "eg-a", "type", "veth", "peer", "name", "eg-b",
            "netns", net_ns)  # fmt: skip
        _ip("-n", vm_ns, "addr", "add", f"{VM_SIDE}/24", "dev", "eg-a")
        _ip("-n", vm_ns, "link", "set", "eg-a", "up")
        _ip("-n", vm_ns, "route", "add", "default", "via", NET_SIDE)
        _ip("-n", net_ns, "addr", "add", f"{NET_SIDE}/24", "dev", "eg-b")
        _ip("-n", net_ns, "link", "set", "eg-b", "up")
        for addr in (ALLOWED_IP, OTHER_IP, RAW_IP, LATER_IP):
            _ip("-n", net_ns, "addr", "add", f"{addr}/32", "dev", "lo")
        env = dict(os.environ, EGRESS_WORLD_LOG=str(log) if log else "")
        server = subprocess.Popen(
            ["ip", "netns", "exec", net_ns, sys.executable, str(WORLD), NET_SIDE,
             json.dumps(RECORDS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        assert server.stdout is not None
        line = server.stdout.readline()
        if line.strip() != "ready":
            server.kill()
            raise AssertionError(f"egress world did not start: {line!r} {server.stderr.read()}")
        return World(vm_ns, net_ns, server)
    except BaseException:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
        raise

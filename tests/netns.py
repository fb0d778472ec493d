"""Network namespaces for tests, in a known state.

A new namespace copies the host's IPv4 forwarding setting (Linux copies init_net's IPv4 devconf),
so a host where something turned `ip_forward` on would break the tests that check banger turns it
on and off again: every test namespace starts with forwarding off and loopback up.
"""

from __future__ import annotations

import subprocess


def add_netns(name: str) -> str:
    """Create `name` (forwarding off, lo up); the caller deletes it (`ip netns del`)."""
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    for argv in (
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"],
        ["ip", "link", "set", "lo", "up"],
    ):
        subprocess.run(["ip", "netns", "exec", name, *argv], check=True, timeout=30)
    return name

"""Parsing QEMU's `info usernet` (text captured from QEMU 7.2 after a runtime `hostfwd_add`),
and the guest-port view observation builds from a driver's forwards."""

from __future__ import annotations

from banger.vmm.qemu import parse_usernet_forwards
from banger.vms.observe import forwards_by_guest_port

INFO_USERNET = (
    "Hub -1 (n0):\r\n"
    "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    "  TCP[HOST_FORWARD]   8       127.0.0.1 40555       10.0.2.15  8080     0     0\r\n"
    "  TCP[HOST_FORWARD]   3       127.0.0.1 45057       10.0.2.15    22     0     0\r\n"
    "  TCP[ESTABLISHED]   12       127.0.0.1 45057       10.0.2.15    22     0     0\r\n"
)


def test_forwards_by_guest_port() -> None:
    assert parse_usernet_forwards(INFO_USERNET) == [(40555, 8080), (45057, 22)]
    assert forwards_by_guest_port(parse_usernet_forwards(INFO_USERNET)) == {8080: 40555, 22: 45057}
    assert parse_usernet_forwards("Hub -1 (n0):\r\n") == []

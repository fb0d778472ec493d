"""Egress policy with real guests (QEMU TCG), entirely inside namespaces this module creates.

`vm_ns` holds the daemon, its bridge and two VMs: `r` (restricted to allowed.test, private.test
and meta.test) and `o` (open NAT). `net_ns` is a stand-in internet (egress_world.py): the upstream
resolver banger is configured with, and web servers on TEST-NET addresses. Two boots in all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import BuiltImage, _stop_daemon
from tests.network.egress_netns import (
    ALLOWED_IP,
    LATER_IP,
    NET_SIDE,
    OTHER_IP,
    RAW_IP,
    World,
    make_world,
)
from tests.network.test_vm_network_e2e import NsEnv, _env
from tests.waiting import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.fail(
            "bridged networking needs root and /dev/net/tun: "
            "run the suite as root after scripts/setup-host.sh"
        )
    w = make_world()
    try:
        yield w
    finally:
        w.close()


@pytest.fixture(scope="module")
def env(world: World, debian_image: BuiltImage) -> Iterator[NsEnv]:
    be = _env(debian_image.cache_home, "bridge")
    be.write_config(
        f'upstream_dns = ["{NET_SIDE}"]\n[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n'
    )
    e = NsEnv(be, world.vm_ns)
    try:
        e.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
        e.banger(
            "vm", "create", "--name", "r", "--allow", "allowed.test", "--allow", "private.test",
            "--allow", "meta.test", check=True, timeout=600,
        )  # fmt: skip
        e.banger("vm", "create", "--name", "o", "--nat", check=True, timeout=600)
        yield e
    finally:
        for name in ("r", "o"):
            e.banger("vm", "delete", name, timeout=120)
        _stop_daemon(be)
        shutil.rmtree(be.root, ignore_errors=True)


def guest(e: NsEnv, vm: str, script: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    p: subprocess.CompletedProcess[str] = e.banger("vm", "ssh", vm, "--", script, timeout=timeout)
    return p


def fetch(e: NsEnv, vm: str, host: str, port: int = 80) -> str | None:
    """GET / from the guest with bash's /dev/tcp (getaddrinfo for names); None when it fails."""
    script = (
        f"timeout 8 bash -c 'exec 3<>/dev/tcp/{host}/{port} && "
        'printf "GET / HTTP/1.0\\r\\n\\r\\n" >&3 && cat <&3\' | tail -n 1'
    )
    p = guest(e, vm, script)
    out = p.stdout.strip()
    return out if p.returncode == 0 and out.startswith("hello from") else None


def egress(e: NsEnv, vm: str) -> dict[str, Any]:
    r: dict[str, Any] = e.json("vm", "egress", vm)
    return r


def denied_targets(e: NsEnv, vm: str) -> dict[tuple[str, int, str], dict[str, Any]]:
    return {(d["target"], d["port"], d["proto"]): d for d in egress(e, vm)["denied"]}


def test_allowed_name_reachable_others_not_and_recorded(env: NsEnv) -> None:
    shown = env.json("vm", "show", "r")
    assert shown["egress"] == "restricted" and shown["nat"] is True
    assert shown["egress_rules"] == ["allowed.test", "private.test", "meta.test"]
    assert "egress restricted: allowed.test" in env.banger("vm", "show", "r", check=True).stdout
    assert fetch(env, "r", "allowed.test") == f"hello from {ALLOWED_IP}"
    # Another name does not even resolve; a raw address is dropped.
    assert guest(env, "r", "getent hosts other.test").returncode != 0
    assert fetch(env, "r", OTHER_IP) is None
    assert fetch(env, "r", RAW_IP) is None
    report = egress(env, "r")
    assert report["enforced"] is True
    assert [n["name"] for n in report["resolved"]] == ["allowed.test"]
    assert report["resolved"][0]["addresses"] == [ALLOWED_IP]
    denied = denied_targets(env, "r")
    assert denied[("other.test", 53, "dns")]["reason"] == "name not allowed"
    assert denied[(RAW_IP, 80, "tcp")]["count"] >= 1
    assert denied[(OTHER_IP, 80, "tcp")]["first_seen"] <= denied[(OTHER_IP, 80, "tcp")]["last_seen"]
    table = env.banger("vm", "egress", "r", check=True).stdout
    assert "egress restricted to allowed.test" in table and RAW_IP in table


def test_allowed_name_pointing_inside_is_refused(env: NsEnv) -> None:
    for name, addr in (("private.test", "10.99.0.5"), ("meta.test", "169.254.169.254")):
        assert guest(env, "r", f"getent hosts {name}").returncode != 0, name
        row = denied_targets(env, "r")[(f"{name} -> {addr}", 53, "dns")]
        assert "private, loopback or link-local" in row["reason"]


def test_dns_to_another_resolver_gets_nothing(env: NsEnv) -> None:
    # The upstream itself answers allowed.test, but not to the restricted guest directly.
    p = guest(env, "r", f"timeout 6 /.banger/bin/busybox nslookup allowed.test {NET_SIDE}")
    assert p.returncode != 0 and ALLOWED_IP not in p.stdout
    assert (NET_SIDE, 53, "udp") in denied_targets(env, "r")
    # The open VM asks the same resolver and gets the answer.
    p = guest(env, "o", f"timeout 6 /.banger/bin/busybox nslookup allowed.test {NET_SIDE}")
    assert p.returncode == 0 and ALLOWED_IP in p.stdout, p.stdout + p.stderr


def test_open_nat_vm_unaffected(env: NsEnv) -> None:
    assert env.json("vm", "show", "o")["egress"] == "open"
    for addr in (ALLOWED_IP, OTHER_IP, RAW_IP):
        assert fetch(env, "o", addr) == f"hello from {addr}"
    assert egress(env, "o")["denied"] == []


def test_live_allow_then_disallow_cuts_established(env: NsEnv) -> None:
    assert guest(env, "r", "getent hosts later.test").returncode != 0
    env.banger("vm", "set", "r", "--allow", "later.test", check=True)
    assert fetch(env, "r", "later.test") == f"hello from {LATER_IP}"
    # A long-lived connection to it, then the rule goes: its data stops.
    start = (
        "nohup timeout 120 bash -c 'exec 3<>/dev/tcp/later.test/9000 && cat <&3' "
        "> /tmp/ticks 2>/dev/null & sleep 0"
    )
    guest(env, "r", start)
    wait_until(
        lambda: "tick" in guest(env, "r", "cat /tmp/ticks").stdout, 30, "the tick stream starting"
    )
    env.banger("vm", "set", "r", "--disallow", "later.test", check=True)
    cut = time.time()
    # Not a synchronising wait: the window in which a live connection would deliver ~30 more
    # lines, so that none arriving proves the connection was cut.
    time.sleep(3)
    ticks = [float(ln.split()[1]) for ln in guest(env, "r", "cat /tmp/ticks").stdout.splitlines()
             if ln.startswith("tick ")]  # fmt: skip
    assert ticks and max(ticks) < cut + 0.5, (cut, ticks[-3:])
    assert fetch(env, "r", "later.test") is None
    assert fetch(env, "r", LATER_IP) is None
    assert "later.test" not in env.json("vm", "show", "r")["egress_rules"]


def test_cidr_rule_and_policy_survive_daemon_restart_and_stop_start(env: NsEnv) -> None:
    env.banger("vm", "set", "r", "--allow", f"{OTHER_IP}/32:80", check=True)
    assert fetch(env, "r", OTHER_IP) == f"hello from {OTHER_IP}"
    _stop_daemon(env.be, check_leftovers=False)  # the VMs keep running across the restart
    env.banger("daemon", "start", check=True, timeout=60)
    shown = env.json("vm", "show", "r")
    assert shown["egress_rules"] == [
        "allowed.test",
        "private.test",
        "meta.test",
        f"{OTHER_IP}/32:80",
    ]
    assert fetch(env, "r", OTHER_IP) == f"hello from {OTHER_IP}"
    assert fetch(env, "r", "allowed.test") == f"hello from {ALLOWED_IP}"
    assert fetch(env, "r", RAW_IP) is None
    # And a stop/start: the policy comes back with the VM.
    env.banger("vm", "stop", "r", check=True, timeout=120)
    assert egress(env, "r")["enforced"] is False
    env.banger("vm", "start", "r", check=True, timeout=600)
    assert egress(env, "r")["enforced"] is True
    assert fetch(env, "r", "allowed.test") == f"hello from {ALLOWED_IP}"
    assert fetch(env, "r", RAW_IP) is None
    # Back to open: everything is reachable again, from the same running guest.
    env.banger("vm", "set", "r", "--egress", "open", check=True)
    assert fetch(env, "r", RAW_IP) == f"hello from {RAW_IP}"
    assert egress(env, "r")["mode"] == "open"

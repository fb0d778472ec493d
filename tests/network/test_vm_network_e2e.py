"""Networking and observability with real guests (QEMU TCG, the offline debian-bookworm image).

Bridged: the daemon itself runs inside a network namespace this module creates (`ip netns exec`),
so its bridge, TAPs, nftables table and ip_forward never touch the host. User-mode: a plain test
daemon (BANGER_NETWORK=user). One boot per mode; each test covers a lot.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dnslib import RCODE, DNSRecord

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env
from tests.netns import add_netns
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

DNS_PORT = 42069  # the default: inside the namespace nothing else holds it
HTTPD = (
    "mkdir -p /tmp/www && echo hello-from-{name} > /tmp/www/index.html && "
    "/.banger/bin/busybox httpd -p 8080 -h /tmp/www"
)


@dataclass
class NsEnv:
    """A banger environment whose CLI (and so the daemon it starts) runs inside `ns`."""

    be: BangerEnv
    ns: str

    def run(self, *argv: str, timeout: float = 120, input: str | None = None) -> Any:
        return subprocess.run(
            ["ip", "netns", "exec", self.ns, *argv],
            env=self.be.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            check=False,
        )

    def banger(self, *args: str, timeout: float = 300, check: bool = False) -> Any:
        p = self.run(sys.executable, "-m", "banger.cli.main", *args, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"banger {' '.join(args)}: {p.returncode}\n{p.stderr}")
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self.banger(*args, "--json", check=True).stdout)

    def json_rpc(self, method: str, params: dict[str, Any]) -> Any:
        with self.be.client() as c:  # the Unix socket works across network namespaces
            return c.call(method, params, timeout=60)

    def resolve(self, name: str) -> tuple[int, list[str]]:
        code = (
            "import sys, socket\n"
            "from dnslib import DNSRecord\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(3)\n"
            f"s.sendto(DNSRecord.question({name!r}).pack(), ('127.0.0.1', {DNS_PORT}))\n"
            "sys.stdout.buffer.write(s.recv(4096))\n"
        )
        p = subprocess.run(
            ["ip", "netns", "exec", self.ns, sys.executable, "-c", code],
            capture_output=True,
            timeout=30,
            check=True,
        )
        r = DNSRecord.parse(p.stdout)
        return r.header.rcode, [str(a.rdata) for a in r.rr]

    def http_get(self, url: str) -> str:
        code = (
            "import sys, urllib.request\n"
            f"print(urllib.request.urlopen({url!r}, timeout=10).read().decode(), end='')\n"
        )
        p = self.run(sys.executable, "-c", code, timeout=30)
        assert p.returncode == 0, p.stderr
        return str(p.stdout)

    def nft(self) -> str:
        return str(self.run("nft", "list", "ruleset").stdout)

    def taps(self) -> list[str]:
        out = self.run("ip", "-o", "link", "show").stdout
        return sorted(ln.split(":")[1].strip() for ln in out.splitlines() if "tap-bg-" in ln)


def _env(cache_home: Path, network: str) -> BangerEnv:
    be = make_env("bgn-", cache_home=cache_home, network=network)
    be.write_config('[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n')
    return be


@pytest.fixture(scope="module")
def bridged(debian_image: BuiltImage) -> Iterator[NsEnv]:
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.fail(
            "bridged networking needs root and /dev/net/tun: "
            "run the suite as root after scripts/setup-host.sh"
        )
    ns = f"bgt-{secrets.token_hex(4)}"
    add_netns(ns)
    env = NsEnv(_env(debian_image.cache_home, "bridge"), ns)
    try:
        env.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
        env.banger("vm", "create", "--name", "web", "--nat", check=True, timeout=600)
        yield env
    finally:
        env.banger("vm", "delete", "web", timeout=120)
        _stop_daemon(env.be)
        subprocess.run(["ip", "netns", "del", ns], check=False, timeout=20)
        shutil.rmtree(env.be.root, ignore_errors=True)


def _wait(pred: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(pred, timeout, what)


def test_bridged_vm_reachable_by_ip_and_name(bridged: NsEnv) -> None:
    vm = bridged.json("vm", "show", "web")
    assert vm["network"] == "tap" and vm["nat"] is True
    ip = vm["ip"]
    assert ip == "172.16.0.2"
    shown = bridged.banger("vm", "show", "web", check=True).stdout
    assert "tap 172.16.0.2 (web.vm, NAT)" in shown
    assert bridged.resolve("web.vm") == (RCODE.NOERROR, [ip])
    assert bridged.resolve("nope.vm")[0] == RCODE.NXDOMAIN
    # By IP: the guest's sshd answers on the bridge.
    banner = bridged.run(
        sys.executable, "-c",
        f"import socket; print(socket.create_connection(('{ip}', 22), 5).recv(64))",
    )  # fmt: skip
    assert "SSH-2.0" in banner.stdout, banner.stderr
    # By name, with plain OpenSSH and banger's generated ssh_config (key + pinned host key).
    conf = bridged.be.paths.config_dir / "ssh_config"
    p = bridged.run("ssh", "-F", str(conf), "-o", "BatchMode=yes", "web.vm", "hostname")
    assert p.returncode == 0 and p.stdout.strip() == "web", p.stderr
    assert bridged.taps() and len(bridged.taps()) == 1


def test_nat_rule_present_only_while_wanted_and_running(bridged: NsEnv) -> None:
    ip = bridged.json("vm", "show", "web")["ip"]
    assert f'ip saddr {ip} oifname != "br-banger" masquerade' in bridged.nft()
    assert bridged.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    bridged.banger("vm", "set", "web", "--no-nat", check=True)
    assert "masquerade" not in bridged.nft()
    assert bridged.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert bridged.json("vm", "show", "web")["nat"] is False
    bridged.banger("vm", "set", "web", "--nat", check=True)
    assert f"ip saddr {ip}" in bridged.nft()


def test_guest_web_server_shows_up_in_ports_with_a_working_url(bridged: NsEnv) -> None:
    p = bridged.banger("vm", "ssh", "web", "--", HTTPD.format(name="web"), timeout=120)
    assert p.returncode == 0, p.stderr
    rows = bridged.json("vm", "ports", "web")
    web = [r for r in rows if r["port"] == 8080 and r["proto"] == "tcp"]
    assert web and web[0]["process"] == "busybox" and web[0]["url"] == "http://web.vm:8080"
    assert any(r["port"] == 22 and r["process"] == "sshd" for r in rows)
    # The URL works: its name resolves through the daemon's DNS to the guest.
    _, [ip] = bridged.resolve("web.vm")
    assert bridged.http_get(f"http://{ip}:8080/") == "hello-from-web\n"
    table = bridged.banger("vm", "ports", check=True).stdout
    assert "http://web.vm:8080" in table


def test_stats_move_when_the_guest_burns_cpu(bridged: NsEnv) -> None:
    idle = bridged.json("vm", "stats", "web")
    assert idle["guest"]["mem_total_bytes"] > 256 << 20
    assert {d["mount"] for d in idle["guest"]["disks"]} == {"/", "/root"}
    assert idle["host"]["rss_bytes"] > 50 << 20
    assert idle["host"]["disk_allocated_bytes"]["work_disk"] > 0
    burn = "nohup /.banger/bin/busybox sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!"
    pid = bridged.banger("vm", "ssh", "web", "--", burn, check=True).stdout.strip()
    try:

        def stats_once(cond: Callable[[dict[str, Any]], bool]) -> Callable[[], Any]:
            def probe() -> dict[str, Any] | None:
                now: dict[str, Any] = bridged.json("vm", "stats", "web")
                return now if cond(now) else None

            return probe

        # The guest's own view does not depend on how loaded this (shared, 2-core) host is.
        busy = wait_until(
            stats_once(lambda s: s["guest"]["cpu_percent"] > 80), 60, "the guest's CPU above 80%"
        )
        assert busy["guest"]["cpu_percent"] > idle["guest"]["cpu_percent"] + 30, (idle, busy)
        # The load average is recomputed every 5 s: poll (bounded) until it moves.
        busy = wait_until(
            stats_once(lambda s: s["guest"]["load"][0] > idle["guest"]["load"][0]),
            30,
            f"the guest's load average rising above {idle['guest']['load'][0]}",
        )
        # The VMM burnt host CPU for it.
        assert busy["host"]["cpu_seconds"] > idle["host"]["cpu_seconds"]
        assert busy["host"]["cpu_percent"] > 0
    finally:
        bridged.banger("vm", "ssh", "web", "--", f"kill {pid}")


def test_health_reports_ssh_failure_after_sshd_stops(bridged: NsEnv) -> None:
    ok = bridged.json("vm", "health", "web")
    assert ok["healthy"] is True
    assert [c["name"] for c in ok["checks"]] == ["control", "ssh"]
    assert all(c["ok"] and c["latency_ms"] > 0 for c in ok["checks"])
    table = bridged.banger("vm", "health", "web", check=True).stdout
    assert table.splitlines()[0].split() == ["CHECK", "STATUS", "LATENCY", "DETAIL"]
    # Stop the guest's SSH server (the listener; this session is a separate process).
    bridged.banger("vm", "ssh", "web", "--", "kill $(cat /run/banger-sshd.pid)", check=True)
    p = bridged.banger("vm", "health", "web", timeout=60)
    assert p.returncode == 1
    lines = {ln.split()[0]: ln for ln in p.stdout.splitlines()[1:]}
    assert lines["control"].split()[1] == "ok" and lines["ssh"].split()[1] == "FAIL"
    # The cheap liveness check only needs the control channel.
    ping = bridged.json_rpc("vm.ping", {"ref": "web"})
    assert ping["alive"] is True


def test_daemon_restart_reconciles_then_stop_tears_down(bridged: NsEnv) -> None:
    running_tap = bridged.taps()
    assert len(running_tap) == 1
    _stop_daemon(bridged.be, check_leftovers=False)  # the VM keeps running across the restart
    # A TAP some crashed daemon leaked, plus a stale rule table: the restart must clean both.
    bridged.run("ip", "tuntap", "add", "dev", "tap-bg-deadbeef", "mode", "tap")
    bridged.banger("daemon", "start", check=True, timeout=60)
    assert bridged.taps() == running_tap
    assert bridged.resolve("web.vm")[0] == RCODE.NOERROR
    assert "masquerade" in bridged.nft()

    bridged.banger("vm", "stop", "web", check=True, timeout=120)
    assert bridged.taps() == []
    assert "table ip banger" not in bridged.nft()
    assert bridged.run("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "0"
    assert bridged.resolve("web.vm")[0] == RCODE.NXDOMAIN
    for method in ("health", "stats", "ports"):
        p = bridged.banger("vm", method, "web", timeout=60)
        assert p.returncode == 1 and "is not running" in p.stderr, (method, p.stderr)
    # The address is kept for the next start.
    assert bridged.json("vm", "show", "web")["ip"] == "172.16.0.2"


def test_kill_tears_down_and_delete_releases_the_address(bridged: NsEnv) -> None:
    bridged.banger("vm", "start", "web", check=True, timeout=600)
    assert bridged.json("vm", "show", "web")["ip"] == "172.16.0.2"
    assert len(bridged.taps()) == 1 and "masquerade" in bridged.nft()
    assert bridged.resolve("web.vm") == (RCODE.NOERROR, ["172.16.0.2"])
    bridged.banger("vm", "kill", "web", check=True, timeout=120)
    assert bridged.taps() == [] and "table ip banger" not in bridged.nft()
    assert bridged.resolve("web.vm")[0] == RCODE.NXDOMAIN
    assert "web.vm" not in (bridged.be.paths.config_dir / "ssh_config").read_text()
    bridged.banger("vm", "delete", "web", check=True, timeout=120)
    # The freed address goes to the next VM that boots bridged.
    bridged.banger("vm", "create", "--name", "next", "--no-start", check=True, timeout=300)
    bridged.banger("vm", "start", "next", check=True, timeout=600)
    assert bridged.json("vm", "show", "next")["ip"] == "172.16.0.2"
    bridged.banger("vm", "delete", "next", check=True, timeout=120)


# --- user-mode --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def usermode(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = _env(debian_image.cache_home, "user")
    try:
        be.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
        be.banger("vm", "create", "--name", "um", check=True, timeout=600)
        yield be
    finally:
        be.banger("vm", "delete", "um", timeout=120)
        _stop_daemon(be)
        shutil.rmtree(be.root, ignore_errors=True)


def test_user_mode_ports_get_a_localhost_forward_that_answers(usermode: BangerEnv) -> None:
    be = usermode
    p = be.banger("vm", "ssh", "um", "--", HTTPD.format(name="um"), timeout=120)
    assert p.returncode == 0, p.stderr
    rows = json.loads(be.banger("vm", "ports", "um", "--json", check=True).stdout)
    web = [r for r in rows if r["port"] == 8080]
    assert web and web[0]["url"].startswith("http://127.0.0.1:")
    with urllib.request.urlopen(web[0]["url"], timeout=10) as resp:
        assert resp.read().decode() == "hello-from-um\n"
    # Asking again reuses the forward instead of adding another.
    again = json.loads(be.banger("vm", "ports", "um", "--json", check=True).stdout)
    assert [r["url"] for r in again if r["port"] == 8080] == [web[0]["url"]]
    ssh_row = next(r for r in rows if r["port"] == 22)
    vm = json.loads(be.banger("vm", "show", "um", "--json", check=True).stdout)
    assert ssh_row["url"] == f"ssh://root@127.0.0.1:{vm['ssh_port']}"
    # The generated ssh_config routes `um.vm` to the forwarded SSH port.
    conf = (be.paths.config_dir / "ssh_config").read_text()
    assert f"Host um.vm\n  HostName 127.0.0.1\n  Port {vm['ssh_port']}" in conf
    ping = be.client().call("vm.ping", {"ref": "um"})
    assert ping["alive"] is True and ping["latency_ms"] >= 0
    p = be.banger("vm", "ping", "um", check=True)
    assert p.stdout.startswith("um: alive (")

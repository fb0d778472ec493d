"""The seed disk's contents and the SSH helpers (argv, key pinning, banner wait)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from banger.guest.payload import GuestNetwork, SeedConfig, build_seed
from banger.guest.ssh import (
    SSHTarget,
    ensure_client_key,
    forget_host,
    generate_host_key,
    pin_host_key,
    ssh_argv,
    wait_ssh_banner,
)


def _debugfs(img: Path, cmd: str) -> str:
    return subprocess.run(
        ["debugfs", "-R", cmd, str(img)], capture_output=True, text=True, check=True
    ).stdout


def _cfg(tmp: Path, **kw: object) -> SeedConfig:
    priv, pub = generate_host_key(tmp / "hk")
    base: dict[str, object] = dict(
        vm_id="abc123",
        hostname="web-1",
        authorized_keys="ssh-ed25519 AAAAtest banger",
        host_key_private=priv,
        host_key_public=pub,
    )
    base.update(kw)
    return SeedConfig(**base)  # type: ignore[arg-type]


def test_seed_holds_payload_and_per_vm_data(tmp_path: Path) -> None:
    out = tmp_path / "seed.ext4"
    net = GuestNetwork(kind="tap", address="172.16.0.5", prefix=24, gateway="172.16.0.1",
                       dns=("172.16.0.1",))  # fmt: skip
    build_seed(out, _cfg(tmp_path, network=net, init_mode="minimal"))
    assert (
        "banger-seed"
        in subprocess.run(
            ["blkid", "-o", "value", "-s", "LABEL", str(out)], capture_output=True, text=True
        ).stdout
    )
    env = _debugfs(out, "cat /vm.env")
    assert "BANGER_HOSTNAME='web-1'" in env and "BANGER_NET_KIND='tap'" in env
    assert "BANGER_NET_ADDR='172.16.0.5'" in env and "BANGER_NET_GW='172.16.0.1'" in env
    assert "BANGER_INIT_MODE='minimal'" in env
    assert "UsePAM no" in _debugfs(out, "cat /sshd_config")
    assert "ssh-ed25519 AAAAtest banger" in _debugfs(out, "cat /ssh/authorized_keys")
    key = _debugfs(out, "stat /ssh/ssh_host_ed25519_key")
    assert "Mode:  0600" in key and "User:     0" in key
    assert "Mode:  0755" in _debugfs(out, "stat /init")
    assert "Mode:  0755" in _debugfs(out, "stat /bin/busybox")
    assert not list(tmp_path.glob(".seed-*"))  # staging cleaned up


@pytest.mark.parametrize(
    "kw",
    [
        {"hostname": "Bad_Host"},
        {"network": GuestNetwork(address="10.0.2.15; reboot")},
        {"network": GuestNetwork(dns=("1.1.1.1'",))},
        {"network": GuestNetwork(prefix=40)},
    ],
)
def test_seed_refuses_values_that_could_reach_the_guest_shell(tmp_path: Path, kw: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(ValueError):
        build_seed(tmp_path / "seed.ext4", _cfg(tmp_path, **kw))
    assert not (tmp_path / "seed.ext4").exists()


def test_ssh_argv_pins_the_host_key_alias(tmp_path: Path) -> None:
    t = SSHTarget("127.0.0.1", 40001, "root", tmp_path / "id", tmp_path / "kh", "web-1")
    argv = ssh_argv(t, ["echo", "hi"], tty=False)
    assert argv[0] == "ssh" and argv[-4:] == ["--", "127.0.0.1", "echo", "hi"]
    assert "HostKeyAlias=web-1.vm" in argv and "StrictHostKeyChecking=yes" in argv
    assert "BatchMode=yes" in argv and "-T" in argv
    assert f"UserKnownHostsFile={tmp_path / 'kh'}" in argv
    assert "-tt" in ssh_argv(t, None, tty=True)
    assert SSHTarget.from_json(t.to_json()) == t


def test_a_remote_command_starting_with_a_dash_is_not_an_ssh_option(tmp_path: Path) -> None:
    # OpenSSH parses options again after the host: without "--" this ran touch on the host.
    import socket
    import subprocess

    with socket.socket() as s:  # a port nothing listens on: ssh fails to connect, fast
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    marker = tmp_path / "ran-on-host"
    t = SSHTarget("127.0.0.1", port, "root", tmp_path / "id", tmp_path / "kh", "web-1")
    argv = ssh_argv(t, [f"-oProxyCommand=touch {marker}"], tty=False)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    assert p.returncode == 255 and "Connection refused" in p.stderr, p.stderr
    assert not marker.exists()


def test_known_hosts_pin_replace_forget(tmp_path: Path) -> None:
    kh = tmp_path / "ssh" / "known_hosts"
    pin_host_key(kh, "a.vm", "ssh-ed25519 AAAA1 banger-vm")
    pin_host_key(kh, "b.vm", "ssh-ed25519 BBBB1")
    pin_host_key(kh, "a.vm", "ssh-ed25519 AAAA2")
    assert kh.read_text().splitlines() == ["b.vm ssh-ed25519 BBBB1", "a.vm ssh-ed25519 AAAA2"]
    assert kh.stat().st_mode & 0o777 == 0o600
    forget_host(kh, ["b.vm"])
    assert kh.read_text() == "a.vm ssh-ed25519 AAAA2\n"


def test_client_key_is_created_once(tmp_path: Path) -> None:
    key = tmp_path / "ssh" / "id_ed25519"
    pub = ensure_client_key(key)
    assert pub.startswith("ssh-ed25519 ") and key.stat().st_mode & 0o777 == 0o600
    assert ensure_client_key(key) == pub


async def test_banner_wait_ignores_accept_before_sshd_listens() -> None:
    # Like slirp: connections are accepted (and closed) before the real server answers.
    served = {"n": 0}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served["n"] += 1
        if served["n"] >= 3:
            writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        await wait_ssh_banner("127.0.0.1", port, 10)
    assert served["n"] >= 3
    with pytest.raises(TimeoutError):
        await wait_ssh_banner("127.0.0.1", port, 0.5)

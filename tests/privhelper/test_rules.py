"""The helper's argument rules on their own (paths, addresses, processes), in-process."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from banger.privhelper import rules
from banger.rpc.errors import BadRequest, NotFound
from tests.waiting import wait_until


def test_paths_are_matched_by_component_not_by_string_prefix(tmp_path: Path) -> None:
    run = tmp_path / "run/banger"
    evil = tmp_path / "run/banger-evil"
    run.mkdir(parents=True)
    evil.mkdir(parents=True)
    (evil / "x").write_text("")
    with pytest.raises(BadRequest, match="outside banger's directories"):
        rules.open_under(str(evil / "x"), [run])
    # The root itself is not "below" it.
    with pytest.raises(BadRequest, match="outside"):
        rules.open_under(str(run), [run])
    with pytest.raises(BadRequest, match="empty"):
        rules.open_under(f"{run}/a//b", [run])
    with pytest.raises(BadRequest, match="empty"):
        rules.open_under(f"{run}/a/", [run])
    with pytest.raises(NotFound, match="does not exist"):
        rules.open_under(f"{run}/missing", [run])
    (run / "d").mkdir()
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(run / "d/ok.sock"))
    with rules.socket_path(str(run / "d/ok.sock"), [run], os.getuid()) as opened:
        assert opened.st.st_ino == os.stat(run / "d/ok.sock").st_ino
    s.close()


def test_jailer_namespace_and_cgroup_names_are_bangers() -> None:
    assert rules.parent_cgroup(None) is None
    assert rules.parent_cgroup("banger") == "banger"
    assert rules.parent_cgroup("banger/vms") == "banger/vms"
    for foreign in ("system", "user/user-1000", "bangerx", "docker/banger"):
        with pytest.raises(BadRequest, match="not below banger's own cgroup 'banger'"):
            rules.parent_cgroup(foreign)
    assert rules.netns_path("/var/run/netns/banger-fc") == "/var/run/netns/banger-fc"
    for foreign in ("/var/run/netns/vpn", "/var/run/netns/banger", "/var/run/netns/Banger-x"):
        with pytest.raises(BadRequest, match="not a network namespace banger created"):
            rules.netns_path(foreign)
    assert rules.netns_name("banger-fc-1") == "banger-fc-1"
    for bad in ("vpn", "banger-", "banger-A", "banger-x/../y", "banger-" + "a" * 30):
        with pytest.raises(BadRequest, match="not a network namespace name banger creates"):
            rules.netns_name(bad)


def test_addresses() -> None:
    assert str(rules.bridge_address("172.16.0.1/24")) == "172.16.0.1/24"
    assert str(rules.bridge_address("10.200.3.1/30")) == "10.200.3.1/30"
    for bad, why in [
        ("172.15.0.1/24", "private range"),  # just outside 172.16.0.0/12
        ("172.16.0.1/11", "private range"),  # wider than the private block
        ("192.168.0.1/32", "out of range"),
        ("169.254.0.1/16", "private range"),
        ("192.168.0.255/24", "broadcast"),
        ("::1/64", "IPv4"),
    ]:
        with pytest.raises(BadRequest, match=why):
            rules.bridge_address(bad)
    with pytest.raises(BadRequest, match="private"):
        rules.guest_address("1.1.1.1")


def test_signal_names() -> None:
    assert rules.signal_name("sigterm").name == "SIGTERM"
    for bad in ("STOP", "CONT", "9", "SEGV", ""):
        with pytest.raises(BadRequest):
            rules.signal_name(bad)


def test_cmdline_paths() -> None:
    argv = [
        "qemu-system-x86_64",
        "-qmp",
        "unix:/run/banger/vms/a/qmp.sock,server=on,wait=off",
        "-chardev",
        "socket,id=ctl,path=/run/banger/vms/a/ctl.sock,server=on",
        "--api-sock",
        "/run/banger/fc.sock",
    ]
    assert list(rules._cmdline_paths(argv)) == [
        "/run/banger/vms/a/qmp.sock",
        "/run/banger/vms/a/ctl.sock",
        "/run/banger/fc.sock",
    ]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("qemu-system-x86_64"), reason="root+qemu")
def test_vmm_whose_socket_escapes_with_dotdot_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu is not None
    procs = [
        subprocess.Popen(
            [
                qemu,
                "-M",
                "none",
                "-S",
                "-nodefaults",
                "-display",
                "none",
                "-qmp",
                f"unix:{sock},server=on,wait=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for sock in (f"{run}/../qmp.sock", f"{run}/qmp.sock")
    ]
    try:
        wait_until(
            lambda: (tmp_path / "qmp.sock").exists() and (run / "qmp.sock").exists(),
            30,
            "both QEMUs listening on their QMP sockets",
        )
        real = os.path.realpath(qemu)
        # `..` never counts, even when the path would resolve back inside.
        for root in (run, tmp_path):
            with pytest.raises(BadRequest, match="no socket under banger's runtime"):
                rules.check_vmm_process(procs[0].pid, [real], [root])
        fd = rules.check_vmm_process(procs[1].pid, [real], [run])
        os.close(fd)
        with pytest.raises(BadRequest, match="not a VMM banger launches"):
            rules.check_vmm_process(procs[1].pid, ["/usr/bin/firecracker"], [run])
    finally:
        for p in procs:
            p.kill()
            p.wait(timeout=10)

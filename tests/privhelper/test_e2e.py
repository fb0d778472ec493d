"""End to end: a bridged VM boots while bangerd runs as an unprivileged owner and only
bangerd-root is root. Everything runs inside a network namespace the test creates."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BuiltImage
from tests.privhelper.conftest import VENV_BIN, Helper, User, as_user, start_helper, stop_helper

BOOT_TIMEOUT = 600.0


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


class System:
    def __init__(self, root: Path, netns: str, owner: User) -> None:
        self.root = root
        self.netns = netns
        self.owner = owner
        self.env = dict(os.environ, BANGER_SYSTEM_ROOT=str(root), NO_COLOR="1")
        self.env.pop("BANGER_MODE", None)

    def banger(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The owner's CLI, inside the namespace (its SSH must reach the bridge)."""
        return subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                *as_user(self.owner),
                sys.executable,
                "-m",
                "banger.cli.main",
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def ok(self, *args: str, timeout: float = 120) -> str:
        r = self.banger(*args, timeout=timeout)
        assert r.returncode == 0, f"banger {' '.join(args)}: {r.stderr}\n{r.stdout}"
        return r.stdout

    def ns(self, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout


@pytest.fixture
def system(netns: str, owner_user: User) -> Iterator[System]:
    root = Path(tempfile.mkdtemp(prefix="bge-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield System(root, netns, owner_user)
    shutil.rmtree(root, ignore_errors=True)


def _start_daemon(s: System) -> subprocess.Popen[bytes]:
    """`bangerd --system` as the owner, in the namespace; returns once its socket answers."""
    sock = s.root / "run/banger/bangerd.sock"
    with contextlib.suppress(FileNotFoundError):
        sock.unlink()
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", s.netns, *as_user(s.owner), str(VENV_BIN / "bangerd"), "--system"],
        env=s.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not sock.exists():
        assert daemon.poll() is None, "bangerd --system exited"
        assert time.monotonic() < deadline, "bangerd --system never opened its socket"
        time.sleep(0.05)
    return daemon


def _stop_daemon(daemon: subprocess.Popen[bytes]) -> None:
    daemon.send_signal(signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        daemon.kill()
        daemon.wait(timeout=10)


def _banner(netns: str, ip: str) -> str:
    code = (
        "import socket,sys\n"
        f"s=socket.create_connection(({ip!r},22),timeout=10)\n"
        "sys.stdout.write(s.recv(64).decode(errors='replace'))\n"
    )
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout


@pytest.mark.slow
def test_bridged_vm_with_unprivileged_daemon_and_root_helper(
    system: System, debian_image: BuiltImage
) -> None:
    s, owner = system, system.owner
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "banger.cli.main",
            "system",
            "install",
            "--owner",
            owner.name,
            "--prefix",
            str(s.root),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    (s.root / "etc/banger/config.toml").write_text('network = "bridge"\n')
    # The owner registers a copy of the session's image (the fixture's directory is root's).
    inbox = s.root / "var/lib/banger/inbox"
    inbox.mkdir()
    rootfs = inbox / "rootfs.ext4"
    subprocess.run(
        ["cp", "--sparse=always", str(debian_image.rootfs), str(rootfs)], check=True, timeout=120
    )
    shutil.chown(inbox, owner.uid, owner.gid)
    shutil.chown(rootfs, owner.uid, owner.gid)

    helper: Helper = start_helper(s.root, s.netns, owner)
    daemon = _start_daemon(s)
    vm: dict[str, Any] = {}
    try:
        assert _uid_of(daemon.pid) == owner.uid

        s.ok("image", "register", "--name", "deb", "--rootfs", str(rootfs), timeout=300)
        s.ok(
            "vm",
            "create",
            "--image",
            "deb",
            "--name",
            "e2e",
            "--vcpu",
            "1",
            "--memory",
            "512",
            "--disk-size",
            "1G",
            timeout=BOOT_TIMEOUT,
        )
        vm = json.loads(s.ok("vm", "show", "e2e", "--json"))
        assert vm["state"] == "running" and vm["network"] == "tap", vm
        assert vm["ip"] and vm["ip"].startswith("172.16.0."), vm

        # Only the helper is root: the VMM runs as the owner, like the daemon.
        assert _uid_of(vm["pid"]) == owner.uid
        assert _uid_of(helper.proc.pid) == 0
        # The guest answers on its bridged address, from inside the namespace.
        assert _banner(s.netns, vm["ip"]).startswith("SSH-")
        # The TAP is on banger's bridge and belongs to the owner.
        links = json.loads(s.ns("ip", "-d", "-j", "link", "show"))
        taps = [x for x in links if str(x["ifname"]).startswith("tap-bg-")]
        assert len(taps) == 1 and taps[0].get("master") == "br-banger"
        assert taps[0]["linkinfo"]["info_data"]["user"] in (owner.name, str(owner.uid))
        # The host's own network never saw it.
        host = subprocess.run(
            ["ip", "link", "show", taps[0]["ifname"]], capture_output=True, timeout=10
        )
        assert host.returncode != 0

        calls = [x for x in helper.log_lines() if x.get("msg") == "helper rpc completed"]
        by_method = {x["method"]: x for x in calls}
        for m in ("priv.ensure_bridge", "priv.ensure_tap"):
            assert m in by_method, sorted(by_method)
            assert by_method[m]["caller_uid"] == owner.uid
            assert str(by_method[m]["op_id"]).startswith("op-")

        # Restarting either process leaves the VM running (what KillMode=process gives the units).
        stop_helper(helper)
        helper = start_helper(s.root, s.netns, owner)
        _stop_daemon(daemon)
        daemon = _start_daemon(s)
        again = json.loads(s.ok("vm", "show", "e2e", "--json"))
        assert again["state"] == "running" and again["pid"] == vm["pid"], again
        assert _banner(s.netns, vm["ip"]).startswith("SSH-")

        s.ok("vm", "delete", "e2e", timeout=120)
        links = json.loads(s.ns("ip", "-j", "link", "show"))
        assert not [x for x in links if str(x["ifname"]).startswith("tap-bg-")]
        assert "priv.delete_tap" in {x["method"] for x in helper.log_lines() if "method" in x}
    finally:
        if vm.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(vm["pid"]), signal.SIGKILL)
        _stop_daemon(daemon)
        stop_helper(helper)

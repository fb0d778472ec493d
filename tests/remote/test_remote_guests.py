"""Every guest-facing command against a remote daemon, over a real sshd, with one real guest.

The module's one VM is made by `vm run ./repo --name rvm -- CMD` through the remote (the one
boot); the other tests use it. Throughout, no daemon ever starts on the local side.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env
from tests.remote.conftest import (
    Remote,
    assert_no_local_daemon,
    client_env_for,
    start_remote,
    stop_remote,
)
from tests.sdk.conftest import teardown_env
from tests.workspace.conftest import git

pytestmark = pytest.mark.slow

VM = "rvm"


@dataclass
class Setup:
    remote: Remote
    client: BangerEnv
    repo: Path
    run: subprocess.CompletedProcess[str]


def make_repo(root: Path) -> Path:
    r = root / "proj"
    r.mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    (r / "hello.txt").write_text("hello from the client\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    (r / "hello.txt").write_text("hello from the client, uncommitted\n")
    return r


@pytest.fixture(scope="module")
def setup(debian_image: BuiltImage) -> Iterator[Setup]:
    remote_env = make_env("bgrg-", cache_home=debian_image.cache_home)
    remote_env.write_config('[vm_defaults]\nmemory_mib = 512\ndisk_size = "2G"\n')
    remote = start_remote(remote_env, remote_env.root / "sshd")
    client = client_env_for(remote, "bgcg-")
    repo = make_repo(client.root / "src")
    try:
        client.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
        run = client.banger(
            "vm", "run", str(repo), "--name", VM, "--", "cat hello.txt && pwd", timeout=900
        )
        yield Setup(remote=remote, client=client, repo=repo, run=run)
    finally:
        stop_remote(remote)  # first: its files live under remote_env's root (the leak check)
        teardown_env(remote_env)
        _stop_daemon(client)
        shutil.rmtree(client.root, ignore_errors=True)


def test_vm_run_ships_the_client_checkout_to_the_remote_guest(setup: Setup) -> None:
    assert setup.run.returncode == 0, setup.run.stderr
    # The uncommitted edit on the client arrived in the remote's guest, and the command ran there.
    assert setup.run.stdout.splitlines() == ["hello from the client, uncommitted", "/root/repo"]
    p = setup.client.banger("vm", "list", "--json", check=True, timeout=60)
    [vm] = json.loads(p.stdout)
    assert vm["name"] == VM
    assert vm["workspaces"] == [{"host_path": str(setup.repo), "guest_path": "/root/repo"}]
    # The VM is the remote daemon's (its state dir), none is local.
    assert (setup.remote.env.paths.state_dir / "vms").exists()
    assert_no_local_daemon(setup.client)


def test_vm_create_show_delete_on_the_remote(setup: Setup) -> None:
    # --no-start: a second VM record without a second boot.
    p = setup.client.banger("vm", "create", "--no-start", "--name", "cold", timeout=300)
    assert p.returncode == 0, p.stderr
    show = json.loads(setup.client.banger("vm", "show", "cold", "--json", check=True).stdout)
    assert show["name"] == "cold"
    assert show["state"] != "running"
    # Its files are in the remote daemon's state dir.
    assert Path(show["console_log"]).is_relative_to(setup.remote.env.paths.state_dir)
    p = setup.client.banger("vm", "delete", "cold", timeout=300)
    assert p.returncode == 0, p.stderr
    p = setup.client.banger("vm", "show", "cold", timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith(f"banger: on {setup.remote.url}: ")
    assert "cold" in p.stderr
    assert_no_local_daemon(setup.client)


def test_vm_ssh_runs_in_the_remote_guest(setup: Setup) -> None:
    p = setup.client.banger("vm", "ssh", VM, "--", "printf", "%s|", "a b", "c;d", timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "a b|c;d|"
    p = setup.client.banger("vm", "ssh", VM, "--", "exit 7", timeout=120)
    assert p.returncode == 7
    assert_no_local_daemon(setup.client)


def test_interactive_vm_ssh_gets_a_terminal_through_the_remote(setup: Setup) -> None:
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "banger.cli.main", "vm", "ssh", VM],
        env=setup.client.env,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    try:
        # A tty on both hops: the guest shell sees a terminal, and the line is echoed back.
        os.write(master, b"tty >/dev/null && echo TTY-$((6*7)); exit\n")
        got = b""
        deadline = time.monotonic() + 120
        while b"TTY-42" not in got and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: the session ended
                    break
                if not chunk:
                    break
                got += chunk
        assert b"TTY-42" in got, got
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


def test_vm_exec_runs_in_the_recorded_workspace(setup: Setup) -> None:
    p = setup.client.banger("vm", "exec", VM, "--", "pwd", timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "/root/repo"
    # A commit on the client: exec warns that HEAD moved; --auto-prepare ships it again.
    (setup.repo / "new.txt").write_text("committed later\n")
    git(setup.repo, "add", "new.txt")
    git(setup.repo, "commit", "-q", "-m", "second")
    p = setup.client.banger("vm", "exec", VM, "--", "ls", timeout=120)
    assert "host HEAD moved since prepare" in p.stderr
    assert "new.txt" not in p.stdout.split()
    p = setup.client.banger("vm", "exec", VM, "--auto-prepare", "--", "cat new.txt", timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "committed later\n"


def test_workspace_export_applies_on_the_client(setup: Setup, tmp_path: Path) -> None:
    p = setup.client.banger(
        "vm", "ssh", VM, "--", "echo changed in the guest > /root/repo/guest.txt", timeout=120
    )
    assert p.returncode == 0, p.stderr
    p = setup.client.banger("vm", "workspace", "export", VM, timeout=300)
    assert p.returncode == 0, p.stderr
    clone = tmp_path / "clone"
    git(setup.repo.parent, "clone", "-q", str(setup.repo), str(clone))
    # The export's base is the prepared HEAD; the clone is at the same commit.
    git(clone, "apply", "--index", input=p.stdout.encode())
    assert (clone / "guest.txt").read_text() == "changed in the guest\n"
    assert_no_local_daemon(setup.client)


def test_vm_logs_follows_through_the_remote_daemon(setup: Setup) -> None:
    # The log file is on the remote (here: the same machine): its bytes come through the daemon.
    show = json.loads(setup.client.banger("vm", "show", VM, "--json", check=True).stdout)
    on_remote = Path(show["console_log"]).read_bytes()
    p = subprocess.run(
        [sys.executable, "-m", "banger.cli.main", "vm", "logs", "-n", "100000000", VM],
        env=setup.client.env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    assert b"--- banger: boot of rvm at " in p.stdout
    assert b"banger-guest: READY" in p.stdout
    assert on_remote.startswith(p.stdout)
    marker = f"remote-follow-{os.getpid()}"
    follow = subprocess.Popen(
        [sys.executable, "-m", "banger.cli.main", "vm", "logs", "-f", "-n", "0", VM],
        env=setup.client.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        got = b""
        deadline = time.monotonic() + 120
        sent = False
        assert follow.stdout is not None
        while marker.encode() not in got and time.monotonic() < deadline:
            if not sent:
                # Written to the guest's console after the follow started: only -f can see it.
                wrote = setup.client.banger(
                    "vm", "ssh", VM, "--", f"echo {marker} > /dev/console", timeout=120
                )
                assert wrote.returncode == 0, wrote.stderr
                sent = True
            ready, _, _ = select.select([follow.stdout], [], [], 1.0)
            if ready:
                chunk = os.read(follow.stdout.fileno(), 65536)
                if not chunk:
                    break
                got += chunk
        assert marker.encode() in got, got
        follow.send_signal(signal.SIGINT)
        assert follow.wait(timeout=30) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
    assert_no_local_daemon(setup.client)


def test_the_sdk_takes_a_host(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    from banger.sdk import NotFound, Sandbox

    monkeypatch.setenv("BANGER_SSH_COMMAND", setup.remote.ssh_command)
    monkeypatch.delenv("BANGER_HOST", raising=False)
    url = setup.remote.url
    assert [s.name for s in Sandbox.list(host=url)] == [VM]
    with Sandbox.connect(VM, host=url) as sbx:
        result = sbx.run("cat /root/repo/hello.txt")
        assert result.exit_code == 0
        assert result.stdout == "hello from the client, uncommitted\n"
        sbx.files.write("/root/sdk.bin", b"\x00\x01binary\xff")
        assert sbx.files.read("/root/sdk.bin") == b"\x00\x01binary\xff"
        # workspace.prepare ships the checkout from this machine (the remote cannot read it).
        ws = sbx.workspace.prepare(setup.repo, guest_path="/root/sdkrepo")
        assert ws.guest_path == "/root/sdkrepo"
        shown = sbx.run("cat new.txt hello.txt", cwd="/root/sdkrepo")
        assert shown.stdout == "committed later\nhello from the client, uncommitted\n"
    with pytest.raises(NotFound) as info:
        Sandbox.connect("ghost", host=url)
    assert info.value.message.startswith(f"on {url}: ")
    assert_no_local_daemon(setup.client)


@asynccontextmanager
async def _mcp(env: dict[str, str], cwd: Path, *args: str) -> Any:
    from mcp import ClientSession, StdioServerParameters, stdio_client

    params = StdioServerParameters(
        command=sys.executable, args=["-m", "banger.cli.main", "mcp", *args], env=env, cwd=str(cwd)
    )
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def test_mcp_takes_a_host(setup: Setup) -> None:
    env = {k: v for k, v in setup.client.env.items() if k != "BANGER_HOST"}
    async with _mcp(env, setup.repo, "--host", setup.remote.url) as s:
        listed = await s.call_tool("list_sandboxes", {})
        assert not listed.is_error
        assert [b["name"] for b in (listed.structured_content or {})["sandboxes"]] == [VM]
        ran = await s.call_tool("run_command", {"sandbox": VM, "command": "echo via-mcp"})
        assert not ran.is_error
        assert (ran.structured_content or {})["stdout"] == "via-mcp\n"
    assert_no_local_daemon(setup.client)

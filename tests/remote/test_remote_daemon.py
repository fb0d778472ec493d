"""The CLI against a remote daemon over a real OpenSSH sshd (no guests: quick)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from tests.conftest import BangerEnv
from tests.remote.conftest import Remote, assert_no_local_daemon, free_port
from tests.waiting import wait_until


def test_ping_and_list_go_to_the_remote_daemon(remote: Remote, client_env: BangerEnv) -> None:
    p = client_env.banger("daemon", "status", "--json", timeout=60, check=True)
    info = json.loads(p.stdout)
    assert info["running"] is True
    # The daemon that answered is the remote's: its socket is in the remote env's dirs.
    assert info["socket"] == str(remote.env.paths.socket)
    assert remote.env.paths.socket.exists()
    p = client_env.banger("vm", "list", "--json", timeout=60, check=True)
    assert json.loads(p.stdout) == []
    p = client_env.banger("--host", remote.url, "image", "list", timeout=60, check=True)
    assert_no_local_daemon(client_env)


def test_host_option_wins_over_the_environment(remote: Remote, client_env: BangerEnv) -> None:
    client_env.env["BANGER_HOST"] = "ssh://nobody@127.0.0.1:1"
    p = client_env.banger("--host", remote.url, "vm", "list", "--json", timeout=60)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == []
    assert_no_local_daemon(client_env)


def test_an_unreachable_host_is_named_in_the_error(client_env: BangerEnv) -> None:
    port = free_port()  # nothing listens there
    url = f"ssh://root@127.0.0.1:{port}"
    p = client_env.banger("--host", url, "vm", "list", timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith(f"banger: on {url}: ssh could not reach the host: ")
    assert "Connection refused" in p.stderr
    assert_no_local_daemon(client_env)


def test_a_remote_error_names_the_host(remote: Remote, client_env: BangerEnv) -> None:
    p = client_env.banger("vm", "show", "nosuchvm", timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith(f"banger: on {remote.url}: ")
    assert "nosuchvm" in p.stderr
    assert_no_local_daemon(client_env)


def test_banger_ssh_command_replaces_ssh(
    remote: Remote, client_env: BangerEnv, tmp_path: Path
) -> None:
    record = tmp_path / "called"
    wrapper = tmp_path / "my-ssh"
    wrapper.write_text(
        f'#!/bin/sh\nprintf "%s\\n" "$@" >> {record}\nexec {remote.ssh_command} "$@"\n'
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    client_env.env["BANGER_SSH_COMMAND"] = f"{wrapper} -o ConnectTimeout=20"
    p = client_env.banger("vm", "list", "--json", timeout=60)
    assert p.returncode == 0, p.stderr
    words = record.read_text().splitlines()
    # The options, then `--` right before the host, then the one remote command line.
    assert words[:2] == ["-o", "ConnectTimeout=20"]
    i = words.index("--")
    assert words[i + 1 :] == ["127.0.0.1", "banger daemon dial-stdio"]
    assert words[i - 3 : i] == ["-p", str(remote.port), "-T"]


def test_daemon_stop_stops_the_remote_one(remote: Remote, client_env: BangerEnv) -> None:
    client_env.banger("daemon", "start", timeout=60, check=True)
    assert remote.env.paths.socket.exists()
    p = client_env.banger("daemon", "stop", timeout=60, check=True)
    assert f"on {remote.url} stopped" in p.stdout
    # The remote daemon removes its socket on the way out.
    wait_until(
        lambda: not os.path.exists(remote.env.paths.socket), 30, "the remote socket going away"
    )
    assert_no_local_daemon(client_env)


def test_local_only_commands_refuse_a_host(remote: Remote, client_env: BangerEnv) -> None:
    p = client_env.banger("doctor", timeout=60)
    assert p.returncode == 2
    assert "`banger doctor` is about the machine it runs on, not a daemon" in p.stderr
    assert_no_local_daemon(client_env)


def test_a_login_that_prints_text_is_named_not_parsed(
    remote: Remote, client_env: BangerEnv, tmp_path: Path
) -> None:
    # A wrapper standing in for a chatty shell rc: text on stdout before dial-stdio's stream.
    wrapper = tmp_path / "chatty-ssh"
    wrapper.write_text(f"#!/bin/sh\necho 'Welcome to buildbox'\nexec {remote.ssh_command} \"$@\"\n")
    wrapper.chmod(0o755)
    client_env.env["BANGER_SSH_COMMAND"] = str(wrapper)
    p = client_env.banger("vm", "list", timeout=60)
    assert p.returncode == 1
    assert p.stderr.startswith(
        f"banger: on {remote.url}: {remote.url} answered vm.list with something that is not "
        "banger's RPC: b'Welcome to buildbox\\n'"
    ), p.stderr
    assert_no_local_daemon(client_env)

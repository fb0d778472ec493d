"""Hostile remote hosts, ssh commands and remote-client params.

`--host` / BANGER_HOST values a script or a pasted line could carry (option injection into ssh,
passwords, paths, control characters, bad ports) are refused by the CLI before ssh runs, with
the exact message, and no daemon starts anywhere. BANGER_SSH_COMMAND that is not a program is
refused. The RPC params a remote client sends (vm.workspace.record, vm.logs offsets) are checked
by a real daemon, which answers `ping` afterwards. A sentinel directory outside every state dir
is unchanged after each case (a ProxyCommand that ran would have written there).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from banger.rpc.errors import RPCError
from tests.conftest import BangerEnv, _stop_daemon, make_env

SENTINEL = Path("/tmp/bg-hostile-remote-sentinel")
PWNED = SENTINEL / "pwned"
HINT = "give it as ssh://[user@]host[:port], e.g. ssh://me@buildbox:2222"

HOSTS: list[tuple[str, str, str]] = [
    ("no-scheme-ssh-option", f"-oProxyCommand=touch {PWNED}", "whitespace"),
    ("no-scheme-plain", "buildbox", f"host 'buildbox' has no scheme; {HINT}"),
    (
        "host-is-an-option",
        "ssh://-oProxyCommand=touch${IFS}pwned",
        "a host name may not start with '-' (an ssh option)",
    ),
    ("host-is-a-short-option", "ssh://-F/tmp/x", f"host 'ssh://-F/tmp/x' has a path; {HINT}"),
    ("host-dash-p", "ssh://-p22", "host 'ssh://-p22': a host name may not start with '-'"),
    ("user-is-an-option", "ssh://-oProxyCommand=x@h", "user '-oProxyCommand=x' is not a plain"),
    ("user-dash-l", "ssh://-lroot@h", "user '-lroot' is not a plain user name"),
    ("user-host-dash", "ssh://me@-h", "a host name may not start with '-'"),
    ("password", "ssh://me:secret@h", "carries a password; use keys or an agent"),
    ("path", "ssh://h/var/run/x.sock", f"host 'ssh://h/var/run/x.sock' has a path; {HINT}"),
    ("query", "ssh://h?cmd=id", f"host 'ssh://h?cmd=id' has a query; {HINT}"),
    ("fragment", "ssh://h#x", f"host 'ssh://h#x' has a fragment; {HINT}"),
    ("port-zero", "ssh://h:0", "host 'ssh://h:0': port 0 is not in 1..65535"),
    ("port-too-big", "ssh://h:65536", "host 'ssh://h:65536': port 65536 is not in 1..65535"),
    ("port-huge", "ssh://h:99999999999999999999", "is not in 1..65535"),
    ("port-leading-zero", "ssh://h:022", "host 'ssh://h:022': port 022 is not in 1..65535"),
    ("port-words", "ssh://h:ssh", "the port must be a number after ':'"),
    ("port-negative", "ssh://h:-1", "the port must be a number after ':'"),
    ("port-empty", "ssh://h:", "the port must be a number after ':'"),
    ("port-unicode-digits", "ssh://h:\u0661\u0662", "the port must be a number after ':'"),
    ("scheme-tcp", "tcp://h:2375", "only ssh:// hosts are supported, not tcp://"),
    ("scheme-unix", "unix:///run/x.sock", "only ssh:// hosts are supported, not unix://"),
    ("scheme-upper", "SSH://h", "only ssh:// hosts are supported, not SSH://"),
    ("empty-host", "ssh://", f"host 'ssh://' has no host name; {HINT}"),
    ("user-only", "ssh://me@", f"host 'ssh://me@' has no host name; {HINT}"),
    ("space", "ssh://bad host", "contains whitespace or a control character"),
    ("newline-then-option", "ssh://h\n-oProxyCommand=x", "whitespace or a control character"),
    ("escape-sequence", "ssh://h\x1b[2J", "whitespace or a control character"),
    ("nul", "ssh://h\x00x", "whitespace or a control character"),
    ("dollar", "ssh://h$(id)", "'h$(id)' is not a host name"),
    ("backtick", "ssh://h`id`", "'h`id`' is not a host name"),
    ("semicolon", "ssh://h;id", "'h;id' is not a host name"),
    ("double-at", "ssh://me@@h", "user 'me@' is not a plain user name"),
    ("dot-start", "ssh://.h", "'.h' is not a host name"),
    ("unclosed-ipv6", "ssh://[::1", "host 'ssh://[::1': the port must be a number after ':'"),
    ("overlong", "ssh://" + "a" * 600, "is longer than 512 characters"),
]

SSH_COMMANDS: list[tuple[str, str, str]] = [
    (
        "ssh-command-is-an-option",
        f"-oProxyCommand=touch {PWNED}",
        "must start with the ssh program",
    ),
    ("ssh-command-unterminated-quote", "ssh -o 'ProxyJump=gw", "cannot be split into words"),
]


@pytest.fixture(scope="module")
def sentinel() -> Iterator[Path]:
    shutil.rmtree(SENTINEL, ignore_errors=True)
    SENTINEL.mkdir(mode=0o700)
    (SENTINEL / "keep.txt").write_text("untouched\n")
    yield SENTINEL
    shutil.rmtree(SENTINEL, ignore_errors=True)


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        p.name: (stat.S_IMODE(p.stat().st_mode), p.read_bytes()) for p in sorted(root.iterdir())
    } | {".": (stat.S_IMODE(root.stat().st_mode), b"")}


@pytest.fixture(scope="module")
def client() -> Iterator[BangerEnv]:
    be = make_env("bghr-")
    yield be
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


def _no_daemon_started(be: BangerEnv) -> None:
    assert not be.paths.socket.exists()
    assert not be.paths.pid_file.exists()


@pytest.mark.parametrize(("url", "says"), [c[1:] for c in HOSTS], ids=[c[0] for c in HOSTS])
def test_hostile_host_is_refused_before_ssh_runs(
    url: str, says: str, client: BangerEnv, sentinel: Path
) -> None:
    before = _snapshot(sentinel)
    if "\x00" in url:  # an argv cannot carry NUL: only the parser sees it
        from banger.client.ssh_host import parse_host

        with pytest.raises(RPCError) as info:
            parse_host(url)
        assert info.value.code == "bad_request"
        assert says in info.value.message
    else:
        p = client.banger("--host", url, "vm", "list", timeout=60)
        assert p.returncode == 2, p.stderr
        err = p.stderr.replace("\n", " ")
        assert "Invalid value for --host / BANGER_HOST: " in err
        assert says in " ".join(err.split()), err
    _no_daemon_started(client)
    assert _snapshot(sentinel) == before
    assert not PWNED.exists()


@pytest.mark.parametrize(
    ("command", "says"), [c[1:] for c in SSH_COMMANDS], ids=[c[0] for c in SSH_COMMANDS]
)
def test_hostile_ssh_command_is_refused(
    command: str, says: str, client: BangerEnv, sentinel: Path
) -> None:
    before = _snapshot(sentinel)
    env = dict(client.env, BANGER_SSH_COMMAND=command)
    import subprocess
    import sys

    p = subprocess.run(
        [sys.executable, "-m", "banger.cli.main", "--host", "ssh://127.0.0.1:1", "vm", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert p.returncode == 1
    assert p.stderr.startswith("banger: on ssh://127.0.0.1:1: BANGER_SSH_COMMAND=")
    assert says in p.stderr
    _no_daemon_started(client)
    assert _snapshot(sentinel) == before


# What a (possibly hostile or broken) remote client sends the daemon.
GOOD_COMMIT = "a" * 40
RECORD_BASE: dict[str, Any] = {
    "vm": "nosuchvm",
    "host_path": "/home/me/proj",
    "guest_path": "/root/repo",
    "repo_name": "proj",
}
RPC_CASES: list[tuple[str, str, dict[str, Any], str, str]] = [
    ("record-relative-host-path", "vm.workspace.record", {"host_path": "proj"}, "bad_request",
     "parameter 'host_path': must be an absolute path, got 'proj'"),
    ("record-guest-path-relative", "vm.workspace.record", {"guest_path": "repo"}, "bad_request",
     "guest_path"),
    ("record-guest-path-dotdot", "vm.workspace.record", {"guest_path": "/root/../etc"},
     "bad_request", "guest_path"),
    ("record-guest-path-root", "vm.workspace.record", {"guest_path": "/"}, "bad_request", "/"),
    ("record-commit-not-hex", "vm.workspace.record", {"head_commit": "HEAD~1;id"},
     "bad_request", "head_commit 'HEAD~1;id' is not a full commit id"),
    ("record-commit-option", "vm.workspace.record", {"base_commit": "--output=/tmp/x"},
     "bad_request", "base_commit '--output=/tmp/x' is not a full commit id"),
    ("record-repo-name-slash", "vm.workspace.record", {"repo_name": "../../etc"},
     "bad_request", "is not a directory name"),
    ("record-repo-name-dotdot", "vm.workspace.record", {"repo_name": ".."}, "bad_request",
     "is not a directory name"),
    ("record-repo-name-escape", "vm.workspace.record", {"repo_name": "p\x1b[2J"},
     "bad_request", "repo_name 'p\\x1b[2J' is not a directory name"),
    ("record-unknown-field", "vm.workspace.record", {"command": "id"}, "bad_request",
     "command"),
    ("record-mode-bogus", "vm.workspace.record", {"mode": "rsync"}, "bad_request", "mode"),
    ("record-unknown-vm", "vm.workspace.record", {"head_commit": GOOD_COMMIT}, "not_found",
     "nosuchvm"),
    ("logs-negative-offset", "vm.logs", {"offset": -1}, "bad_request", "offset"),
    ("logs-offset-not-int", "vm.logs", {"offset": "0; id"}, "bad_request", "offset"),
]  # fmt: skip


@pytest.fixture(scope="module")
def daemon_env(client: BangerEnv) -> BangerEnv:
    client.banger("daemon", "start", check=True, timeout=30)
    return client


@pytest.mark.parametrize(
    ("method", "params", "code", "says"),
    [c[1:] for c in RPC_CASES],
    ids=[c[0] for c in RPC_CASES],
)
def test_hostile_remote_client_params(
    method: str,
    params: dict[str, Any],
    code: str,
    says: str,
    daemon_env: BangerEnv,
    sentinel: Path,
) -> None:
    before = _snapshot(sentinel)
    full = (
        {**RECORD_BASE, **params}
        if method == "vm.workspace.record"
        else {"ref": "nosuchvm", **params}
    )
    with daemon_env.client() as c, pytest.raises(RPCError) as info:
        c.call(method, full)
    assert info.value.code == code, info.value.message
    assert says in info.value.message
    with daemon_env.client() as c:
        assert c.call("ping")["pid"] > 0
    assert _snapshot(sentinel) == before
    assert os.listdir(daemon_env.paths.state_dir)  # the daemon's own dir is where it writes


SDK_HOSTS = [
    ("sdk-host-is-an-option", "ssh://-oProxyCommand=x", "a host name may not start with '-'"),
    ("sdk-host-with-password", "ssh://me:pw@h", "carries a password"),
    ("sdk-host-not-ssh", "http://h", "only ssh:// hosts are supported, not http://"),
]


@pytest.mark.parametrize(("url", "says"), [c[1:] for c in SDK_HOSTS], ids=[c[0] for c in SDK_HOSTS])
def test_hostile_sdk_host_is_refused(url: str, says: str, sentinel: Path) -> None:
    from banger.sdk import BadRequest, Sandbox

    before = _snapshot(sentinel)
    with pytest.raises(BadRequest) as info:
        Sandbox.list(host=url)
    assert info.value.code == "bad_request"
    assert says in info.value.message
    assert _snapshot(sentinel) == before


def test_hostile_mcp_host_is_refused(sentinel: Path) -> None:
    fresh = make_env("bghm-")  # the module's env has a daemon by now (RPC cases)
    try:
        before = _snapshot(sentinel)
        p = fresh.banger("mcp", "--host", "ssh://-oProxyCommand=x", timeout=60)
        assert p.returncode == 2
        assert "Invalid value for --host: " in p.stderr
        assert "a host name may not start with '-'" in " ".join(p.stderr.split())
        _no_daemon_started(fresh)
        assert _snapshot(sentinel) == before
    finally:
        shutil.rmtree(fresh.root, ignore_errors=True)

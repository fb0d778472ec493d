"""A private OpenSSH sshd on 127.0.0.1 playing the "remote" host.

The same machine is the remote: its logins get their own XDG dirs (sshd's SetEnv), so the remote
daemon has a state dir and socket of its own, and `banger` from this checkout's venv on PATH.
The local side (`client_env`) has other XDG dirs: a local daemon would show up as its socket.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, _stop_daemon, make_env

SSHD = "/usr/sbin/sshd"
# The variables that make the remote login's banger use the remote env's dirs.
REMOTE_VARS = (
    "XDG_CONFIG_HOME",
    "XDG_STATE_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
    "BANGER_MODE",
    "BANGER_NETWORK",
    "NO_COLOR",
    "BANGER_CHECK_RESULTS",  # the remote daemon checks its results against the contract too
)


@dataclass
class Remote:
    url: str
    port: int
    key: Path
    known_hosts: Path
    env: BangerEnv  # the remote's banger dirs (readable here: same machine)
    sshd: subprocess.Popen[bytes]

    @property
    def ssh_command(self) -> str:
        return (
            f"ssh -F /dev/null -i {self.key} -o IdentitiesOnly=yes "
            f"-o UserKnownHostsFile={self.known_hosts} -o StrictHostKeyChecking=yes "
            "-o BatchMode=yes -o LogLevel=ERROR"
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sshd exited {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"sshd did not listen on {port} within {timeout}s")


def start_remote(remote_env: BangerEnv, root: Path) -> Remote:
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for name in ("host_key", "client_key"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True
        )
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    bin_dir = Path(sys.executable).parent  # this venv: `banger` and its python
    path = f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    setenv = " ".join(f"{k}={remote_env.env[k]}" for k in REMOTE_VARS) + f" PATH={path}"
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {root / 'authorized_keys'}\nPidFile {root / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nPrintMotd no\n"
        "AcceptEnv none\n"
        f"SetEnv {setenv}\n"
    )
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    _wait_listening(port, proc)
    pub = (root / "host_key.pub").read_text().split()
    (root / "known_hosts").write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    user = os.environ.get("USER") or "root"
    return Remote(
        url=f"ssh://{user}@127.0.0.1:{port}",
        port=port,
        key=root / "client_key",
        known_hosts=root / "known_hosts",
        env=remote_env,
        sshd=proc,
    )


def stop_remote(remote: Remote) -> None:
    remote.sshd.terminate()
    try:
        remote.sshd.wait(timeout=10)
    except subprocess.TimeoutExpired:
        remote.sshd.kill()
        remote.sshd.wait()


def client_env_for(remote: Remote, prefix: str) -> BangerEnv:
    """The local side: its own XDG dirs, BANGER_HOST pointing at the remote."""
    be = make_env(prefix)
    be.env["BANGER_HOST"] = remote.url
    be.env["BANGER_SSH_COMMAND"] = remote.ssh_command
    return be


def assert_no_local_daemon(be: BangerEnv) -> None:
    paths = be.paths
    assert not paths.socket.exists(), f"a local daemon socket appeared at {paths.socket}"
    assert not paths.pid_file.exists()


@pytest.fixture
def remote(tmp_path: Path) -> Iterator[Remote]:
    """A remote without images (quick tests: ping, list, errors)."""
    remote_env = make_env("bgr-")
    r = start_remote(remote_env, remote_env.root / "sshd")
    yield r
    stop_remote(r)
    _stop_daemon(remote_env)
    shutil.rmtree(remote_env.root, ignore_errors=True)


@pytest.fixture
def client_env(remote: Remote) -> Iterator[BangerEnv]:
    be = client_env_for(remote, "bgc-")
    yield be
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)

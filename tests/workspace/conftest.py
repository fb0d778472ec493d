"""Real git repositories for workspace tests, and a local guest (a scratch dir on this host)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.guest.ssh import SSHTarget, generate_host_key, pin_host_key
from banger.workspace.transport import LocalGuestExec

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.test",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(repo: Path, *args: str, input: bytes | None = None) -> str:
    env = {**os.environ, **GIT_ENV, "GIT_CONFIG_GLOBAL": str(repo.parent / "host.gitconfig")}
    p = subprocess.run(
        ["git", *args], cwd=repo, env=env, capture_output=True, input=input, check=False
    )
    if p.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {p.stderr.decode()}")
    return p.stdout.decode()


def tree_of(worktree: Path) -> str:
    """The tree id of a work tree's tracked + untracked non-ignored files (index untouched)."""
    index = worktree.parent / f".{worktree.name}.cmp-index"
    index.unlink(missing_ok=True)
    env = {**os.environ, **GIT_ENV, "GIT_INDEX_FILE": str(index)}
    env["GIT_CONFIG_GLOBAL"] = str(worktree.parent / "host.gitconfig")
    subprocess.run(["git", "add", "-A"], cwd=worktree, env=env, check=True)
    out = subprocess.run(
        ["git", "write-tree"], cwd=worktree, env=env, check=True, capture_output=True
    ).stdout.decode()
    index.unlink(missing_ok=True)
    return out.strip()


BINARY = bytes(range(256)) * 64


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repo with history, a binary file, an executable, an ignore rule and uncommitted work."""
    r = tmp_path / "host" / "proj"
    r.mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.name", "Ada Lovelace")
    git(r, "config", "user.email", "ada@example.test")
    (r / "README.md").write_text("hello\n")
    (r / "src").mkdir()
    (r / "src" / "app.py").write_text("print('v1')\n")
    (r / "old_name.txt").write_text("rename me\n" * 20)
    (r / "gone.txt").write_text("to be deleted\n")
    (r / "blob.bin").write_bytes(BINARY)
    (r / "run.sh").write_text("#!/bin/sh\necho run\n")
    (r / ".gitignore").write_text("*.log\nbuild/\n")
    git(r, "add", "-A")
    git(r, "commit", "-q", "-m", "first")
    (r / "src" / "app.py").write_text("print('v2')\n")
    git(r, "commit", "-qam", "second")
    # Uncommitted work: an edit, a staged new file, a deletion; plus untracked and ignored files.
    (r / "README.md").write_text("hello, edited\n")
    (r / "staged_new.txt").write_text("staged\n")
    git(r, "add", "staged_new.txt")
    (r / "gone.txt").unlink()
    (r / "notes.txt").write_text("untracked\n")
    (r / "debug.log").write_text("ignored\n")
    (r / "build").mkdir()
    (r / "build" / "out.o").write_bytes(b"\x7fELF")
    return r


@pytest.fixture
def guest(tmp_path: Path) -> Iterator[LocalGuestExec]:
    yield LocalGuestExec(tmp_path / "guest")


# A real OpenSSH server on 127.0.0.1 standing in for a guest's (no VM needed).
SSHD = Path("/usr/sbin/sshd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sshd_target() -> Iterator[SSHTarget]:
    if not SSHD.exists() or os.geteuid() != 0:
        pytest.fail(
            "needs root and /usr/sbin/sshd: run the suite as root after scripts/setup-host.sh"
        )
    d = Path(tempfile.mkdtemp(prefix="bg-sshd-"))
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client")], check=True
    )
    _priv, host_pub = generate_host_key(d / "host")
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    config = d / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host' / 'ssh_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nUsePAM no\nPidFile none\n"
        "PermitRootLogin prohibit-password\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if s.recv(4).startswith(b"SSH-"):
                    break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("sshd did not come up")
    known = d / "known_hosts"
    pin_host_key(known, "wsfake.vm", host_pub)
    yield SSHTarget("127.0.0.1", port, "root", d / "client", known, "wsfake")
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(d, ignore_errors=True)

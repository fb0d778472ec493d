"""A real `bangerd-root` subprocess under a temporary system root, inside a throwaway netns.

Throwaway system users stand in for the install owner and for a stranger; they are created with
useradd and removed at the end of the session. Everything the helper does to the network happens
inside a network namespace the fixture creates, so the host's own interfaces are untouched.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.netns import add_netns

VENV_BIN = Path(sys.executable).parent
HELPER_START_TIMEOUT = 15.0


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


def _make_user(prefix: str) -> User:
    name = f"{prefix}{secrets.token_hex(3)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        check=True,
        timeout=30,
    )
    pw = pwd.getpwnam(name)
    return User(name, pw.pw_uid, pw.pw_gid)


def _drop_user(user: User) -> None:
    subprocess.run(["userdel", user.name], check=False, timeout=30, capture_output=True)


@pytest.fixture(scope="session")
def owner_user() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.fail(
            "the root helper tests need root (they create users and run bangerd-root): "
            "run the suite as root after scripts/setup-host.sh"
        )
    user = _make_user("bgown")
    yield user
    _drop_user(user)


@pytest.fixture(scope="session")
def stranger_user() -> Iterator[User]:
    if os.geteuid() != 0:
        pytest.fail("needs root: run the suite as root after scripts/setup-host.sh")
    user = _make_user("bgstr")
    yield user
    _drop_user(user)


def as_user(user: User, *extra_caps: str) -> list[str]:
    """argv prefix running a command as `user` (optionally keeping some capabilities)."""
    argv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups"]
    if extra_caps:
        caps = ",".join(f"+{c}" for c in extra_caps)
        argv += [f"--inh-caps={caps}", f"--ambient-caps={caps}"]
    return argv


def write_install(root: Path, owner: User) -> None:
    etc = root / "etc/banger"
    etc.mkdir(parents=True, exist_ok=True)
    (etc / "install.toml").write_text(
        f'owner_user = "{owner.name}"\nowner_uid = {owner.uid}\nowner_gid = {owner.gid}\n'
        'owner_home = "/nonexistent"\ninstalled_at = "2026-01-01T00:00:00Z"\nversion = "test"\n'
    )
    for d in ("run/banger", "var/lib/banger"):
        (root / d).mkdir(parents=True, exist_ok=True)
        os.chown(root / d, owner.uid, owner.gid)
        os.chmod(root / d, 0o700)


def raw_call(sock_path: Path, line: bytes, timeout: float = 30) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(sock_path))
        s.sendall(line)
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    result: dict[str, Any] = json.loads(buf)
    return result


# Runs one call from another uid and prints the JSON answer (or the connect error).
_CALLER = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(20)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print(json.dumps({"connect_error": type(e).__name__, "errno": e.errno}))
    sys.exit(0)
s.sendall(sys.argv[2].encode() + b"\n")
buf = b""
while not buf.endswith(b"\n"):
    c = s.recv(65536)
    if not c:
        break
    buf += c
print(buf.decode().strip() or "{}")
"""


@dataclass
class Helper:
    root: Path
    netns: str
    owner: User
    log_file: Path
    proc: subprocess.Popen[bytes]
    calls: int = field(default=0)

    @property
    def socket(self) -> Path:
        return self.root / "run/banger-root/bangerd-root.sock"

    @property
    def runtime_dir(self) -> Path:
        return self.root / "run/banger"

    @property
    def state_dir(self) -> Path:
        return self.root / "var/lib/banger"

    def call(
        self, method: str, params: dict[str, Any] | None = None, op_id: str | None = None
    ) -> dict[str, Any]:
        req: dict[str, Any] = {"version": 1, "method": method, "params": params or {}}
        if op_id:
            req["op_id"] = op_id
        return raw_call(self.socket, json.dumps(req).encode() + b"\n")

    def call_as(
        self, user: User, method: str, params: dict[str, Any] | None = None, *caps: str
    ) -> dict[str, Any]:
        req = json.dumps({"version": 1, "method": method, "params": params or {}})
        p = subprocess.run(
            [*as_user(user, *caps), sys.executable, "-c", _CALLER, str(self.socket), req],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        result: dict[str, Any] = json.loads(p.stdout)
        return result

    def ns(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=check,
        )

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.log_file.read_text().splitlines() if x.strip()]


def start_helper(
    root: Path, netns: str, owner: User, extra_env: dict[str, str] | None = None
) -> Helper:
    log_file = root / "helper.log"
    env = dict(os.environ, BANGER_SYSTEM_ROOT=str(root), **(extra_env or {}))
    proc = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            netns,
            str(VENV_BIN / "bangerd-root"),
            "--log-file",
            str(log_file),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    sock = root / "run/banger-root/bangerd-root.sock"
    deadline = time.monotonic() + HELPER_START_TIMEOUT
    while not sock.exists() or sock.stat().st_uid != owner.uid:
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"bangerd-root exited {proc.returncode}: {err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("bangerd-root did not create its socket in time")
        time.sleep(0.05)
    return Helper(root=root, netns=netns, owner=owner, log_file=log_file, proc=proc)


def stop_helper(h: Helper) -> None:
    h.proc.terminate()
    try:
        h.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        h.proc.kill()
        h.proc.wait(timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"bgph-{secrets.token_hex(3)}"
    add_netns(name)
    yield name
    subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def system_root(owner_user: User) -> Iterator[Path]:
    # Short (sun_path) and traversable by the owner (the helper dir inside is 0711).
    root = Path(tempfile.mkdtemp(prefix="bgs-", dir="/tmp"))
    os.chmod(root, 0o755)
    write_install(root, owner_user)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def helper(system_root: Path, netns: str, owner_user: User) -> Iterator[Helper]:
    h = start_helper(system_root, netns, owner_user)
    yield h
    stop_helper(h)

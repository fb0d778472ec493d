"""SSH to guests: banger's client key, per-VM host keys pinned in banger's own known_hosts, the
OpenSSH argv the CLI execs, and the banner wait that tells a guest's sshd really listens.

known_hosts entries are keyed `<vm name>.vm` (OpenSSH `HostKeyAlias`), not by the moving
localhost port, matching the generated ssh_config (network/sshconfig.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from banger.proc import run_sync


@dataclass(frozen=True)
class SSHTarget:
    host: str
    port: int
    user: str
    key_path: Path
    known_hosts_path: Path
    vm_name: str

    @property
    def host_key_alias(self) -> str:
        return f"{self.vm_name}.vm"

    def to_json(self) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "key_path": str(self.key_path),
            "known_hosts_path": str(self.known_hosts_path),
            "vm_name": self.vm_name,
            "host_key_alias": self.host_key_alias,
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SSHTarget:
        return cls(
            host=str(data["host"]),
            port=int(str(data["port"])),
            user=str(data["user"]),
            key_path=Path(str(data["key_path"])),
            known_hosts_path=Path(str(data["known_hosts_path"])),
            vm_name=str(data["vm_name"]),
        )


def ssh_argv(target: SSHTarget, remote: Sequence[str] | None, *, tty: bool) -> list[str]:
    """OpenSSH argv with banger's key and pinned known_hosts; BatchMode, fast connect options."""
    argv = [
        "ssh",
        "-i", str(target.key_path),
        "-p", str(target.port),
        "-l", target.user,
        "-o", "IdentitiesOnly=yes",
        "-o", f"UserKnownHostsFile={target.known_hosts_path}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"HostKeyAlias={target.host_key_alias}",
        "-o", "StrictHostKeyChecking=yes",
        "-o", "BatchMode=yes",
        "-o", "ConnectTimeout=10",
        "-o", "ServerAliveInterval=15",
        "-o", "LogLevel=ERROR",
        # One KEX the guest's sshd offers first: skips the slow post-quantum exchange under TCG.
        "-o", "KexAlgorithms=curve25519-sha256,curve25519-sha256@libssh.org",
    ]  # fmt: skip
    argv.append("-tt" if tty else "-T")
    # "--" before the host: OpenSSH parses options again after the host when the next word
    # starts with "-", so a remote command like `-oProxyCommand=…` would run on this machine.
    argv.extend(["--", target.host])
    if remote:
        argv.extend(remote)
    return argv


# Concurrent creates (worker threads of one daemon: same pid, same temp name) generate it once.
_CLIENT_KEY_LOCK = threading.Lock()


def ensure_client_key(key_path: Path) -> str:
    """Create banger's ed25519 client key when missing; return the public key line."""
    with _CLIENT_KEY_LOCK:
        return _ensure_client_key(key_path)


def _ensure_client_key(key_path: Path) -> str:
    pub = key_path.with_name(key_path.name + ".pub")
    if not key_path.exists():
        key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = key_path.with_name(f".{key_path.name}.tmp-{os.getpid()}")
        for p in (tmp, tmp.with_name(tmp.name + ".pub")):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        run_sync(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger", "-f", str(tmp)],
            what="ssh-keygen",
        )
        os.replace(tmp.with_name(tmp.name + ".pub"), pub)
        os.replace(tmp, key_path)
    if not pub.exists():
        out = run_sync(["ssh-keygen", "-y", "-f", str(key_path)], what="ssh-keygen -y").out
        pub.write_text(out)
    return pub.read_text().strip()


def generate_host_key(directory: Path) -> tuple[str, str]:
    """A fresh ed25519 host key for one VM: (private key text, public key line)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = directory / "ssh_host_ed25519_key"
    for p in (key, key.with_name(key.name + ".pub")):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    run_sync(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "banger-vm", "-f", str(key)],
        what="ssh-keygen (host key)",
    )
    return key.read_text(), key.with_name(key.name + ".pub").read_text().strip()


def _entry_names(line: str) -> list[str]:
    if not line.strip() or line.lstrip().startswith("#"):
        return []
    return line.split(None, 1)[0].split(",")


# known_hosts is read-modify-written by concurrent creates/deletes (worker threads).
_KNOWN_HOSTS_LOCK = threading.Lock()


def pin_host_key(known_hosts: Path, alias: str, public_key: str) -> None:
    """Replace any entry for `alias` with the VM's host key (written atomically)."""
    parts = public_key.split()
    if len(parts) < 2:
        raise ValueError(f"not an OpenSSH public key: {public_key!r}")
    with _KNOWN_HOSTS_LOCK:
        lines = _read_lines(known_hosts)
        kept = [ln for ln in lines if alias not in _entry_names(ln)]
        kept.append(f"{alias} {parts[0]} {parts[1]}")
        _write_lines(known_hosts, kept)


def forget_host(known_hosts: Path, names: Sequence[str]) -> None:
    drop = set(names)
    with _KNOWN_HOSTS_LOCK:
        lines = _read_lines(known_hosts)
        kept = [ln for ln in lines if not drop.intersection(_entry_names(ln))]
        if kept != lines:
            _write_lines(known_hosts, kept)


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("".join(ln + "\n" for ln in lines))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


async def wait_ssh_banner(host: str, port: int, timeout: float, alive: object = None) -> float:
    """Wait until the server sends its `SSH-` banner (slirp accepts TCP before sshd listens).

    Returns the seconds waited. `alive` is an optional callable: False means the VM died.
    """
    started = time.monotonic()
    deadline = started + timeout
    last = "no connection yet"
    while time.monotonic() < deadline:
        if callable(alive) and not alive():
            raise ConnectionError("the VM process exited while waiting for SSH")
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
        except (OSError, TimeoutError) as e:
            last = str(e) or type(e).__name__
            await asyncio.sleep(0.05)
            continue
        try:
            line = await asyncio.wait_for(reader.readline(), 2.0)
            if line.startswith(b"SSH-"):
                return time.monotonic() - started
            last = f"unexpected banner {line[:40]!r}"
        except (OSError, TimeoutError) as e:
            last = str(e) or type(e).__name__
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        await asyncio.sleep(0.05)
    raise TimeoutError(f"no SSH banner from {host}:{port} within {timeout:.0f}s ({last})")

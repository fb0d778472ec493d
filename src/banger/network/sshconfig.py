"""banger's ssh_config (`~/.config/banger/ssh_config`) and the Include that opts a user into it.

The daemon regenerates the file whenever the set of running VMs changes: a `Host *.vm` block with
banger's key and known_hosts (bridged VMs resolve through the `.vm` DNS), preceded by one alias per
user-mode VM (HostName 127.0.0.1, Port <forwarded port>), so `ssh <name>.vm` works from any tool.
`install`/`uninstall` manage a marker-fenced `Include` at the top of `~/.ssh/config`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BEGIN = "# >>> banger ssh-config >>>"
END = "# <<< banger ssh-config <<<"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


@dataclass(frozen=True)
class UserModeAlias:
    name: str
    port: int
    host: str = "127.0.0.1"


def _q(path: Path | str) -> str:
    s = str(path)
    return f'"{s}"' if any(c.isspace() for c in s) else s


def render(key_path: Path, known_hosts: Path, aliases: Sequence[UserModeAlias] = ()) -> str:
    lines = [
        "# Written by bangerd; regenerated as VMs start and stop. Edits here are lost.",
        "# Use it with `banger ssh-config --install` (an Include in ~/.ssh/config).",
        "",
    ]
    for a in sorted(aliases, key=lambda a: a.name):
        if not _NAME_RE.fullmatch(a.name) or not 0 < a.port < 65536:
            continue  # never write something ssh would misparse
        lines += [
            f"Host {a.name}.vm",
            f"  HostName {a.host}",
            f"  Port {a.port}",
            # known_hosts entries are keyed by the VM name, not by the moving localhost port.
            f"  HostKeyAlias {a.name}.vm",
            "",
        ]
    lines += [
        "Host *.vm",
        "  User root",
        f"  IdentityFile {_q(key_path)}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {_q(known_hosts)}",
        # Every VM's host key is pinned in banger's known_hosts at create: never learn one here.
        "  StrictHostKeyChecking yes",
        "  ConnectTimeout 10",
        "  LogLevel ERROR",
        "",
    ]
    return "\n".join(lines)


def write_if_changed(path: Path, text: str) -> bool:
    """Stage next to `path` and rename into place; False when the content is already current."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(tmp, path)
    return True


def include_block(banger_config: Path) -> str:
    return f"{BEGIN}\nInclude {_q(banger_config)}\n{END}\n"


def _strip_block(text: str) -> str:
    out, skipping, just_ended = [], False, False
    for line in text.splitlines(keepends=True):
        if line.strip() == BEGIN:
            skipping = True
            continue
        if skipping:
            if line.strip() == END:
                skipping, just_ended = False, True
            continue
        # The blank line `install` puts after the block belongs to it.
        if just_ended and not line.strip():
            just_ended = False
            continue
        just_ended = False
        out.append(line)
    return "".join(out)


def _user_config_target(user_config: Path) -> Path:
    # ~/.ssh/config is often a symlink into a dotfiles repo: edit the file it points at.
    return user_config.resolve() if user_config.is_symlink() else user_config


def install(user_config: Path, banger_config: Path) -> bool:
    """Put the Include block at the top of `user_config` (an Include inside a Host block would
    only apply to that host). Idempotent: returns False when it was already there, unchanged."""
    target = _user_config_target(user_config)
    try:
        current = target.read_text()
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        current, mode = "", 0o600
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    rest = _strip_block(current)
    new = include_block(banger_config) + ("\n" + rest if rest.strip() else "")
    if new == current:
        return False
    _replace(target, new, mode)
    return True


def uninstall(user_config: Path) -> bool:
    target = _user_config_target(user_config)
    try:
        current = target.read_text()
    except FileNotFoundError:
        return False
    new = _strip_block(current)
    if new == current:
        return False
    _replace(target, new, target.stat().st_mode & 0o777)
    return True


def _replace(target: Path, text: str, mode: int) -> None:
    tmp = target.with_name(f".{target.name}.banger-tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.rename(tmp, target)

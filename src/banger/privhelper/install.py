"""`banger system install|status|restart|uninstall`: the system layout and the two systemd units.

Everything is written below a root (`/` on a real install, a temporary prefix in tests): files
are staged next to their target and renamed into place. systemctl is only used when the root is
`/` and systemd is the running init; otherwise the files are laid down and the caller is told.
"""

from __future__ import annotations

import contextlib
import datetime
import grp
import json
import os
import pwd
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger import __version__
from banger.checks import Check
from banger.errors import OperationFailed
from banger.paths import InstallInfo, Paths, install_file, read_install
from banger.proc import Result, run_sync

DAEMON_UNIT = "bangerd.service"
HELPER_UNIT = "bangerd-root.service"
UNITS = (HELPER_UNIT, DAEMON_UNIT)
READY_TIMEOUT = 15.0
KVM_DEVICE = Path("/dev/kvm")
KVM_GROUP = "kvm"
# Written when install added the owner to the kvm group (so uninstall undoes only that).
KVM_MARKER = "kvm-group-added"
# What the jailer needs on top of the helper's own set (mount namespace + pivot_root, mknod of
# /dev/kvm and /dev/net/tun in the jail, the drop to the owner, rlimits, --netns setns).
JAILER_CAPS = "CAP_SYS_ADMIN CAP_SYS_CHROOT CAP_MKNOD CAP_SETUID CAP_SETGID CAP_SYS_RESOURCE"


class InstallFailed(Exception):
    """Install/uninstall cannot proceed; the message says why and what to do."""


def systemd_running() -> bool:
    return Path("/run/systemd/system").is_dir()


def unit_dir(root: Path) -> Path:
    return root / "etc/systemd/system"


def find_binary(name: str) -> str:
    """The console script installed next to this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here.absolute())
    found = shutil.which(name)
    if found is None:
        raise InstallFailed(
            f"cannot find the {name} executable next to {sys.executable} or on PATH"
        )
    return os.path.abspath(found)


def _toml_str(v: str) -> str:
    return json.dumps(v)  # a JSON string is a valid TOML basic string


def render_install_toml(info: InstallInfo) -> str:
    return (
        "# Written by `banger system install`; read by bangerd, bangerd-root and the CLI.\n"
        f"owner_user = {_toml_str(info.owner_user)}\n"
        f"owner_uid = {info.owner_uid}\n"
        f"owner_gid = {info.owner_gid}\n"
        f"owner_home = {_toml_str(info.owner_home)}\n"
        f"installed_at = {_toml_str(info.installed_at)}\n"
        f"version = {_toml_str(info.version)}\n"
    )


def render_units(
    info: InstallInfo, *, bangerd: str, helper: str, jailer: bool = False
) -> dict[str, str]:
    root = info.root
    # The jailer's capabilities only when the config enables it: a QEMU-only host keeps the
    # helper's bounding set narrow (re-run install after turning jailer_enabled on).
    caps = (
        "CAP_NET_ADMIN CAP_NET_RAW CAP_KILL CAP_CHOWN CAP_FOWNER CAP_DAC_OVERRIDE "
        "CAP_DAC_READ_SEARCH CAP_SYS_PTRACE" + (f" {JAILER_CAPS}" if jailer else "")
    )
    group = _group_name(info.owner_gid)
    env = [f"Environment=BANGER_SYSTEM_ROOT={root}"] if str(root) != "/" else []
    env.append("Environment=PYTHONUNBUFFERED=1")
    # systemd creates /run/banger{,-root} at start (they vanish at reboot) and, with Preserve,
    # keeps them across restarts: running VMs' sockets live there. Only meaningful for root "/".
    daemon_rt = (
        ["RuntimeDirectory=banger", "RuntimeDirectoryMode=0700", "RuntimeDirectoryPreserve=yes"]
        if str(root) == "/"
        else []
    )
    helper_rt = (
        [
            "RuntimeDirectory=banger-root",
            "RuntimeDirectoryMode=0711",
            "RuntimeDirectoryPreserve=yes",
        ]
        if str(root) == "/"
        else []
    )
    daemon = [
        "[Unit]",
        f"Description=banger daemon (owner {info.owner_user})",
        f"Wants={HELPER_UNIT}",
        f"After=network.target {HELPER_UNIT}",
        "",
        "[Service]",
        "Type=simple",
        f"User={info.owner_user}",
        f"Group={group}",
        f"ExecStart={bangerd} --system",
        *env,
        f"Environment=HOME={info.owner_home}",
        *daemon_rt,
        "UMask=0077",
        "# VMM processes are this daemon's children: a restart must leave them running (the",
        "# daemon re-adopts them), so only the daemon's own process is signalled.",
        "KillMode=process",
        "SendSIGKILL=no",
        "Restart=on-failure",
        "RestartSec=1",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    helper_unit = [
        "[Unit]",
        "Description=banger root helper (narrow privileged operations for bangerd)",
        "After=network.target",
        f"Before={DAEMON_UNIT}",
        "",
        "[Service]",
        "# READY=1 once the socket accepts calls, so bangerd never starts ahead of it.",
        "Type=notify",
        f"ExecStart={helper}",
        *env,
        *helper_rt,
        "UMask=0077",
        "# Never take VMs down with the helper: only its own process is stopped on restart.",
        "KillMode=process",
        "SendSIGKILL=no",
        "Restart=on-failure",
        "RestartSec=1",
        "NoNewPrivileges=yes",
        f"CapabilityBoundingSet={caps}",
        "ProtectSystem=full",
        "ProtectKernelModules=yes",
        "LockPersonality=yes",
        "RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ]
    return {DAEMON_UNIT: "\n".join(daemon), HELPER_UNIT: "\n".join(helper_unit)}


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def write_file(path: Path, text: str, mode: int) -> None:
    """Stage next to `path`, then rename into place: readers see the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _run(argv: list[str], timeout: float) -> Result:
    """Run a host tool (never failing on its exit status); a timeout is an InstallFailed."""
    try:
        return run_sync(argv, check=False, timeout=timeout)
    except OperationFailed as e:
        raise InstallFailed(e.message) from None


def _make_dir(path: Path, mode: int, uid: int, gid: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    st = os.lstat(path)
    if os.path.islink(path):
        raise InstallFailed(f"{path} is a symlink; remove it and run the install again")
    if (st.st_uid, st.st_gid) != (uid, gid):
        os.chown(path, uid, gid, follow_symlinks=False)
    os.chmod(path, mode)


def _owner_can_run(info: InstallInfo, exe: str) -> None:
    """bangerd runs as the owner: a venv under root's home would fail only at first start."""
    p = _run(
        [
            "setpriv",
            f"--reuid={info.owner_uid}",
            f"--regid={info.owner_gid}",
            "--clear-groups",
            exe,
            "--version",
        ],
        timeout=60,
    )
    if p.returncode != 0:
        tail = (p.err.strip().splitlines() or ["(no output)"])[-1]
        raise InstallFailed(
            f"{info.owner_user} cannot run {exe} ({tail}); install banger where every user can "
            "read it (e.g. a venv under /opt or /usr/local) and run the install from there"
        )


def owner_info(owner: str, root: Path) -> InstallInfo:
    try:
        pw = pwd.getpwnam(owner)
    except KeyError:
        raise InstallFailed(
            f"no user named {owner!r} on this host; pass an existing user"
        ) from None
    if pw.pw_uid == 0:
        raise InstallFailed(
            "the owner must be an unprivileged user (bangerd never runs as root); "
            'pass --owner "$SUDO_USER" or another login'
        )
    return InstallInfo(
        owner_user=pw.pw_name,
        owner_uid=pw.pw_uid,
        owner_gid=pw.pw_gid,
        owner_home=pw.pw_dir,
        installed_at=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        version=__version__,
        root=root,
    )


@dataclass
class InstallReport:
    info: InstallInfo
    written: list[Path]
    started: bool
    note: str


def install(owner: str, root: Path, *, start: bool = True) -> InstallReport:
    """Lay down the system layout and units; enable and start them when systemd runs here."""
    if os.geteuid() != 0:
        raise InstallFailed(f"run it as root: sudo banger system install --owner {owner}")
    info = owner_info(owner, root)
    existing = read_install(root)
    if existing is not None and existing.owner_uid != info.owner_uid:
        raise InstallFailed(
            f"banger is already installed for {existing.owner_user} (uid {existing.owner_uid}); "
            "run `sudo banger system uninstall` first to change the owner"
        )
    # Everything that can refuse runs before anything is written.
    bangerd, helper = find_binary("bangerd"), find_binary("bangerd-root")
    _owner_can_run(info, bangerd)
    paths = Paths.system(root)
    uid, gid = info.owner_uid, info.owner_gid
    _make_dir(paths.config_dir, 0o755, 0, 0)
    for d in (paths.state_dir, paths.cache_dir, paths.runtime_dir):
        _make_dir(d, 0o700, uid, gid)
    _make_dir(paths.helper_runtime_dir, 0o711, 0, 0)
    units = render_units(info, bangerd=bangerd, helper=helper, jailer=_jailer_enabled(paths))
    grant_kvm(info, paths)
    written = [install_file(root)]
    write_file(install_file(root), render_install_toml(info), 0o644)
    for name, text in units.items():
        write_file(unit_dir(root) / name, text, 0o644)
        written.append(unit_dir(root) / name)
    if not start:
        return InstallReport(info, written, False, "units written; not started (--no-start)")
    if str(root) != "/":
        return InstallReport(info, written, False, f"installed under prefix {root}: not started")
    if not systemd_running():
        return InstallReport(
            info,
            written,
            False,
            "systemd is not running on this host: units written, nothing started; "
            "start bangerd-root and bangerd yourself",
        )
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", *UNITS)
    wait_ready(paths)
    return InstallReport(info, written, True, "bangerd-root and bangerd are running")


def _jailer_enabled(paths: Paths) -> bool:
    from banger.config import ConfigError, load_config

    try:
        return load_config(paths.config_file).jailer_enabled
    except ConfigError:
        return False


def grant_kvm(info: InstallInfo, paths: Paths, device: Path = KVM_DEVICE) -> bool:
    """Add the owner to the kvm group when /dev/kvm exists: Firecracker without the jailer runs
    as the owner and opens /dev/kvm itself. Records that it did (uninstall undoes only that).
    True when the owner is now in the group."""
    if not device.exists():
        return False
    try:
        group = grp.getgrnam(KVM_GROUP)
    except KeyError:
        return False
    if info.owner_user in group.gr_mem or info.owner_gid == group.gr_gid:
        return True
    p = _run(["gpasswd", "-a", info.owner_user, KVM_GROUP], timeout=60)
    if p.returncode != 0:
        raise InstallFailed(
            f"cannot add {info.owner_user} to the {KVM_GROUP} group: {p.err.strip()}"
        )
    write_file(paths.config_dir / KVM_MARKER, info.owner_user + "\n", 0o644)
    return True


def revoke_kvm(paths: Paths) -> Path | None:
    """Undo grant_kvm: only when install added the owner (its marker names them)."""
    marker = paths.config_dir / KVM_MARKER
    try:
        user = marker.read_text().strip()
    except FileNotFoundError:
        return None
    if user:
        # The user or group may be gone already: nothing left to undo, so the status is moot.
        _run(["gpasswd", "-d", user, KVM_GROUP], timeout=60)
    marker.unlink()
    return marker


def _systemctl(*args: str) -> Result:
    p = _run(["systemctl", *args], timeout=60)
    if p.returncode != 0:
        raise InstallFailed(f"systemctl {' '.join(args)} failed: {p.err.strip()}")
    return p


def unit_state(unit: str) -> str:
    if not systemd_running():
        return "systemd not running"
    p = _run(["systemctl", "is-active", unit], timeout=10)
    return p.out.strip() or "unknown"


def ping_socket(path: Path, method: str, timeout: float = 3.0) -> dict[str, Any] | None:
    """One JSON request on `path`; the result, or None when nothing answers."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(path))
            s.sendall(json.dumps({"version": 1, "method": method}).encode() + b"\n")
            buf = b""
            while not buf.endswith(b"\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        msg = json.loads(buf or b"{}")
    except (OSError, ValueError):
        return None
    result = msg.get("result") if msg.get("ok") else None
    return result if isinstance(result, dict) else None


def wait_ready(paths: Paths, timeout: float = READY_TIMEOUT) -> None:
    """systemd reports Type=simple units active before their sockets exist: poll both pings."""
    checks: list[tuple[str, Callable[[], object]]] = [
        ("bangerd-root", lambda: ping_socket(paths.helper_socket, "priv.ping")),
        ("bangerd", lambda: ping_socket(paths.socket, "ping")),
    ]
    deadline = time.monotonic() + timeout
    for name, check in checks:
        while check() is None:
            if time.monotonic() > deadline:
                raise InstallFailed(
                    f"{name} did not answer within {timeout:.0f}s; "
                    f"see `journalctl -u {name}.service`"
                )
            time.sleep(0.1)


def status(root: Path) -> dict[str, Any]:
    info = read_install(root)
    if info is None:
        return {"installed": False, "install_file": str(install_file(root))}
    paths = info.paths
    helper = ping_socket(paths.helper_socket, "priv.ping")
    daemon = ping_socket(paths.socket, "ping")
    return {
        "installed": True,
        "install_file": str(install_file(root)),
        "owner": info.owner_user,
        "owner_uid": info.owner_uid,
        "version": info.version,
        "installed_at": info.installed_at,
        "units": {
            "bangerd": {
                "state": unit_state(DAEMON_UNIT),
                "socket": str(paths.socket),
                "answers": daemon is not None,
                "pid": (daemon or {}).get("pid"),
            },
            "bangerd-root": {
                "state": unit_state(HELPER_UNIT),
                "socket": str(paths.helper_socket),
                "answers": helper is not None,
                "pid": (helper or {}).get("pid"),
            },
        },
    }


def restart(root: Path) -> None:
    if os.geteuid() != 0:
        raise InstallFailed("run it as root: sudo banger system restart")
    if read_install(root) is None:
        raise InstallFailed("banger is not installed system-wide; see `banger system install`")
    if str(root) != "/" or not systemd_running():
        raise InstallFailed(
            "systemd is not running here (or this is a prefix install): restart bangerd-root "
            "and bangerd yourself"
        )
    # Helper first: the daemon's first privileged call must find it. VMs survive both restarts.
    _systemctl("restart", HELPER_UNIT)
    _systemctl("restart", DAEMON_UNIT)
    wait_ready(Paths.system(root))


def uninstall(root: Path, *, purge: bool) -> list[Path]:
    """Stop and remove the units and install.toml; --purge also deletes state, cache and config."""
    if os.geteuid() != 0:
        raise InstallFailed("run it as root: sudo banger system uninstall")
    info = read_install(root)
    paths = Paths.system(root)
    if str(root) == "/" and systemd_running():
        present = [u for u in UNITS if (unit_dir(root) / u).exists()]
        if present:
            _run(["systemctl", "disable", "--now", *reversed(present)], timeout=60)
    removed: list[Path] = []
    for p in [*(unit_dir(root) / u for u in UNITS), install_file(root), paths.helper_socket]:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
    with contextlib.suppress(OSError):
        paths.helper_runtime_dir.rmdir()
        removed.append(paths.helper_runtime_dir)
    if (marker := revoke_kvm(paths)) is not None:
        removed.append(marker)
    if purge:
        for d in (paths.state_dir, paths.cache_dir, paths.runtime_dir, paths.config_dir):
            if d.is_dir() and not d.is_symlink():
                shutil.rmtree(d)
                removed.append(d)
    elif info is None and not removed:
        raise InstallFailed("banger is not installed system-wide; nothing to remove")
    if str(root) == "/" and systemd_running():
        _run(["systemctl", "daemon-reload"], timeout=60)
    return removed


def doctor_checks(paths: Paths) -> list[Check]:
    """`banger doctor` under a system install: both sockets answer, versions match, caller."""

    info = read_install(paths.system_root)
    if info is None:
        return []
    checks: list[Check] = []
    who = f"owner {info.owner_user} (uid {info.owner_uid})"
    if os.getuid() in (0, info.owner_uid):
        checks.append(Check("PASS", "system", f"system install for {who}"))
    else:
        checks.append(
            Check(
                "FAIL",
                "system",
                f"system install for {who}; you are uid {os.getuid()}",
                f"run banger as {info.owner_user}: sudo -u {info.owner_user} banger ...",
            )
        )
    restart = "sudo banger system restart (journalctl -u bangerd-root -u bangerd)"
    helper = ping_socket(paths.helper_socket, "priv.ping")
    if helper is not None:
        checks.append(Check("PASS", "root helper", f"bangerd-root answers (pid {helper['pid']})"))
    else:
        checks.append(
            Check("FAIL", "root helper", f"nothing answers on {paths.helper_socket}", restart)
        )
    daemon = ping_socket(paths.socket, "ping")
    if daemon is not None:
        checks.append(Check("PASS", "daemon", f"bangerd answers (pid {daemon.get('pid')})"))
    elif os.getuid() in (0, info.owner_uid):
        checks.append(Check("FAIL", "daemon", f"nothing answers on {paths.socket}", restart))
    if info.version != __version__:
        checks.append(
            Check(
                "WARN",
                "version",
                f"CLI {__version__}, installed {info.version}",
                f"re-run `sudo banger system install --owner {info.owner_user}` with this version",
            )
        )
    return checks

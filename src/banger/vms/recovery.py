"""What a daemon killed mid-work leaves behind, and how the next start finds it.

- Intent markers in a VM's directory: `creating` (holds the create's current stage) from the
  moment the directory exists until the create ends, `deleting` from the start of a delete. The
  directory is renamed into place with its marker, so a crash can never leave a VM dir that looks
  finished when it is not. A fork's child carries `forking` instead, until it runs with its own
  identity: a crash removes such a child whole (record, dir, host key pin).
- VMM processes of *this* state dir (`vmm_processes`): QEMU by `process=banger-<id>` in its `-name`
  plus a path under `<state>/vms/<id>/` in its argv; Firecracker by `--id <id>` plus its API socket
  under `<runtime>/vms/<id>/` or its stdout (the console) open on `<state>/vms/<id>/console.log`.
  A process of another state dir, or any other process, never matches.
- Leftover workspace SSH control masters of this state dir (`ssh_masters`): `ssh -f` daemonizes
  out of the guard's reach (see `banger.procguard`).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from banger import fsutil
from banger.paths import Paths

CREATING = "creating"
DELETING = "deleting"
# A fork's child until it runs with its own identity: a crash removes it entirely (vms/fork.py).
FORKING = "forking"
# Ids are `secrets.token_hex(6)`.
VM_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# Workspace SSH masters put their control socket here (workspace/transport.py).
SSH_CONTROL_PREFIX = "/tmp/bgmux-"


def valid_id(name: str) -> bool:
    return VM_ID_RE.fullmatch(name) is not None


# --- intent markers ----------------------------------------------------------------------------


def mark(vdir: Path, marker: str, detail: str, *, durable: bool = False) -> None:
    """Write the marker (whole or not at all); `durable` when a crash must find it."""
    data = (detail + "\n").encode()
    if durable:
        fsutil.write_durable(vdir / marker, data)
        return
    tmp = vdir / f".{marker}.tmp"
    tmp.write_bytes(data)
    os.replace(tmp, vdir / marker)


def marked(vdir: Path, marker: str) -> str | None:
    """The marker's detail ("" when empty), or None when there is no marker."""
    try:
        return (vdir / marker).read_text()[:200].strip()
    except FileNotFoundError:
        return None
    except OSError:
        return ""


def clear(vdir: Path, marker: str) -> None:
    """Remove the marker durably (a crash right after a finished create must not find it)."""
    try:
        (vdir / marker).unlink()
    except FileNotFoundError:
        return
    with contextlib.suppress(OSError):
        fsutil.fsync_path(vdir)


# --- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VMMProcess:
    pid: int
    vm_id: str
    kind: str  # "qemu" | "firecracker"


def _pids() -> list[int]:
    try:
        return [int(e) for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []


def _argv(pid: int) -> list[str] | None:
    """The process's argv, or None when it is gone, a zombie or a kernel thread."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    state = stat.rsplit(b")", 1)[-1].split()[0] if b")" in stat else b"?"
    if state in (b"Z", b"X") or not raw:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")]


def _stdout_target(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/fd/1")
    except OSError:
        return ""


def _qemu_vm_id(argv: list[str], vms_dirs: set[str]) -> str | None:
    for i, arg in enumerate(argv[:-1]):
        if arg == "-name":
            m = re.search(r"process=banger-([0-9a-f]{12})\b", argv[i + 1])
            if m is None:
                return None
            vm_id = m.group(1)
            owns = [f"{d}/{vm_id}/" for d in vms_dirs]
            # QEMU doubles literal commas in option values.
            if any(own in a.replace(",,", ",") for a in argv for own in owns):
                return vm_id
            return None
    return None


def _firecracker_vm_id(
    pid: int, argv: list[str], vms_dirs: set[str], runtime_vms: set[str]
) -> str | None:
    ident = None
    api = ""
    for i, arg in enumerate(argv[:-1]):
        if arg == "--id":
            ident = argv[i + 1]
        elif arg == "--api-sock":
            api = argv[i + 1]
    if ident is None or not valid_id(ident):
        return None
    if any(api.startswith(f"{r}/{ident}/") for r in runtime_vms):
        return ident
    if _stdout_target(pid) in {f"{d}/{ident}/console.log" for d in vms_dirs}:
        return ident
    return None


def vmm_processes(paths: Paths) -> list[VMMProcess]:
    """Every live VMM process that belongs to a VM of this state dir (see the module doc)."""
    # As written in argv and as the kernel reports open files (symlinks resolved).
    vms_dirs = {str(paths.vms_dir), os.path.realpath(paths.vms_dir)}
    runtime_vms = {str(paths.runtime_dir / "vms"), os.path.realpath(paths.runtime_dir / "vms")}
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        argv = _argv(pid)
        if not argv:
            continue
        exe = os.path.basename(argv[0])
        if exe.startswith("qemu"):
            vm_id = _qemu_vm_id(argv, vms_dirs)
            if vm_id is not None:
                found.append(VMMProcess(pid, vm_id, "qemu"))
        elif exe.startswith("firecracker"):
            vm_id = _firecracker_vm_id(pid, argv, vms_dirs, runtime_vms)
            if vm_id is not None:
                found.append(VMMProcess(pid, vm_id, "firecracker"))
    return found


@dataclass(frozen=True)
class SSHMaster:
    pid: int
    control_dir: Path


def ssh_masters(known_hosts: Path) -> list[SSHMaster]:
    """Workspace SSH control masters that use this state dir's known_hosts (left by a daemon
    that died mid-prepare: `ssh -f` daemonizes, so no guard holds it)."""
    want = f"UserKnownHostsFile={known_hosts}"
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me:
            continue
        argv = _argv(pid)
        if not argv or os.path.basename(argv[0]) != "ssh":
            continue
        if "ControlMaster=yes" not in argv or want not in argv:
            continue
        control = next((a for a in argv if a.startswith("ControlPath=")), "")
        path = control.removeprefix("ControlPath=")
        if path.startswith(SSH_CONTROL_PREFIX) and path.endswith("/m"):
            found.append(SSHMaster(pid, Path(path).parent))
    return found

"""Host checks behind `banger doctor`: PASS / WARN / FAIL, each with a hint. Nothing here hangs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from banger.checks import Check, Status
from banger.config import Config
from banger.errors import OperationFailed
from banger.paths import Paths
from banger.proc import run_sync
from banger.vmm.accel import KVMVerdict, kvm_verdict, resolve_accel

MIN_FREE_BYTES = 5 << 30
SETUP_HINT = "run scripts/setup-host.sh (as root) or apt-get install {pkg}"


def _tool(name: str, binary: str, pkg: str, *, required: bool, why: str) -> Check:
    path = shutil.which(binary) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{binary}", os.X_OK)), None
    )
    if path:
        return Check("PASS", name, f"{binary} at {path}")
    return Check(
        "FAIL" if required else "WARN",
        name,
        f"{binary} not found ({why})",
        SETUP_HINT.format(pkg=pkg),
    )


def _version_line(argv: list[str]) -> str:
    try:
        res = run_sync(argv, check=False, timeout=5)
    except (OSError, OperationFailed):
        return ""
    text = res.out or res.err
    return text.strip().splitlines()[0] if text else ""


def run_checks(paths: Paths, config: Config) -> list[Check]:
    checks: list[Check] = []
    qemu = shutil.which(config.qemu_bin)
    if qemu:
        checks.append(Check("PASS", "qemu", _version_line([qemu, "--version"]) or qemu))
    else:
        checks.append(
            Check(
                "FAIL",
                "qemu",
                f"{config.qemu_bin} not found: no VM can boot",
                SETUP_HINT.format(pkg="qemu-system-x86 qemu-utils"),
            )
        )
    checks.append(
        _tool(
            "qemu-img",
            "qemu-img",
            "qemu-utils",
            required=True,
            why="per-VM copy-on-write root disks",
        )
    )

    verdict = kvm_verdict()
    accel = resolve_accel(config.accel, verdict)
    if verdict.usable:
        checks.append(Check("PASS", "kvm", f"{verdict.reason}; QEMU uses {accel}"))
    else:
        checks.append(
            Check(
                "WARN",
                "kvm",
                f"{verdict.reason}; QEMU uses {accel} (software emulation, slower)",
                "guests still work; boots take a few seconds under TCG",
            )
        )
    if config.accel == "kvm" and not verdict.usable:
        checks.append(
            Check(
                "FAIL",
                "accel",
                'config says accel = "kvm" but KVM cannot run guests',
                'set accel = "auto" or "tcg" in config.toml',
            )
        )

    checks.extend(_vmm_checks(config, verdict))
    checks.append(_vsock_helper(paths))

    checks.append(
        _tool("mkfs.ext4", "mkfs.ext4", "e2fsprogs", required=True, why="builds root disks")
    )
    checks.append(
        _tool("debugfs", "debugfs", "e2fsprogs", required=True, why="fixes ownership in images")
    )
    checks.append(_tool("ssh", "ssh", "openssh-client", required=True, why="`banger vm ssh`"))
    checks.append(_tool("ssh-keygen", "ssh-keygen", "openssh-client", required=True, why="VM keys"))
    checks.append(_tool("busybox", "busybox", "busybox-static", required=True, why="guest payload"))
    checks.append(_tool("git", "git", "git", required=False, why="workspace round-trip"))
    checks.append(_tool("ip", "ip", "iproute2", required=False, why="bridged networking"))
    checks.append(_tool("nft", "nft", "nftables", required=False, why="NAT for bridged VMs"))
    checks.append(
        _tool(
            "mmdebstrap",
            "mmdebstrap",
            "mmdebstrap",
            required=False,
            why="builds the offline default image",
        )
    )

    checks.append(_writable(paths.state_dir, "state dir"))
    checks.append(_free_space(paths.state_dir))
    return checks


def _vmm_checks(config: Config, verdict: KVMVerdict) -> list[Check]:
    """The Firecracker binary, its version against the supported range, the jailer, the choice."""
    from banger.vmm.registry import firecracker_binary, vmm_choice

    checks: list[Check] = []
    fc = firecracker_binary(config)
    supported = fc.supported_range
    if fc.path is None:
        checks.append(
            Check(
                "WARN",
                "firecracker",
                f"{fc.configured} not found (supported Firecracker: {supported})",
                "install firecracker (not in Debian 12) on a KVM host: docs/firecracker.md",
            )
        )
    elif fc.version is None:
        checks.append(
            Check("WARN", "firecracker", f"{fc.path}: `--version` gave no version", "reinstall it")
        )
    elif not fc.supported:
        checks.append(
            Check(
                "WARN",
                "firecracker",
                f"firecracker {fc.version} at {fc.path} is outside the supported range {supported}",
                "install a supported release (docs/firecracker.md)",
            )
        )
    else:
        checks.append(
            Check(
                "PASS",
                "firecracker",
                f"firecracker {fc.version} at {fc.path} (supported {supported})",
            )
        )
    if config.jailer_enabled:
        problems = []
        if shutil.which(config.jailer_bin) is None:
            problems.append(f"{config.jailer_bin} not found")
        # A system install's root helper starts the jailer, dropping to the owner's uid/gid.
        system = os.geteuid() != 0 and Paths.detect().is_system
        if not system and (config.jailer_uid is None or config.jailer_gid is None):
            problems.append("jailer_uid / jailer_gid are not set")
        if os.geteuid() != 0 and not system:
            problems.append("the jailer needs banger to run as root (or a system install)")
        if problems:
            checks.append(
                Check(
                    "FAIL",
                    "jailer",
                    "jailer_enabled = true but " + "; ".join(problems),
                    "see docs/firecracker.md (jailer setup) or set jailer_enabled = false",
                )
            )
        else:
            checks.append(
                Check(
                    "PASS",
                    "jailer",
                    f"{config.jailer_bin}, chroots under {config.jailer_chroot_base}",
                )
            )
    choice = vmm_choice(config, verdict)
    status: Status = "PASS" if choice.usable else "FAIL"
    checks.append(Check(status, "vmm", f"VMs run on {choice.name}: {choice.reason}"))
    return checks


def _vsock_helper(paths: Paths) -> Check:
    """Firecracker VMs need the guest vsock helper, compiled on their first boot."""
    from banger.guest.vsockd import SETUP_HINT, doctor_status

    ok, detail = doctor_status(paths.cache_dir)
    if ok:
        return Check("PASS", "vsock helper", detail)
    return Check(
        "WARN",
        "vsock helper",
        f"{detail}: Firecracker VMs cannot boot (their control channel needs it)",
        SETUP_HINT,
    )


def _existing_parent(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _writable(path: Path, name: str) -> Check:
    target = _existing_parent(path)
    if os.access(target, os.W_OK):
        return Check("PASS", name, f"{path} is writable")
    return Check("FAIL", name, f"{path} is not writable", f"fix permissions on {target}")


def _free_space(path: Path) -> Check:
    from banger.units import format_bytes

    st = os.statvfs(_existing_parent(path))
    free = st.f_bavail * st.f_frsize
    detail = f"{format_bytes(free)} free under {path}"
    if free < MIN_FREE_BYTES:
        return Check("WARN", "free disk", detail, "images and VM disks need a few GiB")
    return Check("PASS", "free disk", detail)

"""The Firecracker driver: one `firecracker --api-sock` process per VM, configured over REST.

Launch order (Firecracker's documented one): wait for the API socket to answer `GET /`, then
logger, metrics, machine-config, boot-source, drives, network-interfaces, vsock, read the
configuration back (`GET /vm/config`: the API applies requests asynchronously), InstanceStart.
Every body is validated against the shipped Swagger spec before it is sent (`fc_api`).

What differs from QEMU: the kernel must be an uncompressed ELF vmlinux, disks are raw files
(`rawdisk.clone_raw`), networking is TAP only, the control channel is hybrid vsock (connect to
the UDS, send `CONNECT <port>\\n`, read `OK <n>\\n`), and a graceful stop is Ctrl-Alt-Del: with
`reboot=k` the guest's reboot resets through the emulated i8042 and the process exits.
Optionally the process runs under the `jailer` (chroot, uid/gid, cgroups); API paths are then
relative to the chroot, into which the kernel, initrd and disks are hard-linked. Unjailed, the
process runs in the VM's runtime_dir and the drives and vsock are named relative to it too.

Snapshots (docs/snapshots.md): `save` pauses, `PUT /snapshot/create`s and either ends the VMM
(suspend) or copies the writable disks and resumes (checkpoint); `restore` loads a saved machine
into a fresh process, also as a fork with its own disks, socket and TAP. The relative device
names are what let a fork's restored devices open the child's files rather than the parent's.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from banger.config import Config
from banger.errors import OperationFailed
from banger.proc import popen, run_sync
from banger.vmm.base import (
    Alive,
    Capability,
    DiskSpec,
    DriverError,
    GuestChannel,
    MissingCapability,
    SavedMachine,
    VMHandle,
    VMSpec,
)
from banger.vmm.fc_api import FirecrackerAPIError, FirecrackerClient
from banger.vmm.fc_snapshot import (
    MEMORY_FILE,
    STATE_FILE,
    merge_memory_layer,
    sync_tree,
    write_record,
)
from banger.vmm.rawdisk import clone_raw

log = logging.getLogger("banger.vmm.firecracker")

NAME = "firecracker"
# Oldest release with ACPI device discovery (1.8.0): distro kernels such as Debian's find their
# virtio-mmio devices only through ACPI (no CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES). Every call banger
# makes is in the 1.16.1 contract it was built against; 2.0 may break the API.
SUPPORTED_MIN = (1, 8, 0)
SUPPORTED_BELOW = (2, 0, 0)
SUPPORTED_RANGE = ">= 1.8.0, < 2.0.0"

GUEST_CID = 3
# Snapshot files as a jailed Firecracker names them (the in-process jail's root; the helper's jail
# only lets it write `run/`): moved out into the saved directory after a create, linked in before
# a load.
JAIL_SNAPSHOT_PREFIX = {"jail": "", "helper": "run/"}
JAIL_STATE, JAIL_MEMORY = "snapshot.vmstate", "snapshot.mem"
# `network_overrides` on /snapshot/load (a fork on its own TAP) arrived in 1.12.0; the load's
# `enable_diff_snapshots` became `track_dirty_pages` in 1.13.0 (CHANGELOG.md). Older releases
# refuse the unknown field, so the driver sends what the running binary knows.
NETWORK_OVERRIDES_SINCE = (1, 12, 0)
TRACK_DIRTY_PAGES_SINCE = (1, 13, 0)
# Writing a guest's RAM out takes a while on a loaded host: the snapshot calls get longer.
SNAPSHOT_TIMEOUT = 300.0
# Guest vsock port the guest payload's control agent listens on (host → guest CONNECT).
CONTROL_VSOCK_PORT = 1024
CONTROL_PROTOCOL = "firecracker-vsock"

API_SOCKET = "fc.sock"
VSOCK_SOCKET = "v.sock"
API_READY_TIMEOUT = 10.0
STOP_SIGTERM_WAIT = 2.0

# Firecracker's own default boot args (docs/kernel-policy.md) minus `8250.nr_uarts=0` (banger wants
# the serial console in the VM log) and `nomodule` (distro kernels load virtio drivers as modules
# from banger's initramfs). `reboot=k` is what makes Ctrl-Alt-Del end the process; `pci=off`
# because banger does not pass --enable-pci (virtio-mmio devices, found through ACPI).
FC_BOOT_ARGS = (
    "console=ttyS0",
    "reboot=k",
    "panic=1",
    "pci=off",
    "i8042.noaux",
    "i8042.nomux",
    "i8042.dumbkbd",
    "swiotlb=noforce",
    "banger.vmm=firecracker",
)
_FORCED_KEYS = {"reboot", "panic"}
_ID_RE = re.compile(r"[^A-Za-z0-9-]")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_MAC_RE = re.compile(r"^([0-9A-Fa-f]{2}:){5}[0-9A-Fa-f]{2}$")
_VERSION_RE = re.compile(r"v?(\d+)\.(\d+)\.(\d+)")
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_READY_RE = re.compile(r"banger-guest: (READY|ERROR)\b ?(.*)$")
# What a Linux guest prints when it powers off or halts (kernel/reboot.c).
POWER_DOWN_LINES = ("reboot: Power down", "reboot: System halted")


def parse_version(text: str) -> tuple[int, int, int] | None:
    m = _VERSION_RE.search(text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else None


def version_supported(version: tuple[int, int, int]) -> bool:
    return SUPPORTED_MIN <= version < SUPPORTED_BELOW


def binary_version(binary: str, timeout: float = 5.0) -> str | None:
    """`firecracker --version` as `1.16.1`, or None when it cannot be run or read."""
    try:
        out = run_sync([binary, "--version"], check=False, timeout=timeout)
    except (OSError, OperationFailed):
        return None
    v = parse_version(out.out + out.err)
    return ".".join(map(str, v)) if v else None


def firecracker_kernel(kernel_name: str, vmlinux: Path | None) -> Path:
    """The image Firecracker boots for a kernel record: its ELF vmlinux, or a clear error."""
    if vmlinux is None:
        raise DriverError(
            f"kernel {kernel_name!r} has no uncompressed ELF vmlinux, and Firecracker boots "
            "nothing else on x86_64: re-import it (banger kernel import extracts one from a "
            'bzImage) or run this VM with vmm = "qemu"'
        )
    return vmlinux


def boot_args(cmdline: str) -> str:
    """The service's command line with Firecracker's required arguments added.

    `reboot=k` and `panic=1` always win (graceful stop and crash exit depend on them); the other
    defaults are only added when the command line does not set the same key.
    """
    words = [w for w in cmdline.split() if w.split("=", 1)[0] not in _FORCED_KEYS]
    keys = {w.split("=", 1)[0] for w in words}
    extra = [
        a
        for a in FC_BOOT_ARGS
        if a.split("=", 1)[0] in _FORCED_KEYS or a.split("=", 1)[0] not in keys
    ]
    return " ".join(extra + words)


def instance_id(vm_id: str) -> str:
    """Firecracker/jailer ids: 1-64 characters, letters, digits and hyphens."""
    ident = _ID_RE.sub("-", vm_id).strip("-")[:64]
    if not ident:
        raise DriverError(f"VM id {vm_id!r} has no usable characters for a Firecracker id")
    return ident


def is_elf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


@dataclass(frozen=True)
class JailerSettings:
    """Production mode: run Firecracker under the jailer (root only)."""

    binary: str = "jailer"
    uid: int | None = None
    gid: int | None = None
    chroot_base: Path = Path("/srv/jailer")
    cgroup_version: int = 2
    cgroups: tuple[str, ...] = ()
    parent_cgroup: str | None = None
    netns: str | None = None


class JailLauncher(Protocol):
    """System mode: the root helper builds the jail and starts the jailer (`priv.jailer_launch`).

    `banger.privhelper.client.HelperPrivOps` implements it; the owner daemon cannot run the
    jailer itself (it must start as root).
    """

    async def jailer_launch(self, params: dict[str, Any]) -> dict[str, Any]: ...

    async def ensure_netns(self, name: str) -> dict[str, Any]: ...


# Jailed through the helper, Firecracker's sockets live in the jail's `run/` (the one directory
# of the root-owned jail its uid, the owner's, may write).
HELPER_API_SOCKET = f"run/{API_SOCKET}"
HELPER_VSOCK_SOCKET = f"run/{VSOCK_SOCKET}"


@dataclass
class _Layout:
    """Where the files of one launch are, as the host sees them and as Firecracker names them."""

    host_api: Path
    host_vsock: Path
    fc_api: str
    fc_vsock: str
    cwd: Path | None = None  # unjailed: Firecracker's working directory (runtime_dir)
    chroot: Path | None = None  # the jail's root directory
    jail_dir: Path | None = None  # <base>/<exec name>/<id>: removed after exit
    # System mode: jail name -> host path of each file the helper links into the jail.
    helper_files: dict[str, str] | None = None


class FirecrackerDriver:
    name = NAME

    def __init__(
        self,
        firecracker_bin: str = "firecracker",
        *,
        jailer: JailerSettings | None = None,
        api_timeout: float = API_READY_TIMEOUT,
        helper: JailLauncher | None = None,
    ) -> None:
        self.firecracker_bin = firecracker_bin
        self.jailer = jailer
        # Set (system mode, jailer on): the jailer is started by bangerd-root, not in-process.
        self.helper = helper if jailer is not None else None
        self.api_timeout = api_timeout
        # Shared by every driver instance so whichever one notices an exit reaps the child.
        self._children = _CHILDREN

    @classmethod
    def from_config(
        cls, config: Config, jail_launcher: JailLauncher | None = None
    ) -> FirecrackerDriver:
        """`jail_launcher`: bangerd-root's client, given by the daemon of a system install when
        it does not run as root (the helper starts the jailer then)."""
        jailer = None
        if config.jailer_enabled:
            jailer = JailerSettings(
                binary=config.jailer_bin,
                uid=config.jailer_uid,
                gid=config.jailer_gid,
                chroot_base=Path(config.jailer_chroot_base),
                cgroup_version=config.jailer_cgroup_version,
                cgroups=tuple(config.jailer_cgroups),
                parent_cgroup=config.jailer_parent_cgroup,
                netns=config.jailer_netns,
            )
        helper = jail_launcher if jailer is not None and os.geteuid() != 0 else None
        return cls(config.firecracker_bin, jailer=jailer, helper=helper)

    # ---- launch -------------------------------------------------------------------------------

    def _check_spec(self, spec: VMSpec) -> list[tuple[str, DiskSpec]]:
        """Refuse what Firecracker cannot run, naming the problem and the way out."""
        net = spec.network
        if net.kind == "user":
            raise DriverError(
                f"VM {spec.name!r} asks for user-mode networking, which Firecracker does not have "
                '(TAP only): use bridged networking (network = "bridge") or vmm = "qemu"'
            )
        if net.kind == "tap":
            if not _IFNAME_RE.match(net.tap_device):
                raise DriverError(
                    f"VM {spec.name!r}: TAP device name {net.tap_device!r} is not a valid "
                    "interface name (1-15 letters, digits, '.', '-', '_')"
                )
            if net.mac and not _MAC_RE.match(net.mac):
                raise DriverError(
                    f"VM {spec.name!r}: guest MAC {net.mac!r} is not aa:bb:cc:dd:ee:ff"
                )
        kernel_name = str(spec.extra.get("kernel_name", spec.kernel))
        if not spec.kernel.is_file():
            raise DriverError(f"kernel {kernel_name!r}: {spec.kernel} does not exist")
        if not is_elf(spec.kernel):
            raise DriverError(
                f"kernel {kernel_name!r}: {spec.kernel} is not an uncompressed ELF vmlinux, the "
                "only format Firecracker boots on x86_64: re-import the kernel so banger extracts "
                'its vmlinux, or run this VM with vmm = "qemu"'
            )
        if spec.initrd is not None and not spec.initrd.is_file():
            raise DriverError(f"initrd {spec.initrd} does not exist")
        if not 1 <= spec.vcpus <= 32:
            raise DriverError(f"VM {spec.name!r}: Firecracker runs 1-32 vCPUs, not {spec.vcpus}")
        if spec.memory_mib < 128:
            raise DriverError(f"VM {spec.name!r}: give it at least 128 MiB, not {spec.memory_mib}")
        disks: list[tuple[str, DiskSpec]] = [("rootfs", spec.root_disk)]
        if spec.work_disk is not None:
            disks.append(("work", spec.work_disk))
        # Extra disks (banger's seed disk first) follow root and work: /dev/vda, vdb, vdc, …
        for i, disk in enumerate(_extra_disks(spec), start=1):
            disks.append((f"extra{i}", disk))
        for drive_id, disk in disks:
            if disk.format != "raw":
                raise DriverError(
                    f"VM {spec.name!r}: the {drive_id} disk {disk.path} is {disk.format}; "
                    "Firecracker takes raw disk files only (banger makes a reflink or sparse copy)"
                )
            if not disk.path.is_file():
                raise DriverError(
                    f"VM {spec.name!r}: the {drive_id} disk {disk.path} does not exist"
                )
        return disks

    def _layout(self, spec: VMSpec, ident: str) -> _Layout:
        if self.jailer is None:
            spec.runtime_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # Firecracker runs in runtime_dir and names the drives and the vsock relative to it:
            # a snapshot records those names, so a fork restored in its own runtime_dir opens its
            # own disks and binds its own socket (snapshot-support.md: host resources must be at
            # "the same relative paths" for the new process), as a jail does for jailed VMs.
            lay = _Layout(
                host_api=spec.runtime_dir / API_SOCKET,
                host_vsock=spec.runtime_dir / VSOCK_SOCKET,
                fc_api=str(spec.runtime_dir / API_SOCKET),
                fc_vsock=VSOCK_SOCKET,
                cwd=spec.runtime_dir,
            )
            return lay
        j = self.jailer
        if self.helper is not None:
            # The helper builds the (root-owned) jail; nothing is created here.
            jail_dir = j.chroot_base / Path(self._exec_file()).name / ident
            root = jail_dir / "root"
            return _Layout(
                host_api=root / HELPER_API_SOCKET,
                host_vsock=root / HELPER_VSOCK_SOCKET,
                fc_api=HELPER_API_SOCKET,
                fc_vsock=HELPER_VSOCK_SOCKET,
                chroot=root,
                jail_dir=jail_dir,
            )
        if os.geteuid() != 0:
            raise DriverError(
                "jailer_enabled = true needs banger to run as root (the jailer does), or a "
                "system install (`sudo banger system install`), whose root helper starts it"
            )
        if j.uid is None or j.gid is None:
            raise DriverError(
                "jailer_enabled = true needs jailer_uid and jailer_gid in config.toml"
            )
        # The jailer names the jail after the executable it is given: the resolved binary.
        jail_dir = j.chroot_base / Path(self._exec_file()).name / ident
        root = jail_dir / "root"
        if jail_dir.exists():
            shutil.rmtree(jail_dir)
        root.mkdir(parents=True)
        lay = _Layout(
            host_api=root / API_SOCKET,
            host_vsock=root / VSOCK_SOCKET,
            # Relative paths: after the jailer's pivot_root the working directory is the jail root.
            fc_api=API_SOCKET,
            fc_vsock=VSOCK_SOCKET,
            chroot=root,
            jail_dir=jail_dir,
        )
        return lay

    def _jail_file(self, lay: _Layout, src: Path, name: str, *, writable: bool) -> str:
        """Hard-link (or copy, across filesystems) `src` into the jail; return its jail name."""
        assert lay.chroot is not None and self.jailer is not None
        dst = lay.chroot / name
        assert self.jailer.uid is not None and self.jailer.gid is not None
        if not writable and not os.stat(src).st_mode & 0o004:
            # The jailed uid could not read a hard link to this file, and chowning the link
            # would chown the shared original: give the jail its own copy.
            shutil.copyfile(src, dst)
            os.chown(dst, self.jailer.uid, self.jailer.gid)
            os.chmod(dst, 0o400)
            return name
        try:
            os.link(src, dst)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM):
                raise
            if writable:
                # A copy would take the VM's writes and vanish with the jail.
                raise DriverError(
                    f"cannot hard-link {src} into the jail under {self.jailer.chroot_base} "
                    f"({e.strerror}): put jailer_chroot_base on the filesystem of banger's "
                    "state directory"
                ) from None
            log.warning("copying %s into the jail (not on the jail's filesystem)", src)
            shutil.copy2(src, dst)
        if writable:
            os.chown(dst, self.jailer.uid, self.jailer.gid)
        return name

    def _exec_file(self) -> str:
        return os.path.realpath(shutil.which(self.firecracker_bin) or self.firecracker_bin)

    def _argv(self, ident: str, lay: _Layout) -> list[str]:
        fc = shutil.which(self.firecracker_bin) or self.firecracker_bin
        if self.jailer is None:
            return [fc, "--api-sock", lay.fc_api, "--id", ident]
        j = self.jailer
        jailer = shutil.which(j.binary) or j.binary
        argv = [
            jailer,
            "--id", ident,
            "--exec-file", self._exec_file(),
            "--uid", str(j.uid),
            "--gid", str(j.gid),
            "--chroot-base-dir", str(j.chroot_base),
            "--cgroup-version", str(j.cgroup_version),
        ]  # fmt: skip
        for cg in j.cgroups:
            argv += ["--cgroup", cg]
        if j.parent_cgroup:
            argv += ["--parent-cgroup", j.parent_cgroup]
        if j.netns:
            argv += ["--netns", j.netns]
        # Not `--id` again: the jailer passes its own `--id` to Firecracker, which refuses a
        # repeated argument (jailer env.rs exec_command; utils arg_parser.rs DuplicateArgument).
        return [*argv, "--", "--api-sock", lay.fc_api]

    def _prepare_files(
        self, spec: VMSpec, lay: _Layout, disks: list[tuple[str, DiskSpec]]
    ) -> dict[str, str]:
        """Log files, stale sockets, and (jailed) the links into the chroot: Firecracker's names."""
        log_dir = spec.console_log.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        fc_log = log_dir / "firecracker.log"
        fc_metrics = log_dir / "firecracker.metrics"
        for stale in (lay.host_api, lay.host_vsock):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        if lay.chroot is None or self.helper is not None:
            fc_log.touch()
            fc_metrics.write_bytes(b"")  # one launch's metrics; the file otherwise only grows
        if self.helper is not None:
            # The helper hard-links these into the jail (the log and metrics too: they stay in
            # the VM's directory, nothing to copy out when the jail goes).
            files = {"vmlinux": spec.kernel, "firecracker.log": fc_log}
            files["firecracker.metrics"] = fc_metrics
            names = {"kernel": "vmlinux", "log": "firecracker.log"}
            names["metrics"] = "firecracker.metrics"
            if spec.initrd:
                files["initrd"] = spec.initrd
                names["initrd"] = "initrd"
            for drive_id, disk in disks:
                files[f"{drive_id}.img"] = disk.path
                names[drive_id] = f"{drive_id}.img"
            lay.helper_files = {k: str(v) for k, v in files.items()}
            return names
        if lay.chroot is None:
            assert lay.cwd is not None
            names = {"kernel": str(spec.kernel), "log": str(fc_log), "metrics": str(fc_metrics)}
            if spec.initrd:
                names["initrd"] = str(spec.initrd)
            for drive_id, disk in disks:
                link = lay.cwd / f"{drive_id}.img"
                with contextlib.suppress(FileNotFoundError):
                    link.unlink()
                link.symlink_to(disk.path.resolve())
                names[drive_id] = link.name
            return names
        assert self.jailer is not None and self.jailer.uid is not None
        names = {
            "kernel": self._jail_file(lay, spec.kernel, "vmlinux", writable=False),
            "log": "firecracker.log",
            "metrics": "firecracker.metrics",
        }
        if spec.initrd:
            names["initrd"] = self._jail_file(lay, spec.initrd, "initrd", writable=False)
        for drive_id, disk in disks:
            names[drive_id] = self._jail_file(
                lay, disk.path, f"{drive_id}.img", writable=not disk.read_only
            )
        for n in ("firecracker.log", "firecracker.metrics"):
            (lay.chroot / n).touch()
            os.chown(lay.chroot / n, self.jailer.uid, self.jailer.gid or 0)
        return names

    def _require_binaries(self) -> None:
        for binary in [self.firecracker_bin] + ([self.jailer.binary] if self.jailer else []):
            if shutil.which(binary) is None:
                raise DriverError(
                    f"firecracker binary {binary!r} not found: install Firecracker "
                    "(docs/firecracker.md) or set firecracker_bin / jailer_bin in config.toml"
                )

    def _layout_kind(self) -> str:
        return "plain" if self.jailer is None else "helper" if self.helper else "jail"

    async def _start_process(
        self, spec: VMSpec, disks: list[tuple[str, DiskSpec]]
    ) -> tuple[VMHandle, _Layout, dict[str, str]]:
        """Lay out the files, start firecracker (or the jailer) and wait for its API."""
        self._require_binaries()
        ident = instance_id(spec.vm_id)
        lay = self._layout(spec, ident)
        try:
            names = self._prepare_files(spec, lay, disks)
        except BaseException:
            if lay.jail_dir is not None:
                shutil.rmtree(lay.jail_dir, ignore_errors=True)
            raise
        fc_log = spec.console_log.parent / "firecracker.log"

        argv = self._argv(ident, lay)
        log.info("starting firecracker for %s: %s", spec.name, argv)
        # The serial console is Firecracker's stdout: it goes straight into the VM's log, and
        # keeps going there after a daemon restart (the process holds the fd).
        console_offset = _size(str(spec.console_log))
        if self.helper is not None:
            pid = await self._helper_launch(spec, ident, lay)
        else:
            with spec.console_log.open("ab") as console:
                proc = popen(
                    argv,
                    guarded=False,  # outlives the daemon and its signals (re-adopted)
                    stdin=subprocess.DEVNULL,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    close_fds=True,
                    cwd=lay.cwd,
                )
            self._children[proc.pid] = proc
            pid = proc.pid
        handle = VMHandle(
            driver=NAME,
            pid=pid,
            api_socket=str(lay.host_api),
            control_socket=str(lay.host_vsock),
            started_at=time.time(),
            details={
                "instance_id": ident,
                "create_time": _create_time(pid),
                "console_log": str(spec.console_log),
                "console_offset": console_offset,
                "firecracker_log": str(
                    lay.chroot / "firecracker.log" if lay.chroot and not self.helper else fc_log
                ),
                "control_protocol": CONTROL_PROTOCOL,
                "control_port": int(spec.extra.get("control_vsock_port", CONTROL_VSOCK_PORT)),
                "guest_cid": GUEST_CID,
                "jailed": lay.chroot is not None,
                "jail_dir": str(lay.jail_dir) if lay.jail_dir else None,
                # bangerd-root owns the jail and removes it when the process exits.
                "jail_by_helper": self.helper is not None,
                # What a snapshot of this VM depends on (checked by restore).
                "layout": self._layout_kind(),
                "relative_paths": True,
                "track_dirty_pages": bool(spec.extra.get("track_dirty_pages", False)),
                "tap_device": spec.network.tap_device if spec.network.kind == "tap" else "",
                "vcpus": spec.vcpus,
                "memory_mib": spec.memory_mib,
            },
        )
        if spec.network.kind == "tap":
            handle.ssh_host = str(spec.extra.get("guest_ip", ""))
        try:
            info = await self._wait_api(handle, spec.console_log)
        except BaseException:
            await self._kill(handle)
            self.cleanup(handle)
            raise
        handle.details["vmm_version"] = info.get("vmm_version", "")
        version = parse_version(str(info.get("vmm_version", "")))
        if version and not version_supported(version):
            log.warning(
                "firecracker %s is outside the supported range %s",
                info.get("vmm_version"),
                SUPPORTED_RANGE,
            )
        return handle, lay, names

    async def launch(self, spec: VMSpec) -> VMHandle:
        disks = self._check_spec(spec)
        handle, lay, names = await self._start_process(spec, disks)
        try:
            args = boot_args(spec.cmdline)
            handle.details["boot_args"] = args
            async with FirecrackerClient(lay.host_api) as api:
                await self._configure(api, spec, disks, names, args, lay)
                await api.action("InstanceStart")
        except BaseException as e:
            await self._kill(handle)
            self.cleanup(handle)
            if isinstance(e, FirecrackerAPIError):
                raise DriverError(
                    f"firecracker refused to start VM {spec.name!r}: {e} "
                    f"(console: {spec.console_log}, VMM log: {handle.details['firecracker_log']})"
                ) from None
            raise
        return handle

    async def _helper_launch(self, spec: VMSpec, ident: str, lay: _Layout) -> int:
        """System mode: ask bangerd-root to build the jail and start the jailer; its pid."""
        assert self.helper is not None and self.jailer is not None
        j = self.jailer
        try:
            if j.netns:
                # The helper lets the jailer join only a namespace it made (`banger-<name>`).
                await self.helper.ensure_netns(os.path.basename(j.netns))
            result = await self.helper.jailer_launch(
                {
                    "jailer": os.path.realpath(shutil.which(j.binary) or j.binary),
                    "exec_file": self._exec_file(),
                    "id": ident,
                    "uid": j.uid if j.uid is not None else os.getuid(),
                    "gid": j.gid if j.gid is not None else os.getgid(),
                    "chroot_base": str(j.chroot_base),
                    "cgroup_version": j.cgroup_version,
                    "cgroups": list(j.cgroups),
                    "parent_cgroup": j.parent_cgroup,
                    "netns": j.netns,
                    "api_sock": lay.fc_api,
                    "console_log": str(spec.console_log),
                    "files": lay.helper_files or {},
                }
            )
        except Exception as e:
            raise DriverError(
                f"the root helper could not start the jailer for {spec.name!r}: {e}"
            ) from None
        return int(result["pid"])

    async def _configure_logging(self, api: FirecrackerClient, names: dict[str, str]) -> None:
        await api.put(
            "/logger",
            {
                "log_path": names["log"],
                "level": "Info",
                "show_level": True,
                "show_log_origin": False,
            },
        )
        await api.put("/metrics", {"metrics_path": names["metrics"]})

    async def _configure(
        self,
        api: FirecrackerClient,
        spec: VMSpec,
        disks: list[tuple[str, DiskSpec]],
        names: dict[str, str],
        args: str,
        lay: _Layout,
    ) -> None:
        await self._configure_logging(api, names)
        machine: dict[str, Any] = {
            "vcpu_count": spec.vcpus,
            "mem_size_mib": spec.memory_mib,
            "smt": False,
        }
        if spec.extra.get("track_dirty_pages"):
            # KVM's dirty log: what makes a Diff snapshot hold only the pages written since.
            machine["track_dirty_pages"] = True
        await api.put("/machine-config", machine)
        boot: dict[str, Any] = {"kernel_image_path": names["kernel"], "boot_args": args}
        if "initrd" in names:
            boot["initrd_path"] = names["initrd"]
        await api.put("/boot-source", boot)
        for drive_id, disk in disks:
            await api.put(
                f"/drives/{drive_id}",
                {
                    "drive_id": drive_id,
                    "path_on_host": names[drive_id],
                    "is_root_device": drive_id == "rootfs",
                    "is_read_only": disk.read_only,
                },
            )
        if spec.network.kind == "tap":
            iface: dict[str, Any] = {"iface_id": "eth0", "host_dev_name": spec.network.tap_device}
            if spec.network.mac:
                iface["guest_mac"] = spec.network.mac
            await api.put("/network-interfaces/eth0", iface)
        await api.put("/vsock", {"guest_cid": GUEST_CID, "uds_path": lay.fc_vsock})
        # The API applies requests asynchronously: read the configuration back before starting.
        cfg = await api.vm_config()
        got_kernel = (cfg.get("boot-source") or {}).get("kernel_image_path")
        got_drives = sorted(d.get("drive_id", "") for d in cfg.get("drives") or [])
        if got_kernel != names["kernel"] or got_drives != sorted(d for d, _ in disks):
            raise DriverError(
                f"firecracker did not record VM {spec.name!r}'s configuration "
                f"(kernel {got_kernel!r}, drives {got_drives}); see {names['log']}"
            )

    async def _wait_api(self, handle: VMHandle, console: Path) -> dict[str, Any]:
        deadline = time.monotonic() + self.api_timeout
        last = ""
        while time.monotonic() < deadline:
            if not self.is_alive(handle):
                raise DriverError(
                    f"firecracker exited before its API came up: {_tail(console)} "
                    f"(console: {console})"
                )
            if Path(handle.api_socket).exists():
                try:
                    async with FirecrackerClient(handle.api_socket, timeout=1.0) as api:
                        return await api.describe()
                except FirecrackerAPIError as e:
                    last = e.fault
            await asyncio.sleep(0.01)
        raise DriverError(
            f"firecracker's API socket {handle.api_socket} did not answer within "
            f"{self.api_timeout:.0f}s ({last or 'no socket'}); console: {console}"
        )

    # ---- runtime ------------------------------------------------------------------------------

    def _client(self, handle: VMHandle, timeout: float = 5.0) -> FirecrackerClient:
        return FirecrackerClient(handle.api_socket, timeout=timeout)

    async def attach(self, handle: VMHandle) -> bool:
        if not self.is_alive(handle):
            return False
        try:
            async with self._client(handle, timeout=2.0) as api:
                info = await api.describe()
            handle.details["state"] = info.get("state", "")
        except FirecrackerAPIError as e:
            # Still running (the guest is alive), but only signals will reach it.
            log.warning("firecracker pid %d runs but its API does not answer: %s", handle.pid, e)
        return True

    def is_alive(self, handle: VMHandle) -> bool:
        child = self._children.get(handle.pid)
        if child is not None and child.poll() is not None:
            del self._children[handle.pid]  # reaped: the pid is free again
            return False
        import psutil

        try:
            p = psutil.Process(handle.pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return False
            created = handle.details.get("create_time")
            # A recycled pid belongs to a process started at another time.
            return created is None or abs(p.create_time() - float(created)) < 0.05
        except psutil.NoSuchProcess:
            return False

    async def state(self, handle: VMHandle) -> str:
        """`Not started`, `Running` or `Paused`, as Firecracker reports it."""
        async with self._client(handle) as api:
            return str((await api.describe())["state"])

    async def pause(self, handle: VMHandle) -> None:
        async with self._client(handle) as api:
            await api.set_state("Paused")

    async def resume(self, handle: VMHandle) -> None:
        async with self._client(handle) as api:
            await api.set_state("Resumed")

    # --- snapshots: suspend (SUSPEND), checkpoint (SNAPSHOT), restore and fork (FORK) ---------

    async def save(
        self,
        handle: VMHandle,
        spec: VMSpec,
        dest: Path,
        keep_running: bool,
        *,
        diff_from: SavedMachine | None = None,
    ) -> SavedMachine:
        """Save the whole machine into the new directory `dest`, which `saved.json` completes.

        keep_running=False (SUSPEND): pause, `PUT /snapshot/create`, end the VMM; the disks stay
        the VM's own (`disks` is empty). keep_running=True (SNAPSHOT): pause, create, copy the
        writable disks into `dest` (reflink or sparse copy, `rawdisk.clone_raw`), resume; a VM
        that was already paused stays paused. `diff_from`: write a Diff snapshot on top of that
        saved machine, which must be the last one this VMM process saved or was restored from,
        with dirty-page tracking on (`spec.extra["track_dirty_pages"]` at launch); the layer is
        merged into a copy of its memory, so the result loads on its own. The pause then only
        covers the dirty pages. Updates `handle.details["last_saved"]` (persist the handle).
        """
        if not self.is_alive(handle):
            raise DriverError(f"VM {spec.name!r} is not running: there is no machine to save")
        if dest.exists() or dest.is_symlink():
            raise DriverError(f"{dest} already exists: save into a new directory")
        kind: Literal["Full", "Diff"] = "Full"
        if diff_from is not None:
            self._check_diff_base(handle, spec, diff_from)
            kind = "Diff"
        layout = str(handle.details.get("layout", "plain"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Written in place; `saved.json`, written last (after every file is synced), marks it
        # complete. A failure removes `dest`; a daemon killed half way leaves a `dest` without
        # it, which its pending record (vms/saved.py) has the next start remove.
        staged = dest
        staged.mkdir(mode=0o700)
        mem_name = MEMORY_FILE if kind == "Full" else f"{MEMORY_FILE}.diff"
        if layout == "plain":
            fc_state, fc_mem = str(staged / STATE_FILE), str(staged / mem_name)
            out_state, out_mem = Path(fc_state), Path(fc_mem)
        else:
            jail_root = Path(str(handle.details["jail_dir"])) / "root"
            prefix = JAIL_SNAPSHOT_PREFIX[layout]
            fc_state, fc_mem = prefix + JAIL_STATE, prefix + JAIL_MEMORY
            out_state, out_mem = jail_root / fc_state, jail_root / fc_mem
        paused_here = False
        paused_for = 0.0
        disks: dict[str, Path] = {}
        try:
            async with self._client(handle, timeout=SNAPSHOT_TIMEOUT) as api:
                state = str((await api.describe()).get("state", ""))
                if state not in ("Running", "Paused"):
                    raise DriverError(f"VM {spec.name!r} is {state!r}: only a booted VM saves")
                t0 = time.monotonic()
                if state == "Running":
                    # Firecracker creates snapshots of paused VMs only.
                    await api.set_state("Paused")
                    paused_here = True
                await api.create_snapshot(fc_state, fc_mem, kind)
                if layout != "plain":
                    shutil.move(out_state, staged / STATE_FILE)
                    shutil.move(out_mem, staged / mem_name)
                if keep_running:
                    # The disks must freeze with the RAM: copy them before the vCPUs run again.
                    for role, disk in _writable_disks(spec):
                        await clone_raw(disk.path, staged / f"{role}.img")
                        disks[role] = dest / f"{role}.img"
                    if paused_here:
                        await api.set_state("Resumed")
                        paused_here = False
                paused_for = time.monotonic() - t0
            if kind == "Diff":
                assert diff_from is not None
                await clone_raw(diff_from.dir / MEMORY_FILE, staged / MEMORY_FILE)
                await asyncio.to_thread(merge_memory_layer, staged / MEMORY_FILE, staged / mem_name)
                (staged / mem_name).unlink()
        except BaseException as e:
            for leftover in (out_state, out_mem):
                with contextlib.suppress(OSError):
                    leftover.unlink()
            shutil.rmtree(staged, ignore_errors=True)
            if paused_here and self.is_alive(handle):
                with contextlib.suppress(FirecrackerAPIError):
                    await self.resume(handle)  # leave the VM as it was
            if isinstance(e, FirecrackerAPIError):
                raise DriverError(
                    f"firecracker could not save VM {spec.name!r}: {e} "
                    f"(VMM log: {handle.details.get('firecracker_log')})"
                ) from None
            if isinstance(e, OSError):
                raise DriverError(f"could not save VM {spec.name!r} into {dest}: {e}") from None
            raise
        saved = SavedMachine(
            driver=NAME,
            dir=dest,
            disks=disks,
            memory_mib=spec.memory_mib,
            paused_seconds=paused_for,
            details={
                "vm_id": spec.vm_id,
                "name": spec.name,
                "vcpus": spec.vcpus,
                "state_file": STATE_FILE,
                "memory_file": MEMORY_FILE,
                "snapshot_type": kind,
                "diff_from": str(diff_from.dir) if diff_from else None,
                "kept_running": keep_running,
                "vmm_version": handle.details.get("vmm_version", ""),
                "layout": layout,
                "relative_paths": bool(handle.details.get("relative_paths")),
                "tap_device": handle.details.get("tap_device", ""),
                "track_dirty_pages": bool(handle.details.get("track_dirty_pages")),
                "boot_args": handle.details.get("boot_args", ""),
                "created_at": time.time(),
            },
        )
        await asyncio.to_thread(sync_tree, dest)
        write_record(dest, saved)
        handle.details["last_saved"] = str(dest)
        if not keep_running:
            # Suspend: the machine lives in `dest` now; end the (paused) VMM.
            await self.force_stop(handle)
            await self._wait_jail_removed(handle)
        return saved

    async def _wait_jail_removed(self, handle: VMHandle, timeout: float = 10.0) -> None:
        """System mode: bangerd-root removes the jail once it reaped the VMM; a restore of the
        same VM builds a jail of the same name, so wait for the old one to be gone."""
        jail = handle.details.get("jail_dir")
        if not (jail and handle.details.get("jail_by_helper")):
            return
        deadline = time.monotonic() + timeout
        while os.path.exists(str(jail)):
            if time.monotonic() >= deadline:
                raise DriverError(
                    f"the root helper did not remove the jail {jail} of the suspended VM within "
                    f"{timeout:.0f}s; its saved state is complete"
                )
            await asyncio.sleep(0.02)

    def _check_diff_base(self, handle: VMHandle, spec: VMSpec, base: SavedMachine) -> None:
        if not handle.details.get("track_dirty_pages"):
            raise DriverError(
                f"VM {spec.name!r} was started without dirty-page tracking, so a diff snapshot "
                "would rely on mincore(2) (wrong once the host swaps): take a full one, or start "
                'the VM with extra["track_dirty_pages"] = True'
            )
        if base.driver != NAME or base.details.get("vm_id") != spec.vm_id:
            raise DriverError(f"{base.dir} is not a saved machine of VM {spec.name!r}")
        if handle.details.get("last_saved") != str(base.dir):
            raise DriverError(
                f"a diff snapshot holds the pages written since this VMM's last snapshot or "
                f"restore ({handle.details.get('last_saved') or 'none'}), not since {base.dir}: "
                "take a full one"
            )
        if not (base.dir / MEMORY_FILE).is_file():
            raise DriverError(f"the base {base.dir} has lost its memory file: take a full one")

    async def restore(self, spec: VMSpec, saved: SavedMachine) -> VMHandle:
        """Start a VMM from a saved machine: resume a suspended VM, roll a VM back to its
        checkpoint, or start a fork (`spec.vm_id` differs from the saved VM's).

        A checkpoint's disks are copied (reflink or sparse) to `spec`'s own disk paths, replacing
        what is there; a suspend's are used in place. `spec` must have the saved VM's vCPUs and
        memory and the same network kind; a fork's `spec` carries its own disk paths, runtime_dir
        and TAP (`network_overrides`, Firecracker >= 1.12); its guest MAC, hostname and
        addresses are the parent's until the guest is re-identified over the control channel.
        The extra disks (seed) must exist at `spec`'s paths. The memory file must stay unchanged
        while the VM runs (Firecracker maps it copy-on-write); deleting it is fine.
        """
        d = saved.details
        if saved.driver != NAME:
            raise DriverError(f"{saved.dir} was saved by the {saved.driver} driver, not {NAME}")
        state_file = saved.dir / str(d.get("state_file", STATE_FILE))
        mem_file = saved.dir / str(d.get("memory_file", MEMORY_FILE))
        for f in (state_file, mem_file, *saved.disks.values()):
            if not f.is_file():
                raise DriverError(f"saved machine {saved.dir} is incomplete: {f} is missing")
        if (int(d.get("vcpus", 0)), saved.memory_mib) != (spec.vcpus, spec.memory_mib):
            raise DriverError(
                f"saved machine {saved.dir} has {d.get('vcpus')} vCPUs and {saved.memory_mib} "
                f"MiB; VM {spec.name!r} asks for {spec.vcpus} and {spec.memory_mib}: a snapshot "
                "restores with the size it was taken at"
            )
        layout = self._layout_kind()
        if d.get("layout", "plain") != layout:
            raise DriverError(
                f"saved machine {saved.dir} was taken with the {d.get('layout')} layout and this "
                f"driver runs the {layout} one (jailer settings changed): its device paths would "
                "not resolve; boot the VM cold"
            )
        fork = d.get("vm_id") != spec.vm_id
        if fork and not saved.disks:
            raise DriverError(
                f"{saved.dir} is a suspended VM (its disks are the VM's own): fork from a "
                "checkpoint, which carries frozen disks"
            )
        if fork and not d.get("relative_paths"):
            raise DriverError(
                f"{saved.dir} records its VM's own absolute disk paths: a fork would open the "
                "parent's disks; take a new checkpoint (this banger names them relatively)"
            )
        saved_tap = str(d.get("tap_device", ""))
        if bool(saved_tap) != (spec.network.kind == "tap"):
            raise DriverError(
                f"saved machine {saved.dir} has {'a TAP network' if saved_tap else 'no network'} "
                f"device and VM {spec.name!r} asks for network {spec.network.kind!r}: a snapshot "
                "keeps its devices"
            )
        if await _answers(self._api_path(spec)):
            raise DriverError(
                f"VM {spec.name!r} is running (its Firecracker answers on "
                f"{self._api_path(spec)}): stop it before restoring over its disks"
            )
        # The checkpoint's disks go to the VM's own paths (a later cold boot finds them there);
        # what was there is kept aside until the load succeeded, and put back if it did not.
        swapped = await _swap_in_disks(spec, saved)
        try:
            disks = self._check_spec(spec)
            handle, lay, names = await self._start_process(spec, disks)
        except BaseException:
            _swap_back(swapped)
            raise
        try:
            body = self._load_body(handle, spec, saved, lay, state_file, mem_file)
            async with FirecrackerClient(lay.host_api, timeout=SNAPSHOT_TIMEOUT) as api:
                await self._configure_logging(api, names)  # the only resources allowed before
                await api.load_snapshot(body)
                state = str((await api.describe()).get("state", ""))
            if state != "Running":
                raise DriverError(f"firecracker loaded {saved.dir} but the VM is {state!r}")
        except BaseException as e:
            await self._kill(handle)
            self.cleanup(handle)
            _swap_back(swapped)
            if isinstance(e, FirecrackerAPIError):
                raise DriverError(
                    f"firecracker could not restore VM {spec.name!r} from {saved.dir}: {e} "
                    f"(console: {spec.console_log}, VMM log: {handle.details['firecracker_log']})"
                ) from None
            raise
        for _, kept in swapped:
            if kept is not None:
                kept.unlink()
        handle.details.update(
            {
                "boot_args": d.get("boot_args", ""),
                "restored_from": str(saved.dir),
                "forked": fork,
                "last_saved": str(saved.dir),  # the load reset the dirty-page log
            }
        )
        return handle

    def _api_path(self, spec: VMSpec) -> Path:
        """Where this VM's API socket is while its VMM runs (`_layout` without its effects)."""
        if self.jailer is None:
            return spec.runtime_dir / API_SOCKET
        jail = self.jailer.chroot_base / Path(self._exec_file()).name / instance_id(spec.vm_id)
        return jail / "root" / (HELPER_API_SOCKET if self.helper else API_SOCKET)

    def _load_body(
        self,
        handle: VMHandle,
        spec: VMSpec,
        saved: SavedMachine,
        lay: _Layout,
        state_file: Path,
        mem_file: Path,
    ) -> dict[str, Any]:
        """The `/snapshot/load` body; jailed, the snapshot files are put into the jail first."""
        if lay.chroot is None:
            fc_state, fc_mem = str(state_file), str(mem_file)
        else:
            prefix = JAIL_SNAPSHOT_PREFIX[self._layout_kind()]
            fc_state, fc_mem = prefix + JAIL_STATE, prefix + JAIL_MEMORY
            for src, name in ((state_file, fc_state), (mem_file, fc_mem)):
                _link_or_copy(src, lay.chroot / name)
                if self.helper is None and self.jailer is not None:
                    assert self.jailer.uid is not None and self.jailer.gid is not None
                    os.chown(lay.chroot / name, self.jailer.uid, self.jailer.gid)
        body: dict[str, Any] = {
            "snapshot_path": fc_state,
            "mem_backend": {"backend_type": "File", "backend_path": fc_mem},
            "resume_vm": True,
        }
        version = parse_version(str(handle.details.get("vmm_version", ""))) or (0, 0, 0)
        if handle.details.get("track_dirty_pages"):
            new_name = version >= TRACK_DIRTY_PAGES_SINCE
            body["track_dirty_pages" if new_name else "enable_diff_snapshots"] = True
        saved_tap = str(saved.details.get("tap_device", ""))
        if saved_tap and spec.network.tap_device != saved_tap:
            if version < NETWORK_OVERRIDES_SINCE:
                raise DriverError(
                    f"VM {spec.name!r} needs its own TAP {spec.network.tap_device!r} instead of "
                    f"the snapshot's {saved_tap!r}, which takes Firecracker >= 1.12 "
                    f"(network_overrides); this is {handle.details.get('vmm_version')}"
                )
            body["network_overrides"] = [
                {"iface_id": "eth0", "host_dev_name": spec.network.tap_device}
            ]
        return body

    async def delete_saved(self, saved: SavedMachine, layers_in_use: list[Path]) -> bool:
        """Firecracker's saved disks are whole copies nothing is backed by: the dir just goes."""
        await asyncio.to_thread(shutil.rmtree, saved.dir, True)
        return True

    # --- readiness, control channel, capabilities ------------------------------------------------

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset(
            {
                Capability.PAUSE,
                Capability.VSOCK,
                Capability.SUSPEND,
                Capability.SNAPSHOT,
                Capability.FORK,
            }
        )

    def guest_channel(self) -> GuestChannel:
        # No virtio-serial in Firecracker: the seed carries the AF_VSOCK control agent.
        return GuestChannel("vsock", CONTROL_VSOCK_PORT)

    async def wait_ready(self, handle: VMHandle, timeout: float, alive: Alive) -> str:
        # The guest's READY comes on the serial console (the VM log).
        return await wait_console_ready(handle, timeout, alive)

    async def open_control(
        self, handle: VMHandle, timeout: float
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await open_control(handle, timeout=timeout)

    async def port_forwards(self, handle: VMHandle) -> list[tuple[int, int]]:
        raise MissingCapability(self.name, Capability.PORT_FORWARD)

    async def add_port_forward(self, handle: VMHandle, host_port: int, guest_port: int) -> None:
        raise MissingCapability(self.name, Capability.PORT_FORWARD)

    async def inspect(self, handle: VMHandle) -> dict[str, Any]:
        """Firecracker's full view of the VM (`GET /vm/config`)."""
        async with self._client(handle) as api:
            return await api.vm_config()

    async def request_shutdown(self, handle: VMHandle) -> None:
        """Ctrl-Alt-Del, then `stop` on the control channel: the guest reboots, `reboot=k`
        resets it, and Firecracker exits.

        Returns within ~1 s. When neither reaches the guest, the caller's wait runs out and it
        forces.
        """
        try:
            await self._ctrl_alt_del(handle)
        except FirecrackerAPIError as e:
            log.warning("Ctrl-Alt-Del to firecracker pid %d failed: %s", handle.pid, e)
        await send_control_stop(handle)

    async def _ctrl_alt_del(self, handle: VMHandle) -> None:
        handle.details["shutdown_offset"] = _size(handle.details.get("console_log"))
        async with self._client(handle) as api:
            if (await api.describe()).get("state") == "Paused":
                await api.set_state("Resumed")  # a paused guest cannot act on the keypress
            await api.action("SendCtrlAltDel")

    async def wait_exit(self, handle: VMHandle, timeout: float) -> bool:
        """True once the process is gone, or once the guest has powered itself off.

        A guest `poweroff` on x86 halts the vCPUs but leaves Firecracker running (it has no
        power-off device): when the kernel's power-down line is on the console the guest is done
        (it synced and unmounted first), so the process is ended here.
        """
        deadline = time.monotonic() + timeout
        offset = handle.details.get("shutdown_offset", handle.details.get("console_offset", 0))
        while self.is_alive(handle):
            if _console_has(handle.details.get("console_log"), int(offset), POWER_DOWN_LINES):
                log.info("guest of pid %d powered off; ending its Firecracker", handle.pid)
                await self._kill(handle, first=signal.SIGKILL)
                break
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        self.cleanup(handle)
        return True

    async def stop(self, handle: VMHandle, timeout: float = 10.0) -> str:
        """Graceful stop with a deadline, then force: returns "graceful" or "forced"."""
        if self.is_alive(handle):
            try:
                await self._ctrl_alt_del(handle)
            except FirecrackerAPIError as e:
                log.warning("Ctrl-Alt-Del to pid %d failed (%s); forcing", handle.pid, e)
            else:
                await send_control_stop(handle)
                if await self.wait_exit(handle, timeout):
                    return "graceful"
        await self.force_stop(handle)
        return "forced"

    async def force_stop(self, handle: VMHandle) -> None:
        await self._kill(handle)
        self.cleanup(handle)

    async def _kill(self, handle: VMHandle, first: signal.Signals = signal.SIGTERM) -> None:
        steps = [(signal.SIGTERM, STOP_SIGTERM_WAIT), (signal.SIGKILL, 5.0)]
        if first == signal.SIGKILL:
            steps = steps[1:]
        for sig, wait in steps:
            if not self.is_alive(handle):
                return
            # PermissionError: a jailer launched by bangerd-root has not dropped to our uid yet.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(handle.pid, sig)
            deadline = time.monotonic() + wait
            while self.is_alive(handle) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        if self.is_alive(handle):
            raise DriverError(f"firecracker pid {handle.pid} survived SIGKILL")

    def send_signal(self, handle: VMHandle, signum: int) -> None:
        if self.is_alive(handle):
            with contextlib.suppress(ProcessLookupError):
                os.kill(handle.pid, signum)

    def cleanup(self, handle: VMHandle) -> None:
        """Remove what a stopped VM leaves behind: sockets and the jail (not the disks)."""
        if self.is_alive(handle):
            return
        for p in (handle.api_socket, handle.control_socket):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        jail = handle.details.get("jail_dir")
        if jail and os.path.isdir(jail) and not handle.details.get("jail_by_helper"):
            # Keep the jailed VMM's log next to the console log before the jail goes.
            fc_log = Path(str(handle.details.get("firecracker_log", "")))
            console = handle.details.get("console_log")
            if console and fc_log.is_file():
                with contextlib.suppress(OSError):
                    shutil.copyfile(fc_log, Path(str(console)).parent / "firecracker.log")
            shutil.rmtree(jail, ignore_errors=True)


async def open_control(
    handle: VMHandle, port: int | None = None, timeout: float = 5.0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open a host → guest stream on the VM's hybrid vsock: `CONNECT <port>` → `OK <n>`.

    Firecracker closes the connection without an answer when nothing listens on the guest port.
    """
    port = port if port is not None else int(handle.details.get("control_port", CONTROL_VSOCK_PORT))
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(handle.control_socket), timeout
    )
    try:
        writer.write(f"CONNECT {port}\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except BaseException:
        writer.close()
        raise
    if not line.startswith(b"OK "):
        writer.close()
        raise DriverError(
            f"vsock CONNECT {port} on {handle.control_socket} got "
            f"{line.decode(errors='replace').strip() or 'no answer'}: nothing listens on that "
            "guest port (yet)"
        )
    return reader, writer


async def send_control_stop(handle: VMHandle, timeout: float = 1.0) -> bool:
    """Best effort: `stop` to the guest's control agent (vsockd → ctl.sh). It reaches guests whose
    init does not act on Ctrl-Alt-Del; False when nothing answered the CONNECT in time."""
    try:
        reader, writer = await open_control(handle, timeout=timeout)
    except (OSError, TimeoutError, DriverError) as e:
        log.info("control-channel stop to pid %d not delivered: %s", handle.pid, e)
        return False
    try:
        writer.write(b"stop\n")
        await asyncio.wait_for(writer.drain(), timeout)
        return True
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _writable_disks(spec: VMSpec) -> list[tuple[str, DiskSpec]]:
    """The disks a checkpoint freezes, by role ("root", "work"), as the QEMU driver names them."""
    out = [("root", spec.root_disk)]
    if spec.work_disk is not None:
        out.append(("work", spec.work_disk))
    return [(role, disk) for role, disk in out if not disk.read_only]


def _disk_for_role(spec: VMSpec, role: str) -> Path:
    disk = spec.root_disk if role == "root" else spec.work_disk if role == "work" else None
    if disk is None:
        raise DriverError(f"VM {spec.name!r} has no {role} disk to restore the saved one into")
    return disk.path


async def _answers(socket_path: Path) -> bool:
    """True when something accepts connections on the Unix socket (a live VMM's API)."""
    if not socket_path.exists():
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(socket_path)), 2.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _swap_in_disks(spec: VMSpec, saved: SavedMachine) -> list[tuple[Path, Path | None]]:
    """Put copies of the saved disks at the VM's paths; (path, what was there, set aside)."""
    swapped: list[tuple[Path, Path | None]] = []
    try:
        for role, src in saved.disks.items():
            target = _disk_for_role(spec, role)
            part = target.with_name(f".{target.name}.restore")
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            await clone_raw(src, part)
            kept: Path | None = None
            if target.exists():
                kept = target.with_name(f".{target.name}.before-restore")
                os.replace(target, kept)
            swapped.append((target, kept))
            os.replace(part, target)
    except BaseException:
        _swap_back(swapped)
        raise
    return swapped


def _swap_back(swapped: list[tuple[Path, Path | None]]) -> None:
    for target, kept in reversed(swapped):
        if kept is not None:
            os.replace(kept, target)
        else:
            with contextlib.suppress(FileNotFoundError):
                target.unlink()


def _link_or_copy(src: Path, dst: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM):
            raise
        shutil.copyfile(src, dst)


def _extra_disks(spec: VMSpec) -> tuple[DiskSpec, ...]:
    disks: tuple[DiskSpec, ...] = tuple(getattr(spec, "extra_disks", ()))
    return disks


async def wait_console_ready(
    handle: VMHandle, timeout: float, alive: Callable[[], bool] | None = None
) -> str:
    """Wait for the guest payload's `banger-guest: READY …` line on the serial console.

    Firecracker has no virtio-serial: the console (the VM log) carries the guest's READY, read
    from where this boot's output starts. `banger-guest: ERROR …` and initramfs failures raise.
    Returns READY's detail (e.g. `mode=minimal`).
    """
    path = Path(str(handle.details.get("console_log", "")))
    offset = int(handle.details.get("console_offset", 0))
    deadline = time.monotonic() + timeout
    pending = b""
    while True:
        try:
            with path.open("rb") as f:
                f.seek(offset)
                chunk = f.read()
        except OSError:
            chunk = b""
        offset += len(chunk)
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()
        for raw in lines:
            line = raw.decode(errors="replace").strip()
            m = _READY_RE.search(line)
            if m and m[1] == "READY":
                return m[2]
            if m:
                raise DriverError(f"guest: {m[2] or 'unknown error'}")
            if "banger-initramfs: " in line and "warning:" not in line:
                raise DriverError(line[line.index("banger-initramfs: ") :])
        if alive is not None and not alive():
            raise DriverError("the VM process exited before the guest reported READY")
        if time.monotonic() >= deadline:
            raise DriverError(f"the guest did not report READY within {timeout:.0f}s")
        await asyncio.sleep(0.05)


def _size(path: object) -> int:
    try:
        return os.stat(str(path)).st_size if path else 0
    except OSError:
        return 0


def _console_has(path: object, offset: int, needles: Sequence[str]) -> bool:
    if not path:
        return False
    try:
        with open(str(path), "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return False
    return any(n in text for n in needles)


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.NoSuchProcess:
        return None


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return "(no console output)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no console output)"

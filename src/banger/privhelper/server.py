"""`bangerd-root`: the root helper of a system install.

It listens on `<root>/run/banger-root/bangerd-root.sock` (directory root-owned 0711, socket owned
by the install owner, 0600), checks every caller with SO_PEERCRED (root or the owner uid from
install.toml), reads ONE JSON request per connection (the daemon's envelope: version, method,
params, op_id), runs it only if the method is in `OPS` and every argument passes `rules`, answers
with one JSON line and closes. Each call is logged as a JSON line with the caller's op id.

The operations themselves are `banger.network.privops.LocalPrivOps` (the same code the daemon runs
in-process in user mode), plus signalling VMM processes and fixing socket ownership.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger import __version__
from banger.config import Config
from banger.errors import BangerError
from banger.network.nat import NatRule
from banger.network.privops import LocalPrivOps
from banger.paths import InstallError, InstallInfo, Paths, read_install, system_root
from banger.privhelper import rules
from banger.proc import popen
from banger.rpc import envelope
from banger.rpc.errmap import to_rpc
from banger.rpc.errors import BadRequest, OperationFailed, RPCError, UnknownMethod

log = logging.getLogger("banger.privhelper")

MAX_REQUEST = 256 * 1024
READ_TIMEOUT = 10.0
OP_TIMEOUT = 60.0
MAX_NAT_RULES = 4096
SOCKET_NAME = "bangerd-root.sock"


# The op id of the request being served, for operations' own log lines (jailer start and exit).
_op_id: ContextVar[str] = ContextVar("helper_op_id", default="")


class Unauthorized(RPCError):
    code = "unauthorized"


@dataclass(frozen=True)
class Caller:
    pid: int
    uid: int
    gid: int


def peer_credentials(sock: socket.socket) -> Caller:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return Caller(pid, uid, gid)


def _params(params: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise BadRequest(
            f"unknown argument(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    missing = sorted(allowed - set(params))
    if missing:
        raise BadRequest(f"missing argument(s) {', '.join(missing)}")


def _resolve_binary(name: str) -> str | None:
    found = shutil.which(name, path="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    return os.path.realpath(found) if found else None


class Helper:
    """The operation table and the state it checks against (install owner, banger's dirs)."""

    def __init__(self, info: InstallInfo, ops: LocalPrivOps | None = None) -> None:
        self.info = info
        self.paths: Paths = info.paths
        self.ops = ops or LocalPrivOps()
        # Paths may only name things below banger's own directories (resolved once: trusted).
        self.path_roots = [
            Path(os.path.realpath(p)) for p in (self.paths.runtime_dir, self.paths.state_dir)
        ]
        self._lock = asyncio.Lock()
        self.table: dict[str, Callable[[dict[str, Any]], Awaitable[Any]]] = {
            "priv.ping": self.ping,
            "priv.ensure_bridge": self.ensure_bridge,
            "priv.delete_bridge": self.delete_bridge,
            "priv.ensure_tap": self.ensure_tap,
            "priv.delete_tap": self.delete_tap,
            "priv.list_taps": self.list_taps,
            "priv.sync_nat": self.sync_nat,
            "priv.remove_nat_table": self.remove_nat_table,
            "priv.list_nat": self.list_nat,
            "priv.egress_admit": self.egress_admit,
            "priv.egress_denied": self.egress_denied,
            "priv.get_ip_forward": self.get_ip_forward,
            "priv.set_ip_forward": self.set_ip_forward,
            "priv.signal_process": self.signal_process,
            "priv.ensure_socket_access": self.ensure_socket_access,
            "priv.jailer_launch": self.jailer_launch,
            "priv.ensure_netns": self.ensure_netns,
        }
        # Source files for a jail: only below the owner's state and cache directories.
        self.file_roots = [
            Path(os.path.realpath(p)) for p in (self.paths.state_dir, self.paths.cache_dir)
        ]
        self.owner_writable = [
            *self.path_roots,
            Path(os.path.realpath(self.paths.cache_dir)),
            self.paths.state_dir,
            self.paths.runtime_dir,
            self.paths.cache_dir,
        ]
        # Jailed VMMs this helper started (pid → process): reaped, and their jail removed, on exit.
        self._jailed: dict[int, subprocess.Popen[bytes]] = {}

    def config(self) -> Config:
        """The system config (root's /etc/banger/config.toml; defaults when unreadable)."""
        from banger.config import ConfigError, load_config

        try:
            return load_config(self.paths.config_file)
        except ConfigError:
            return Config()

    def vmm_executables(self) -> list[str]:
        """Real paths of the VMM binaries the system config names (defaults when unreadable)."""
        config = self.config()
        found = [_resolve_binary(b) for b in (config.qemu_bin, config.firecracker_bin)]
        return [f for f in found if f]

    # --- operations (each validates all of its arguments first) -----------------------------

    async def ping(self, params: dict[str, Any]) -> dict[str, Any]:
        _params(params, set())
        return {"version": __version__, "pid": os.getpid(), "owner": self.info.owner_user}

    async def _host_addresses(self) -> list[tuple[str, str]]:
        r = await self.ops.run(["ip", "-j", "-4", "addr", "show"])
        out = []
        for link in json.loads(r.out or "[]"):
            for a in link.get("addr_info", []):
                if a.get("family") == "inet":
                    out.append((str(link.get("ifname")), f"{a['local']}/{a['prefixlen']}"))
        return out

    async def _host_routes(self) -> list[tuple[str, str]]:
        """(device, destination) of every non-default IPv4 route in the main table."""
        r = await self.ops.run(["ip", "-j", "-4", "route", "show"])
        out = []
        for route in json.loads(r.out or "[]"):
            dst = str(route.get("dst", ""))
            if dst and dst != "default":
                out.append((str(route.get("dev", "?")), dst if "/" in dst else f"{dst}/32"))
        return out

    async def _bridge_subnet(self, bridge: str) -> ipaddress.IPv4Network | None:
        for dev, cidr in await self._host_addresses():
            if dev == bridge:
                return ipaddress.IPv4Interface(cidr).network
        return None

    async def ensure_bridge(self, params: dict[str, Any]) -> None:
        _params(params, {"name", "address", "prefix"})
        name = rules.bridge_name(params["name"], "name")
        prefix = params["prefix"]
        if not isinstance(prefix, int) or isinstance(prefix, bool):
            raise BadRequest("argument 'prefix' must be an integer")
        iface = rules.bridge_address(f"{rules.text('address', params['address'], 64)}/{prefix}")
        rules.no_overlap(iface, name, [*await self._host_addresses(), *await self._host_routes()])
        await self.ops.ensure_bridge(name, str(iface.ip), prefix)

    async def delete_bridge(self, params: dict[str, Any]) -> None:
        _params(params, {"name"})
        await self.ops.delete_bridge(rules.bridge_name(params["name"], "name"))

    async def ensure_tap(self, params: dict[str, Any]) -> None:
        _params(params, {"name", "bridge", "owner_uid"})
        name = rules.tap_name(params["name"], "name")
        bridge = rules.bridge_name(params["bridge"])
        # The TAP is handed to the owner (so the owner's VMM can open it), never to anyone else.
        if params["owner_uid"] != self.info.owner_uid:
            raise BadRequest(
                f"argument 'owner_uid': TAPs can only be owned by the install owner "
                f"{self.info.owner_user} (uid {self.info.owner_uid}), not {params['owner_uid']!r}"
            )
        await self.ops.ensure_tap(name, bridge, self.info.owner_uid)

    async def delete_tap(self, params: dict[str, Any]) -> None:
        _params(params, {"name"})
        await self.ops.delete_tap(rules.tap_name(params["name"], "name"))

    async def list_taps(self, params: dict[str, Any]) -> list[str]:
        _params(params, set())
        return await self.ops.list_taps()

    async def sync_nat(self, params: dict[str, Any]) -> None:
        # egress/dns are optional (a helper older callers talk to takes bridge+rules only).
        optional = {"egress", "dns"} & set(params)
        _params(params, {"bridge", "rules", *optional})
        bridge = rules.bridge_name(params["bridge"])
        raw = params["rules"]
        if not isinstance(raw, list) or len(raw) > MAX_NAT_RULES:
            raise BadRequest(f"argument 'rules' must be a list of at most {MAX_NAT_RULES} rules")
        checked = []
        for i, r in enumerate(raw):
            if not isinstance(r, dict) or set(r) != {"ip", "tap"}:
                raise BadRequest(f"argument 'rules[{i}]' must be an object with 'ip' and 'tap'")
            ip = rules.guest_address(r["ip"], f"rules[{i}].ip")
            checked.append(NatRule(ip=str(ip), tap=rules.tap_name(r["tap"], f"rules[{i}].tap")))
        # Only guests of banger's bridge, as the kernel has it configured right now.
        subnet = await self._bridge_subnet(bridge)
        for rule in checked:
            rules.require_in_subnet(ipaddress.IPv4Address(rule.ip), subnet, bridge)
        egress = rules.egress_specs(params.get("egress", []))
        for e in egress:
            rules.require_in_subnet(ipaddress.IPv4Address(e.ip), subnet, bridge)
        dns = rules.dns_redirect(params["dns"]) if "dns" in params else None
        if dns is not None:
            gateway = ipaddress.IPv4Address(dns.gateway)
            if subnet is None or gateway not in subnet:
                raise BadRequest(f"argument 'dns.gateway': {gateway} is not on {bridge}")
        await self.ops.sync_nat(bridge, checked, egress, dns)

    async def egress_admit(self, params: dict[str, Any]) -> None:
        _params(params, {"tag", "items"})
        await self.ops.egress_admit(
            rules.egress_tag(params["tag"]), rules.admits(params["items"], "items")
        )

    async def egress_denied(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        _params(params, {"tag"})
        found = await self.ops.egress_denied(rules.egress_tag(params["tag"]))
        return [{"ip": d.ip, "proto": d.proto, "port": d.port, "packets": d.packets} for d in found]

    async def remove_nat_table(self, params: dict[str, Any]) -> None:
        _params(params, set())
        await self.ops.remove_nat_table()

    async def list_nat(self, params: dict[str, Any]) -> list[dict[str, str]]:
        _params(params, set())
        return [{"ip": r.ip, "tap": r.tap} for r in await self.ops.list_nat()]

    async def get_ip_forward(self, params: dict[str, Any]) -> bool:
        _params(params, set())
        return await self.ops.get_ip_forward()

    async def set_ip_forward(self, params: dict[str, Any]) -> dict[str, Any]:
        _params(params, {"enabled"})
        enabled = params["enabled"]
        if not isinstance(enabled, bool):
            raise BadRequest("argument 'enabled' must be true or false")
        # The owner may only undo what banger did: a host that forwarded before keeps forwarding.
        marker = self.paths.helper_runtime_dir / "ip_forward.enabled-by-banger"
        current = await self.ops.get_ip_forward()
        if enabled and not current:
            await self.ops.set_ip_forward(True)
            marker.touch(mode=0o600)
        elif not enabled and current:
            if not marker.exists():
                log.warning("ip_forward left on: it was enabled outside banger")
                return {"ip_forward": True, "changed": False}
            await self.ops.set_ip_forward(False)
        if not enabled:
            marker.unlink(missing_ok=True)
        return {"ip_forward": await self.ops.get_ip_forward(), "changed": current != enabled}

    async def signal_process(self, params: dict[str, Any]) -> None:
        _params(params, {"pid", "signal"})
        pid = rules.pid_value(params["pid"])
        signum = rules.signal_name(params["signal"])
        pidfd = rules.check_vmm_process(pid, self.vmm_executables(), self.path_roots)
        try:
            signal.pidfd_send_signal(pidfd, signum)
        except ProcessLookupError:
            pass  # it exited on its own: the goal is reached
        finally:
            os.close(pidfd)

    async def ensure_socket_access(self, params: dict[str, Any]) -> None:
        _params(params, {"path"})
        owner = self.info.owner_uid
        with rules.socket_path(params["path"], self.path_roots, owner) as opened:
            # Through the O_PATH fd's magic link: the inode validated above, not a new lookup
            # (fchown cannot take an O_PATH descriptor).
            target = f"/proc/self/fd/{opened.fd}"
            before = opened.st
            os.chown(target, owner, self.info.owner_gid)
            os.chmod(target, 0o600)
            # Re-verify the inode after the change: a second name made in between is undone.
            after = os.stat(target)
            if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino) or (
                after.st_nlink != 1
            ):
                os.chown(target, before.st_uid, before.st_gid)
                os.chmod(target, stat.S_IMODE(before.st_mode))
                raise BadRequest(
                    f"argument 'path': {opened.path} gained another hard link while it was "
                    "handed over; undone"
                )

    # --- network namespaces banger creates ------------------------------------------------------

    @property
    def _netns_records(self) -> Path:
        return self.paths.helper_runtime_dir / "netns"

    def _recorded_netns(self, name: str) -> tuple[int, int] | None:
        try:
            dev, ino = (self._netns_records / name).read_text().split(":")
            return int(dev), int(ino)
        except (OSError, ValueError):
            return None

    def _record_netns(self, name: str, ident: tuple[int, int]) -> None:
        d = self._netns_records
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise OperationFailed(f"{d} is not root's directory; remove it")
        staged = d / f".{name}.tmp"
        staged.write_text(f"{ident[0]}:{ident[1]}")
        os.replace(staged, d / name)

    async def ensure_netns(self, params: dict[str, Any]) -> dict[str, Any]:
        """Create (once) a network namespace `banger-<name>` and record it as banger's.

        Only a namespace recorded here may be given to `priv.jailer_launch`; one that exists
        under that name but was made by someone else is refused, not adopted.
        """
        _params(params, {"name"})
        name = rules.netns_name(params["name"])
        path = f"{rules.NETNS_DIR}/{name}"
        current = _netns_identity(path)
        if current is not None:
            if current != self._recorded_netns(name):
                raise BadRequest(
                    f"network namespace {name} exists but was not created by banger; delete it "
                    f"(`ip netns del {name}`) or choose another name"
                )
            return {"path": path, "created": False}
        await self.ops.run(["ip", "netns", "add", name])
        await self.ops.run(["ip", "-n", name, "link", "set", "lo", "up"])
        made = _netns_identity(path)
        if made is None:
            raise OperationFailed(f"`ip netns add {name}` did not create {path}")
        self._record_netns(name, made)
        return {"path": path, "created": True}

    def _require_banger_netns(self, path: str) -> None:
        name = path.rsplit("/", 1)[1]
        current = _netns_identity(path)
        if current is None:
            raise BadRequest(
                f"argument 'netns': {path} does not exist; banger creates it (priv.ensure_netns)"
            )
        if current != self._recorded_netns(name):
            raise BadRequest(
                f"argument 'netns': {path} was not created by banger (no record of it, or it was "
                "replaced since); the jailer joins only namespaces banger made"
            )

    async def jailer_launch(self, params: dict[str, Any]) -> dict[str, Any]:
        """Build the VM's jail and start the configured jailer on it (docs/privileges.md).

        Every argument is checked against the system config and the install owner first; the
        jail tree is root's (root 0711) except `root/run/` (the owner's, for Firecracker's
        sockets once it runs as the owner); files are hard-linked in from validated O_PATH
        descriptors, so a rename after the check cannot swap them.
        """
        _params(
            params,
            {
                "jailer", "exec_file", "id", "uid", "gid", "chroot_base", "cgroup_version",
                "cgroups", "parent_cgroup", "netns", "api_sock", "console_log", "files",
            },
        )  # fmt: skip
        config = self.config()
        jailer = self._configured_binary("jailer", params["jailer"], config.jailer_bin)
        exec_file = self._configured_binary(
            "exec_file", params["exec_file"], config.firecracker_bin
        )
        ident = rules.vm_id(params["id"])
        for key, want in (("uid", self.info.owner_uid), ("gid", self.info.owner_gid)):
            if params[key] != want or isinstance(params[key], bool):
                raise BadRequest(
                    f"argument {key!r}: the jailer may only drop to the install owner "
                    f"{self.info.owner_user} ({key} {want}), not {params[key]!r}"
                )
        version = params["cgroup_version"]
        if version not in (1, 2) or isinstance(version, bool):
            raise BadRequest("argument 'cgroup_version' must be 1 or 2")
        cgroups = rules.cgroup_settings(params["cgroups"])
        parent = rules.parent_cgroup(params["parent_cgroup"])
        if parent:
            require_root_cgroup(parent)
        netns = rules.netns_path(params["netns"])
        if netns:
            self._require_banger_netns(netns)
        api = rules.api_sock(params["api_sock"])
        base = rules.text("chroot_base", params["chroot_base"])
        if base != config.jailer_chroot_base:
            raise BadRequest(
                f"argument 'chroot_base': {base} is not the configured jailer_chroot_base "
                f"({config.jailer_chroot_base} in {self.paths.config_file})"
            )
        files = params["files"]
        if not isinstance(files, dict) or not {"vmlinux", "rootfs.img"} <= set(files):
            raise BadRequest("argument 'files' must map jail names to paths (vmlinux, rootfs.img…)")
        opened: list[tuple[str, rules.OpenedPath]] = []
        fds: list[int] = []
        jail_made = False
        exec_fd = -1
        try:
            for n, src in files.items():
                jname = rules.jail_file_name(n, f"files[{n!r}]")
                opened.append(
                    (
                        jname,
                        rules.owned_file(
                            src, self.file_roots, self.info.owner_uid, f"files[{n!r}]"
                        ),
                    )
                )
            console = rules.owned_file(
                params["console_log"], self.file_roots[:1], self.info.owner_uid, "console_log"
            )
            opened.append(("", console))
            if console.st.st_nlink != 1:
                raise BadRequest(
                    "argument 'console_log' has other hard links; refusing to write it"
                )
            base_fd = rules.root_only_dir(base, self.owner_writable)
            fds.append(base_fd)
            exec_name = os.path.basename(exec_file)
            exec_fd = _root_subdir(base_fd, exec_name, f"{base}/{exec_name}")
            fds.append(exec_fd)
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(ident, dir_fd=exec_fd)  # a stale jail of this VM
            jail_made = True
            jail_fd = _root_subdir(exec_fd, ident, ident)
            fds.append(jail_fd)
            root_fd = _root_subdir(jail_fd, "root", "root")
            fds.append(root_fd)
            os.mkdir("run", 0o700, dir_fd=root_fd)
            os.chown(
                "run", self.info.owner_uid, self.info.owner_gid, dir_fd=root_fd,
                follow_symlinks=False,
            )  # fmt: skip
            for jname, f in opened:
                if jname:
                    _link_into(f, jname, root_fd, self.info.owner_uid, self.info.owner_gid)
            out_fd = os.open(
                f"/proc/self/fd/{console.fd}",
                os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOCTTY,
            )
            fds.append(out_fd)
            argv = [
                jailer, "--id", ident, "--exec-file", exec_file,
                "--uid", str(self.info.owner_uid), "--gid", str(self.info.owner_gid),
                "--chroot-base-dir", base, "--cgroup-version", str(version),
            ]  # fmt: skip
            for cg in cgroups:
                argv += ["--cgroup", cg]
            if parent:
                argv += ["--parent-cgroup", parent]
            if netns:
                argv += ["--netns", netns]
            # The jailer gives Firecracker `--id` itself; a second one is a DuplicateArgument.
            argv += ["--", "--api-sock", api]
            proc = popen(
                argv,
                guarded=False,  # outlives this helper (KillMode=process)
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=subprocess.STDOUT,
                cwd="/",
                close_fds=True,
            )
        except BaseException:
            if jail_made:
                with contextlib.suppress(OSError):
                    shutil.rmtree(ident, dir_fd=exec_fd)
            if exec_fd >= 0:
                os.close(exec_fd)
            raise
        finally:
            for _, f in opened:
                f.close()
            for fd in fds:
                if fd != exec_fd:
                    os.close(fd)
        self._watch(proc, exec_fd, ident)
        jail_dir = f"{base}/{exec_name}/{ident}"
        log.info(
            "jailer started",
            extra={"op_id": _op_id.get(), "pid": proc.pid, "id": ident, "jail": jail_dir},
        )
        return {"pid": proc.pid, "jail_dir": jail_dir, "chroot": f"{jail_dir}/root"}

    def _configured_binary(self, name: str, value: Any, configured: str) -> str:
        got = rules.text(name, value)
        want = _resolve_binary(configured)
        if want is None:
            raise BadRequest(
                f"argument {name!r}: the configured binary {configured!r} is not installed "
                f"(see {self.paths.config_file})"
            )
        if got != want:
            raise BadRequest(
                f"argument {name!r}: {got} is not the configured binary {want} "
                f"({self.paths.config_file}); the helper runs nothing else"
            )
        return want

    def _watch(self, proc: subprocess.Popen[bytes], exec_fd: int, ident: str) -> None:
        """Reap the jailed VMM when it exits and remove its jail (its disks are only links)."""
        self._jailed[proc.pid] = proc
        pidfd = os.pidfd_open(proc.pid)
        loop = asyncio.get_running_loop()
        op_id = _op_id.get()  # the launch's: `journalctl --grep op-…` finds start and exit

        def exited() -> None:
            if proc.poll() is None:
                return
            loop.remove_reader(pidfd)
            os.close(pidfd)
            self._jailed.pop(proc.pid, None)
            with contextlib.suppress(OSError):
                shutil.rmtree(ident, dir_fd=exec_fd)
            os.close(exec_fd)
            log.info(
                "jailed firecracker exited",
                extra={
                    "op_id": op_id,
                    "pid": proc.pid,
                    "id": ident,
                    "returncode": proc.returncode,
                },
            )

        loop.add_reader(pidfd, exited)

    # --- one connection = one request ---------------------------------------------------------

    async def handle(self, caller: Caller, obj: object) -> dict[str, Any]:
        op_id = ""
        method = "?"
        started = time.monotonic()
        try:
            if isinstance(obj, dict):
                op_id = obj.get("op_id") or ""
                if not isinstance(op_id, str) or not envelope.OP_ID_RE.match(op_id):
                    op_id = ""
            op_id = op_id or envelope.new_op_id()
            if caller.uid not in (0, self.info.owner_uid):
                raise Unauthorized(
                    f"uid {caller.uid} may not use the root helper: only root and the banger "
                    f"owner {self.info.owner_user} (uid {self.info.owner_uid}) may"
                )
            req = envelope.parse_request(obj)
            method = req.method
            op = self.table.get(method)
            if op is None:
                raise UnknownMethod(
                    f"{method!r} is not a root helper operation; it accepts only: "
                    + ", ".join(sorted(self.table))
                )
            _op_id.set(op_id)
            async with self._lock:
                result = await asyncio.wait_for(op(req.params), OP_TIMEOUT)
        except Exception as e:
            if isinstance(e, RPCError):
                err = e
            elif isinstance(e, BangerError):  # network/ validation raises domain errors
                err = to_rpc(e)
            else:
                err = OperationFailed(str(e) or type(e).__name__)
            if isinstance(e, TimeoutError):
                err = OperationFailed(f"{method} timed out after {OP_TIMEOUT:.0f}s")
            log.warning(
                "helper rpc failed",
                extra={
                    "op_id": op_id,
                    "method": method,
                    "caller_uid": caller.uid,
                    "caller_pid": caller.pid,
                    "code": err.code,
                    "error": err.message,
                    "params": _loggable(obj),
                    "duration_ms": round((time.monotonic() - started) * 1000, 1),
                },
            )
            return envelope.error(err.code, err.message, op_id)
        log.info(
            "helper rpc completed",
            extra={
                "op_id": op_id,
                "method": method,
                "caller_uid": caller.uid,
                "caller_pid": caller.pid,
                "params": _loggable(obj),
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
            },
        )
        return envelope.ok(result)


def _netns_identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of a live network namespace bound at `path`; None when nothing is there.

    A plain file (a namespace deleted, or a name someone merely created) is not a namespace.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if st.st_dev != os.stat("/proc/self/ns/net").st_dev:
        raise BadRequest(f"{path} is not a network namespace (not an nsfs mount)")
    return st.st_dev, st.st_ino


def _cgroup_mounts() -> list[str]:
    """Mount points of every cgroup hierarchy (v2 and each v1 controller) this process sees."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        pre, _, post = line.partition(" - ")
        if post.split(" ", 1)[0] in ("cgroup", "cgroup2"):
            found.append(pre.split(" ")[4])
    return found


def require_root_cgroup(parent: str, mounts: list[str] | None = None) -> None:
    """An existing parent cgroup must be root's alone in every hierarchy: not a subtree
    delegated to a user (who could then read or loosen the limits banger sets below it)."""
    for mount in _cgroup_mounts() if mounts is None else mounts:
        walked = mount
        for comp in parent.split("/"):
            walked = f"{walked}/{comp}"
            try:
                st = os.lstat(walked)
            except FileNotFoundError:
                break  # the jailer creates the rest, root's
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
                raise BadRequest(
                    f"argument 'parent_cgroup': {walked} is not a cgroup only root controls "
                    f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); "
                    "it is not banger's"
                )


def _root_subdir(dir_fd: int, name: str, shown: str) -> int:
    """Open (creating, root 0711) a subdirectory that only root can change; O_PATH fd."""
    created = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o711, dir_fd=dir_fd)
        created = True
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    if created:
        rules.chmod_opened(fd, 0o711)  # umask 077 made it 0700: the owner must traverse it
    st = os.fstat(fd)
    if st.st_uid != 0 or st.st_mode & 0o022:
        os.close(fd)
        raise BadRequest(f"{shown} is not a root-owned directory only root can write; remove it")
    return fd


def _link_into(src: rules.OpenedPath, name: str, dir_fd: int, uid: int, gid: int) -> None:
    """Hard-link a validated file into the jail; vmlinux/initrd are copied across filesystems."""
    try:
        os.link(f"/proc/self/fd/{src.fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        return
    except OSError as e:
        if e.errno != errno.EXDEV or name not in ("vmlinux", "initrd"):
            raise OperationFailed(
                f"cannot hard-link {src.path} into the jail ({e.strerror}): put "
                "jailer_chroot_base on the filesystem of banger's state directory"
            ) from None
    rfd = os.open(f"/proc/self/fd/{src.fd}", os.O_RDONLY | os.O_CLOEXEC)
    wfd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400, dir_fd=dir_fd)
    try:
        while chunk := os.read(rfd, 1 << 20):
            view = memoryview(chunk)
            while view:
                view = view[os.write(wfd, view) :]
        os.fchown(wfd, uid, gid)
    finally:
        os.close(rfd)
        os.close(wfd)


def _loggable(obj: object) -> Any:
    params = obj.get("params") if isinstance(obj, dict) else None
    text = json.dumps(params, default=str)
    return params if len(text) <= 2048 else text[:2048] + "…"


class HelperServer:
    def __init__(self, helper: Helper) -> None:
        self.helper = helper
        self.socket_dir = helper.paths.helper_runtime_dir
        self.socket_path = helper.paths.helper_socket
        self._server: asyncio.AbstractServer | None = None

    def _prepare_dir(self) -> None:
        """root-owned 0711: anyone may traverse to the socket, nobody may list or plant files."""
        self.socket_dir.mkdir(mode=0o711, parents=True, exist_ok=True)
        st = os.lstat(self.socket_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0:
            raise RuntimeError(f"{self.socket_dir} must be a root-owned directory; remove it")
        os.chmod(self.socket_dir, 0o711)

    async def start(self) -> None:
        self._prepare_dir()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        old = os.umask(0o177)  # born 0600 root: nobody can connect before the chown below
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, path=str(self.socket_path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old)
        os.chown(self.socket_path, self.helper.info.owner_uid, 0)
        os.chmod(self.socket_path, 0o600)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            caller = peer_credentials(writer.get_extra_info("socket"))
            obj: object
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), READ_TIMEOUT)
                obj = json.loads(line)
            except (ValueError, RecursionError) as e:
                obj = {"_invalid": f"request is not valid JSON: {e}"}
            except asyncio.LimitOverrunError:
                obj = {"_invalid": f"request longer than {MAX_REQUEST} bytes"}
            except (asyncio.IncompleteReadError, TimeoutError):
                return
            if isinstance(obj, dict) and "_invalid" in obj:
                reason = str(obj["_invalid"])
                if caller.uid not in (0, self.helper.info.owner_uid):
                    reason = f"uid {caller.uid} may not use the root helper"
                response = envelope.error("bad_request", reason, envelope.new_op_id())
                log.warning("helper rpc failed", extra={"caller_uid": caller.uid, "error": reason})
            else:
                response = await self.helper.handle(caller, obj)
            writer.write(json.dumps(response, separators=(",", ":")).encode() + b"\n")
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()


def setup_logging(log_file: Path | None) -> None:
    from banger.jsonlog import JSONFormatter

    root = logging.getLogger("banger")
    root.handlers.clear()
    root.setLevel(logging.INFO)
    root.propagate = False
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        handlers.append(logging.FileHandler(log_file))
    for h in handlers:
        h.setFormatter(JSONFormatter())
        root.addHandler(h)


def notify_ready() -> None:
    """sd_notify READY=1 (Type=notify): bangerd starts only once this socket accepts calls."""
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", addr)


async def serve(helper: Helper) -> None:
    server = HelperServer(helper)
    await server.start()
    notify_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "helper ready",
        extra={
            "version": __version__,
            "pid": os.getpid(),
            "socket": str(server.socket_path),
            "owner_uid": helper.info.owner_uid,
        },
    )
    await stop.wait()
    await server.close()
    log.info("helper stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bangerd-root", description="banger's root helper (system install only)"
    )
    parser.add_argument("--version", action="version", version=f"bangerd-root {__version__}")
    parser.add_argument("--log-file", type=Path, help="also append JSON log lines to this file")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print(
            "bangerd-root: must run as root (it is started by bangerd-root.service)",
            file=sys.stderr,
        )
        return 2
    root = system_root()
    try:
        info = read_install(root)
    except InstallError as e:
        print(f"bangerd-root: {e}", file=sys.stderr)
        return 2
    if info is None:
        print(
            f"bangerd-root: {root / 'etc/banger/install.toml'} is missing; "
            "run `sudo banger system install --owner USER` first",
            file=sys.stderr,
        )
        return 2
    # Everything the helper creates (records, jails, markers) is root's alone unless it says
    # otherwise explicitly (the socket, the jail's run/).
    os.umask(0o077)
    setup_logging(args.log_file)
    asyncio.run(serve(Helper(info)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

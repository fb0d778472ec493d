"""Validators for every argument the root helper accepts.

Each rule takes the raw JSON value and returns the typed value or raises `BadRequest` naming the
argument, what was wrong and what is allowed. The helper runs as root on behalf of an unprivileged
owner: anything a rule lets through is something the owner may make root do, so the rules are
deliberately narrow (banger's own interface names, private IPv4 ranges, paths below banger's own
directories reached without symlinks, processes that are VMMs banger launched).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from banger.errors import InvalidInput
from banger.network import privops, tap
from banger.network.nat import Admit, DnsRedirect, EgressSpec
from banger.rpc.errors import BadRequest, NotFound

IFNAMSIZ = 15  # usable bytes of a Linux interface name

# The name patterns are the network module's own (one truth): "br-banger[-x]", "tap-bg-<8 hex>".
BRIDGE_RE = privops.BRIDGE_RE
TAP_RE = tap.TAP_RE

# Guest networks must sit inside private space: never a public range, never loopback/link-local.
PRIVATE_NETS = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv4Network("100.64.0.0/10"),
)
MIN_PREFIX = 8
MAX_PREFIX = 30

SIGNALS = {
    "TERM": signal.SIGTERM,
    "KILL": signal.SIGKILL,
    "INT": signal.SIGINT,
    "HUP": signal.SIGHUP,
    "QUIT": signal.SIGQUIT,
    "USR1": signal.SIGUSR1,
    "USR2": signal.SIGUSR2,
    "ABRT": signal.SIGABRT,
}


def text(name: str, value: Any, max_len: int = 4096) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"argument {name!r} must be a non-empty string")
    if len(value) > max_len or "\x00" in value:
        raise BadRequest(f"argument {name!r} is too long or contains NUL")
    return value


def _ifname(name: str, value: Any, pattern: re.Pattern[str], what: str) -> str:
    v = text(name, value, 64)
    if len(v) > IFNAMSIZ or not pattern.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} is not a {what} name banger manages "
            f"(must match {pattern.pattern}, at most {IFNAMSIZ} characters)"
        )
    return v


def bridge_name(value: Any, name: str = "bridge") -> str:
    return _ifname(name, value, BRIDGE_RE, "bridge")


def tap_name(value: Any, name: str = "tap") -> str:
    return _ifname(name, value, TAP_RE, "TAP")


def _in_private(net: ipaddress.IPv4Network) -> bool:
    return any(net.subnet_of(p) for p in PRIVATE_NETS)


def _private_ranges() -> str:
    return ", ".join(str(p) for p in PRIVATE_NETS)


def bridge_address(value: Any, name: str = "address") -> ipaddress.IPv4Interface:
    """An IPv4 host address with its prefix ("172.16.0.1/24") inside private space."""
    v = text(name, value, 64)
    try:
        iface = ipaddress.IPv4Interface(v)
    except ValueError:
        raise BadRequest(
            f"argument {name!r}: {v!r} is not an IPv4 address/prefix like 172.16.0.1/24"
        ) from None
    net = iface.network
    if not MIN_PREFIX <= net.prefixlen <= MAX_PREFIX:
        raise BadRequest(
            f"argument {name!r}: prefix /{net.prefixlen} is out of range "
            f"(/{MIN_PREFIX}../{MAX_PREFIX})"
        )
    if not _in_private(net):
        raise BadRequest(
            f"argument {name!r}: {net} is not inside a private range ({_private_ranges()})"
        )
    if iface.ip in (net.network_address, net.broadcast_address):
        raise BadRequest(f"argument {name!r}: {iface.ip} is the network or broadcast address")
    return iface


def guest_address(value: Any, name: str = "guest_ip") -> ipaddress.IPv4Address:
    v = text(name, value, 64)
    try:
        ip = ipaddress.IPv4Address(v)
    except ValueError:
        raise BadRequest(f"argument {name!r}: {v!r} is not an IPv4 address") from None
    if not _in_private(ipaddress.IPv4Network(f"{ip}/32")):
        raise BadRequest(
            f"argument {name!r}: {ip} is not inside a private range ({_private_ranges()})"
        )
    return ip


def require_in_subnet(
    ip: ipaddress.IPv4Address, subnet: ipaddress.IPv4Network | None, bridge: str
) -> None:
    """NAT is only for guests on banger's bridge, as the kernel currently configures it."""
    if subnet is None:
        raise BadRequest(f"bridge {bridge} has no IPv4 address; ensure the bridge first")
    if ip not in subnet or ip in (subnet.network_address, subnet.broadcast_address):
        raise BadRequest(f"argument 'guest_ip': {ip} is not a host of {bridge}'s subnet {subnet}")


def no_overlap(
    iface: ipaddress.IPv4Interface, bridge: str, existing: Iterable[tuple[str, str]]
) -> None:
    """Refuse a bridge subnet that overlaps an address or a route another interface uses.

    Otherwise the owner could point banger's bridge at the host's LAN (or, with a more specific
    connected route, at a range reached through a VPN) and capture its traffic. `existing` holds
    (device, "a.b.c.d/n") pairs from addresses and non-default routes.
    """
    for dev, cidr in existing:
        if dev == bridge:
            continue
        other = ipaddress.IPv4Interface(cidr).network
        if other.overlaps(iface.network):
            raise BadRequest(
                f"argument 'address': {iface.network} overlaps {other} on {dev}; "
                "choose a free private range (config keys bridge_ip and cidr)"
            )


def signal_name(value: Any, name: str = "signal") -> signal.Signals:
    v = text(name, value, 16).upper().removeprefix("SIG")
    if v not in SIGNALS:
        raise BadRequest(f"argument {name!r}: signal {value!r} is not one of {', '.join(SIGNALS)}")
    return SIGNALS[v]


def pid_value(value: Any, name: str = "pid") -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 < value < 2**22:
        raise BadRequest(f"argument {name!r} must be a process id (an integer above 1)")
    return value


def sysctl_value(value: Any, name: str = "value") -> int:
    if value not in (0, 1) or isinstance(value, bool):
        raise BadRequest(f"argument {name!r} must be 0 or 1")
    return int(value)


# --- paths ----------------------------------------------------------------------------------


def _components(name: str, path: str) -> list[str]:
    if not path.startswith("/"):
        raise BadRequest(f"argument {name!r}: {path!r} is not an absolute path")
    parts = path.split("/")[1:]
    for p in parts:
        if p in ("", ".", ".."):
            raise BadRequest(
                f"argument {name!r}: {path!r} has an empty, '.' or '..' component; "
                "give the plain absolute path"
            )
    return parts


def _under(parts: Sequence[str], root: Path) -> list[str] | None:
    rparts = [p for p in str(root).split("/") if p]
    if len(parts) > len(rparts) and list(parts[: len(rparts)]) == rparts:
        return list(parts[len(rparts) :])
    return None


@dataclass
class OpenedPath:
    """An O_PATH descriptor of a validated path (close it) and what it is."""

    fd: int
    path: str
    st: os.stat_result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)

    def __enter__(self) -> OpenedPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_under(value: Any, roots: Sequence[Path], name: str = "path") -> OpenedPath:
    """Open `value` with O_PATH, one component at a time with O_NOFOLLOW, below one of `roots`.

    No component may be a symlink (including the last), none may be `..`, and the result is an
    fd of the object actually reached, so later operations cannot be redirected by a rename.
    """
    path = text(name, value)
    parts = _components(name, path)
    for root in roots:
        rest = _under(parts, root)
        if rest is not None:
            break
    else:
        raise BadRequest(
            f"argument {name!r}: {path} is outside banger's directories "
            f"({', '.join(str(r) for r in roots)})"
        )
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(root, flags | os.O_DIRECTORY)
    except OSError as e:
        raise NotFound(
            f"argument {name!r}: banger directory {root} is missing: {e.strerror}"
        ) from None
    try:
        for i, comp in enumerate(rest):
            last = i == len(rest) - 1
            try:
                nfd = os.open(comp, flags | (0 if last else os.O_DIRECTORY), dir_fd=fd)
            except FileNotFoundError:
                raise NotFound(f"argument {name!r}: {path} does not exist") from None
            except OSError as e:
                # ELOOP/ENOTDIR: a symlink (or a file) where a directory was expected.
                raise BadRequest(
                    f"argument {name!r}: {path}: component {comp!r} is a symlink or not a "
                    f"directory ({e.strerror}); banger never follows symlinks here"
                ) from None
            os.close(fd)
            fd = nfd
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):
            raise BadRequest(f"argument {name!r}: {path} is a symlink; banger never follows them")
        return OpenedPath(fd, path, st)
    except BaseException:
        os.close(fd)
        raise


def socket_path(
    value: Any, roots: Sequence[Path], owner_uid: int, name: str = "path"
) -> OpenedPath:
    """A Unix socket below banger's directories that only banger can have made.

    Reached without following any link (`open_under`), with exactly one name (a hard link to a
    socket made elsewhere, `/run/docker.sock` say, has two: with fs.protected_hardlinks=0 the
    owner could otherwise link one in and have it handed over) and owned by root or the owner.
    """
    opened = open_under(value, roots, name)
    try:
        check_socket(opened, owner_uid, name)
    except BaseException:
        opened.close()
        raise
    return opened


def check_socket(opened: OpenedPath, owner_uid: int, name: str = "path") -> None:
    st = opened.st
    if not stat.S_ISSOCK(st.st_mode):
        raise BadRequest(f"argument {name!r}: {opened.path} is not a Unix socket")
    if st.st_nlink != 1:
        raise BadRequest(
            f"argument {name!r}: {opened.path} has {st.st_nlink} hard links; a socket banger "
            "made has one (another name for a socket made elsewhere is refused)"
        )
    if st.st_uid not in (0, owner_uid):
        raise BadRequest(
            f"argument {name!r}: {opened.path} is owned by uid {st.st_uid}, not by root or the "
            f"banger owner (uid {owner_uid}); refusing to hand it over"
        )


# --- processes ------------------------------------------------------------------------------


def _cmdline_paths(args: Sequence[str]) -> Iterable[str]:
    """Every absolute path in a VMM argv (`path=/x`, `unix:/x,server`, `--api-sock /x`)."""
    for arg in args:
        for token in re.split(r"[,=]", arg):
            token = token.removeprefix("unix:")
            if token.startswith("/"):
                yield token


def check_vmm_process(
    pid: int, vmm_executables: Iterable[str], runtime_roots: Sequence[Path]
) -> int:
    """Return a pidfd for `pid` after proving it is a VMM banger launched; refuse otherwise.

    A VMM banger launched runs one of the configured VMM binaries and names a socket below
    banger's runtime (or state) directory on its command line. The pidfd is taken first and
    re-checked after reading /proc, so a pid recycled in between is never signalled.
    """
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise NotFound(f"process {pid} does not exist") from None
    try:
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            raise NotFound(f"process {pid} does not exist (or is a kernel thread)") from None
        allowed = set(vmm_executables)
        if exe not in allowed:
            raise BadRequest(
                f"process {pid} runs {exe}, not a VMM banger launches "
                f"({', '.join(sorted(allowed)) or 'none configured'}); refusing to signal it"
            )
        args = [a for a in raw.decode(errors="replace").split("\x00") if a]
        owned = False
        for p in _cmdline_paths(args):
            parts = [c for c in p.split("/") if c]
            if ".." in parts:
                continue
            if any(_under(parts, r) is not None for r in runtime_roots):
                owned = True
                break
        if not owned:
            raise BadRequest(
                f"process {pid} ({exe}) has no socket under banger's runtime directory: "
                "not a VM banger launched; refusing to signal it"
            )
        try:
            signal.pidfd_send_signal(pidfd, 0)
        except ProcessLookupError:
            raise NotFound(f"process {pid} exited while it was being checked") from None
        return pidfd
    except BaseException:
        os.close(pidfd)
        raise


# --- the Firecracker jailer -----------------------------------------------------------------

# banger's VM ids (`vms/service.py`: secrets.token_hex(6)); also a valid jailer/Firecracker id.
VM_ID_RE = re.compile(r"^[0-9a-f]{12}$")
# cgroup settings: a known controller's file and a plain value ("cpu.max=50000 100000").
CGROUP_RE = re.compile(
    r"^(cpu|cpuset|memory|io|pids|hugetlb|blkio)\.[a-z][a-z0-9_.]{0,40}=[A-Za-z0-9 ._:,-]{1,64}$"
)
PARENT_CGROUP_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}(/[A-Za-z0-9_-]{1,64}){0,3}$")
# banger's own parent cgroup: the jailer creates `<parent>/<id>` below it (or, cgroup v2 with no
# settings, moves Firecracker into an existing parent); nothing outside it may be named.
BANGER_CGROUP = "banger"
NETNS_DIR = "/var/run/netns"
NETNS_RE = re.compile(r"^/var/run/netns/[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
# Network namespaces banger creates (`priv.ensure_netns`) are named `banger-<name>`.
NETNS_PREFIX = "banger-"
BANGER_NETNS_NAME_RE = re.compile(r"^banger-[a-z0-9][a-z0-9-]{0,22}$")
# Firecracker's API socket: inside the jail's owner-writable `run/` (the only such directory).
API_SOCK_RE = re.compile(r"^run/[A-Za-z0-9_-]{1,32}\.sock$")
# What may be linked into a jail, by its name there.
JAIL_FILE_RE = re.compile(
    r"^(vmlinux|initrd|firecracker\.log|firecracker\.metrics|(rootfs|work|extra[0-9]{1,2})\.img)$"
)
MAX_CGROUPS = 16


def vm_id(value: Any, name: str = "id") -> str:
    v = text(name, value, 64)
    if not VM_ID_RE.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} is not a banger VM id (12 lowercase hex digits)"
        )
    return v


def cgroup_settings(value: Any, name: str = "cgroups") -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_CGROUPS:
        raise BadRequest(f"argument {name!r} must be a list of at most {MAX_CGROUPS} settings")
    out = []
    for i, v in enumerate(value):
        s = text(f"{name}[{i}]", v, 128)
        if not CGROUP_RE.fullmatch(s) or ".." in s:
            raise BadRequest(
                f"argument '{name}[{i}]': {s!r} is not a cgroup setting banger passes "
                "(controller.file=value, e.g. 'cpu.max=50000 100000' or 'memory.max=1G')"
            )
        out.append(s)
    return out


def parent_cgroup(value: Any, name: str = "parent_cgroup") -> str | None:
    if value is None:
        return None
    v = text(name, value, 260)
    if not PARENT_CGROUP_RE.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} is not a plain cgroup path "
            "(1-4 components of letters, digits, '_' and '-'; no '..', no leading '/')"
        )
    if v.split("/")[0] != BANGER_CGROUP:
        raise BadRequest(
            f"argument {name!r}: {v!r} is not below banger's own cgroup {BANGER_CGROUP!r}; "
            f"set jailer_parent_cgroup to {BANGER_CGROUP!r} or '{BANGER_CGROUP}/<name>', "
            "or leave it unset"
        )
    return v


def netns_name(value: Any, name: str = "name") -> str:
    """The name of a network namespace banger creates: `banger-<lowercase name>`."""
    v = text(name, value, 64)
    if not BANGER_NETNS_NAME_RE.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} is not a network namespace name banger creates "
            f"({NETNS_PREFIX}<name>: lowercase letters, digits and '-', at most 30 characters)"
        )
    return v


def netns_path(value: Any, name: str = "netns") -> str | None:
    if value is None:
        return None
    v = text(name, value, 128)
    if not NETNS_RE.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} is not a named network namespace "
            "(/var/run/netns/<name>, the name letters, digits, '_', '.', '-')"
        )
    base = v.removeprefix(NETNS_DIR + "/")
    if not BANGER_NETNS_NAME_RE.fullmatch(base):
        raise BadRequest(
            f"argument {name!r}: {v} is not a network namespace banger created "
            f"({NETNS_DIR}/{NETNS_PREFIX}<name>, made through the helper's priv.ensure_netns)"
        )
    return v


def api_sock(value: Any, name: str = "api_sock") -> str:
    v = text(name, value, 64)
    if not API_SOCK_RE.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} must be a socket in the jail's run/ directory "
            "(run/<name>.sock, relative to the jail)"
        )
    return v


def jail_file_name(value: Any, name: str) -> str:
    v = text(name, value, 64)
    if not JAIL_FILE_RE.fullmatch(v):
        raise BadRequest(
            f"argument {name!r}: {v!r} is not a file banger puts in a jail "
            "(vmlinux, initrd, firecracker.log, firecracker.metrics, rootfs.img, work.img, "
            "extraN.img)"
        )
    return v


def owned_file(value: Any, roots: Sequence[Path], owner_uid: int, name: str) -> OpenedPath:
    """A regular file below banger's directories, owned by the owner, reached without symlinks."""
    opened = open_under(value, roots, name)
    st = opened.st
    if not stat.S_ISREG(st.st_mode) or st.st_uid != owner_uid:
        opened.close()
        raise BadRequest(
            f"argument {name!r}: {opened.path} is not a regular file owned by the banger owner "
            f"(uid {owner_uid})"
        )
    return opened


def chmod_opened(fd: int, mode: int) -> None:
    """chmod the inode an O_PATH descriptor holds (fchmod refuses O_PATH; its magic link not)."""
    os.chmod(f"/proc/self/fd/{fd}", mode)


def root_only_dir(value: Any, owner_writable: Sequence[Path], name: str = "chroot_base") -> int:
    """Open (creating the missing tail, root 0711) a directory no one but root can change.

    The jailer runs as root and follows this path by name before it pivots into the jail (it
    copies Firecracker into it), so every component must be root-owned and not writable by
    anyone else (a root-owned sticky ancestor such as /tmp is fine), none a symlink, and the
    path must not lie below the owner's state, cache or runtime directory: there the owner could
    rename a directory away and put a symlink in its place between this check and the jailer.
    Returns an O_PATH descriptor of the directory.
    """
    path = text(name, value)
    parts = _components(name, path)
    for r in owner_writable:
        rparts = [p for p in str(r).split("/") if p]
        if parts[: len(rparts)] == rparts or rparts[: len(parts)] == parts:
            raise BadRequest(
                f"argument {name!r}: {path} is inside (or contains) {r}, which the banger owner "
                "can rename things in; put jailer_chroot_base on a root-owned path such as "
                "/srv/jailer (same filesystem as the state directory)"
            )
    flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_DIRECTORY
    fd = os.open("/", flags)
    try:
        walked = ""
        for i, comp in enumerate(parts):
            walked += "/" + comp
            try:
                nfd = os.open(comp, flags, dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(comp, 0o711, dir_fd=fd)
                nfd = os.open(comp, flags, dir_fd=fd)
                chmod_opened(nfd, 0o711)  # past the helper's umask 077: traversable
            except OSError as e:
                raise BadRequest(
                    f"argument {name!r}: {walked} is a symlink or not a directory "
                    f"({e.strerror}); banger never follows symlinks here"
                ) from None
            os.close(fd)
            fd = nfd
            st = os.fstat(fd)
            # A sticky ancestor keeps root's entries root's; the base itself must be root's alone.
            sticky = bool(st.st_mode & stat.S_ISVTX) and i < len(parts) - 1
            if st.st_uid != 0 or (st.st_mode & 0o022 and not sticky):
                raise BadRequest(
                    f"argument {name!r}: {walked} is not a root-owned directory that only root "
                    f"can write (owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
                )
        return fd
    except BaseException:
        os.close(fd)
        raise


def _object(value: Any, name: str, keys: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) != keys:
        raise BadRequest(f"argument {name!r} must be an object with {', '.join(sorted(keys))}")
    return value


def _list(value: Any, name: str, limit: int) -> list[Any]:
    if not isinstance(value, list) or len(value) > limit:
        raise BadRequest(f"argument {name!r} must be a list of at most {limit} items")
    return value


def egress_tag(value: Any, name: str = "tag") -> str:
    v = text(name, value, 64)
    try:
        return privops.validate_tag(v)
    except InvalidInput as e:
        raise BadRequest(f"argument {name!r}: {e.message}") from None


def admits(value: Any, name: str) -> list[Admit]:
    out = []
    for i, raw in enumerate(_list(value, name, privops.MAX_ADMITS)):
        obj = _object(raw, f"{name}[{i}]", {"ip", "port", "timeout"})
        try:
            out.append(privops.validate_admit(Admit(obj["ip"], obj["port"], obj["timeout"])))
        except InvalidInput as e:
            raise BadRequest(f"argument '{name}[{i}]': {e.message}") from None
    return out


def egress_specs(value: Any, name: str = "egress") -> list[EgressSpec]:
    out = []
    for i, raw in enumerate(_list(value, name, 4096)):
        where = f"{name}[{i}]"
        obj = _object(raw, where, {"tag", "ip", "generation", "cidrs", "admitted"})
        cidrs = []
        for j, pair in enumerate(_list(obj["cidrs"], f"{where}.cidrs", privops.MAX_CIDRS)):
            if not isinstance(pair, list) or len(pair) != 2:
                raise BadRequest(f"argument '{where}.cidrs[{j}]' must be [network, port|null]")
            cidrs.append((pair[0], pair[1]))
        spec = EgressSpec(
            tag=egress_tag(obj["tag"], f"{where}.tag"),
            ip=str(guest_address(obj["ip"], f"{where}.ip")),
            generation=obj["generation"],
            cidrs=tuple(cidrs),
            admitted=tuple(admits(obj["admitted"], f"{where}.admitted")),
        )
        try:
            out.append(privops.validate_egress(spec))
        except InvalidInput as e:
            raise BadRequest(f"argument {where!r}: {e.message}") from None
    return out


def dns_redirect(value: Any, name: str = "dns") -> DnsRedirect:
    obj = _object(value, name, {"gateway", "port", "resolvers"})
    resolvers = _list(obj["resolvers"], f"{name}.resolvers", 8)
    try:
        return privops.validate_dns(
            DnsRedirect(
                str(guest_address(obj["gateway"], f"{name}.gateway")), obj["port"], tuple(resolvers)
            )
        )
    except InvalidInput as e:
        raise BadRequest(f"argument {name!r}: {e.message}") from None

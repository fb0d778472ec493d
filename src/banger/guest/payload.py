"""The guest payload: what banger puts on each VM's seed disk (mounted read-only at /.banger).

The initramfs mounts the seed and switch_roots into the image with `banger.init=/.banger/init`.
That script (PID 1, static busybox) mounts /proc /sys /dev /run, sets the hostname, configures
the network, mounts the work disk at /root (seeding it from the image's /root on first boot),
starts the image's OpenSSH with banger's config (host key and authorized key from the seed),
starts the control-channel agent, reports READY, then either execs the image's systemd or stays
PID 1 as a minimal supervisor. Images themselves are never modified.

Seed layout: bin/busybox, init, ctl.sh (the control protocol), vm.env, sshd_config,
ssh/{authorized_keys,ssh_host_ed25519_key*}; on Firecracker also bin/vsockd (the AF_VSOCK
listener serving ctl.sh, see guest/vsockd.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from banger.proc import run_sync

SEED_LABEL = "banger-seed"
WORK_LABEL = "banger-work"
SEED_SIZE_MIB = 8
CONTROL_PORT = "banger.ctl"
GUEST_INIT = "/.banger/init"

InitMode = Literal["auto", "systemd", "minimal"]


@dataclass(frozen=True)
class GuestNetwork:
    """Static guest network config. `kind = "user"` is QEMU slirp's fixed addresses; a "tap"
    attachment (networking issue) fills address/prefix/gateway/dns from its own allocator."""

    kind: Literal["user", "tap", "none"] = "user"
    address: str = "10.0.2.15"
    prefix: int = 24
    gateway: str = "10.0.2.2"
    dns: tuple[str, ...] = ("10.0.2.3",)
    mac: str = ""


@dataclass(frozen=True)
class SeedConfig:
    vm_id: str
    hostname: str
    authorized_keys: str
    host_key_private: str
    host_key_public: str
    init_mode: InitMode = "auto"
    network: GuestNetwork = field(default_factory=GuestNetwork)
    has_work_disk: bool = True
    # Firecracker only: the static AF_VSOCK helper (guest.vsockd.ensure_vsockd) and its port.
    vsockd: Path | None = None
    vsock_port: int | None = None


_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def _env_lines(cfg: SeedConfig) -> str:
    if not _HOSTNAME_RE.match(cfg.hostname):
        raise ValueError(f"invalid guest hostname {cfg.hostname!r}")
    net = cfg.network
    values: dict[str, str] = {
        "BANGER_VM_ID": cfg.vm_id,
        "BANGER_HOSTNAME": cfg.hostname,
        "BANGER_INIT_MODE": cfg.init_mode,
        "BANGER_WORK": "1" if cfg.has_work_disk else "0",
        "BANGER_NET_KIND": net.kind,
        "BANGER_NET_ADDR": "",
        "BANGER_NET_PREFIX": "",
        "BANGER_NET_GW": "",
        "BANGER_NET_DNS": "",
        "BANGER_VSOCK_PORT": "",
    }
    if cfg.vsockd is not None:
        if cfg.vsock_port is None or not 1 <= cfg.vsock_port <= 0xFFFFFFFE:
            raise ValueError(f"invalid vsock port {cfg.vsock_port!r}")
        values["BANGER_VSOCK_PORT"] = str(cfg.vsock_port)
    if net.kind != "none":
        values["BANGER_NET_ADDR"] = str(ipaddress.IPv4Address(net.address))
        if not 1 <= net.prefix <= 32:
            raise ValueError(f"invalid network prefix {net.prefix}")
        values["BANGER_NET_PREFIX"] = str(net.prefix)
        values["BANGER_NET_GW"] = str(ipaddress.IPv4Address(net.gateway)) if net.gateway else ""
        values["BANGER_NET_DNS"] = " ".join(str(ipaddress.ip_address(d)) for d in net.dns)
    for k, v in values.items():
        # Sourced by the guest shell: only plain characters ever reach it.
        if not re.fullmatch(r"[A-Za-z0-9 ._:/-]*", v):
            raise ValueError(f"invalid guest setting {k}={v!r}")
    return "".join(f"{k}='{v}'\n" for k, v in values.items())


SSHD_CONFIG = """\
# banger's sshd config (the image's own config is not read). Tuned for fast first connections
# under TCG: one KEX, no PAM, no re-exec (sshd -r), no DNS lookups.
Port 22
HostKey /.banger/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /.banger/ssh/authorized_keys .ssh/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org
PidFile /run/banger-sshd.pid
PrintMotd no
AcceptEnv LANG LC_*
Subsystem sftp internal-sftp
SetEnv PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
"""

# PID 1 after switch_root. Only busybox applets (by full path) until the image's tools are known.
INIT_SCRIPT = r"""#!/.banger/bin/busybox sh
# banger guest init (seed disk, read-only). See banger/guest/payload.py.
BB=/.banger/bin/busybox
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
. /.banger/vm.env

say() { echo "banger-guest: $*" >/dev/console 2>/dev/null; }
ctl() { [ -e "/dev/virtio-ports/banger.ctl" ] && echo "$*" >/dev/virtio-ports/banger.ctl; }
# Firecracker on x86 has no power-off device: a halted guest leaves its VMM running, while a
# reboot ends it (reboot=k). QEMU runs with -no-reboot, but there power-off is the clean end.
on_firecracker() { $BB grep -qw banger.vmm=firecracker /proc/cmdline 2>/dev/null; }
end_vm() {
    if on_firecracker; then $BB reboot -f; else $BB poweroff -f; fi
}
die() {
    say "ERROR $*"
    ctl "ERROR $*"
    $BB sync
    end_vm
    while :; do $BB sleep 3600; done
}

# --- mounts --- (busybox-static has no `mountpoint` applet)
mounted() { [ -r /proc/mounts ] && $BB grep -q "^[^ ]* $1 " /proc/mounts; }
$BB mkdir -p /proc /sys /dev /run /tmp
mounted /proc || $BB mount -t proc proc /proc
mounted /sys || $BB mount -t sysfs sysfs /sys
mounted /dev || $BB mount -t devtmpfs devtmpfs /dev
$BB mkdir -p /dev/pts /dev/shm
mounted /dev/pts || $BB mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mounted /dev/shm || $BB mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mounted /run || $BB mount -t tmpfs -o mode=755,nosuid,nodev tmpfs /run
mounted /tmp || $BB mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
[ -e /dev/ptmx ] || $BB ln -s pts/ptmx /dev/ptmx
$BB ln -sf /proc/self/fd /dev/fd 2>/dev/null

# No udev here: make the /dev/virtio-ports/<name> links ourselves.
$BB mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/*; do
    [ -e "$p/name" ] || continue
    $BB ln -sf "../${p##*/}" "/dev/virtio-ports/$($BB cat "$p/name")"
done

# --- hostname ---
$BB hostname "$BANGER_HOSTNAME"
echo "$BANGER_HOSTNAME" >/etc/hostname 2>/dev/null
if ! $BB grep -q "[[:space:]]$BANGER_HOSTNAME\$" /etc/hosts 2>/dev/null; then
    [ -s /etc/hosts ] || echo "127.0.0.1 localhost" >/etc/hosts
    echo "127.0.1.1 $BANGER_HOSTNAME" >>/etc/hosts
fi

# --- network ---
$BB ip link set lo up
if [ "$BANGER_NET_KIND" != none ]; then
    $BB ip link set eth0 up || die "no network interface eth0"
    $BB ip addr add "$BANGER_NET_ADDR/$BANGER_NET_PREFIX" dev eth0
    [ -n "$BANGER_NET_GW" ] && $BB ip route add default via "$BANGER_NET_GW" dev eth0
    if [ -n "$BANGER_NET_DNS" ]; then
        $BB rm -f /etc/resolv.conf
        for ns in $BANGER_NET_DNS; do echo "nameserver $ns"; done >/etc/resolv.conf
    fi
fi

# --- work disk at /root (persistent home, seeded from the image's /root on first boot) ---
if [ "$BANGER_WORK" = 1 ]; then
    wdev=""
    n=0
    while [ $n -lt 250 ]; do
        wdev="$($BB findfs LABEL=banger-work 2>/dev/null)" && break
        $BB usleep 20000
        n=$((n + 1))
    done
    [ -n "$wdev" ] || die "work disk (LABEL=banger-work) not found"
    $BB mkdir -p /run/banger-work /root
    $BB mount -t ext4 -o rw,noatime "$wdev" /run/banger-work || die "cannot mount work disk $wdev"
    if [ ! -e /run/banger-work/.banger-seeded ]; then
        $BB cp -a /root/. /run/banger-work/ 2>/dev/null
        $BB chmod 0700 /run/banger-work
        $BB touch /run/banger-work/.banger-seeded
    fi
    $BB mount --move /run/banger-work /root || die "cannot move the work disk to /root"
fi

# --- init mode ---
mode="$BANGER_INIT_MODE"
systemd=""
for c in /lib/systemd/systemd /usr/lib/systemd/systemd; do
    [ -x "$c" ] && systemd="$c" && break
done
if [ "$mode" = auto ]; then
    if [ -n "$systemd" ]; then mode=systemd; else mode=minimal; fi
fi
[ "$mode" = systemd ] && [ -z "$systemd" ] && die "--init systemd: the image has no systemd"

# --- SSH server: the image's OpenSSH with banger's config ---
sshd=""
for c in /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do
    [ -x "$c" ] && sshd="$c" && break
done
[ -n "$sshd" ] ||
    die "the image has no OpenSSH server (/usr/sbin/sshd): install openssh-server in it"
$BB mkdir -p /run/sshd /var/empty
$BB chmod 0755 /run/sshd
"$sshd" -r -f /.banger/sshd_config -E /run/banger-sshd.log ||
    die "sshd failed to start: $($BB tail -n 3 /run/banger-sshd.log 2>/dev/null)"

# --- control channel: READY, then commands from the host (stop, ping); protocol in ctl.sh ---
. /.banger/ctl.sh
# systemd mode: READY only once systemd has finished starting. Before its control socket
# exists a guest `systemctl`/`poweroff` fails ("Failed to talk to init daemon") and systemctl
# returns at once: retry; then --wait blocks until startup ends. A unit hanging the boot must
# not hide a usable VM: READY anyway after ~100 s of uptime.
booted() {
    [ "$mode" = systemd ] || return 0
    while read -r up _ </proc/uptime && [ "${up%.*}" -lt 100 ]; do
        case "$($BB timeout 30 systemctl is-system-running --wait 2>/dev/null)" in
            running | degraded | maintenance | stopping) return 0 ;;
        esac
        $BB usleep 100000
    done
    return 0
}
agent() {
    port=/dev/virtio-ports/banger.ctl
    [ -e "$port" ] || { say "no control port"; return; }
    exec 3<>"$port"
    booted
    # One session per host connection. ctl_serve's READY write blocks until the host end is
    # connected and its reads block while it stays connected; EOF means it went away. So the
    # agent sleeps in the kernel between connections and answers a new one at once.
    while :; do
        ctl_serve "$mode" <&3 >&3 || $BB sleep 1 # the port is gone (hot-unplug): do not spin
    done
}
agent </dev/null >/dev/null 2>&1 &
# Firecracker has no virtio-serial: the same protocol on AF_VSOCK, one handler per connection.
if [ -x /.banger/bin/vsockd ] && [ -n "$BANGER_VSOCK_PORT" ]; then
    /.banger/bin/vsockd "$BANGER_VSOCK_PORT" "$BB" sh /.banger/ctl.sh "$mode" \
        </dev/null >/dev/console 2>&1 &
fi

# The ACPI power button (QMP system_powerdown, sent by `vm stop` beside the control channel's
# `stop`) reaches no one without logind, which needs D-Bus: the minimal init, and systemd images
# without dbus (minbase). One blocking read of its event device, then the same shutdown as `stop`.
powerkey() {
    for e in /sys/class/input/event*; do
        [ "$($BB cat "$e/device/name" 2>/dev/null)" = "Power Button" ] || continue
        $BB dd if="/dev/input/${e##*/}" of=/dev/null bs=24 count=1 && stop_guest "$mode"
        return
    done
}
nodbus() {
    [ ! -e /lib/systemd/system/dbus.service ] && [ ! -e /usr/lib/systemd/system/dbus.service ]
}
if [ "$mode" = minimal ] || nodbus; then
    powerkey </dev/null >/dev/null 2>&1 &
fi

# systemctl poweroff/reboot without systemd falls back to the SysV /run/initctl FIFO.
if [ "$mode" = minimal ]; then
    # Images without any poweroff (minbase): busybox's signals PID 1, which shuts down fast.
    for c in poweroff reboot halt; do
        found=""
        for d in /usr/local/sbin /usr/sbin /sbin /usr/bin /bin; do
            [ -e "$d/$c" ] && found=1 && break
        done
        if [ -z "$found" ]; then
            $BB mkdir -p /usr/local/sbin
            $BB ln -sf /.banger/bin/busybox "/usr/local/sbin/$c"
        fi
    done
    $BB mkfifo -m 600 /run/initctl 2>/dev/null
    (while :; do $BB cat /run/initctl >/dev/null 2>&1; $BB kill -USR2 1; $BB sleep 1; done) \
        </dev/null >/dev/null 2>&1 &
fi
if [ "$mode" = systemd ]; then
    (booted; say "READY mode=$mode") </dev/null >/dev/null 2>&1 &
else
    say "READY mode=$mode"
fi

if [ "$mode" = systemd ]; then
    # banger's sshd is already up: keep the image's from fighting it for port 22, and skip
    # units that wait for udev events that never come without udev (the serial getty waits
    # 90 s for dev-ttyS0.device; no one can log in on a console anyway) or that banger's init
    # already did (network). No autofs4 module in the image: binfmt_misc's automount fails.
    $BB mkdir -p /run/systemd/system
    for u in ssh.service ssh.socket sshd.service networking.service e2scrub_reap.service \
        systemd-networkd-wait-online.service getty.target proc-sys-fs-binfmt_misc.automount; do
        $BB ln -sf /dev/null "/run/systemd/system/$u"
    done
    # The seed stays mounted until the end (the agent runs from it): not part of umount.target,
    # or every shutdown shows "Failed unmounting /.banger". It is read-only.
    d='/run/systemd/system/\x2ebanger.mount.d'
    $BB mkdir -p "$d" && printf '[Unit]\nDefaultDependencies=no\n' >"$d/keep.conf"
    exec "$systemd"
fi

# --- minimal supervisor (PID 1) ---
shutdown_now() {
    trap '' TERM USR1 USR2 INT
    say "shutting down"
    kill -TERM -1 2>/dev/null
    $BB usleep 100000
    kill -KILL -1 2>/dev/null
    $BB sync
    $BB umount /root 2>/dev/null || $BB mount -o remount,ro /root 2>/dev/null
    $BB mount -o remount,ro / 2>/dev/null
    end_vm
}
# busybox poweroff/halt/reboot signal PID 1 with USR2/USR1/TERM; each ends the VM (end_vm).
trap shutdown_now TERM USR1 USR2 INT
while :; do
    $BB sleep 3600 &
    wait $!
done
"""

# The control protocol, one session on stdin/stdout: `READY mode=<mode>` first (the write blocks
# on virtio-serial until the host end connects), then one command per line; other lines are
# ignored; returns at EOF. The init sources it for the virtio-serial agent; vsockd (Firecracker)
# runs it as a script per vsock connection: `sh /.banger/ctl.sh MODE`.
#   ping -> pong                       stop -> shut down (no answer)
#   time EPOCH -> ok                   set the clock (after a resume or a restore)
#   hostname NAME -> ok                hostname, /etc/hostname, the 127.0.1.1 line of /etc/hosts
#   machineid HEX32 -> ok              /etc/machine-id
#   addr ADDR/PREFIX GW|- MAC|- -> ok  re-address eth0 (a fork on a bridge)
#   hostkey B64PRIV B64PUB -> ok       a new SSH host key; sshd's listener restarts with it
# Identity commands are idempotent and answer `ok` or `error <why>` (guest/identity.py).
CTL_SCRIPT = r"""# banger control protocol (seed disk). See banger/guest/payload.py.
# busybox beside this file (sourced by /.banger/init, or run as /.banger/ctl.sh).
CTL_BB="${0%/*}/bin/busybox"
stop_guest() {
    if [ "$1" = systemd ]; then
        # Firecracker exits on a guest reboot (reboot=k), not on a power-off.
        verb=poweroff
        "$CTL_BB" grep -qw banger.vmm=firecracker /proc/cmdline && verb=reboot
        systemctl --no-block "$verb" || "$CTL_BB" kill -s RTMIN+4 1
    else
        "$CTL_BB" kill -USR2 1
    fi
}
ctl_time() {
    case "$1" in '' | *[!0-9]*) echo "error time: not a number of seconds"; return ;; esac
    "$CTL_BB" date -s "@$1" >/dev/null 2>&1 && echo ok || echo "error date -s failed"
}
ctl_hostname() {
    case "$1" in '' | -* | *[!a-z0-9-]*) echo "error hostname: not a hostname"; return ;; esac
    "$CTL_BB" hostname "$1" || { echo "error hostname failed"; return; }
    echo "$1" >/etc/hostname 2>/dev/null
    if "$CTL_BB" grep -q '^127\.0\.1\.1[[:space:]]' /etc/hosts 2>/dev/null; then
        "$CTL_BB" sed -i "s/^127\.0\.1\.1[[:space:]].*/127.0.1.1 $1/" /etc/hosts
    else
        echo "127.0.1.1 $1" >>/etc/hosts
    fi
    echo ok
}
ctl_machineid() {
    case "$1" in *[!0-9a-f]*) echo "error machineid: not hex"; return ;; esac
    [ "${#1}" = 32 ] || { echo "error machineid: not 32 hex digits"; return; }
    echo "$1" >/etc/machine-id 2>/dev/null || { echo "error cannot write /etc/machine-id"; return; }
    echo ok
}
ctl_addr() {
    case "$1$2$3" in *[!0-9a-f./:-]*) echo "error addr: bad characters"; return ;; esac
    if [ "$3" != - ]; then
        "$CTL_BB" ip link set eth0 down &&
            "$CTL_BB" ip link set eth0 address "$3" &&
            "$CTL_BB" ip link set eth0 up || { echo "error cannot set the MAC"; return; }
    fi
    "$CTL_BB" ip addr flush dev eth0 &&
        "$CTL_BB" ip addr add "$1" dev eth0 || { echo "error cannot set the address"; return; }
    if [ "$2" != - ]; then
        "$CTL_BB" ip route replace default via "$2" dev eth0 || { echo "error no route"; return; }
    fi
    echo ok
}
ctl_hostkey() {
    case "$1$2" in '' | *[!A-Za-z0-9+/=]*) echo "error hostkey: not base64"; return ;; esac
    d=/run/banger-ssh
    "$CTL_BB" mkdir -p "$d" && "$CTL_BB" chmod 700 "$d" || { echo "error cannot make $d"; return; }
    (umask 077 && echo "$1" | "$CTL_BB" base64 -d >"$d/key.new") &&
        echo "$2" | "$CTL_BB" base64 -d >"$d/key.pub.new" ||
        { echo "error hostkey: cannot decode"; return; }
    "$CTL_BB" mv -f "$d/key.new" "$d/ssh_host_ed25519_key"
    "$CTL_BB" mv -f "$d/key.pub.new" "$d/ssh_host_ed25519_key.pub"
    "$CTL_BB" sed "s#^HostKey .*#HostKey $d/ssh_host_ed25519_key#" /.banger/sshd_config \
        >"$d/sshd_config"
    sshd=""
    for c in /usr/sbin/sshd /usr/bin/sshd /sbin/sshd; do
        [ -x "$c" ] && sshd="$c" && break
    done
    [ -n "$sshd" ] || { echo "error no sshd"; return; }
    # Only the listener goes: sessions already open (its children) keep running.
    old="$("$CTL_BB" cat /run/banger-sshd.pid 2>/dev/null)"
    if [ -n "$old" ]; then
        "$CTL_BB" kill "$old" 2>/dev/null
        n=0
        while "$CTL_BB" kill -0 "$old" 2>/dev/null && [ $n -lt 100 ]; do
            "$CTL_BB" usleep 20000
            n=$((n + 1))
        done
    fi
    "$sshd" -r -f "$d/sshd_config" -E /run/banger-sshd.log </dev/null >/dev/null 2>&1 ||
        { echo "error sshd did not restart"; return; }
    echo ok
}
ctl_serve() {
    ctl_mode="$1"
    echo "READY mode=$ctl_mode" || return 1
    while read -r line; do
        set -f
        # shellcheck disable=SC2086 # split the command line into words, globbing off
        set -- $line
        set +f
        case "$1" in
            stop) stop_guest "$ctl_mode" ;;
            ping) echo pong ;;
            time) ctl_time "$2" ;;
            hostname) ctl_hostname "$2" ;;
            machineid) ctl_machineid "$2" ;;
            addr) ctl_addr "$2" "${3:--}" "${4:--}" ;;
            hostkey) ctl_hostkey "$2" "$3" ;;
        esac
    done
    return 0
}
if [ "${0##*/}" = ctl.sh ]; then
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    export PATH
    ctl_serve "${1:-minimal}"
fi
"""


def build_seed(out: Path, cfg: SeedConfig, *, busybox: Path = Path("/bin/busybox")) -> None:
    """Write the seed ext4 image to `out` (staged beside it, renamed into place)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".seed-", dir=out.parent) as tmp:
        tree = Path(tmp) / "tree"
        (tree / "bin").mkdir(parents=True)
        (tree / "ssh").mkdir(mode=0o700)
        # The guest's view (/.banger), whatever the daemon's umask 077 made on the host.
        os.chmod(tree, 0o755)
        os.chmod(tree / "bin", 0o755)
        shutil.copyfile(busybox, tree / "bin/busybox")
        os.chmod(tree / "bin/busybox", 0o755)
        _write(tree / "init", INIT_SCRIPT, 0o755)
        _write(tree / "ctl.sh", CTL_SCRIPT, 0o644)
        if cfg.vsockd is not None:
            shutil.copyfile(cfg.vsockd, tree / "bin/vsockd")
            os.chmod(tree / "bin/vsockd", 0o755)
        _write(tree / "vm.env", _env_lines(cfg), 0o644)
        _write(tree / "sshd_config", SSHD_CONFIG, 0o644)
        _write(tree / "ssh/authorized_keys", cfg.authorized_keys.strip() + "\n", 0o644)
        _write(tree / "ssh/ssh_host_ed25519_key", cfg.host_key_private, 0o600)
        _write(tree / "ssh/ssh_host_ed25519_key.pub", cfg.host_key_public.strip() + "\n", 0o644)
        img = Path(tmp) / "seed.ext4"
        with open(img, "wb") as f:
            f.truncate(SEED_SIZE_MIB << 20)
        argv = ["mkfs.ext4", "-q", "-F", "-L", SEED_LABEL, "-O", "^has_journal"]
        argv += ["-E", "root_owner=0:0", "-d", str(tree), str(img)]
        if os.getuid() != 0:
            # Files in the guest must be root-owned (sshd's StrictModes); fakeroot makes them so.
            argv = ["fakeroot", *argv]
        run_sync(argv, what="mkfs.ext4 (seed disk)", timeout=60)
        os.replace(img, out)


def _write(path: Path, text: str, mode: int) -> None:
    path.write_text(text)
    os.chmod(path, mode)

"""banger's guest initramfs: static busybox, the virtio/ext4 modules and a small /init.

The archive is written in Python (newc cpio, gzip) so every entry is owned by root without
fakeroot and the result is byte-for-byte reproducible for the same inputs.

Boot contract of /init (read from the kernel command line):
- `root=` (default /dev/vda; `LABEL=x` accepted), `rootfstype=` (default ext4)
- `banger.seed=` (optional): the per-VM seed disk, mounted read-only at /newroot/.banger
- `banger.init=`: path inside the root to exec (default /sbin/init)
It mounts /proc /sys /dev, loads the modules in list order, waits (bounded) for the root device,
mounts it rw at /newroot, mounts the seed, then `switch_root /newroot <banger.init>`. On any
failure it prints `banger-initramfs: <reason>` and powers off, so a bad boot fails fast.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import stat
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

# Appended module signatures are useless here (nothing enforces them) and cost boot time.
_SIG_MAGIC = b"~Module signature appended~\n"

# How long /init waits for a block device to appear (seconds).
DEVICE_WAIT_SECONDS = 10

INIT_SCRIPT = r"""#!/bin/busybox sh
# banger initramfs /init: see banger/guest/initramfs.py for the contract.
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

fail() {
    echo "banger-initramfs: $*" >/dev/console 2>/dev/null || echo "banger-initramfs: $*"
    sync
    poweroff -f
    # poweroff can only fail without ACPI; never let PID 1 exit (that is a kernel panic loop).
    while :; do sleep 3600; done
}

root=/dev/vda
rootfstype=ext4
seed=
binit=/sbin/init
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        root=*) root="${arg#root=}" ;;
        rootfstype=*) rootfstype="${arg#rootfstype=}" ;;
        banger.seed=*) seed="${arg#banger.seed=}" ;;
        banger.init=*) binit="${arg#banger.init=}" ;;
    esac
done

if [ -f /lib/modules/order ]; then
    while read -r ko; do
        [ -n "$ko" ] || continue
        insmod "/lib/modules/$ko" 2>/tmp/insmod.err || {
            # Already loaded (built in) is fine; anything else is worth a line on the console.
            grep -q "File exists" /tmp/insmod.err ||
                echo "banger-initramfs: warning: insmod $ko: $(cat /tmp/insmod.err)"
        }
    done </lib/modules/order
fi

# Echo the path of the block device named by $1 (a path or LABEL=x) once it exists.
wait_dev() {
    spec="$1"
    n=0
    limit=$((@WAIT@ * 50))
    while [ "$n" -lt "$limit" ]; do
        case "$spec" in
            LABEL=*) dev="$(findfs "$spec" 2>/dev/null)" ;;
            *) dev="$spec" ;;
        esac
        if [ -n "$dev" ] && [ -b "$dev" ]; then
            echo "$dev"
            return 0
        fi
        usleep 20000
        n=$((n + 1))
    done
    return 1
}

rootdev="$(wait_dev "$root")" || fail "root device $root did not appear within @WAIT@s"
mount -t "$rootfstype" -o rw "$rootdev" /newroot || fail "cannot mount root $rootdev ($rootfstype)"

if [ -n "$seed" ]; then
    seeddev="$(wait_dev "$seed")" || fail "seed disk $seed did not appear within @WAIT@s"
    mkdir -p /newroot/.banger || fail "cannot create /.banger in the root filesystem"
    mount -t ext4 -o ro "$seeddev" /newroot/.banger || fail "cannot mount seed disk $seeddev"
fi

if [ ! -e "/newroot$binit" ] && [ ! -L "/newroot$binit" ]; then
    fail "init $binit not found in the root filesystem"
fi

# Hand the kernel filesystems over when the new root has somewhere to put them.
for m in dev proc sys; do
    if [ -d "/newroot/$m" ]; then
        mount --move "/$m" "/newroot/$m" 2>/dev/null || umount "/$m" 2>/dev/null
    else
        umount "/$m" 2>/dev/null
    fi
done
exec switch_root /newroot "$binit"
echo "banger-initramfs: switch_root to $binit failed"
poweroff -f
while :; do sleep 3600; done
"""


def strip_module_signature(data: bytes) -> bytes:
    """The module without its appended PKCS#7 signature (unchanged when it has none)."""
    if not data.endswith(_SIG_MAGIC):
        return data
    # struct module_signature (12 bytes) precedes the magic; its last field is sig_len (BE u32).
    info = data[-len(_SIG_MAGIC) - 12 : -len(_SIG_MAGIC)]
    sig_len = int.from_bytes(info[8:12], "big")
    end = len(data) - len(_SIG_MAGIC) - 12 - sig_len
    return data[:end] if end > 0 else data


def read_module(path: Path) -> bytes:
    """A module's ELF bytes, decompressed when stored as .ko.xz / .ko.gz / .ko.zst."""
    raw = path.read_bytes()
    name = path.name
    if name.endswith(".xz"):
        raw = lzma.decompress(raw)
    elif name.endswith(".gz"):
        raw = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    elif name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().decompressobj().decompress(raw)
    return strip_module_signature(raw)


def _module_basename(path: Path) -> str:
    name = path.name
    for ext in (".xz", ".gz", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    return name


class _Newc:
    """A minimal newc ("070701") cpio writer; every entry root-owned."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(
        self,
        name: str,
        mode: int,
        data: bytes = b"",
        nlink: int = 1,
        rdev: tuple[int, int] = (0, 0),
    ) -> None:
        encoded = name.encode() + b"\0"
        header = "070701" + "".join(
            f"{v:08x}"
            for v in (
                self.ino,
                mode,
                0,  # uid
                0,  # gid
                nlink,
                0,  # mtime: fixed for reproducible archives
                len(data),
                0,
                0,  # dev major/minor
                0,
                0,  # rdev major/minor
                len(encoded),
                0,  # check
            )
        )
        self.ino += 1
        self.buf.write(header.encode())
        self.buf.write(encoded)
        self._pad()
        self.buf.write(data)
        self._pad()

    def _pad(self) -> None:
        self.buf.write(b"\0" * (-self.buf.tell() % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, nlink=2)

    def file(self, name: str, data: bytes, perm: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | perm, data)

    def char_dev(self, name: str, major: int, minor: int) -> None:
        # devtmpfs supplies the real nodes; /dev/console must exist before it is mounted.
        self._entry(name, stat.S_IFCHR | 0o600, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, nlink=1)
        return self.buf.getvalue()


def _has_interpreter(elf: bytes) -> bool:
    """True for a dynamically linked ELF64 (it has a PT_INTERP program header)."""
    if len(elf) < 64 or elf[4] != 2:
        return False
    order: Literal["little", "big"] = "little" if elf[5] == 1 else "big"
    phoff = int.from_bytes(elf[0x20:0x28], order)
    phentsize = int.from_bytes(elf[0x36:0x38], order)
    phnum = int.from_bytes(elf[0x38:0x3A], order)
    for i in range(phnum):
        off = phoff + i * phentsize
        if int.from_bytes(elf[off : off + 4], order) == 3:  # PT_INTERP
            return True
    return False


def build_initramfs(
    out: Path, *, modules: Sequence[Path], busybox: Path = Path("/bin/busybox")
) -> None:
    """Write a gzip'd newc initramfs to `out` (staged next to it, then renamed into place).

    `modules` are loaded in the given order, so pass them in dependency order
    (kernels/modules.py `resolve_modules`). `busybox` must be a static binary.
    """
    bb = busybox.read_bytes()
    if not bb.startswith(b"\x7fELF"):
        raise ValueError(f"{busybox} is not an ELF binary; install busybox-static")
    if _has_interpreter(bb):
        raise ValueError(f"{busybox} is dynamically linked; banger needs busybox-static")
    archive = _Newc()
    for d in ("bin", "dev", "lib", "lib/modules", "newroot", "proc", "sys", "tmp", "sbin"):
        archive.dir(d)
    archive.char_dev("dev/console", 5, 1)
    archive.file("bin/busybox", bb, 0o755)
    archive.file("init", INIT_SCRIPT.replace("@WAIT@", str(DEVICE_WAIT_SECONDS)).encode(), 0o755)
    order: list[str] = []
    seen: set[str] = set()
    for mod in modules:
        base = _module_basename(mod)
        if base in seen:
            continue
        seen.add(base)
        archive.file(f"lib/modules/{base}", read_module(mod))
        order.append(base)
    archive.file("lib/modules/order", ("\n".join(order) + "\n").encode())
    payload = gzip.compress(archive.finish(), compresslevel=6, mtime=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(payload)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()

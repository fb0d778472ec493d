"""Which kernel modules a guest needs, and their load order from the kernel's `modules.dep`.

A modular distro kernel (Debian's) has virtio, ext4 and friends as modules; the banger initramfs
loads them with busybox `insmod`, which does not resolve dependencies, so the order must be
computed here: every module after the modules it depends on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

# Measured set (HOST-NOTES): block + ext4 root, virtio-net, virtio-console control channel,
# ACPI power button, plus vsock for Firecracker's control channel.
GUEST_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_blk",
    "crc32c_generic",
    "crc32c-intel",
    "jbd2",
    "mbcache",
    "crc16",
    "ext4",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_console",
    "button",
    "evdev",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
)

_KO_SUFFIXES = (".ko", ".ko.xz", ".ko.zst", ".ko.gz")


class ModuleError(Exception):
    """modules.dep is missing or unreadable, or a needed module cannot be found."""


def module_name(path: str) -> str:
    """`kernel/arch/x86/crypto/crc32c-intel.ko.xz` -> `crc32c_intel` (the kernel's own spelling)."""
    base = path.rsplit("/", 1)[-1]
    for suffix in _KO_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (relative .ko path, relative paths of its direct dependencies)."""
    table: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        path, _, deps = line.partition(":")
        path = path.strip()
        if not path:
            continue
        table[module_name(path)] = (path, deps.split())
    return table


def _builtin_names(modules_root: Path) -> set[str]:
    f = modules_root / "modules.builtin"
    if not f.is_file():
        return set()
    return {module_name(line.strip()) for line in f.read_text().splitlines() if line.strip()}


def resolve_modules(modules_root: Path, names: Sequence[str]) -> list[Path]:
    """.ko paths for `names` and everything they need, each after its dependencies.

    Built-in modules (listed in modules.builtin) and modules the kernel does not have at all are
    skipped: a kernel with virtio built in simply needs fewer files. Compressed modules
    (.ko.xz/.zst/.gz) are returned as they are; `guest.initramfs` decompresses them and strips
    their appended signatures.
    """
    dep_file = modules_root / "modules.dep"
    try:
        table = parse_modules_dep(dep_file.read_text())
    except OSError as e:
        raise ModuleError(
            f"cannot read {dep_file}: {e.strerror}; is {modules_root} a /lib/modules/<version> "
            "directory (run `depmod` there if modules.dep is missing)?"
        ) from None
    builtin = _builtin_names(modules_root)
    by_path = {path: name for name, (path, _deps) in table.items()}
    order: list[str] = []
    seen: set[str] = set()

    def visit(name: str, stack: tuple[str, ...]) -> None:
        if name in seen or name in builtin or name not in table:
            return
        if name in stack:
            raise ModuleError(f"dependency cycle in {dep_file}: {' -> '.join((*stack, name))}")
        _path, deps = table[name]
        # modules.dep lists dependencies so that the last one loads first (modprobe's order).
        for dep in reversed(deps):
            visit(by_path.get(dep, module_name(dep)), (*stack, name))
        seen.add(name)
        order.append(name)

    for raw in names:
        visit(module_name(raw), ())
    root = modules_root.resolve()
    out = []
    for name in order:
        path = (modules_root / table[name][0]).resolve()
        # modules.dep comes from the kernel's publisher: never let it name a file elsewhere.
        if not path.is_relative_to(root):
            raise ModuleError(f"{dep_file}: module {name} points outside {modules_root}")
        out.append(modules_root / table[name][0])
    return out

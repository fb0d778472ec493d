"""Build the guest's vsock helper (vsockd.c) on demand into banger's cache.

Only Firecracker VMs need it (their control channel is vsock; busybox cannot listen there), so
it is compiled the first time one boots: `gcc -static -Os -s`, keyed by the hash of the source
and flags (`<cache>/guest/vsockd-<hash>`), staged beside its final name then renamed, so a
concurrent or interrupted build never leaves a half-written binary in use.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from banger.errors import OperationFailed
from banger.proc import run_sync

CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Wextra", "-Werror")
COMPILERS = ("gcc", "cc")
SETUP_HINT = "install gcc and libc6-dev (scripts/setup-host.sh does)"
# Where Debian's libc6-dev keeps the static libc that `-static` links against.
_STATIC_LIBC = (
    Path("/usr/lib/x86_64-linux-gnu/libc.a"),
    Path("/usr/lib/aarch64-linux-gnu/libc.a"),
    Path("/usr/lib/libc.a"),
)


def source() -> bytes:
    return resources.files("banger.guest").joinpath("vsockd.c").read_bytes()


def compiler() -> str | None:
    for name in COMPILERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def cache_key(defines: tuple[str, ...] = ()) -> str:
    h = hashlib.sha256(source())
    h.update("\0".join(CFLAGS + defines).encode())
    return h.hexdigest()[:16]


def binary_path(cache_dir: Path, defines: tuple[str, ...] = ()) -> Path:
    suffix = "-unix" if defines else ""
    return cache_dir / "guest" / f"vsockd-{cache_key(defines)}{suffix}"


def ensure_vsockd(cache_dir: Path, defines: tuple[str, ...] = ()) -> Path:
    """The compiled helper for this source (built now if missing); OperationFailed otherwise.

    `defines` are extra `-D` flags (tests build the AF_UNIX variant with `("-DVSOCKD_UNIX",)`).
    """
    out = binary_path(cache_dir, defines)
    if out.is_file():
        return out
    cc = compiler()
    if cc is None:
        raise OperationFailed(
            "cannot build banger's guest vsock helper (the control channel of Firecracker "
            f"VMs): no C compiler (gcc) on PATH; {SETUP_HINT}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".vsockd-", dir=out.parent) as tmp:
        src = Path(tmp) / "vsockd.c"
        src.write_bytes(source())
        staged = Path(tmp) / "vsockd"
        run_sync(
            [cc, *CFLAGS, *defines, "-o", str(staged), str(src)],
            what=f"{cc} (guest vsock helper; needs {SETUP_HINT})",
            timeout=120,
        )
        os.chmod(staged, 0o755)
        os.replace(staged, out)
    return out


def doctor_status(cache_dir: Path) -> tuple[bool, str]:
    """(ok, detail) for `banger doctor`: can Firecracker VMs get their vsock helper?"""
    out = binary_path(cache_dir)
    if out.is_file():
        return True, f"built at {out}"
    cc = compiler()
    if cc is None:
        return False, "no C compiler (gcc) on PATH to build it"
    if not any(p.is_file() for p in _STATIC_LIBC):
        return False, "no static libc (libc.a) for `gcc -static`"
    return True, f"built with {cc} on the first Firecracker boot"

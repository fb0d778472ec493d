"""The built-in offline image: Debian bookworm built locally with mmdebstrap from a mirror.

The result is a plain tar that goes through the same layer applier and ext4 path as a pull. The
tar is cached in the blob cache (as a one-layer OCI image keyed by the recipe), so rebuilding the
image after `image delete` takes seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from banger.errors import OperationFailed
from banger.proc import kill_tree, spawn

BUILTIN_NAME = "debian-bookworm"
# The same image plus systemd as its init (`vm create --init systemd|auto`). No D-Bus (mmdebstrap
# installs no Recommends), so no logind: the guest payload handles the power button itself.
SYSTEMD_NAME = "debian-bookworm-systemd"
SUITE = "bookworm"
PACKAGES = (
    "openssh-server",
    "ca-certificates",
    "git",
    "make",
    "procps",
    "iproute2",
    "less",
)
EXTRA_PACKAGES = {BUILTIN_NAME: (), SYSTEMD_NAME: ("systemd-sysv",)}
BUILTINS = tuple(EXTRA_PACKAGES)
# Docs, man pages and translations are dead weight in a sandbox (~30 MB).
DPKG_EXCLUDES = (
    "path-exclude=/usr/share/doc/*",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/lintian/*",
)
# Host keys come per VM from banger; a key baked into the image would be shared by every VM.
CUSTOMIZE = (
    'rm -f "$1"/etc/ssh/ssh_host_* "$1"/var/log/*.log "$1"/var/cache/debconf/*-old;'
    ' : > "$1"/etc/machine-id'
)
BUILD_TIMEOUT = 1800
ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


@dataclass(frozen=True)
class Recipe:
    mirror: str
    name: str = BUILTIN_NAME
    suite: str = SUITE
    packages: tuple[str, ...] = PACKAGES
    excludes: tuple[str, ...] = DPKG_EXCLUDES
    customize: str = CUSTOMIZE
    extra: tuple[str, ...] = field(default=())

    @classmethod
    def builtin(cls, name: str, mirror: str) -> Recipe:
        """The recipe of the built-in image `name` (one of BUILTINS)."""
        return cls(mirror=mirror, name=name, packages=PACKAGES + EXTRA_PACKAGES[name])

    @property
    def key(self) -> str:
        doc = json.dumps(
            [self.mirror, self.suite, self.packages, self.excludes, self.customize, self.extra]
        )
        return hashlib.sha256(doc.encode()).hexdigest()[:16]

    @property
    def cache_ref(self) -> str:
        return f"banger.local/{self.name}:{self.key}"

    def argv(self, out: Path) -> list[str]:
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            "--include=" + ",".join(self.packages),
            *(f"--dpkgopt={x}" for x in self.excludes),
            f"--customize-hook={self.customize}",
            *self.extra,
            self.suite,
            str(out),
            self.mirror,
        ]
        return argv


def _validate_mirror(mirror: str) -> None:
    if not mirror.startswith(("http://", "https://", "file:/")) or any(c.isspace() for c in mirror):
        raise OperationFailed(
            f"debian_mirror {mirror!r} must be an http(s):// or file:/ URL (see docs/config.md)"
        )


async def build_tarball(
    recipe: Recipe, out: Path, on_line: Callable[[str], None], scratch: Path | None = None
) -> None:
    """Run mmdebstrap into the tar `out`, passing its `I:` lines to `on_line`."""
    _validate_mirror(recipe.mirror)
    env = dict(os.environ)
    # mmdebstrap builds its chroot under TMPDIR: tmpfs when given (file creation on the state
    # disk is slow), else beside the output.
    env["TMPDIR"] = str(scratch or out.parent)
    argv = recipe.argv(out)
    if os.geteuid() == 0:
        # As root mmdebstrap bind-mounts /dev, /proc and /sys into its chroot. In a private mount
        # namespace those mounts die with it, even when it is killed: none can leak into the
        # host's mount table (where deleting the work dir would then reach the host's /dev).
        argv = ["unshare", "--mount", "--propagation", "private", "--", *argv]
    # Guarded: mmdebstrap and the apt/dpkg it runs die with the daemon (`banger.proc`).
    proc = await spawn(argv, stdout=asyncio.subprocess.DEVNULL, env=env)
    tail: list[str] = []
    try:
        assert proc.stderr is not None

        async def pump() -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip()
                tail.append(line)
                del tail[:-8]
                if line.startswith("I: "):
                    on_line(line[3:])

        waiter = asyncio.gather(pump(), proc.wait())
        # On cancel or timeout the gather ends with an exception nobody awaits; retrieve it so
        # asyncio does not log "exception was never retrieved" into the daemon's stderr.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait_for(waiter, BUILD_TIMEOUT)
    except BaseException:
        kill_tree(proc)
        await proc.wait()
        raise
    if proc.returncode != 0:
        detail = " | ".join(x for x in tail[-4:] if x) or "(no output)"
        raise OperationFailed(
            f"building {recipe.name} with mmdebstrap from {recipe.mirror} failed "
            f"(exit {proc.returncode}): {detail}. Check that the mirror is reachable "
            "(config key debian_mirror)"
        )

"""The host's Debian kernel the tests boot and import: whichever version is installed.

Never pinned to one release (Debian's point updates replace it), and never a reason to skip:
scripts/setup-host.sh installs linux-image-amd64, so a host without it is a broken set-up.
"""

from __future__ import annotations

import re
from pathlib import Path

BOOT = Path("/boot")
MODULES = Path("/lib/modules")


def _version_key(version: str) -> list[int]:
    return [int(x) for x in re.findall(r"\d+", version)]


def installed_versions() -> list[str]:
    """Versions with both /boot/vmlinuz-<v> and /lib/modules/<v>/modules.dep, oldest first."""
    found = [
        p.name.removeprefix("vmlinuz-")
        for p in BOOT.glob("vmlinuz-*")
        if (MODULES / p.name.removeprefix("vmlinuz-") / "modules.dep").is_file()
    ]
    return sorted(found, key=_version_key)


def newest_version() -> str:
    """The newest installed version; "" when there is none (callers fail with MISSING)."""
    versions = installed_versions()
    return versions[-1] if versions else ""


MISSING = (
    "no Debian kernel on this host (/boot/vmlinuz-<v> with /lib/modules/<v>/modules.dep): "
    "run scripts/setup-host.sh (it installs linux-image-amd64)"
)

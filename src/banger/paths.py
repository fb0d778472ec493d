"""Where banger keeps its files (XDG in user mode; system mode comes with the system install).

Every path derives from the XDG variables at the moment `Paths.from_env()` is called, so tests
isolate themselves by pointing XDG_* at a temp dir.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes including the NUL; keep headroom for per-VM socket names.
MAX_SOCKET_DIR_LEN = 80


def _xdg(var: str, fallback: str) -> Path:
    value = os.environ.get(var, "")
    # The XDG spec says relative values are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / fallback


def _runtime_base() -> Path:
    value = os.environ.get("XDG_RUNTIME_DIR", "")
    if value and os.path.isabs(value) and len(value) < MAX_SOCKET_DIR_LEN:
        return Path(value) / "banger"
    return Path(f"/tmp/banger-runtime-{os.getuid()}")


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    cache_dir: Path
    runtime_dir: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(
            config_dir=_xdg("XDG_CONFIG_HOME", ".config") / "banger",
            state_dir=_xdg("XDG_STATE_HOME", ".local/state") / "banger",
            cache_dir=_xdg("XDG_CACHE_HOME", ".cache") / "banger",
            runtime_dir=_runtime_base(),
        )

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def db_file(self) -> Path:
        return self.state_dir / "banger.db"

    @property
    def daemon_log(self) -> Path:
        return self.state_dir / "bangerd.log"

    @property
    def socket(self) -> Path:
        return self.runtime_dir / "bangerd.sock"

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "bangerd.pid"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def kernels_dir(self) -> Path:
        return self.state_dir / "kernels"

    @property
    def vms_dir(self) -> Path:
        return self.state_dir / "vms"

    @property
    def ssh_dir(self) -> Path:
        return self.state_dir / "ssh"

    @property
    def staging_dir(self) -> Path:
        """Scratch space on the state filesystem, so staged work can be renamed into place."""
        return self.state_dir / "staging"

    @property
    def oci_cache_dir(self) -> Path:
        return self.cache_dir / "oci"

    def ensure(self) -> None:
        """Create the directories the daemon writes to, with private modes where it matters."""
        for d in (self.config_dir, self.state_dir, self.cache_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.images_dir, self.kernels_dir, self.vms_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ensure_private_dir(self.runtime_dir)


def ensure_private_dir(path: Path) -> None:
    """Create `path` as a 0700 directory we own; refuse one someone else owns or a symlink."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise RuntimeError(f"{path} is not a directory; remove it and retry")
    if st.st_uid != os.getuid():
        raise RuntimeError(f"{path} is owned by uid {st.st_uid}, not by you; remove it and retry")
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)

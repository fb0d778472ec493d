"""Where banger keeps its files: XDG in user mode, /etc /var /run in system mode.

Every user-mode path derives from the XDG variables at the moment `Paths.from_env()` is called, so
tests isolate themselves by pointing XDG_* at a temp dir. System mode (`banger system install`) is
detected from `<root>/etc/banger/install.toml`; `<root>` is `/` unless BANGER_SYSTEM_ROOT names a
test prefix. `Paths.detect()` picks the mode the CLI and daemon should use.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
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


# A prefix standing in for `/` in system mode (tests and `system install --prefix`).
SYSTEM_ROOT_ENV = "BANGER_SYSTEM_ROOT"
# `BANGER_MODE=user` forces user mode on a host that has a system install (development).
MODE_ENV = "BANGER_MODE"


def system_root() -> Path:
    value = os.environ.get(SYSTEM_ROOT_ENV, "")
    return Path(value) if value and os.path.isabs(value) else Path("/")


def install_file(root: Path | None = None) -> Path:
    return (root or system_root()) / "etc/banger/install.toml"


@dataclass(frozen=True)
class InstallInfo:
    """What `banger system install` recorded in install.toml."""

    owner_user: str
    owner_uid: int
    owner_gid: int
    owner_home: str
    installed_at: str
    version: str
    root: Path

    @property
    def paths(self) -> Paths:
        return Paths.system(self.root)


class InstallError(Exception):
    """install.toml exists but cannot be used; the message names the file and the fix."""


def read_install(root: Path | None = None) -> InstallInfo | None:
    """The system install recorded under `root` (default: system_root()), or None."""
    root = root or system_root()
    path = install_file(root)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise InstallError(f"{path}: cannot read: {e}; re-run `sudo banger system install`") from e
    try:
        info = InstallInfo(
            owner_user=str(data["owner_user"]),
            owner_uid=int(data["owner_uid"]),
            owner_gid=int(data["owner_gid"]),
            owner_home=str(data.get("owner_home", "")),
            installed_at=str(data.get("installed_at", "")),
            version=str(data.get("version", "")),
            root=root,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise InstallError(
            f"{path}: missing or invalid key {e}; re-run `sudo banger system install`"
        ) from None
    if info.owner_uid <= 0:
        raise InstallError(f"{path}: owner_uid must be an unprivileged uid, not {info.owner_uid}")
    return info


@dataclass(frozen=True)
class Paths:
    config_dir: Path
    state_dir: Path
    cache_dir: Path
    runtime_dir: Path
    # Set in system mode: the root the system layout lives under ("/" on a real install).
    system_root: Path | None = None

    @classmethod
    def system(cls, root: Path | None = None) -> Paths:
        """The system-mode layout: /etc/banger, /var/lib/banger, /var/cache/banger, /run/banger."""
        root = root or system_root()
        return cls(
            config_dir=root / "etc/banger",
            state_dir=root / "var/lib/banger",
            cache_dir=root / "var/cache/banger",
            runtime_dir=root / "run/banger",
            system_root=root,
        )

    @classmethod
    def detect(cls) -> Paths:
        """System paths when banger is installed system-wide (and not forced to user mode)."""
        if os.environ.get(MODE_ENV, "") != "user" and install_file().exists():
            return cls.system()
        return cls.from_env()

    @property
    def is_system(self) -> bool:
        return self.system_root is not None

    @property
    def helper_runtime_dir(self) -> Path:
        """The root helper's socket directory (root-owned, 0711); system mode only."""
        return (self.system_root or Path("/")) / "run/banger-root"

    @property
    def helper_socket(self) -> Path:
        return self.helper_runtime_dir / "bangerd-root.sock"

    @property
    def install_file(self) -> Path:
        return install_file(self.system_root)

    @property
    def ssh_config_file(self) -> Path:
        """The daemon-written ssh_config. In system mode /etc/banger is root's and the daemon
        runs as the owner, so it lives in the (owner's) state dir instead."""
        return (self.state_dir if self.is_system else self.config_dir) / "ssh_config"

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
    def bases_dir(self) -> Path:
        """Saved machines several VMs' disks are backed by: fork bases (vms/fork.py)."""
        return self.state_dir / "bases"

    @property
    def templates_dir(self) -> Path:
        """Warm-create templates, one per image + kernel + init + sizing combination."""
        return self.state_dir / "templates"

    @property
    def staging_dir(self) -> Path:
        """Scratch space on the state filesystem, so staged work can be renamed into place."""
        return self.state_dir / "staging"

    @property
    def oci_cache_dir(self) -> Path:
        return self.cache_dir / "oci"

    @property
    def lock_file(self) -> Path:
        """Held (flock) by the one daemon serving this state dir, for its whole life."""
        return self.state_dir / "bangerd.lock"

    @property
    def boot_log(self) -> Path:
        """The detached daemon's stderr, written by the CLI that started it."""
        return self.state_dir / "bangerd.stderr.log"

    def ensure_state_dir(self) -> None:
        """The state dir alone (the lock lives in it): 0700, ours."""
        ensure_private_dir(self.state_dir, allow_own_symlink=True)

    def ensure(self) -> None:
        """Create the directories the daemon writes to: 0700 and ours. An older install made
        them 0755: their modes are fixed here (what is below is only reachable through them)."""
        if not self.is_system:
            # /etc/banger is root's in system mode; in user mode the config dir is ours.
            self.config_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        ensure_private_dir(self.state_dir, allow_own_symlink=True)
        ensure_private_dir(self.cache_dir, allow_own_symlink=True)
        for d in (
            self.images_dir, self.kernels_dir, self.vms_dir, self.staging_dir, self.ssh_dir,
            self.bases_dir, self.templates_dir,
        ):  # fmt: skip
            ensure_private_dir(d)
        ensure_private_dir(self.runtime_dir)
        for f in (self.db_file, self.daemon_log, self.boot_log):
            _make_private_file(f)


class UnsafePathError(RuntimeError):
    """A banger directory or file is not what banger created: someone else's, a link, ..."""


def ensure_private_dir(path: Path, *, allow_own_symlink: bool = False) -> None:
    """Create `path` as a 0700 directory we own (fixing the mode of an existing one); refuse one
    someone else owns or a symlink. With `allow_own_symlink`, a symlink we own to a directory we
    own is accepted (a state dir moved to a bigger disk)."""
    uid = os.geteuid()
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except FileNotFoundError:
        # Missing ancestors (~/.local/state) get the default modes; only banger's own dir is 0700.
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        if not allow_own_symlink:
            raise UnsafePathError(f"{path} is a symlink, not a directory; remove it and retry")
        if st.st_uid != uid:
            raise UnsafePathError(
                f"{path} is a symlink owned by uid {st.st_uid}, not by you; remove it and retry"
            )
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UnsafePathError(f"{path} is a dangling symlink; remove it and retry") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"{path} is not a directory; remove it and retry")
    if st.st_uid != uid:
        raise UnsafePathError(
            f"{path} is owned by uid {st.st_uid}, not by you (uid {uid}); remove it and retry"
        )
    if stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _make_private_file(path: Path) -> None:
    """0600 for a file banger made that an older install left group/other-readable."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    # Never through a second hard link: that chmod would change a file outside banger's dirs.
    if (
        stat.S_ISREG(st.st_mode)
        and st.st_uid == os.geteuid()
        and st.st_nlink == 1
        and st.st_mode & 0o077
    ):
        os.chmod(path, stat.S_IMODE(st.st_mode) & 0o700)

"""Every file and directory banger leaves under its state, cache and runtime dirs is the owner's
alone (umask 077, dirs 0700), walked after a realistic workload: daemon start, an image pull, a
VM created stopped, then booted. Another uid cannot read the VM's seed.ext4, which holds the
guest's SSH host private key.

Documented exceptions (docs/security.md):
- `kernels/<name>/modules/`: the distribution's module tree, hard-linked from the host's
  /usr/lib/modules (or extracted with the catalog tarball's modes). A chmod through those links
  would change the host's own files; the kernel's 0700 directory is what keeps others out.
- sockets QEMU creates (QMP, control channel) are 0750: nobody else can connect (connecting needs
  write permission), and their directory is 0700.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon
from tests.vms.conftest import make_vm_env

NOBODY = 65534


@pytest.fixture
def workload_env(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_vm_env(debian_image.cache_home)
    try:
        yield be
    finally:
        be.banger("vm", "delete", "fm", timeout=120)
        _stop_daemon(be)
        shutil.rmtree(be.root, ignore_errors=True)


def _exempt(path: Path, kernels_dir: Path) -> bool:
    rel = path.relative_to(kernels_dir) if path.is_relative_to(kernels_dir) else None
    return rel is not None and len(rel.parts) >= 2 and rel.parts[1] == "modules"


def _open_modes(be: BangerEnv) -> list[str]:
    """Entries with any group/other bit, outside the documented exceptions."""
    paths = be.paths
    bad = []
    for top in (paths.state_dir, paths.cache_dir, paths.runtime_dir):
        for dirpath, dirnames, filenames in os.walk(top):
            for name in [".", *dirnames, *filenames]:
                p = Path(dirpath) / name if name != "." else Path(dirpath)
                st = os.lstat(p)
                mode = stat.S_IMODE(st.st_mode)
                if stat.S_ISLNK(st.st_mode) or _exempt(p, paths.kernels_dir):
                    continue
                allowed = 0o050 if stat.S_ISSOCK(st.st_mode) else 0
                if mode & 0o077 & ~allowed:
                    bad.append(f"{oct(mode)} {p}")
    return sorted(set(bad))


def _walked(be: BangerEnv) -> int:
    return sum(
        len(d) + len(f)
        for top in (be.paths.state_dir, be.paths.cache_dir, be.paths.runtime_dir)
        for _, d, f in os.walk(top)
    )


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.slow
def test_every_file_is_private_after_a_real_workload(workload_env: BangerEnv) -> None:
    be = workload_env
    be.banger("daemon", "start", check=True, timeout=30)
    be.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
    be.banger("vm", "create", "--name", "fm", "--no-start", check=True, timeout=600)
    assert _open_modes(be) == []

    be.banger("vm", "start", "fm", check=True, timeout=600)
    # The VMM outlives a daemon restart: it must not hold the state dir's lock (O_CLOEXEC).
    vmm_pid = json.loads(be.banger("vm", "show", "fm", "--json", check=True).stdout)["pid"]
    vmm_fds = {os.readlink(fd) for fd in Path(f"/proc/{vmm_pid}/fd").iterdir()}
    assert str(be.paths.lock_file) not in vmm_fds
    assert any(fd.endswith("seed.ext4") for fd in vmm_fds)  # (the listing is the VMM's)
    assert _walked(be) > 30  # the walk saw the daemon's, the image's and the VM's files
    assert _open_modes(be) == []
    for d in (be.paths.state_dir, be.paths.cache_dir, be.paths.runtime_dir):
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
    ssh_config = be.paths.ssh_config_file
    assert stat.S_IMODE(os.stat(ssh_config).st_mode) == 0o600

    (seed,) = be.paths.vms_dir.glob("*/seed.ext4")
    # The seed really holds the host private key (read as the owner: the control case) ...
    key = subprocess.run(
        ["debugfs", "-R", "cat /ssh/ssh_host_ed25519_key", str(seed)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert key.startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    # ... and another uid can neither open it nor have debugfs read it.
    cat = _as_nobody("cat", str(seed))
    assert cat.returncode == 1
    assert f"cat: {seed}: Permission denied" in cat.stderr
    dbg = _as_nobody("debugfs", "-R", "cat /ssh/ssh_host_ed25519_key", str(seed))
    assert "PRIVATE KEY" not in dbg.stdout
    assert "Permission denied" in dbg.stderr
    # Not even the state dir's listing, nor the daemon's socket.
    ls = _as_nobody("ls", str(be.paths.state_dir))
    assert ls.returncode == 2 and "Permission denied" in ls.stderr
    connect = _as_nobody(
        "/usr/bin/python3",
        "-c",
        "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        str(be.paths.socket),
    )
    assert connect.returncode == 1
    assert "PermissionError" in connect.stderr

    be.banger("vm", "stop", "fm", check=True, timeout=300)
    assert _open_modes(be) == []

"""`banger system install|status|uninstall` against a temporary root prefix (no systemd here),
and the two processes of system mode running for real: bangerd-root as root, bangerd as the owner.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.paths import read_install
from tests.privhelper.conftest import (
    VENV_BIN,
    User,
    as_user,
    netns,
    owner_user,
    start_helper,
    stop_helper,
    stranger_user,
)

__all__ = ["netns", "owner_user", "stranger_user"]  # fixtures shared with tests/privhelper

START_TIMEOUT = 30.0


def banger(
    *args: str, root: Path | None = None, user: User | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, NO_COLOR="1")
    env.pop("BANGER_MODE", None)
    if root is not None:
        env["BANGER_SYSTEM_ROOT"] = str(root)
    prefix = as_user(user) if user else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "banger.cli.main", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def prefix() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="bgi-", dir="/tmp"))
    os.chmod(root, 0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def _mode(p: Path) -> tuple[int, int, int]:
    st = os.lstat(p)
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def test_install_lays_down_layout_and_verified_units(prefix: Path, owner_user: User) -> None:
    r = banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    assert f"banger installed for {owner_user.name} (uid {owner_user.uid})" in r.stdout
    assert "not started" in r.stdout

    info = read_install(prefix)
    assert info is not None
    assert (info.owner_user, info.owner_uid, info.owner_gid) == (
        owner_user.name,
        owner_user.uid,
        owner_user.gid,
    )
    u, g = owner_user.uid, owner_user.gid
    assert _mode(prefix / "etc/banger") == (0, 0, 0o755)
    assert _mode(prefix / "etc/banger/install.toml") == (0, 0, 0o644)
    assert _mode(prefix / "var/lib/banger") == (u, g, 0o700)
    assert _mode(prefix / "var/cache/banger") == (u, g, 0o700)
    assert _mode(prefix / "run/banger") == (u, g, 0o700)
    assert _mode(prefix / "run/banger-root") == (0, 0, 0o711)

    units = prefix / "etc/systemd/system"
    daemon_unit = (units / "bangerd.service").read_text()
    helper_unit = (units / "bangerd-root.service").read_text()
    assert f"User={owner_user.name}" in daemon_unit
    assert "User=" not in helper_unit  # the helper is the only root process
    for text in (daemon_unit, helper_unit):
        # Restarting either process must never take running VMs down.
        assert "KillMode=process" in text and "SendSIGKILL=no" in text
        assert f"Environment=BANGER_SYSTEM_ROOT={prefix}" in text
        exec_start = next(x for x in text.splitlines() if x.startswith("ExecStart="))
        exe = exec_start.removeprefix("ExecStart=").split()[0]
        assert os.access(exe, os.X_OK), exe
    assert "ExecStart=" in daemon_unit and "--system" in daemon_unit

    v = subprocess.run(
        [
            "systemd-analyze",
            "verify",
            str(units / "bangerd-root.service"),
            str(units / "bangerd.service"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # systemd-analyze exits 0 on ignored lines too: any warning counts as a failure here.
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr

    # Installing again for the same owner is idempotent.
    again = banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix))
    assert again.returncode == 0, again.stderr


def test_systemd_analyze_catches_a_broken_unit(prefix: Path) -> None:
    """The check above can fail: a misspelt directive is reported on stderr."""
    bad = prefix / "bangerd-root.service"
    bad.write_text("[Service]\nExecStart=/bin/true\nKillMode=procss\n")
    v = subprocess.run(
        ["systemd-analyze", "verify", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert "kill mode" in v.stderr.lower()


def test_install_refusals(prefix: Path, owner_user: User, stranger_user: User) -> None:
    r = banger("system", "install", "--owner", "no-such-user-bg", "--prefix", str(prefix))
    assert r.returncode != 0 and "no user named 'no-such-user-bg'" in r.stderr
    r = banger("system", "install", "--owner", "root", "--prefix", str(prefix))
    assert r.returncode != 0 and "must be an unprivileged user" in r.stderr
    r = banger(
        "system", "install", "--owner", owner_user.name, "--prefix", str(prefix), user=owner_user
    )
    assert r.returncode != 0 and "run it as root" in r.stderr
    assert not (prefix / "etc/banger/install.toml").exists()
    r = banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    r = banger("system", "install", "--owner", stranger_user.name, "--prefix", str(prefix))
    assert r.returncode != 0 and f"already installed for {owner_user.name}" in r.stderr
    r = banger("system", "install", "--owner", owner_user.name, "--prefix", "relative/dir")
    assert r.returncode != 0 and "not an absolute path" in r.stderr


def test_uninstall_keeps_state_unless_purged(prefix: Path, owner_user: User) -> None:
    assert (
        banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix)).returncode
        == 0
    )
    (prefix / "var/lib/banger/keep.txt").write_text("state")
    r = banger("system", "uninstall", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    assert not (prefix / "etc/banger/install.toml").exists()
    assert not (prefix / "etc/systemd/system/bangerd.service").exists()
    assert not (prefix / "etc/systemd/system/bangerd-root.service").exists()
    assert (prefix / "var/lib/banger/keep.txt").read_text() == "state"
    st = banger("system", "status", "--prefix", str(prefix))
    assert st.returncode == 3 and "not installed" in st.stdout
    assert (
        banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix)).returncode
        == 0
    )
    r = banger("system", "uninstall", "--purge", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    for d in ("var/lib/banger", "var/cache/banger", "run/banger", "run/banger-root", "etc/banger"):
        assert not (prefix / d).exists(), d
    r = banger("system", "uninstall", "--prefix", str(prefix))
    assert r.returncode != 0 and "not installed" in r.stderr


def _wait_socket(path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while not path.exists():
        if proc.poll() is not None:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"exited {proc.returncode}: {err}")
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_system_mode_runs_as_owner_and_refuses_everyone_else(
    prefix: Path, netns: str, owner_user: User, stranger_user: User
) -> None:
    r = banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    helper = start_helper(prefix, netns, owner_user)
    env = dict(os.environ, BANGER_SYSTEM_ROOT=str(prefix))
    # The owner daemon refuses to run as root in system mode.
    as_root = subprocess.run(
        [str(VENV_BIN / "bangerd"), "--system"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert as_root.returncode == 2 and f"runs as {owner_user.name}" in as_root.stderr
    # bangerd as the owner, in the test's namespace (its DNS port stays off the host).
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", netns, *as_user(owner_user), str(VENV_BIN / "bangerd"), "--system"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_socket(prefix / "run/banger/bangerd.sock", daemon)
        st = banger("system", "status", "--json", "--prefix", str(prefix))
        assert st.returncode == 0, st.stderr
        status = json.loads(st.stdout)
        assert status["owner"] == owner_user.name
        assert status["units"]["bangerd-root"]["answers"] is True
        assert status["units"]["bangerd"]["answers"] is True
        # `ip netns exec` execs in place, so the pids are those of the processes started here.
        assert status["units"]["bangerd-root"]["pid"] == helper.proc.pid
        assert status["units"]["bangerd"]["pid"] == daemon.pid
        # The daemon-written ssh_config lives in the owner's state dir (/etc/banger is root's).
        ssh_config = prefix / "var/lib/banger/ssh_config"
        assert os.stat(ssh_config).st_uid == owner_user.uid
        assert "Host *.vm" in ssh_config.read_text()
        sock = os.lstat(prefix / "run/banger/bangerd.sock")
        assert (sock.st_uid, stat.S_IMODE(sock.st_mode)) == (owner_user.uid, 0o600)
        # The owner's CLI talks to the system daemon.
        ok = banger("image", "list", "--json", root=prefix, user=owner_user)
        assert ok.returncode == 0, ok.stderr
        assert isinstance(json.loads(ok.stdout), list)
        st = banger("daemon", "status", "--json", root=prefix, user=owner_user)
        assert st.returncode == 0, st.stderr
        assert json.loads(st.stdout)["pid"] == daemon.pid
        doc = banger("doctor", "--json", root=prefix, user=owner_user)
        checks = {c["name"]: c for c in json.loads(doc.stdout)}
        assert checks["root helper"]["status"] == "PASS", checks
        assert checks["daemon"]["status"] == "PASS"
        assert checks["system"]["status"] == "PASS"
        no_start = banger("daemon", "start", root=prefix, user=owner_user)
        assert no_start.returncode != 0 and "systemd runs bangerd" in no_start.stderr
        # Anyone else is told clearly who may use it, root included.
        for who in (stranger_user, None):
            no = banger("image", "list", root=prefix, user=who)
            assert no.returncode == 1
            assert f"installed system-wide for {owner_user.name}" in no.stderr
            assert f"sudo -u {owner_user.name} banger" in no.stderr
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(timeout=10)
        stop_helper(helper)
    # With the service down the CLI says what to do and does not start a daemon of its own.
    down = banger("image", "list", root=prefix, user=owner_user)
    assert down.returncode == 1 and "sudo banger system restart" in down.stderr
    assert not (prefix / "run/banger/bangerd.sock").exists()
    doc = banger("doctor", "--json", root=prefix, user=owner_user)
    assert doc.returncode == 1
    checks = {c["name"]: c for c in json.loads(doc.stdout)}
    assert checks["root helper"]["status"] == "FAIL"
    assert "sudo banger system restart" in checks["daemon"]["hint"]


def test_install_refuses_binaries_the_owner_cannot_run(prefix: Path, owner_user: User) -> None:
    """bangerd runs as the owner: an executable hidden in a root-only directory is caught."""
    from banger.privhelper.install import InstallFailed, _owner_can_run, owner_info

    hidden = prefix / "private"
    hidden.mkdir(mode=0o700)
    exe = hidden / "bangerd"
    exe.write_text("#!/bin/sh\necho ok\n")
    exe.chmod(0o755)
    info = owner_info(owner_user.name, prefix)
    with pytest.raises(InstallFailed, match=f"{owner_user.name} cannot run {exe}"):
        _owner_can_run(info, str(exe))
    hidden.chmod(0o755)
    _owner_can_run(info, str(exe))


def _kvm_members() -> list[str]:
    import grp

    return list(grp.getgrnam("kvm").gr_mem)


def test_install_adds_the_owner_to_kvm_and_uninstall_undoes_it(
    prefix: Path, owner_user: User
) -> None:
    """Firecracker without the jailer runs as the owner: /dev/kvm (root:kvm 0660) must open."""
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm on this host: install leaves the groups alone")
    # Earlier installs in this session (their prefixes just deleted) may have added it.
    subprocess.run(["gpasswd", "-d", owner_user.name, "kvm"], check=False, capture_output=True)
    assert owner_user.name not in _kvm_members()
    r = banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    assert owner_user.name in _kvm_members()
    assert (prefix / "etc/banger/kvm-group-added").read_text().strip() == owner_user.name
    # The owner, with its groups from the group database (as systemd's User= gives them),
    # can open /dev/kvm read-write.
    opened = subprocess.run(
        [
            "setpriv",
            f"--reuid={owner_user.uid}",
            f"--regid={owner_user.gid}",
            "--init-groups",
            sys.executable,
            "-c",
            "import os; os.close(os.open('/dev/kvm', os.O_RDWR))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert opened.returncode == 0, opened.stderr
    r = banger("system", "uninstall", "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    assert owner_user.name not in _kvm_members()
    assert not (prefix / "etc/banger/kvm-group-added").exists()


def test_uninstall_keeps_a_kvm_membership_it_did_not_add(prefix: Path, owner_user: User) -> None:
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm on this host")
    subprocess.run(["gpasswd", "-a", owner_user.name, "kvm"], check=True, capture_output=True)
    try:
        assert (
            banger(
                "system", "install", "--owner", owner_user.name, "--prefix", str(prefix)
            ).returncode
            == 0
        )
        assert not (prefix / "etc/banger/kvm-group-added").exists()
        assert banger("system", "uninstall", "--prefix", str(prefix)).returncode == 0
        assert owner_user.name in _kvm_members()
    finally:
        subprocess.run(["gpasswd", "-d", owner_user.name, "kvm"], check=False, capture_output=True)


def test_jailer_capabilities_only_when_the_config_enables_it(
    prefix: Path, owner_user: User
) -> None:
    unit = prefix / "etc/systemd/system/bangerd-root.service"
    assert (
        banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix)).returncode
        == 0
    )
    assert "CAP_SYS_ADMIN" not in unit.read_text()
    (prefix / "etc/banger/config.toml").write_text("jailer_enabled = true\n")
    r = banger("system", "install", "--owner", owner_user.name, "--prefix", str(prefix))
    assert r.returncode == 0, r.stderr
    bounding = next(
        x for x in unit.read_text().splitlines() if x.startswith("CapabilityBoundingSet=")
    )
    for cap in ("CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_SETUID", "CAP_SETGID"):
        assert cap in bounding
    v = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert v.returncode == 0 and v.stderr.strip() == "", v.stderr
    assert banger("system", "uninstall", "--prefix", str(prefix)).returncode == 0

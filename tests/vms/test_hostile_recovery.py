"""Hostile leftovers at daemon start: the reconcile removes what is banger's and touches nothing
else. Each case plants something in (or next to) a real state dir, restarts the real daemon, and
asserts the exact outcome, that the daemon answers `ping`, and that a sentinel outside the state
dir kept its content and mode. No guest is booted."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, _stop_daemon, make_env


@dataclass
class Planted:
    be: BangerEnv
    outside: Path  # a host dir outside the state dir
    procs: list[subprocess.Popen[bytes]]
    cleanup: list[Callable[[], None]]


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            data = p.read_bytes() if p.is_file() and not p.is_symlink() else b""
            out[str(p.relative_to(root))] = (st.st_mode, data)
    out["."] = (os.lstat(root).st_mode, b"")
    return out


def _fake_vmm(argv0: str, *args: str) -> subprocess.Popen[bytes]:
    """A process whose command line looks like a VMM's (it only sleeps): `sh` run under another
    argv[0]; the trailing `:` keeps sh from exec'ing sleep over it."""
    return subprocess.Popen(
        [argv0, "-c", "sleep 600; :", *args],
        executable="/bin/sh",
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _qemu_args(vms_dir: Path, vm_id: str) -> list[str]:
    return [
        "-name",
        f"banger-fake,process=banger-{vm_id}",
        "-drive",
        f"id=d0,file={vms_dir / vm_id / 'root.qcow2'},format=qcow2,if=none",
    ]


def _alive(p: subprocess.Popen[bytes]) -> bool:
    return p.poll() is None


@pytest.fixture
def planted() -> Iterator[Planted]:
    be = make_env("bg-hrec-")
    be.banger("daemon", "start", check=True, timeout=30)
    be.banger("daemon", "stop", check=True, timeout=30)
    outside = be.root / "outside"
    outside.mkdir(mode=0o750)
    (outside / "keep.txt").write_text("host data\n")
    (outside / "sub").mkdir(mode=0o700)
    (outside / "sub" / "deep.txt").write_text("deep\n")
    pl = Planted(be, outside, [], [])
    try:
        yield pl
    finally:
        for fn in pl.cleanup:
            with contextlib.suppress(Exception):
                fn()
        for p in pl.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        _stop_daemon(be)
        shutil.rmtree(be.root, ignore_errors=True)


def _vm_id() -> str:
    return secrets.token_hex(6)


# Each case: plant(pl) -> check(pl) after the restart.
def _staging_symlink_to_host(pl: Planted) -> Callable[[], None]:
    link = pl.be.paths.staging_dir / f"vm-{_vm_id()}"
    link.symlink_to(pl.outside, target_is_directory=True)

    def check() -> None:
        assert not os.path.lexists(link)

    return check


def _staging_dir_with_symlink_inside(pl: Planted) -> Callable[[], None]:
    d = pl.be.paths.staging_dir / f"image-{secrets.token_hex(8)}"
    (d / "tree").mkdir(parents=True)
    (d / "tree" / "etc").symlink_to(pl.outside)
    (d / "tree" / "passwd").symlink_to(pl.outside / "keep.txt")

    def check() -> None:
        assert not os.path.lexists(d)

    return check


def _staging_regular_file_and_odd_names(pl: Planted) -> Callable[[], None]:
    names = ["kernel-x-1234abcd", "not-banger's", " ", "vm-" + "a" * 200]
    for n in names:
        (pl.be.paths.staging_dir / n).write_bytes(b"x" * 1024)

    def check() -> None:
        assert list(pl.be.paths.staging_dir.iterdir()) == []

    return check


def _vm_dir_name_not_an_id(pl: Planted) -> Callable[[], None]:
    vms = pl.be.paths.vms_dir
    for n in ("not-an-id", "ABCDEF012345", "0123456789abc"):
        (vms / n).mkdir()
        (vms / n / "root.qcow2").write_bytes(b"junk")

    def check() -> None:
        assert list(vms.iterdir()) == []

    return check


def _vm_dir_symlink_to_host(pl: Planted) -> Callable[[], None]:
    link = pl.be.paths.vms_dir / _vm_id()
    link.symlink_to(pl.outside, target_is_directory=True)

    def check() -> None:
        assert not os.path.lexists(link)

    return check


def _runtime_dir_of_no_vm(pl: Planted) -> Callable[[], None]:
    rt = pl.be.paths.runtime_dir / "vms" / _vm_id()
    rt.mkdir(parents=True)
    (rt / "qmp.sock").write_bytes(b"")
    link = pl.be.paths.runtime_dir / "vms" / _vm_id()
    link.symlink_to(pl.outside)

    def check() -> None:
        assert list((pl.be.paths.runtime_dir / "vms").iterdir()) == []

    return check


def _qemu_of_another_state_dir(pl: Planted) -> Callable[[], None]:
    other = make_env("bg-hrec-other-")
    pl.cleanup.append(lambda: shutil.rmtree(other.root, ignore_errors=True))
    vm_id = _vm_id()
    p = _fake_vmm("qemu-system-x86_64", *_qemu_args(other.paths.vms_dir, vm_id))
    pl.procs.append(p)
    # Same id, our state dir's path only as a prefix of theirs: still not ours.
    q = _fake_vmm("qemu-system-x86_64", *_qemu_args(Path(str(pl.be.paths.vms_dir) + "-x"), vm_id))
    pl.procs.append(q)

    def check() -> None:
        assert _alive(p) and _alive(q)

    return check


def _unrelated_process_naming_a_vm(pl: Planted) -> Callable[[], None]:
    vm_id = _vm_id()
    (pl.be.paths.vms_dir / vm_id).mkdir()
    # Not a VMM (argv[0] is not qemu/firecracker) even though its argv names our VM dir.
    p = _fake_vmm("python3", *_qemu_args(pl.be.paths.vms_dir, vm_id))
    pl.procs.append(p)

    def check() -> None:
        assert _alive(p)
        assert not (pl.be.paths.vms_dir / vm_id).exists()  # the dir had no record

    return check


def _orphan_qemu_of_this_state_dir(pl: Planted) -> Callable[[], None]:
    vm_id = _vm_id()
    (pl.be.paths.vms_dir / vm_id).mkdir()
    p = _fake_vmm("qemu-system-x86_64", *_qemu_args(pl.be.paths.vms_dir, vm_id))
    pl.procs.append(p)

    def check() -> None:
        p.wait(timeout=30)  # stopped by the reconcile: no record owns it
        assert p.returncode == -signal.SIGKILL
        assert not (pl.be.paths.vms_dir / vm_id).exists()

    return check


def _firecracker_of_another_runtime_dir(pl: Planted) -> Callable[[], None]:
    vm_id = _vm_id()
    other_sock = pl.be.root / "elsewhere" / "vms" / vm_id / "firecracker.socket"
    p = _fake_vmm("firecracker", "--api-sock", str(other_sock), "--id", vm_id)
    ours = pl.be.paths.runtime_dir / "vms" / vm_id / "firecracker.socket"
    q = _fake_vmm("firecracker", "--api-sock", str(ours), "--id", vm_id)
    pl.procs += [p, q]

    def check() -> None:
        assert _alive(p)  # another daemon's
        q.wait(timeout=30)  # ours, and no record owns it
        assert q.returncode == -signal.SIGKILL

    return check


def _mount_below_staging(pl: Planted) -> Callable[[], None]:
    d = pl.be.paths.staging_dir / "image-leaked-mount"
    mnt = d / "rootfs" / "dev"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "banger-test", str(mnt)], check=True)
    pl.cleanup.append(lambda: subprocess.run(["umount", "-l", str(mnt)], check=False))
    (mnt / "host-device-node").write_text("must survive\n")

    def check() -> None:
        # Never descend into a mount: the entry is left (and logged), its mount untouched.
        assert (mnt / "host-device-node").read_text() == "must survive\n"

    return check


CASES = {
    "staging-entry-symlink-to-host-dir": _staging_symlink_to_host,
    "staging-dir-with-symlinks-to-host": _staging_dir_with_symlink_inside,
    "staging-regular-files-odd-names": _staging_regular_file_and_odd_names,
    "vm-dir-name-not-a-valid-id": _vm_dir_name_not_an_id,
    "vm-dir-symlink-to-host-dir": _vm_dir_symlink_to_host,
    "runtime-dir-of-no-vm-and-symlink": _runtime_dir_of_no_vm,
    "qemu-like-process-of-other-state-dir": _qemu_of_another_state_dir,
    "unrelated-process-naming-our-vm-dir": _unrelated_process_naming_a_vm,
    "orphan-qemu-of-this-state-dir-stopped": _orphan_qemu_of_this_state_dir,
    "firecracker-of-other-runtime-dir": _firecracker_of_another_runtime_dir,
    "mount-below-a-staging-entry": _mount_below_staging,
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_hostile_leftover_at_start(planted: Planted, case: str) -> None:
    pl = planted
    before = _snapshot(pl.outside)
    check = CASES[case](pl)
    pl.be.banger("daemon", "start", check=True, timeout=60)
    check()
    with pl.be.client() as c:
        assert c.call("ping")["version"]
    assert _snapshot(pl.outside) == before


def test_hostile_cases_are_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    for case in CASES:
        assert f"| {case} |" in doc, case

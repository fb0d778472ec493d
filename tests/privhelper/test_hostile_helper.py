"""Hostile calls to the real `bangerd-root` (issue 12, finding 7): sockets, namespaces, cgroups.

Every case runs against a fresh helper subprocess (tests/privhelper/conftest.py) configured for
the fake jailer (test_jailer.py), and asserts the exact error code and message, that the helper
still answers `priv.ping` afterwards, and that nothing outside banger's directories changed: the
"outside" directory holds a stand-in for `/run/docker.sock` (a root-owned socket the test made)
and a secret file, whose owner, group, mode and content are compared before and after.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from banger.privhelper.server import require_root_cgroup
from banger.rpc.errors import BadRequest
from tests.netns import add_netns
from tests.privhelper.conftest import Helper, User, as_user
from tests.privhelper.test_jailer import (  # noqa: F401  (fixtures)
    VM_ID,
    fake_bins,
    jail_helper,
    valid_params,
)


@dataclass
class World:
    helper: Helper
    owner: User
    stranger: User
    outside: Path
    fake_bins: Path
    keep: list[socket.socket] = field(default_factory=list)
    cleanup: list[Callable[[], None]] = field(default_factory=list)

    @property
    def runtime(self) -> Path:
        return self.helper.runtime_dir

    def bind(self, path: Path, uid: int = 0, gid: int = 0, mode: int = 0o660) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        self.keep.append(s)
        os.chown(path, uid, gid)
        os.chmod(path, mode)
        return path

    def jail(self, **change: Any) -> dict[str, Any]:
        return {**valid_params(self.helper.root, self.fake_bins, self.owner), **change}

    def host_netns(self, name: str) -> str:
        add_netns(name)
        self.cleanup.append(lambda: _netns_del(name))
        return f"/var/run/netns/{name}"


def _netns_del(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], check=False, timeout=30, capture_output=True)


def snapshot(d: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for p in sorted(d.iterdir()):
        st = os.lstat(p)
        data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
        out[p.name] = (st.st_uid, st.st_gid, st.st_mode, data)
    return out


@pytest.fixture
def world(
    jail_helper: Helper,  # noqa: F811
    owner_user: User,
    stranger_user: User,
    fake_bins: Path,  # noqa: F811
) -> Iterator[World]:
    outside = Path(tempfile.mkdtemp(prefix="bgout-", dir="/tmp"))
    os.chmod(outside, 0o755)
    w = World(jail_helper, owner_user, stranger_user, outside, fake_bins)
    w.bind(outside / "docker.sock", 0, stranger_user.gid, 0o660)  # the stand-in for docker's
    (outside / "secret").write_text("root's")
    os.chmod(outside / "secret", 0o600)
    yield w
    for s in w.keep:
        s.close()
    for undo in w.cleanup:
        undo()
    shutil.rmtree(outside, ignore_errors=True)


# --- the cases --------------------------------------------------------------------------------
# Each builds its situation and returns (method, params, exact expected message).
Build = Callable[[World], tuple[str, dict[str, Any], str]]


def hardlink_foreign_root_socket(w: World) -> tuple[str, dict[str, Any], str]:
    # /run/docker.sock linked into banger's runtime dir (fs.protected_hardlinks=0).
    p = w.runtime / "vms/api.sock"
    p.parent.mkdir()
    os.link(w.outside / "docker.sock", p)
    return "priv.ensure_socket_access", {"path": str(p)}, _nlink_msg(p, 2)


def hardlink_stranger_socket(w: World) -> tuple[str, dict[str, Any], str]:
    theirs = w.bind(w.outside / "stranger.sock", w.stranger.uid, w.stranger.gid, 0o600)
    p = w.runtime / "fc.sock"
    os.link(theirs, p)
    return "priv.ensure_socket_access", {"path": str(p)}, _nlink_msg(p, 2)


def second_name_inside(w: World) -> tuple[str, dict[str, Any], str]:
    p = w.bind(w.runtime / "a.sock")
    os.link(p, w.runtime / "b.sock")
    return "priv.ensure_socket_access", {"path": str(p)}, _nlink_msg(p, 2)


def stranger_owned_socket(w: World) -> tuple[str, dict[str, Any], str]:
    p = w.bind(w.runtime / "s.sock", w.stranger.uid, w.stranger.gid, 0o600)
    return (
        "priv.ensure_socket_access",
        {"path": str(p)},
        f"argument 'path': {p} is owned by uid {w.stranger.uid}, not by root or the banger owner "
        f"(uid {w.owner.uid}); refusing to hand it over",
    )


def symlink_to_foreign_socket(w: World) -> tuple[str, dict[str, Any], str]:
    p = w.runtime / "api.sock"
    p.symlink_to(w.outside / "docker.sock")
    return (
        "priv.ensure_socket_access",
        {"path": str(p)},
        f"argument 'path': {p} is a symlink; banger never follows them",
    )


def symlinked_directory(w: World) -> tuple[str, dict[str, Any], str]:
    (w.runtime / "vms").symlink_to(w.outside)
    p = w.runtime / "vms/docker.sock"
    return (
        "priv.ensure_socket_access",
        {"path": str(p)},
        f"argument 'path': {p}: component 'vms' is a symlink or not a directory (Not a "
        "directory); banger never follows symlinks here",
    )


def dotdot_escape(w: World) -> tuple[str, dict[str, Any], str]:
    p = f"{w.runtime}/../../../..{w.outside}/docker.sock"
    return (
        "priv.ensure_socket_access",
        {"path": p},
        f"argument 'path': {p!r} has an empty, '.' or '..' component; give the plain absolute path",
    )


def outside_banger(w: World) -> tuple[str, dict[str, Any], str]:
    p = w.outside / "docker.sock"
    roots = ", ".join(os.path.realpath(r) for r in (w.runtime, w.helper.state_dir))
    return (
        "priv.ensure_socket_access",
        {"path": str(p)},
        f"argument 'path': {p} is outside banger's directories ({roots})",
    )


def fifo_not_socket(w: World) -> tuple[str, dict[str, Any], str]:
    p = w.runtime / "fifo.sock"
    os.mkfifo(p)
    return (
        "priv.ensure_socket_access",
        {"path": str(p)},
        f"argument 'path': {p} is not a Unix socket",
    )


def jail_foreign_netns(w: World) -> tuple[str, dict[str, Any], str]:
    ns = f"/var/run/netns/{w.helper.netns}"  # exists: the helper's own test namespace
    return (
        "priv.jailer_launch",
        w.jail(netns=ns),
        f"argument 'netns': {ns} is not a network namespace banger created "
        "(/var/run/netns/banger-<name>, made through the helper's priv.ensure_netns)",
    )


def jail_banger_named_netns_not_made_by_banger(w: World) -> tuple[str, dict[str, Any], str]:
    ns = w.host_netns(f"banger-t{secrets.token_hex(3)}")
    return (
        "priv.jailer_launch",
        w.jail(netns=ns),
        f"argument 'netns': {ns} was not created by banger (no record of it, or it was replaced "
        "since); the jailer joins only namespaces banger made",
    )


def jail_missing_netns(w: World) -> tuple[str, dict[str, Any], str]:
    ns = f"/var/run/netns/banger-gone{secrets.token_hex(3)}"
    return (
        "priv.jailer_launch",
        w.jail(netns=ns),
        f"argument 'netns': {ns} does not exist; banger creates it (priv.ensure_netns)",
    )


def jail_foreign_parent_cgroup(w: World) -> tuple[str, dict[str, Any], str]:
    return (
        "priv.jailer_launch",
        w.jail(parent_cgroup="system"),
        "argument 'parent_cgroup': 'system' is not below banger's own cgroup 'banger'; set "
        "jailer_parent_cgroup to 'banger' or 'banger/<name>', or leave it unset",
    )


def jail_lookalike_parent_cgroup(w: World) -> tuple[str, dict[str, Any], str]:
    return (
        "priv.jailer_launch",
        w.jail(parent_cgroup="banger-evil/x"),
        "argument 'parent_cgroup': 'banger-evil/x' is not below banger's own cgroup 'banger'; "
        "set jailer_parent_cgroup to 'banger' or 'banger/<name>', or leave it unset",
    )


def netns_foreign_name(w: World) -> tuple[str, dict[str, Any], str]:
    return (
        "priv.ensure_netns",
        {"name": "vpn"},
        "argument 'name': 'vpn' is not a network namespace name banger creates (banger-<name>: "
        "lowercase letters, digits and '-', at most 30 characters)",
    )


def netns_adopt_foreign(w: World) -> tuple[str, dict[str, Any], str]:
    name = f"banger-t{secrets.token_hex(3)}"
    w.host_netns(name)
    return (
        "priv.ensure_netns",
        {"name": name},
        f"network namespace {name} exists but was not created by banger; delete it "
        f"(`ip netns del {name}`) or choose another name",
    )


def netns_plain_file(w: World) -> tuple[str, dict[str, Any], str]:
    name = f"banger-f{secrets.token_hex(3)}"
    path = Path("/run/netns") / name
    path.parent.mkdir(exist_ok=True)
    path.write_text("")
    w.cleanup.append(lambda: path.unlink(missing_ok=True))
    return (
        "priv.ensure_netns",
        {"name": name},
        f"/var/run/netns/{name} is not a network namespace (not an nsfs mount)",
    )


def _nlink_msg(p: Path, n: int) -> str:
    return (
        f"argument 'path': {p} has {n} hard links; a socket banger made has one (another name "
        "for a socket made elsewhere is refused)"
    )


CASES: list[tuple[str, Build]] = [
    ("socket-hardlink-to-root-socket", hardlink_foreign_root_socket),
    ("socket-hardlink-to-stranger-socket", hardlink_stranger_socket),
    ("socket-second-name-inside", second_name_inside),
    ("socket-owned-by-stranger", stranger_owned_socket),
    ("socket-symlink-last-component", symlink_to_foreign_socket),
    ("socket-symlinked-directory", symlinked_directory),
    ("socket-dotdot-escape", dotdot_escape),
    ("socket-outside-banger", outside_banger),
    ("socket-fifo", fifo_not_socket),
    ("jail-foreign-netns", jail_foreign_netns),
    ("jail-banger-named-netns-not-made-by-banger", jail_banger_named_netns_not_made_by_banger),
    ("jail-missing-netns", jail_missing_netns),
    ("jail-foreign-parent-cgroup", jail_foreign_parent_cgroup),
    ("jail-lookalike-parent-cgroup", jail_lookalike_parent_cgroup),
    ("netns-foreign-name", netns_foreign_name),
    ("netns-adopt-foreign", netns_adopt_foreign),
    ("netns-plain-file", netns_plain_file),
]


@pytest.mark.parametrize("build", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_helper_call_is_refused(world: World, build: Build) -> None:
    method, params, message = build(world)
    before = snapshot(world.outside)
    resp = world.helper.call_as(world.owner, method, params)
    assert resp.get("ok") is False, resp
    assert (resp["error"]["code"], resp["error"]["message"]) == ("bad_request", message)
    # Still answering, nothing outside its directories changed, no jail was built.
    assert world.helper.call_as(world.owner, "priv.ping")["ok"] is True
    assert snapshot(world.outside) == before
    assert not (world.helper.root / "jail/firecracker" / VM_ID).exists()
    # No socket below the runtime dir was handed to the owner either.
    for p in world.runtime.rglob("*"):
        if p.is_socket() and not p.is_symlink():
            assert os.lstat(p).st_uid != world.owner.uid, p


# --- what is still allowed --------------------------------------------------------------------


def test_own_socket_is_still_handed_over(world: World) -> None:
    p = world.bind(world.runtime / "vms/fc.sock")
    resp = world.helper.call_as(world.owner, "priv.ensure_socket_access", {"path": str(p)})
    assert resp["ok"] is True, resp
    st = os.lstat(p)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        world.owner.uid,
        world.owner.gid,
        0o600,
    )


def test_jailer_joins_a_namespace_banger_made(world: World) -> None:
    """priv.ensure_netns makes and records `banger-<name>`; the jailer may then join it."""
    name = f"banger-j{secrets.token_hex(3)}"
    # Made inside the helper's mount namespace; the name left on the host goes with the test.
    world.cleanup.append(lambda: _netns_del(name))
    made = world.helper.call_as(world.owner, "priv.ensure_netns", {"name": name})
    assert made == {"ok": True, "result": {"path": f"/var/run/netns/{name}", "created": True}}
    again = world.helper.call_as(world.owner, "priv.ensure_netns", {"name": name})
    assert again["result"]["created"] is False
    record = world.helper.root / "run/banger-root/netns" / name
    st = os.lstat(record)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o600)  # the helper's umask 077
    ns_ino = int(record.read_text().split(":")[1])
    resp = world.helper.call_as(
        world.owner, "priv.jailer_launch", world.jail(netns=f"/var/run/netns/{name}")
    )
    assert resp["ok"] is True, resp
    pid = resp["result"]["pid"]
    try:
        api = Path(resp["result"]["chroot"]) / "run/fc.sock"
        _wait(lambda: api.exists())
        # Firecracker (the double) runs in that namespace, not the helper's.
        assert os.stat(f"/proc/{pid}/ns/net").st_ino == ns_ino
    finally:
        subprocess.run(["kill", "-KILL", str(pid)], check=False, timeout=10)


def test_delegated_parent_cgroup_is_refused(tmp_path: Path, owner_user: User) -> None:
    """A `banger` cgroup someone else controls (a delegated subtree) is not banger's."""
    mount = tmp_path / "cgroup"
    (mount / "banger/vms").mkdir(parents=True)
    os.chmod(mount / "banger", 0o755)
    require_root_cgroup("banger/vms", [str(mount)])  # root's: fine
    require_root_cgroup("banger/new/x", [str(mount)])  # missing: the jailer makes it, root's
    os.chown(mount / "banger/vms", owner_user.uid, owner_user.gid)
    with pytest.raises(BadRequest) as e:
        require_root_cgroup("banger/vms", [str(mount)])
    assert e.value.message == (
        f"argument 'parent_cgroup': {mount}/banger/vms is not a cgroup only root controls "
        f"(owner uid {owner_user.uid}, mode 755); it is not banger's"
    )
    os.chmod(mount / "banger", 0o777)
    with pytest.raises(BadRequest, match="banger is not a cgroup only root controls"):
        require_root_cgroup("banger", [str(mount)])


def _wait(cond: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_helper_runs_with_umask_077(world: World) -> None:
    status = Path(f"/proc/{world.helper.proc.pid}/status").read_text()
    assert "Umask:\t0077" in status.splitlines()


def test_owner_daemon_asks_for_its_namespace_before_the_jail(world: World) -> None:
    """FirecrackerDriver (system mode, jailer_netns set) has the helper make the namespace."""
    from tests.privhelper.test_jailer import _DAEMON_SIDE, vm_files, write_config

    root = world.helper.root
    name = f"banger-d{secrets.token_hex(3)}"
    world.cleanup.append(lambda: _netns_del(name))
    write_config(root, world.fake_bins)
    with (root / "etc/banger/config.toml").open("a") as f:
        f.write(f'jailer_netns = "/var/run/netns/{name}"\n')
    vm = vm_files(root, world.owner)["console"].parent
    env = {"PATH": os.environ.get("PATH", ""), "BANGER_SYSTEM_ROOT": str(root), "HOME": "/"}
    p = subprocess.run(
        [*as_user(world.owner), sys.executable, "-c", _DAEMON_SIDE, str(vm), "op-00000000beef"],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        cwd="/",
        check=False,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout)["stop"] == "graceful"
    done = [
        (x["method"], x["msg"])
        for x in world.helper.log_lines()
        if x.get("op_id") == "op-00000000beef" and "method" in x
    ]
    assert done == [
        ("priv.ensure_netns", "helper rpc completed"),
        ("priv.jailer_launch", "helper rpc completed"),
    ]
    assert (root / "run/banger-root/netns" / name).is_file()

"""bangerd-root as a real root subprocess: who may call it, what it refuses, what it really does."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.privhelper.conftest import VENV_BIN, Helper, User, as_user, write_install
from tests.waiting import wait_until

BRIDGE = "br-banger-t"
TAP = "tap-bg-0000abcd"


def _error(resp: dict[str, Any]) -> tuple[str, str]:
    assert resp.get("ok") is False, resp
    return resp["error"]["code"], resp["error"]["message"]


# --- who may call ---------------------------------------------------------------------------


def test_socket_is_owner_only_and_dir_is_root_0711(helper: Helper, owner_user: User) -> None:
    d = os.lstat(helper.socket.parent)
    assert (d.st_uid, stat.S_IMODE(d.st_mode)) == (0, 0o711)
    s = os.lstat(helper.socket)
    assert stat.S_ISSOCK(s.st_mode)
    assert (s.st_uid, stat.S_IMODE(s.st_mode)) == (owner_user.uid, 0o600)


def test_owner_and_root_may_call(helper: Helper, owner_user: User) -> None:
    as_root = helper.call("priv.ping")
    assert as_root["ok"] is True and as_root["result"]["owner"] == owner_user.name
    as_owner = helper.call_as(owner_user, "priv.ping")
    assert as_owner["ok"] is True


def test_stranger_cannot_connect(helper: Helper, stranger_user: User) -> None:
    resp = helper.call_as(stranger_user, "priv.ping")
    assert resp == {"connect_error": "PermissionError", "errno": 13}


def test_stranger_past_the_file_mode_is_refused_by_peer_credentials(
    helper: Helper, stranger_user: User
) -> None:
    # CAP_DAC_OVERRIDE gets the stranger through the 0600 socket: SO_PEERCRED must still refuse.
    resp = helper.call_as(stranger_user, "priv.ensure_bridge", {}, "dac_override")
    code, msg = _error(resp)
    assert code == "unauthorized"
    assert f"uid {stranger_user.uid} may not use the root helper" in msg
    failed = [x for x in helper.log_lines() if x.get("caller_uid") == stranger_user.uid]
    assert failed and failed[-1]["msg"] == "helper rpc failed"


# --- the hostile table ------------------------------------------------------------------------

HOSTILE: list[tuple[str, str, dict[str, Any], str, str]] = [
    # (id, method, params, expected code, expected message fragment)
    ("unknown-method", "priv.exec", {"argv": ["sh"]}, "unknown_method", "not a root helper"),
    ("daemon-method", "vm.list", {}, "unknown_method", "accepts only"),
    ("extra-arg", "priv.delete_tap", {"name": TAP, "force": True}, "bad_request", "unknown arg"),
    ("missing-arg", "priv.delete_tap", {}, "bad_request", "missing argument"),
    (
        "bridge-eth0",
        "priv.ensure_bridge",
        {"name": "eth0", "address": "172.30.0.1", "prefix": 24},
        "bad_request",
        "not a bridge name",
    ),
    ("bridge-docker0", "priv.delete_bridge", {"name": "docker0"}, "bad_request", "not a bridge"),
    (
        "bridge-too-long",
        "priv.delete_bridge",
        {"name": "br-banger-abcdef"},
        "bad_request",
        "not a bridge",
    ),
    (
        "bridge-injection",
        "priv.delete_bridge",
        {"name": "br-banger;reboot"},
        "bad_request",
        "not a bridge",
    ),
    (
        "bridge-public-net",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "8.8.8.1", "prefix": 24},
        "bad_request",
        "private range",
    ),
    (
        "bridge-loopback",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "127.0.0.2", "prefix": 8},
        "bad_request",
        "private range",
    ),
    (
        "bridge-prefix-too-wide",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "10.0.0.1", "prefix": 4},
        "bad_request",
        "out of range",
    ),
    (
        "bridge-prefix-too-narrow",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "10.0.0.1", "prefix": 31},
        "bad_request",
        "out of range",
    ),
    (
        "bridge-network-address",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "172.30.0.0", "prefix": 24},
        "bad_request",
        "network or broad",
    ),
    (
        "bridge-not-ip",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "172.30.0.1 dev eth0", "prefix": 24},
        "bad_request",
        "IPv4",
    ),
    (
        "bridge-prefix-string",
        "priv.ensure_bridge",
        {"name": BRIDGE, "address": "172.30.0.1", "prefix": "24"},
        "bad_request",
        "integer",
    ),
    ("tap-foreign", "priv.delete_tap", {"name": "eth0"}, "bad_request", "not a TAP"),
    ("tap-lo", "priv.delete_tap", {"name": "lo"}, "bad_request", "not a TAP"),
    ("tap-dotdot", "priv.delete_tap", {"name": "tap-bg-../../x"}, "bad_request", "not a TAP"),
    (
        "tap-for-root",
        "priv.ensure_tap",
        {"name": TAP, "bridge": BRIDGE, "owner_uid": 0},
        "bad_request",
        "only be owned by the install owner",
    ),
    (
        "tap-foreign-bridge",
        "priv.ensure_tap",
        {"name": TAP, "bridge": "virbr0", "owner_uid": 1},
        "bad_request",
        "not a bridge",
    ),
    ("nat-not-list", "priv.sync_nat", {"bridge": BRIDGE, "rules": "all"}, "bad_request", "list"),
    (
        "nat-public-ip",
        "priv.sync_nat",
        {"bridge": BRIDGE, "rules": [{"ip": "8.8.8.8", "tap": TAP}]},
        "bad_request",
        "private range",
    ),
    (
        "nat-foreign-tap",
        "priv.sync_nat",
        {"bridge": BRIDGE, "rules": [{"ip": "172.30.0.5", "tap": "eth0"}]},
        "bad_request",
        "TAP",
    ),
    (
        "nat-extra-key",
        "priv.sync_nat",
        {"bridge": BRIDGE, "rules": [{"ip": "172.30.0.5", "tap": TAP, "oif": "eth0"}]},
        "bad_request",
        "'ip' and 'tap'",
    ),
    (
        "nat-foreign-bridge",
        "priv.sync_nat",
        {"bridge": "eth0", "rules": []},
        "bad_request",
        "not a bridge",
    ),
    ("forward-string", "priv.set_ip_forward", {"enabled": "yes"}, "bad_request", "true or false"),
    (
        "signal-pid1",
        "priv.signal_process",
        {"pid": 1, "signal": "KILL"},
        "bad_request",
        "process id",
    ),
    (
        "signal-pid-string",
        "priv.signal_process",
        {"pid": "1234", "signal": "TERM"},
        "bad_request",
        "process id",
    ),
    (
        "signal-stop",
        "priv.signal_process",
        {"pid": 4242, "signal": "STOP"},
        "bad_request",
        "not one of",
    ),
    (
        "signal-missing-pid",
        "priv.signal_process",
        {"pid": 5_000_000, "signal": "TERM"},
        "bad_request",
        "process id",
    ),
    (
        "path-shadow",
        "priv.ensure_socket_access",
        {"path": "/etc/shadow"},
        "bad_request",
        "outside banger's directories",
    ),
    (
        "path-relative",
        "priv.ensure_socket_access",
        {"path": "run/banger/x.sock"},
        "bad_request",
        "not an absolute path",
    ),
    ("path-nul", "priv.ensure_socket_access", {"path": "/tmp/x\u0000y"}, "bad_request", "NUL"),
]


@pytest.mark.parametrize(
    ("method", "params", "code", "fragment"),
    [h[1:] for h in HOSTILE],
    ids=[h[0] for h in HOSTILE],
)
def test_hostile_calls_are_refused(
    helper: Helper, method: str, params: dict[str, Any], code: str, fragment: str
) -> None:
    resp = helper.call(method, params)
    got_code, msg = _error(resp)
    assert got_code == code, msg
    assert fragment in msg
    # Nothing was made in the namespace by a refused call.
    links = json.loads(helper.ns("ip", "-j", "link", "show").stdout)
    assert [x["ifname"] for x in links] == ["lo"]


def test_dotdot_path_is_refused_even_when_it_lands_inside(helper: Helper) -> None:
    inside = helper.runtime_dir / "a.sock"
    _bind(inside)
    sneaky = f"{helper.runtime_dir}/../banger/a.sock"
    code, msg = _error(helper.call("priv.ensure_socket_access", {"path": sneaky}))
    assert code == "bad_request" and "'..'" in msg
    escaping = f"{helper.runtime_dir}/../../../etc/shadow"
    code, msg = _error(helper.call("priv.ensure_socket_access", {"path": escaping}))
    assert code == "bad_request" and "'..'" in msg


def _bind(path: Path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    return s


def test_symlinked_socket_and_symlinked_directory_are_refused(
    helper: Helper, tmp_path: Path
) -> None:
    real = helper.runtime_dir / "real.sock"
    keep = _bind(real)
    link = helper.runtime_dir / "link.sock"
    link.symlink_to(real)
    code, msg = _error(helper.call("priv.ensure_socket_access", {"path": str(link)}))
    assert code == "bad_request" and "symlink" in msg
    # A directory component that is a symlink to somewhere else entirely.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside_sock = _bind(elsewhere / "x.sock")
    (helper.runtime_dir / "vms").symlink_to(elsewhere)
    code, msg = _error(
        helper.call("priv.ensure_socket_access", {"path": str(helper.runtime_dir / "vms/x.sock")})
    )
    assert code == "bad_request" and "symlink" in msg
    assert os.stat(elsewhere / "x.sock").st_uid == 0  # untouched
    # A regular file is not a socket.
    (helper.runtime_dir / "plain").write_text("x")
    code, msg = _error(
        helper.call("priv.ensure_socket_access", {"path": str(helper.runtime_dir / "plain")})
    )
    assert code == "bad_request" and "not a Unix socket" in msg
    keep.close()
    outside_sock.close()


def test_overlapping_subnet_is_refused(helper: Helper) -> None:
    # An interface already using 10.9.0.0/24 (standing in for the host's LAN).
    helper.ns("ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1")
    helper.ns("ip", "addr", "add", "10.9.0.1/24", "dev", "lan0")
    resp = helper.call("priv.ensure_bridge", {"name": BRIDGE, "address": "10.9.0.5", "prefix": 16})
    code, msg = _error(resp)
    assert code == "bad_request" and "overlaps 10.9.0.0/24 on lan0" in msg
    assert helper.ns("ip", "link", "show", BRIDGE, check=False).returncode != 0


def test_nat_only_for_guests_of_the_bridge_subnet(helper: Helper) -> None:
    rules = [{"ip": "172.30.0.5", "tap": TAP}]
    code, msg = _error(helper.call("priv.sync_nat", {"bridge": BRIDGE, "rules": rules}))
    assert code == "bad_request" and "ensure the bridge first" in msg
    ok = helper.call("priv.ensure_bridge", {"name": BRIDGE, "address": "172.30.0.1", "prefix": 24})
    assert ok["ok"], ok
    outside = [{"ip": "192.168.7.5", "tap": TAP}]
    code, msg = _error(helper.call("priv.sync_nat", {"bridge": BRIDGE, "rules": outside}))
    assert code == "bad_request" and "not a host of br-banger-t's subnet 172.30.0.0/24" in msg


# --- processes --------------------------------------------------------------------------------


def _wait_gone(p: subprocess.Popen[bytes], timeout: float = 20) -> int:
    return p.wait(timeout=timeout)


def test_unrelated_processes_are_not_signalled(helper: Helper, owner_user: User) -> None:
    sleeper = subprocess.Popen(["sleep", "60"])
    # A real qemu, but with no socket below banger's runtime dir: not a VM banger launched.
    elsewhere = helper.root / "elsewhere"
    elsewhere.mkdir()
    os.chown(elsewhere, owner_user.uid, owner_user.gid)
    stray_sock = elsewhere / "qmp.sock"
    stray_qemu = subprocess.Popen(
        [
            *as_user(owner_user),
            "qemu-system-x86_64",
            "-M",
            "none",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            f"unix:{stray_sock},server=on,wait=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(stray_sock.exists, 20, "the stray QEMU's QMP socket appearing")
        assert stray_qemu.poll() is None
        code, msg = _error(
            helper.call("priv.signal_process", {"pid": sleeper.pid, "signal": "KILL"})
        )
        assert code == "bad_request" and "not a VMM banger launches" in msg
        code, msg = _error(
            helper.call("priv.signal_process", {"pid": stray_qemu.pid, "signal": "KILL"})
        )
        assert code == "bad_request" and "no socket under banger's runtime directory" in msg
        code, msg = _error(
            helper.call("priv.signal_process", {"pid": os.getpid(), "signal": "KILL"})
        )
        assert code == "bad_request"
        assert sleeper.poll() is None and stray_qemu.poll() is None
    finally:
        sleeper.kill()
        stray_qemu.kill()
        sleeper.wait(timeout=10)
        stray_qemu.wait(timeout=10)


def test_signals_a_vmm_banger_launched(helper: Helper, owner_user: User) -> None:
    qmp = helper.runtime_dir / "vm1-qmp.sock"
    qemu = subprocess.Popen(
        [
            *as_user(owner_user),
            "qemu-system-x86_64",
            "-M",
            "none",
            "-S",
            "-nodefaults",
            "-display",
            "none",
            "-qmp",
            f"unix:{qmp},server=on,wait=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(qmp.exists, 20, "QEMU's QMP socket appearing")
        resp = helper.call_as(
            owner_user, "priv.signal_process", {"pid": qemu.pid, "signal": "TERM"}
        )
        assert resp["ok"] is True, resp
        assert _wait_gone(qemu) != 0 or qemu.returncode == 0
    finally:
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait(timeout=10)
    code, _ = _error(helper.call("priv.signal_process", {"pid": qemu.pid, "signal": "TERM"}))
    assert code == "not_found"


# --- what the helper really does, in the namespace --------------------------------------------


def test_socket_access_hands_a_root_socket_to_the_owner(helper: Helper, owner_user: User) -> None:
    (helper.runtime_dir / "vms").mkdir()
    path = helper.runtime_dir / "vms/api.sock"
    keep = _bind(path)
    os.chmod(path, 0o666)
    assert os.stat(path).st_uid == 0
    resp = helper.call_as(owner_user, "priv.ensure_socket_access", {"path": str(path)})
    assert resp["ok"] is True, resp
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (
        owner_user.uid,
        owner_user.gid,
        0o600,
    )
    keep.close()


_ADAPTER = r"""
import asyncio, json, sys
from pathlib import Path
from banger.daemon.logs import current_op_id
from banger.network.nat import NatRule
from banger.network.privops import PrivOps
from banger.privhelper.client import HelperPrivOps

async def main() -> None:
    ops = HelperPrivOps(Path(sys.argv[1]))
    assert isinstance(ops, PrivOps)
    uid = int(sys.argv[2])
    current_op_id.set("op-00000000abcd")
    await ops.ensure_bridge("br-banger-t", "172.30.0.1", 24)
    await ops.ensure_tap("tap-bg-0000abcd", "br-banger-t", uid)
    await ops.set_ip_forward(True)
    await ops.sync_nat("br-banger-t", [NatRule(ip="172.30.0.7", tap="tap-bg-0000abcd")])
    out = {
        "taps": await ops.list_taps(),
        "nat": [r.ip for r in await ops.list_nat()],
        "forward": await ops.get_ip_forward(),
    }
    try:
        await ops.ensure_tap("tap-bg-0000abcd", "br-banger-t", 0)
    except Exception as e:
        out["refused"] = f"{type(e).__name__}: {e}"
    await ops.sync_nat("br-banger-t", [])
    await ops.delete_tap("tap-bg-0000abcd")
    out["taps_after"] = await ops.list_taps()
    print(json.dumps(out))

asyncio.run(main())
"""


def test_owner_daemon_adapter_does_privileged_networking(helper: Helper, owner_user: User) -> None:
    """An unprivileged process drives bridge/TAP/NAT/sysctl through the PrivOps adapter."""
    p = subprocess.run(
        [
            *as_user(owner_user),
            sys.executable,
            "-c",
            _ADAPTER,
            str(helper.socket),
            str(owner_user.uid),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["taps"] == [TAP]
    assert out["nat"] == ["172.30.0.7"]
    assert out["forward"] is True
    assert "BadRequest" in out["refused"] and "install owner" in out["refused"]
    assert out["taps_after"] == []
    # The kernel state in the namespace is what the owner asked for.
    br = json.loads(helper.ns("ip", "-j", "addr", "show", "dev", BRIDGE).stdout)[0]
    assert [(a["local"], a["prefixlen"]) for a in br["addr_info"] if a["family"] == "inet"] == [
        ("172.30.0.1", 24)
    ]
    assert helper.ns("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"
    # ...and the host's own network was not touched.
    host = subprocess.run(["ip", "link", "show", BRIDGE], capture_output=True, timeout=10)
    assert host.returncode != 0
    # Every call is logged as JSON with the caller's op id and uid.
    done = [x for x in helper.log_lines() if x.get("op_id") == "op-00000000abcd"]
    methods = [x["method"] for x in done]
    assert "priv.ensure_bridge" in methods and "priv.sync_nat" in methods
    assert all(x["caller_uid"] == owner_user.uid for x in done)
    refused = [x for x in done if x["msg"] == "helper rpc failed"]
    assert refused and refused[0]["method"] == "priv.ensure_tap"


def test_tap_is_owned_by_the_owner(helper: Helper, owner_user: User) -> None:
    assert helper.call(
        "priv.ensure_bridge", {"name": BRIDGE, "address": "172.30.0.1", "prefix": 24}
    )["ok"]
    resp = helper.call(
        "priv.ensure_tap", {"name": TAP, "bridge": BRIDGE, "owner_uid": owner_user.uid}
    )
    assert resp["ok"], resp
    detail = helper.ns("ip", "-d", "link", "show", TAP).stdout
    assert f"user {owner_user.uid}" in detail or f"user {owner_user.name}" in detail
    assert f"master {BRIDGE}" in detail


def test_malformed_requests(helper: Helper) -> None:
    from tests.privhelper.conftest import raw_call

    code, msg = _error(raw_call(helper.socket, b"{not json\n"))
    assert code == "bad_request" and "not valid JSON" in msg
    code, msg = _error(raw_call(helper.socket, b'{"version": 99, "method": "priv.ping"}\n'))
    assert code == "bad_version"
    code, msg = _error(raw_call(helper.socket, b'["priv.ping"]\n'))
    assert code == "bad_request"


# --- startup refusals ---------------------------------------------------------------------------


def test_helper_refuses_to_run_without_root_or_install(
    system_root: Path, owner_user: User, tmp_path: Path
) -> None:
    env = dict(os.environ, BANGER_SYSTEM_ROOT=str(system_root))
    p = subprocess.run(
        [*as_user(owner_user), str(VENV_BIN / "bangerd-root")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 2 and "must run as root" in p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    env = dict(os.environ, BANGER_SYSTEM_ROOT=str(empty))
    p = subprocess.run(
        [str(VENV_BIN / "bangerd-root")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 2 and "install.toml is missing" in p.stderr
    # An install.toml that names root as the owner is refused too.
    write_install(empty, User("root", 0, 0))
    p = subprocess.run(
        [str(VENV_BIN / "bangerd-root")],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert p.returncode == 2 and "unprivileged uid" in p.stderr


def test_adapter_reports_an_unreachable_helper(tmp_path: Path) -> None:
    from banger.privhelper.client import HelperPrivOps
    from banger.rpc.errors import OperationFailed

    ops = HelperPrivOps(tmp_path / "nothing.sock", connect_wait=0.3)
    with pytest.raises(OperationFailed, match="sudo banger system restart"):
        asyncio.run(ops.list_taps())


def test_helper_tells_systemd_it_is_ready_once_the_socket_answers(
    system_root: Path, netns: str, owner_user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Type=notify: READY=1 arrives after the socket accepts calls (bangerd is ordered after)."""
    from tests.privhelper.conftest import start_helper, stop_helper

    notify_path = system_root / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    notify.settimeout(15)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))
    h = start_helper(system_root, netns, owner_user)
    try:
        assert notify.recv(64) == b"READY=1"
        assert h.call("priv.ping")["ok"] is True
    finally:
        stop_helper(h)
        notify.close()


def test_adapter_waits_out_a_helper_restart(
    system_root: Path, netns: str, owner_user: User
) -> None:
    """A call made while the helper restarts (socket briefly absent) succeeds once it is back."""
    import threading

    from banger.privhelper.client import HelperPrivOps
    from tests.privhelper.conftest import start_helper, stop_helper

    started: list[Helper] = []
    t = threading.Timer(1.0, lambda: started.append(start_helper(system_root, netns, owner_user)))
    t.start()
    try:
        sock = system_root / "run/banger-root/bangerd-root.sock"
        result = asyncio.run(HelperPrivOps(sock, connect_wait=15).ping())
        assert result["owner"] == owner_user.name
    finally:
        t.join(timeout=30)
        for h in started:
            stop_helper(h)


def test_subnet_overlapping_a_route_is_refused(helper: Helper) -> None:
    # A range the host reaches through another interface (a VPN, say): no address of its own.
    helper.ns("ip", "link", "add", "vpn0", "type", "veth", "peer", "name", "vpn1")
    helper.ns("ip", "link", "set", "vpn0", "up")
    helper.ns("ip", "link", "set", "vpn1", "up")
    helper.ns("ip", "route", "add", "10.77.0.0/16", "dev", "vpn0")
    resp = helper.call("priv.ensure_bridge", {"name": BRIDGE, "address": "10.77.3.1", "prefix": 24})
    code, msg = _error(resp)
    assert code == "bad_request" and "overlaps 10.77.0.0/16 on vpn0" in msg
    ok = helper.call("priv.ensure_bridge", {"name": BRIDGE, "address": "10.78.3.1", "prefix": 24})
    assert ok["ok"], ok


def test_ip_forward_is_only_turned_off_when_banger_turned_it_on(helper: Helper) -> None:
    def forward() -> str:
        return helper.ns("sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()

    assert forward() == "0"
    assert helper.call("priv.set_ip_forward", {"enabled": True})["result"]["changed"] is True
    assert forward() == "1"
    assert helper.call("priv.set_ip_forward", {"enabled": False})["result"]["changed"] is True
    assert forward() == "0"
    # The administrator turns it on: banger's "off" leaves it alone.
    helper.ns("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
    resp = helper.call("priv.set_ip_forward", {"enabled": False})
    assert resp["ok"] and resp["result"] == {"ip_forward": True, "changed": False}
    assert forward() == "1"

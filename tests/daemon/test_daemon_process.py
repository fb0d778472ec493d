"""A real bangerd process: start, ping, errors with op ids in the log, graceful shutdown, fuzz."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from banger.rpc.errors import CODES
from tests.conftest import BangerEnv, make_env
from tests.waiting import wait_until


def _send(sock_path: Path, payload: bytes, timeout: float = 10) -> list[dict[str, object]]:
    """Send raw bytes, read answers until the daemon has answered every line or closed."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.connect(str(sock_path))
    expected = max(1, payload.count(b"\n"))
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        s.sendall(payload)
    answers: list[dict[str, object]] = []
    f = s.makefile("rb")
    try:
        while len(answers) < expected:
            line = f.readline()
            if not line:
                break
            answers.append(json.loads(line))
    except (ConnectionResetError, TimeoutError):
        pass
    finally:
        f.close()
        s.close()
    return answers


def test_daemon_starts_in_background_and_answers_ping(daemon: BangerEnv) -> None:
    paths = daemon.paths
    assert stat.S_IMODE(os.stat(paths.runtime_dir).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(paths.socket).st_mode) == 0o600
    with daemon.client() as c:
        info = c.call("ping")
    assert info["pid"] == int(paths.pid_file.read_text())
    assert info["version"]
    assert info["uptime_seconds"] >= 0
    out = daemon.banger("daemon", "status", check=True).stdout
    assert f"pid     {info['pid']}" in out
    assert str(paths.daemon_log) in out


def test_failed_request_op_id_appears_in_the_daemon_log(daemon: BangerEnv) -> None:
    answers = _send(daemon.paths.socket, b'{"version":1,"method":"ping","params":{"bogus":1}}\n')
    err = answers[0]["error"]
    assert isinstance(err, dict)
    assert err["code"] == "bad_request"
    assert "bogus" in err["message"]
    op_id = err["op_id"]
    wait_until(
        lambda: op_id in daemon.paths.daemon_log.read_text(), 10, "the op id in the daemon log"
    )
    entries = [json.loads(line) for line in daemon.paths.daemon_log.read_text().splitlines()]
    mine = [e for e in entries if e.get("op_id") == op_id]
    assert mine, "the failing request's op id is on its daemon log lines"
    assert all(e["level"] in {"debug", "info", "warning", "error"} for e in entries)


def test_cli_prints_errors_with_op_id(daemon: BangerEnv) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from banger.cli.connect import client; client().call('nope')"],
        env=daemon.env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "unknown method 'nope'" in proc.stderr


def test_shutdown_is_graceful_and_exits_zero(banger_env: BangerEnv) -> None:
    banger_env.paths.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    proc = subprocess.Popen(
        [sys.executable, "-m", "banger.daemon.main"], env=banger_env.env, stderr=subprocess.PIPE
    )
    try:
        wait_until(banger_env.paths.socket.exists, 15, "the daemon's socket appearing")
        out = banger_env.banger("daemon", "stop", check=True)
        assert "stopped" in out.stdout
        assert proc.wait(timeout=15) == 0
        assert not banger_env.paths.socket.exists()
        assert not banger_env.paths.pid_file.exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_also_stops_cleanly(banger_env: BangerEnv) -> None:
    banger_env.paths.runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    proc = subprocess.Popen([sys.executable, "-m", "banger.daemon.main"], env=banger_env.env)
    wait_until(banger_env.paths.socket.exists, 15, "the daemon's socket appearing")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not banger_env.paths.socket.exists()


def test_bad_config_names_the_key(banger_env: BangerEnv) -> None:
    banger_env.write_config('vmm = "vmware"\nfrobnicate = 1\n')
    proc = banger_env.banger("daemon", "start")
    assert proc.returncode != 0
    assert "frobnicate" in proc.stderr
    assert "vmm" in proc.stderr


# --- fuzz: garbage never takes the daemon down --------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_daemon() -> Iterator[Path]:
    # make_env: user mode and user networking — a root daemon left to "auto" would build the
    # host's bridge and bind the fixed DNS port (42069) on the host.
    be = make_env("bgf-")
    proc = subprocess.Popen([sys.executable, "-m", "banger.daemon.main"], env=be.env)
    sock = be.paths.socket
    wait_until(sock.exists, 15, "the fuzz daemon's socket appearing")
    yield sock
    proc.terminate()
    proc.wait(timeout=15)
    shutil.rmtree(be.root, ignore_errors=True)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
requestish = st.fixed_dictionaries(
    {},
    optional={
        "version": st.integers(-2, 3) | st.text(max_size=3) | st.none(),
        "method": st.sampled_from(["ping", "vm.list", "", "x" * 300]) | json_values,
        "params": json_values,
        "op_id": st.text(max_size=20),
        "progress": json_values,
    },
)
garbage_lines = st.one_of(
    st.binary(max_size=512).map(lambda b: b.replace(b"\n", b" ") + b"\n"),
    json_values.map(lambda v: json.dumps(v).encode() + b"\n"),
    requestish.map(lambda v: json.dumps(v).encode() + b"\n"),
    st.integers(1000, 100_000).map(lambda n: b"[" * n + b"]" * n + b"\n"),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(line=garbage_lines)
def test_fuzz_wire_protocol(fuzz_daemon: Path, line: bytes) -> None:
    answers = _send(fuzz_daemon, line)
    for a in answers:
        assert set(a) <= {"ok", "result", "error", "progress", "op_id"}
        if a.get("ok") is False:
            err = a["error"]
            assert isinstance(err, dict)
            assert err["code"] in CODES
            assert str(err["op_id"]).startswith("op-")
    # whatever that was, the daemon keeps serving others
    assert _send(fuzz_daemon, b'{"version":1,"method":"ping"}\n')[0]["ok"] is True


def test_huge_line_gets_bad_request_and_daemon_survives(fuzz_daemon: Path) -> None:
    answers = _send(
        fuzz_daemon, b'{"version":1,"method":"ping","params":{"x":"' + b"a" * (6 << 20) + b'"}}\n'
    )
    assert answers and answers[0]["error"]["code"] == "bad_request"  # type: ignore[index]
    assert _send(fuzz_daemon, b'{"version":1,"method":"ping"}\n')[0]["ok"] is True

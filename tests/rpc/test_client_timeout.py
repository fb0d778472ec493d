"""The CLI's client against daemons that do not answer: a clear error, not a hang."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from banger.rpc import client as client_mod
from banger.rpc.client import Client, DaemonTimeout, DaemonUnreachable


@pytest.fixture
def silent(tmp_path: Path) -> Iterator[Path]:
    """A socket that accepts connections and reads requests but never answers."""
    path = tmp_path / "silent.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield path
    stop.set()
    t.join()
    for s in held:
        s.close()
    srv.close()


def test_quick_call_to_a_silent_daemon_fails_with_a_clear_error(
    silent: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_mod, "ANSWER_TIMEOUT_SECONDS", 0.3)
    c = Client(silent)
    with pytest.raises(DaemonTimeout) as exc:
        c.call("ping")
    assert exc.value.code == "operation_failed"
    assert exc.value.message == (
        f"the daemon did not answer ping within 0.3 s (socket {silent}); "
        "see `banger daemon status` for its log"
    )
    # The half-read connection was dropped; the next call opens a fresh one.
    assert not c._open


def test_an_explicit_timeout_applies_to_any_method(silent: Path) -> None:
    with Client(silent) as c, pytest.raises(DaemonTimeout, match=r"vm\.create within 0\.2 s"):
        c.call("vm.create", {}, timeout=0.2)


def test_progress_lines_restart_the_clock_and_long_methods_wait(tmp_path: Path) -> None:
    """A daemon that sends a progress line every 0.1 s for 1 s, then the answer: a 0.4 s
    silence timeout is never reached, and a long method (no default timeout) waits anyway."""
    path = tmp_path / "slow.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(4)
    done = threading.Event()

    def serve() -> None:
        for _ in range(2):
            conn, _ = srv.accept()
            with conn:
                f = conn.makefile("rb")
                f.readline()
                for i in range(10):
                    if done.wait(0.1):
                        return
                    conn.sendall(
                        json.dumps({"progress": {"i": i}, "op_id": "op-0"}).encode() + b"\n"
                    )
                conn.sendall(b'{"ok":true,"result":"made"}\n')

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        seen: list[object] = []
        with Client(path) as c:
            assert c.call("vm.show", {"ref": "x"}, on_progress=seen.append, timeout=0.4) == "made"
        assert len(seen) == 10
        with Client(path) as c:
            assert c.call("image.pull", {"ref": "x"}) == "made"
    finally:
        done.set()
        t.join(timeout=5)
        srv.close()


def test_a_swamped_accept_backlog_is_a_timeout_not_a_missing_daemon(tmp_path: Path) -> None:
    # Not DaemonUnreachable: the CLI would start a second daemon for that.
    path = tmp_path / "full.sock"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(0)
    queued = []
    try:
        while True:  # fill the backlog (nobody accepts)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(str(path))
            except BlockingIOError:
                s.close()
                break
            queued.append(s)
        with pytest.raises(DaemonTimeout, match="did not accept a connection within 0.3 s"):
            Client(path, connect_timeout=0.3).connect()
    finally:
        for s in queued:
            s.close()
        srv.close()


def test_no_socket_is_still_unreachable(tmp_path: Path) -> None:
    with pytest.raises(DaemonUnreachable):
        Client(tmp_path / "none.sock").connect()

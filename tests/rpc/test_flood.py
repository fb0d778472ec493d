"""Floods against a real bangerd: unread pipelined answers, 1100 idle connections.

Both used to take the daemon down in practice: pipelined 1 MiB `vm.show` requests whose answers
were never read grew it from 52 MB to 981 MB, and 1100 idle connections used up its 1024
descriptors so a fresh `ping` went unanswered for 30 s and more.
"""

from __future__ import annotations

import contextlib
import json
import resource
import selectors
import socket
import time
from collections.abc import Iterator

import pytest

from banger.rpc.server import DEFAULT_MAX_CONNECTIONS, RESERVED_FDS
from tests.rpc.daemon_proc import bangerd

# The daemon's RSS ceiling under the flood. An idle bangerd is ~50-60 MB (CPython, pydantic,
# SQLite). The server now holds at most three request lines per connection (the one answered,
# one read ahead, one partial: 3 MiB here) plus their decoded form, and answers go out only as
# fast as the client reads them. 200 MB leaves room for the allocator's slack over that, and is
# a fifth of what the unbounded server reached on the same flood.
RSS_CEILING_KIB = 200 * 1024
MIB_REF = "a" * (1 << 20)


def _wait_for(cond: object, what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


def test_unread_pipelined_answers_do_not_grow_the_daemon() -> None:
    with bangerd("bg-fl-", BANGER_RPC_IDLE_TIMEOUT="5") as d:
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(str(d.socket))
        flood.settimeout(5)
        # 1: the reported flood, 300 x 1 MiB references. Their answers are small (the ref is
        # not echoed), so the daemon may keep reading; what it must not do is keep them.
        big = json.dumps({"version": 1, "method": "vm.show", "params": {"ref": MIB_REF}})
        blocked = False
        for _ in range(300):
            try:
                flood.sendall(big.encode() + b"\n")
            except TimeoutError:
                blocked = True
                break
        # 2: pings until the daemon stops reading (its answers fill the socket and its write
        # buffer, which nobody drains): the send blocks. Without backpressure it never would.
        ping = b'{"version":1,"method":"ping"}\n' * 1000
        for _ in range(2000):
            if blocked:
                break
            try:
                flood.sendall(ping)
            except TimeoutError:
                blocked = True
        assert blocked, "the daemon kept reading although none of its answers were read"
        assert d.status_kib("VmHWM") < RSS_CEILING_KIB
        assert d.status_kib("VmRSS") < RSS_CEILING_KIB
        # Another client is served at once, flood or not.
        assert d.ping(timeout=5)["ok"] is True

        # A client that does not read for the idle timeout (5 s) is disconnected: sending on
        # the socket then fails (the daemon closed it with our data still unread).
        flood.setblocking(False)

        def closed_by_daemon() -> bool:
            try:
                flood.send(b"\n")
            except BlockingIOError:
                return False
            except (BrokenPipeError, ConnectionResetError):
                return True
            return False

        _wait_for(closed_by_daemon, "the daemon to close the non-reading connection")
        flood.close()
        assert d.ping(timeout=5)["ok"] is True


@pytest.fixture
def many_fds() -> Iterator[None]:
    """This test process holds 1100+ sockets: lift its own soft descriptor limit meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.fail(f"the hard RLIMIT_NOFILE ({hard}) is too low for 1100 connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _connect(path: str) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deadline = time.monotonic() + 30
    while True:
        try:
            s.connect(path)
            return s
        except BlockingIOError:  # backlog full for a moment: the daemon is accepting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def test_1100_idle_connections_leave_room_for_a_fresh_ping(many_fds: None) -> None:
    # Started with the 1024-descriptor soft limit that ran out before; bangerd lifts it.
    with bangerd("bg-cn-", nofile_soft=1024) as d:
        soft, hard = d.nofile_limits()
        assert soft == hard
        cap = max(8, min(DEFAULT_MAX_CONNECTIONS, soft - RESERVED_FDS))
        conns = [_connect(str(d.socket)) for _ in range(1100)]
        watch = selectors.DefaultSelector()  # epoll: select() stops at descriptor 1024
        try:
            d.ping(timeout=10)
            # Every connection over the cap made the longest-idle one go, with a clear line.
            answers: dict[socket.socket, bytes] = {}
            closed: set[socket.socket] = set()
            for s in conns:
                watch.register(s, selectors.EVENT_READ)

            def collect() -> bool:
                for key, _ in watch.select(0.1):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    chunk = s.recv(4096)
                    if chunk:
                        answers[s] = answers.get(s, b"") + chunk
                    else:
                        closed.add(s)
                        watch.unregister(s)
                return len(closed) >= 1100 + 1 - cap

            _wait_for(collect, f"{1100 + 1 - cap} connections over the cap to be closed")
            assert all(answers.get(s) for s in closed), "each was told why before it was closed"
            for s in closed:
                err = json.loads(answers[s])["error"]
                assert err["code"] == "busy"
                assert f"limit of {cap} connections" in err["message"]
                assert err["op_id"].startswith("op-")
            d.ping(timeout=10)
        finally:
            watch.close()
            for s in conns:
                s.close()
        d.ping(timeout=10)


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    with bangerd("bg-idl-", BANGER_RPC_IDLE_TIMEOUT="2") as d:
        conns = [_connect(str(d.socket)) for _ in range(20)]
        used = conns[0]
        used.sendall(b'{"version":1,"method":"ping"}\n')
        try:
            for s in conns:
                s.settimeout(30)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
                # Only the answer the one request was owed; then the daemon closed the idle
                # connection (recv returned b"" well inside 30 s).
                if s is used:
                    assert json.loads(data)["ok"] is True
                else:
                    assert data == b""
        finally:
            for s in conns:
                with contextlib.suppress(OSError):
                    s.close()
        d.ping(timeout=5)

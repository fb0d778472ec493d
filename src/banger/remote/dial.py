"""`banger daemon dial-stdio`: this machine's daemon socket on stdin/stdout.

A client's `--host ssh://…` runs this on the remote through ssh and speaks the JSON-lines RPC
over the pipes. stdin's end (the client half-closed: Ctrl-C) half-closes the socket, so the
daemon cancels the request as it does for a local client; the daemon's end ends this process.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys

from banger.rpc.errors import OperationFailed

CHUNK = 65536


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def connect_local() -> object:
    """The local daemon's socket (a SocketTransport), starting the daemon in user mode."""
    from banger.client.local import resolve_paths, start_daemon
    from banger.rpc.client import DaemonUnreachable, SocketTransport

    paths = resolve_paths()
    transport = SocketTransport(paths.socket, 2.0)
    try:
        transport.open()
    except DaemonUnreachable:
        if paths.is_system:
            raise OperationFailed(
                f"the banger service is not reachable at {paths.socket}; "
                "run `sudo banger system restart` there"
            ) from None
        start_daemon(paths)
        transport.open()
    return transport


def dial_stdio() -> None:
    from banger.rpc.client import SocketTransport

    transport = connect_local()
    assert isinstance(transport, SocketTransport)
    sock_fd = transport.fileno()
    stdin_fd, stdout_fd = sys.stdin.fileno(), sys.stdout.fileno()
    reading = [stdin_fd, sock_fd]
    try:
        while sock_fd in reading:
            readable, _, _ = select.select(reading, [], [])
            if stdin_fd in readable:
                data = os.read(stdin_fd, CHUNK)
                if data:
                    transport.send(data)
                else:
                    reading.remove(stdin_fd)
                    transport.half_close()
            if sock_fd in readable:
                data = transport.recv()
                if not data:
                    break
                try:
                    _write_all(stdout_fd, data)
                except BrokenPipeError:
                    break  # the client is gone: closing the socket cancels its request
    finally:
        transport.close()
        with contextlib.suppress(OSError):
            os.close(stdout_fd)

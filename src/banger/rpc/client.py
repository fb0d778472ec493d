"""Blocking RPC client (the CLI's side). Stdlib only, so `banger` starts fast."""

from __future__ import annotations

import contextlib
import enum
import json
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, Protocol

from banger.rpc import PROTOCOL_VERSION
from banger.rpc.errors import Busy, OperationFailed, RPCError, from_wire

ProgressCallback = Callable[[dict[str, Any]], None]


# Methods that answer from what the daemon already knows (lookups, listings, bounded probes).
# Unless the caller says otherwise, the client waits ANSWER_TIMEOUT_SECONDS of silence for their
# answer. Every other method (boots, pulls, builds, imports, guest work) may legitimately take
# minutes, sends progress when asked, and is waited for as long as it takes.
QUICK_METHODS: frozenset[str] = frozenset(
    {
        "ping",
        "kernel.list",
        "kernel.show",
        "image.list",
        "image.show",
        "vm.list",
        "vm.show",
        "vm.logs",
        "vm.ssh",
        "vm.ping",
        "vm.create.begin",
        "vm.create.status",
    }
)
ANSWER_TIMEOUT_SECONDS = 30.0
# A `busy` answer (the daemon at its connection limit) is retried this often, backing off.
BUSY_RETRIES = 3
BUSY_BACKOFF_SECONDS = 0.2


class _Default(enum.Enum):
    TIMEOUT = 0


# `Client.call(timeout=DEFAULT_TIMEOUT)`: ANSWER_TIMEOUT_SECONDS for QUICK_METHODS, else none.
DEFAULT_TIMEOUT: Literal[_Default.TIMEOUT] = _Default.TIMEOUT

# After Ctrl-C, how long to wait for the daemon to finish cancelling the request.
CANCEL_WAIT_SECONDS = 60.0
# Say that we are waiting only when the cancellation is not instant.
CANCEL_NOTICE_AFTER = 0.3


class DaemonUnreachable(Exception):
    """Nothing answers on the daemon socket."""


class DaemonTimeout(OperationFailed):
    """A daemon is there but did not accept the connection or answer in time. Not
    DaemonUnreachable: starting another daemon would not help."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a request. The client half-closed the connection, which makes the daemon
    cancel the request (and undo what it made), then read until the daemon closed its side.

    `cleaned`: the daemon finished (closed the connection) before we stopped waiting.
    `result`: the request's result when it had completed anyway before the cancel arrived
    (`completed` tells a None result from none).
    """

    def __init__(self, method: str, *, cleaned: bool, completed: bool, result: Any = None) -> None:
        super().__init__(method)
        self.method = method
        self.cleaned = cleaned
        self.completed = completed
        self.result = result


class Transport(Protocol):
    """A byte stream to a daemon: a Unix socket here, or an ssh subprocess's pipes to a remote
    `banger daemon dial-stdio`. Reads are buffered here so a timeout applies to every kind."""

    @property
    def where(self) -> str:
        """For messages: "socket /run/…/bangerd.sock" or "ssh://u@h:p"."""
        ...

    def open(self) -> None: ...
    def send(self, data: bytes) -> None: ...
    def fileno(self) -> int: ...
    def recv(self) -> bytes:
        """Some bytes (b"" at end of stream); called when fileno() is readable."""
        ...

    def half_close(self) -> bool:
        """Tell the daemon no more requests come (Ctrl-C); False when it is gone already."""
        ...

    def closed_reason(self) -> str | None:
        """Why the stream ended, when the transport knows better than the daemon (ssh failed)."""
        ...

    def close(self) -> None: ...


class SocketTransport:
    """The local daemon's Unix socket."""

    def __init__(self, socket_path: Path, connect_timeout: float) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None

    @property
    def where(self) -> str:
        return f"socket {self.socket_path}"

    def open(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + self.connect_timeout
        while True:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                sock.connect(str(self.socket_path))
                break
            except (FileNotFoundError, ConnectionRefusedError) as e:
                sock.close()
                raise DaemonUnreachable(f"no daemon at {self.socket_path}: {e}") from None
            except (BlockingIOError, TimeoutError):
                # EAGAIN: the daemon's accept backlog is full (it is alive but swamped).
                if time.monotonic() >= deadline:
                    sock.close()
                    raise DaemonTimeout(
                        f"the daemon did not accept a connection within "
                        f"{self.connect_timeout:g} s (socket {self.socket_path}); it may be "
                        "overloaded: see `banger daemon status`"
                    ) from None
                time.sleep(0.02)
        sock.settimeout(None)
        self._sock = sock

    def send(self, data: bytes) -> None:
        assert self._sock is not None
        self._sock.sendall(data)

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    def recv(self) -> bytes:
        assert self._sock is not None
        try:
            return self._sock.recv(65536)
        except ConnectionResetError:
            return b""

    def half_close(self) -> bool:
        assert self._sock is not None
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:  # the daemon is already gone
            return False
        return True

    def closed_reason(self) -> str | None:
        return None

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None


class Client:
    def __init__(
        self,
        socket_path: Path | None = None,
        *,
        connect_timeout: float = 2.0,
        on_cancel_wait: Callable[[str], None] | None = None,
        transport: Transport | None = None,
    ) -> None:
        if transport is None:
            if socket_path is None:
                raise ValueError("Client needs a socket path or a transport")
            transport = SocketTransport(socket_path, connect_timeout)
        self.transport = transport
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        # Called (with the method) when, after Ctrl-C, the daemon's cleanup takes a moment.
        self.on_cancel_wait = on_cancel_wait
        self._open = False
        self._buf = bytearray()
        self._eof = False

    def connect(self) -> None:
        self.transport.open()
        self._open = True
        self._buf.clear()
        self._eof = False

    def close(self) -> None:
        if self._open:
            self.transport.close()
        self._open = False

    def __enter__(self) -> Client:
        if not self._open:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _fill(self, timeout: float | None) -> None:
        """Read what the transport has into the buffer; TimeoutError after `timeout` silence."""
        readable, _, _ = select.select([self.transport.fileno()], [], [], timeout)
        if not readable:
            raise TimeoutError
        chunk = self.transport.recv()
        if chunk:
            self._buf += chunk
        else:
            self._eof = True

    def _readline(self, timeout: float | None) -> bytes:
        """One line (with its newline), or what is left at the end of the stream."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[: i + 1])
                del self._buf[: i + 1]
                return line
            if self._eof:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._fill(timeout)

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None | Literal[_Default.TIMEOUT] = DEFAULT_TIMEOUT,
    ) -> Any:
        """Send one request and return its result; raise the daemon's typed error on failure.

        `timeout`: seconds of silence (no answer, no progress line) after which the call fails
        with DaemonTimeout; None waits as long as the work takes. The default depends on the
        method (QUICK_METHODS)."""
        request: dict[str, Any] = {"version": PROTOCOL_VERSION, "method": method}
        if params:
            request["params"] = params
        if on_progress is not None:
            request["progress"] = True
        if timeout is DEFAULT_TIMEOUT:
            timeout = ANSWER_TIMEOUT_SECONDS if method in QUICK_METHODS else None
        try:
            for attempt in range(BUSY_RETRIES + 1):
                if not self._open:
                    self.connect()
                try:
                    # Per read: every progress line the daemon sends restarts the clock.
                    return self._exchange(method, request, on_progress, timeout)
                except Busy:
                    # The daemon closed this connection at its connection limit before it took
                    # the request (a request it took is never cut): safe to send it again.
                    self.close()
                    if attempt == BUSY_RETRIES:
                        raise
                    time.sleep(BUSY_BACKOFF_SECONDS * (attempt + 1))
            raise AssertionError("unreachable")
        except TimeoutError:
            # The connection is mid-answer and unusable: drop it.
            self.close()
            raise DaemonTimeout(
                f"the daemon did not answer {method} within {timeout:g} s "
                f"({self.transport.where}); see `banger daemon status` for its log"
            ) from None
        except KeyboardInterrupt:
            raise self._abandon(method) from None

    def _exchange(
        self,
        method: str,
        request: dict[str, Any],
        on_progress: ProgressCallback | None,
        timeout: float | None,
    ) -> Any:
        # The daemon may have closed this connection: what it said first (`busy`) is still read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.transport.send(json.dumps(request).encode() + b"\n")
        while True:
            line = self._readline(timeout)
            if not line:
                reason = self.transport.closed_reason()
                if reason is not None:
                    raise DaemonUnreachable(reason)
                raise OperationFailed(
                    f"the daemon closed the connection during {method}; see `banger daemon status`"
                    " for its log"
                )
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if not isinstance(msg, dict):
                # Over ssh: something on the remote printed to stdout (a shell rc file, a banner).
                raise OperationFailed(
                    f"{self.transport.where} answered {method} with something that is not "
                    f"banger's RPC: {line[:80]!r}; does the login print text (shell rc files)?"
                )
            if "progress" in msg and "ok" not in msg:
                if on_progress is not None:
                    on_progress(msg["progress"])
                continue
            if msg.get("ok"):
                return msg.get("result")
            error = from_wire(msg.get("error") or {})
            error.method = method
            raise error

    def _abandon(self, method: str) -> Interrupted:
        """Ctrl-C: half-close so the daemon cancels the request, then wait (bounded; a second
        Ctrl-C stops waiting) until it closes its side: its cleanup is done by then, so a retry
        does not race it (e.g. `vm create --name a` again finding the half-made `a`). Over ssh
        the half-close is closing ssh's stdin: the remote dial-stdio passes it on."""
        if not self._open:
            return Interrupted(method, cleaned=True, completed=False)
        if not self.transport.half_close():
            return Interrupted(method, cleaned=True, completed=False)
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        notice_at = time.monotonic() + CANCEL_NOTICE_AFTER
        cleaned = self._eof
        try:
            while not cleaned and (now := time.monotonic()) < deadline:
                if self.on_cancel_wait is not None and notice_at and now >= notice_at:
                    notice_at = 0.0
                    self.on_cancel_wait(method)
                wait = min(deadline, notice_at or deadline) - now
                try:
                    self._fill(max(0.0, wait))
                except TimeoutError:
                    continue
                except OSError:
                    self._eof = True
                cleaned = self._eof
        except KeyboardInterrupt:
            pass
        completed, result = False, None
        for line in bytes(self._buf).splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if isinstance(msg, dict) and msg.get("ok") is True:
                completed, result = True, msg.get("result")
        return Interrupted(method, cleaned=cleaned, completed=completed, result=result)


__all__ = [
    "Client",
    "DaemonTimeout",
    "DaemonUnreachable",
    "Interrupted",
    "RPCError",
    "SocketTransport",
    "Transport",
]

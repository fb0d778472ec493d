"""Unix-socket JSON-lines server: one request per line, answers in order, progress lines between.

A connection that sends a line longer than MAX_LINE gets one `bad_request` answer and is closed;
garbage never takes the server down. When the client disconnects while a request runs, the request
is cancelled unless the dispatcher says its method must finish.

Every resource a client can make the daemon hold is bounded (docs/rpc.md, "Limits"):
- memory per connection: at most one request line waiting behind the one being answered, and
  answers go out through `drain()`, so a client that pipelines and never reads stops being read
  (its kernel socket buffer fills, its writes block) instead of growing the daemon;
- memory across connections: large lines (over SMALL_LINE) share one LARGE_LINES_BUDGET;
- descriptors: the soft RLIMIT_NOFILE is raised to the hard limit at start, and at most
  `max_connections` are open; at the limit the longest-idle connection makes room (it gets a
  `busy` line and is closed), or the newcomer does when every connection has a request in flight;
- time: a connection with no request in flight that has received no request and been sent
  nothing for `idle_timeout` seconds is closed, and so is one that does not read its answers for
  that long. Requests in flight (however long, e.g. `vm.create` waiting for a boot) are never cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import resource
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from banger.rpc import envelope

log = logging.getLogger("banger.rpc")

MAX_LINE = 4 * 1024 * 1024
# How much of one overlong line is skipped before the connection is given up on.
MAX_DISCARD = 64 * 1024 * 1024
# Lines up to this size are free; bigger ones draw on LARGE_LINES_BUDGET while held.
SMALL_LINE = 64 * 1024
LARGE_LINES_BUDGET = 64 * 1024 * 1024
# Request lines read ahead of the one being answered (read-ahead also notices a disconnect).
PENDING_LINES = 1
# The transport's write buffer: drain() waits above HIGH until it is back under LOW.
WRITE_HIGH_WATER = 256 * 1024
WRITE_LOW_WATER = 64 * 1024
# Progress lines are dropped (they are advisory) while this much is waiting to be sent.
PROGRESS_BUFFER_LIMIT = 1024 * 1024

DEFAULT_MAX_CONNECTIONS = 512
DEFAULT_IDLE_TIMEOUT = 120.0
# Descriptors kept for everything else the daemon opens (VMM pipes, disks, the database, logs).
RESERVED_FDS = 256
MAX_CONNECTIONS_ENV = "BANGER_RPC_MAX_CONNECTIONS"
IDLE_TIMEOUT_ENV = "BANGER_RPC_IDLE_TIMEOUT"

_OVERLONG = b"\x00overlong"
_CLOSE = b"\x00close"
_NO_BUDGET = b"\x00budget"

Dispatcher = Callable[
    [object, Callable[[dict[str, Any]], None]], Coroutine[Any, Any, dict[str, Any]]
]
CancelPolicy = Callable[[object], bool]


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def raise_nofile_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (1024 soft runs out at ~1000 clients);
    return the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def _env_number(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        log.warning("ignoring a malformed setting", extra={"env": name, "value": raw[:40]})
        return default
    return value if value > 0 else default


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    task: asyncio.Task[Any]
    # Last time a request line arrived or an answer was sent (monotonic): the idle clock.
    last_activity: float = field(default_factory=time.monotonic)
    busy: bool = False  # a request is in flight or its answer is being written
    charged: int = 0  # bytes of large lines held, counted against LARGE_LINES_BUDGET


@dataclass(frozen=True)
class _Line:
    data: bytes
    charged: int = 0


class RPCServer:
    def __init__(
        self,
        socket_path: Path,
        dispatcher: Dispatcher,
        *,
        may_cancel: CancelPolicy,
        max_connections: int | None = None,
        idle_timeout: float | None = None,
    ) -> None:
        self.socket_path = socket_path
        self._dispatcher = dispatcher
        self._may_cancel = may_cancel
        self._server: asyncio.AbstractServer | None = None
        self.inflight: set[asyncio.Task[Any]] = set()
        self._conns: dict[asyncio.Task[Any], _Conn] = {}
        # Settable by tests and the environment (the flood tests use a short idle timeout).
        self.max_connections = int(
            max_connections or _env_number(MAX_CONNECTIONS_ENV, DEFAULT_MAX_CONNECTIONS)
        )
        self.idle_timeout = idle_timeout or _env_number(IDLE_TIMEOUT_ENV, DEFAULT_IDLE_TIMEOUT)
        self._large_bytes = 0
        self._at_limit = 0
        self._limit_logged = 0.0

    async def start(self) -> None:
        soft = raise_nofile_limit()
        # Never more connections than descriptors: every accepted socket is one.
        self.max_connections = max(8, min(self.max_connections, soft - RESERVED_FDS))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, path=str(self.socket_path), backlog=1024
            )
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)
        log.debug(
            "rpc limits",
            extra={
                "nofile": soft,
                "max_connections": self.max_connections,
                "idle_timeout": self.idle_timeout,
            },
        )

    async def close(self, grace: float) -> None:
        """Stop accepting, let in-flight requests finish for `grace` seconds, then cancel them."""
        if self._server is not None:
            self._server.close()
        if self.inflight:
            _, pending = await asyncio.wait(set(self.inflight), timeout=grace)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        # Give connections whose request just finished the moment they need to send its answer.
        for _ in range(100):
            if not any(c.busy for c in self._conns.values()):
                break
            await asyncio.sleep(0.01)
        for task in list(self._conns):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    @property
    def connections(self) -> int:
        return len(self._conns)

    # --- admission ------------------------------------------------------------------------------

    def _busy_line(self, message: str) -> bytes:
        return _encode(envelope.error("busy", message, envelope.new_op_id()))

    def _make_room(self) -> bool:
        """At the limit: close the longest-idle connection (True), or False when all are busy."""
        idle = [c for c in self._conns.values() if not c.busy]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_activity)
        with contextlib.suppress(Exception):
            victim.writer.write(
                self._busy_line(
                    f"bangerd is at its limit of {self.max_connections} connections; this "
                    "idle connection was closed to make room (reconnect to continue)"
                )
            )
        self._forget(victim)
        victim.task.cancel()
        return True

    def _log_limit(self) -> None:
        """A connection arrived at the cap (one was evicted or it was refused). Rate-limited: a
        flood of connections must not become a flood of log lines."""
        self._at_limit += 1
        now = time.monotonic()
        if now - self._limit_logged >= 10:
            log.warning(
                "connection limit reached",
                extra={"max_connections": self.max_connections, "at_limit": self._at_limit},
            )
            self._limit_logged = now
            self._at_limit = 0

    def _forget(self, conn: _Conn) -> None:
        if self._conns.pop(conn.task, None) is not None:
            self._large_bytes -= conn.charged
            conn.charged = 0

    # --- one connection -------------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._conns) >= self.max_connections:
            self._log_limit()
        if len(self._conns) >= self.max_connections and not self._make_room():
            with contextlib.suppress(Exception):
                writer.write(
                    self._busy_line(
                        f"bangerd is at its limit of {self.max_connections} connections, all "
                        "with requests in flight; retry when one finishes"
                    )
                )
                await asyncio.wait_for(writer.drain(), 1)
            with contextlib.suppress(Exception):
                writer.close()
            return
        writer.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        conn = _Conn(writer=writer, task=task)
        self._conns[task] = conn
        lines: asyncio.Queue[_Line | None] = asyncio.Queue(maxsize=PENDING_LINES)
        disconnected = asyncio.Event()
        reader_task = asyncio.create_task(self._read_lines(conn, reader, lines, disconnected))
        try:
            await self._serve(conn, lines, disconnected)
        except (ConnectionError, OSError, TimeoutError):
            pass
        finally:
            reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader_task
            self._forget(conn)
            with contextlib.suppress(Exception):
                writer.close()

    def _charge(self, conn: _Conn, size: int) -> bool:
        if self._large_bytes + size > LARGE_LINES_BUDGET:
            return False
        self._large_bytes += size
        conn.charged += size
        return True

    def _release(self, conn: _Conn, size: int) -> None:
        size = min(size, conn.charged)
        self._large_bytes -= size
        conn.charged -= size

    async def _read_lines(
        self,
        conn: _Conn,
        reader: asyncio.StreamReader,
        lines: asyncio.Queue[_Line | None],
        disconnected: asyncio.Event,
    ) -> None:
        # Own line splitting, so an overlong line can be skipped up to its newline and the
        # connection resynchronised (StreamReader.readuntil cannot discard part of a line).
        # `lines` is bounded: while it is full this stops reading, which is the backpressure.
        buf = bytearray()
        charged = 0  # of buf, against LARGE_LINES_BUDGET
        skipped = 0  # > 0 while discarding an overlong line
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    if buf.strip() and not skipped:
                        await lines.put(_Line(bytes(buf), charged))
                        charged = 0
                    break
                while chunk:
                    i = chunk.find(b"\n")
                    part, chunk = (chunk, b"") if i < 0 else (chunk[: i + 1], chunk[i + 1 :])
                    if skipped or len(buf) + len(part) > MAX_LINE:
                        skipped += len(part) + len(buf)
                        buf.clear()
                        self._release(conn, charged)
                        charged = 0
                        if skipped > MAX_DISCARD:
                            await lines.put(_Line(_CLOSE))
                            return
                        if i >= 0:
                            await lines.put(_Line(_OVERLONG))
                            skipped = 0
                        continue
                    size = len(buf) + len(part)
                    if size > SMALL_LINE:
                        if not self._charge(conn, size - charged):
                            await lines.put(_Line(_NO_BUDGET))
                            return
                        charged = size
                    buf += part
                    if i >= 0:
                        await lines.put(_Line(bytes(buf), charged))
                        buf.clear()
                        charged = 0
        except (ConnectionError, OSError):
            pass
        finally:
            self._release(conn, charged)
            disconnected.set()
            with contextlib.suppress(asyncio.QueueFull):
                lines.put_nowait(None)

    async def _send(self, conn: _Conn, obj: dict[str, Any]) -> None:
        """Write one line and wait until the client takes it (drain): a client that does not
        read for `idle_timeout` seconds is disconnected (TimeoutError ends the connection)."""
        conn.writer.write(_encode(obj))
        try:
            await asyncio.wait_for(conn.writer.drain(), self.idle_timeout)
        except TimeoutError:
            log.info("closing a connection that does not read its answers")
            # Not close(): that would wait, socket open, for the unread answers to be taken.
            conn.writer.transport.abort()
            raise
        conn.last_activity = time.monotonic()

    async def _next_line(
        self, conn: _Conn, lines: asyncio.Queue[_Line | None], disconnected: asyncio.Event
    ) -> _Line | None:
        """The next request line; None at EOF or when the connection has been idle too long."""
        while True:
            if lines.empty() and disconnected.is_set():
                return None  # the reader is done and everything it read was answered
            remaining = conn.last_activity + self.idle_timeout - time.monotonic()
            if remaining <= 0:
                if not disconnected.is_set():
                    log.debug("closing an idle connection")
                return None
            try:
                return await asyncio.wait_for(lines.get(), remaining)
            except TimeoutError:
                continue

    async def _serve(
        self, conn: _Conn, lines: asyncio.Queue[_Line | None], disconnected: asyncio.Event
    ) -> None:
        while True:
            item = await self._next_line(conn, lines, disconnected)
            if item is None:
                return
            conn.last_activity = time.monotonic()
            line = item.data
            held = item.charged  # released as soon as the line is parsed
            try:
                if line is _OVERLONG or line is _CLOSE or line is _NO_BUDGET:
                    if line is _NO_BUDGET:
                        msg = (
                            "bangerd is holding too many large requests at once "
                            f"({LARGE_LINES_BUDGET >> 20} MiB); connection closed, retry"
                        )
                    else:
                        msg = f"request line longer than {MAX_LINE} bytes"
                        if line is _CLOSE:
                            msg += "; connection closed"
                    await self._send(conn, envelope.error("bad_request", msg, envelope.new_op_id()))
                    if line is _OVERLONG:
                        continue
                    return
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as e:
                    del line
                    bad = envelope.error(
                        "bad_request", f"request is not valid JSON: {e}", envelope.new_op_id()
                    )
                    await self._send(conn, bad)
                    continue
                del line
                self._release(conn, held)
                held = 0
                conn.busy = True
                try:
                    response = await self._run_one(obj, conn.writer, disconnected)
                    del obj
                    if response is None:
                        return
                    await self._send(conn, response)
                finally:
                    conn.busy = False
            finally:
                self._release(conn, held)

    async def _run_one(
        self, obj: object, writer: asyncio.StreamWriter, disconnected: asyncio.Event
    ) -> dict[str, Any] | None:
        def emit(progress: dict[str, Any]) -> None:
            # Not awaited (handlers call it synchronously): a client that does not read
            # loses progress lines rather than making the daemon queue them without bound.
            if writer.is_closing():
                return
            if writer.transport.get_write_buffer_size() > PROGRESS_BUFFER_LIMIT:
                return
            writer.write(_encode(progress))

        work: asyncio.Task[dict[str, Any]] = asyncio.create_task(self._dispatcher(obj, emit))
        self.inflight.add(work)
        work.add_done_callback(self.inflight.discard)
        gone = asyncio.create_task(disconnected.wait())
        try:
            done, _ = await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done:
                if self._may_cancel(obj):
                    work.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await work
                # Work that finished anyway (past its point of no return, or uncancellable)
                # still answers: a half-closed client (the CLI after Ctrl-C) reads it and can
                # say the work was done. A fully closed one makes the write fail quietly.
                if not work.cancelled() and work.exception() is None:
                    return work.result()
                return None
            return work.result()
        finally:
            gone.cancel()

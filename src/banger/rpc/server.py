"""Unix-socket JSON-lines server: one request per line, answers in order, progress lines between.

A connection that sends a line longer than MAX_LINE gets one `bad_request` answer and is closed;
garbage never takes the server down. When the client disconnects while a request runs, the request
is cancelled unless the dispatcher says its method must finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from banger.rpc import envelope

log = logging.getLogger("banger.rpc")

MAX_LINE = 4 * 1024 * 1024
# How much of one overlong line is skipped before the connection is given up on.
MAX_DISCARD = 64 * 1024 * 1024
_OVERLONG = b"\x00overlong"
_CLOSE = b"\x00close"

Dispatcher = Callable[
    [object, Callable[[dict[str, Any]], None]], Coroutine[Any, Any, dict[str, Any]]
]
CancelPolicy = Callable[[object], bool]


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class RPCServer:
    def __init__(
        self, socket_path: Path, dispatcher: Dispatcher, *, may_cancel: CancelPolicy
    ) -> None:
        self.socket_path = socket_path
        self._dispatcher = dispatcher
        self._may_cancel = may_cancel
        self._server: asyncio.AbstractServer | None = None
        self.inflight: set[asyncio.Task[Any]] = set()
        self._connections: set[asyncio.Task[Any]] = set()
        self._busy: set[asyncio.Task[Any]] = set()  # connections between request and answer

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, path=str(self.socket_path)
            )
        finally:
            os.umask(old)
        os.chmod(self.socket_path, 0o600)

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
            if not self._busy:
                break
            await asyncio.sleep(0.01)
        for c in set(self._connections):
            c.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        lines: asyncio.Queue[bytes | None] = asyncio.Queue()
        disconnected = asyncio.Event()

        async def read_lines() -> None:
            # Own line splitting, so an overlong line can be skipped up to its newline and the
            # connection resynchronised (StreamReader.readuntil cannot discard part of a line).
            buf = bytearray()
            skipped = 0  # > 0 while discarding an overlong line
            try:
                while True:
                    chunk = await reader.read(65536)
                    if not chunk:
                        if buf.strip() and not skipped:
                            await lines.put(bytes(buf))
                        break
                    while chunk:
                        i = chunk.find(b"\n")
                        part, chunk = (chunk, b"") if i < 0 else (chunk[: i + 1], chunk[i + 1 :])
                        if skipped or len(buf) + len(part) > MAX_LINE:
                            skipped += len(part) + len(buf)
                            buf.clear()
                            if skipped > MAX_DISCARD:
                                await lines.put(_CLOSE)
                                return
                            if i >= 0:
                                await lines.put(_OVERLONG)
                                skipped = 0
                            continue
                        buf += part
                        if i >= 0:
                            await lines.put(bytes(buf))
                            buf.clear()
            except (ConnectionError, OSError):
                pass
            finally:
                disconnected.set()
                await lines.put(None)

        reader_task = asyncio.create_task(read_lines())
        try:
            while True:
                line = await lines.get()
                if line is None:
                    break
                if line is _OVERLONG or line is _CLOSE:
                    msg = f"request line longer than {MAX_LINE} bytes"
                    if line is _CLOSE:
                        msg += "; connection closed"
                    writer.write(_encode(envelope.error("bad_request", msg, envelope.new_op_id())))
                    await writer.drain()
                    if line is _CLOSE:
                        break
                    continue
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as e:
                    bad = envelope.error(
                        "bad_request", f"request is not valid JSON: {e}", envelope.new_op_id()
                    )
                    writer.write(_encode(bad))
                    await writer.drain()
                    continue
                self._busy.add(task)
                try:
                    response = await self._run_one(obj, writer, disconnected)
                    if response is None:
                        break
                    writer.write(_encode(response))
                    await writer.drain()
                finally:
                    self._busy.discard(task)
        except (ConnectionError, OSError):
            pass
        finally:
            reader_task.cancel()
            with contextlib.suppress(Exception):
                writer.close()
            self._connections.discard(task)

    async def _run_one(
        self, obj: object, writer: asyncio.StreamWriter, disconnected: asyncio.Event
    ) -> dict[str, Any] | None:
        def emit(progress: dict[str, Any]) -> None:
            if not writer.is_closing():
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

"""One SSH connection per sandbox, shared by every command and file transfer.

The connection is opened on first use (asking the daemon for the VM's SSH endpoint and pinned
host key), multiplexes concurrent commands as separate SSH channels, carries one SFTP session
for files, and is reopened when it was lost (the VM restarted on a new port, say).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import asyncssh

from banger.sdk.command import OutputSink
from banger.sdk.errors import CommandTimeout, GuestConnectionError

if TYPE_CHECKING:
    from banger.sdk.daemon import DaemonConnection

# OpenSSH's sshd allows 10 sessions per connection (MaxSessions); keep one free for SFTP.
MAX_CONCURRENT_COMMANDS = 8
# sshd refused a session ("no more sessions": slots of sessions still closing): retry for this
# long before giving up, every so often.
SESSION_SLOT_WAIT_SECONDS = 30.0
SESSION_SLOT_RETRY_SECONDS = 0.05
# After a timeout: how long the killed command may take to report its end.
KILL_GRACE_SECONDS = 5.0


# The first thing every command does: print its shell's pid (= its process group: sshd puts each
# session in a new session and group) on stderr behind a marker, so a timeout can kill the whole
# group. The SDK takes that line out of stderr; anything the login shell printed before it (a
# locale warning, say) is passed on.
PGID_MARKER = b"\x1ebanger-pgid:"
PGID_PRELUDE = "printf '\\036banger-pgid:%s\\n' \"$$\" >&2\n"
# Stop looking for the marker after this much other stderr (it comes first in practice).
PGID_SCAN_LIMIT = 4096


class _RunSession(asyncssh.SSHClientSession[bytes]):
    """Feeds a command's output to its sinks and resolves `done` when the channel closes."""

    def __init__(self, out: OutputSink, err: OutputSink) -> None:
        self.out = out
        self.err = err
        self.pgid: int | None = None
        self._head = b""  # stderr until the pgid line is complete
        self._head_done = False
        self.exit_status: int | None = None
        self.exit_signal: str | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        if datatype != asyncssh.EXTENDED_DATA_STDERR:
            self.out.feed(data)
            return
        if not self._head_done:
            self._head += data
            while not self._head_done:
                line, sep, rest = self._head.partition(b"\n")
                if not sep:
                    if len(self._head) > PGID_SCAN_LIMIT:
                        self._head_done = True
                        break
                    return
                self._head = rest
                if line.startswith(PGID_MARKER):
                    self._head_done = True
                    with contextlib.suppress(ValueError):
                        self.pgid = int(line[len(PGID_MARKER) :])
                else:
                    self.err.feed(line + sep)
            data, self._head = self._head, b""
            if not data:
                return
        self.err.feed(data)

    def flush_head(self) -> None:
        if self._head:
            self.err.feed(self._head)
            self._head = b""

    def exit_status_received(self, status: int) -> None:
        self.exit_status = status

    def exit_signal_received(self, signal: str, core_dumped: bool, msg: str, lang: str) -> None:
        self.exit_signal = signal

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def exit_code(self) -> int | None:
        if self.exit_status is not None:
            return self.exit_status
        if self.exit_signal is not None:
            number = getattr(signal, "SIG" + self.exit_signal, None)
            return 128 + int(number) if number is not None else 255
        return None


_live: weakref.WeakSet[GuestSession] = weakref.WeakSet()


async def close_all() -> None:
    """Close every open guest connection of this process (at exit, on the SDK's loop)."""
    for session in list(_live):
        with contextlib.suppress(Exception):
            await session.close()


class GuestSession:
    """The SSH side of one sandbox. `name` is the VM's name; `daemon` answers `vm.ssh`."""

    def __init__(self, daemon: DaemonConnection, name: str) -> None:
        _live.add(self)
        self.daemon = daemon
        self.name = name
        self._conn: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None
        self._lock: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None

    def _locks(self) -> tuple[asyncio.Lock, asyncio.Semaphore]:
        if self._lock is None or self._slots is None:
            self._lock = asyncio.Lock()
            self._slots = asyncio.Semaphore(MAX_CONCURRENT_COMMANDS)
        return self._lock, self._slots

    async def connection(self) -> asyncssh.SSHClientConnection:
        lock, _ = self._locks()
        async with lock:
            if self._conn is not None and self._conn.is_closed():
                # Lost (the VM stopped or restarted on another port): ask the daemon again.
                self._conn = self._sftp = None
            if self._conn is None:
                target = await self.daemon.call("vm.ssh", {"ref": self.name})
                if isinstance(target, dict) and isinstance(target.get("target"), dict):
                    target = target["target"]
                self._conn = await self.daemon.connect_guest(target)
            return self._conn

    async def sftp(self) -> asyncssh.SFTPClient:
        conn = await self.connection()
        lock, _ = self._locks()
        async with lock:
            if self._sftp is None or self._conn is not conn:
                try:
                    self._sftp = await conn.start_sftp_client()
                except (asyncssh.Error, OSError) as e:
                    raise GuestConnectionError(f"sandbox {self.name}: SFTP failed: {e}") from None
            return self._sftp

    async def close(self) -> None:
        conn, self._conn, self._sftp = self._conn, None, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()

    async def run(
        self,
        line: str,
        *,
        stdin: bytes | None,
        timeout: float | None,
        out: OutputSink,
        err: OutputSink,
    ) -> int:
        """Run `line` in the guest's login shell; its exit code. Kills it on timeout."""
        _, slots = self._locks()
        async with slots:
            return await self._run(line, stdin=stdin, timeout=timeout, out=out, err=err)

    async def _run(
        self,
        line: str,
        *,
        stdin: bytes | None,
        timeout: float | None,
        out: OutputSink,
        err: OutputSink,
    ) -> int:
        session = _RunSession(out, err)
        loop = asyncio.get_running_loop()
        full_until = loop.time() + SESSION_SLOT_WAIT_SECONDS
        attempt = 0
        while True:
            conn = await self.connection()
            try:
                chan, _ = await conn.create_session(
                    lambda: session, PGID_PRELUDE + line, encoding=None
                )
                break
            except asyncssh.ChannelOpenError as e:
                if conn.is_closed():  # not an answer from sshd: the connection went
                    attempt += 1
                    await self._forget(conn)
                    if attempt == 2:
                        raise GuestConnectionError(
                            f"sandbox {self.name}: cannot start a command: {e.reason}"
                        ) from None
                    continue
                # sshd refused the session ("no more sessions", code CONNECT_FAILED): the
                # connection is alive (dropping it would end the other commands on it), its
                # slots are held by sessions still closing. One frees within moments.
                if loop.time() >= full_until:
                    raise GuestConnectionError(
                        f"sandbox {self.name}: cannot start a command: {e.reason}"
                    ) from None
                await asyncio.sleep(SESSION_SLOT_RETRY_SECONDS)
            except (asyncssh.Error, OSError) as e:
                attempt += 1
                # A cached connection may have died unnoticed (VM restarted): reconnect once.
                await self._forget(conn)
                if attempt == 2:
                    raise GuestConnectionError(
                        f"sandbox {self.name}: cannot start a command: {e}"
                    ) from None
        if stdin:
            chan.write(stdin)
        chan.write_eof()
        try:
            await asyncio.wait_for(asyncio.shield(session.done), timeout)
        except TimeoutError:
            await self._kill(chan, session)
            out.finish()
            err.finish()
            raise CommandTimeout(
                f"command timed out after {timeout:g}s in sandbox {self.name} and was killed",
                timeout=float(timeout or 0),
                stdout=out.value().decode(errors="replace"),
                stderr=err.value().decode(errors="replace"),
            ) from None
        except asyncio.CancelledError:
            await self._kill(chan, session)
            raise
        except (asyncssh.Error, OSError) as e:
            await self._forget(conn)
            raise GuestConnectionError(
                f"sandbox {self.name}: the connection was lost during a command: {e}"
            ) from None
        # Hold the slot until sshd has closed the session too (it frees its count then).
        with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
            await asyncio.wait_for(chan.wait_closed(), KILL_GRACE_SECONDS)
        session.flush_head()
        out.finish()
        err.finish()
        code = session.exit_code()
        if code is None:
            raise GuestConnectionError(
                f"sandbox {self.name}: the command ended without an exit status "
                "(the VM stopped or sshd died?)"
            )
        return code

    async def _kill(self, chan: asyncssh.SSHClientChannel[bytes], session: _RunSession) -> None:
        """Kill the command's whole process group (its children too), then close the channel."""
        conn = self._conn
        if session.pgid is not None and session.pgid > 1 and conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    conn.run(f"kill -KILL -- -{session.pgid}", check=False),
                    KILL_GRACE_SECONDS,
                )
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(session.done), KILL_GRACE_SECONDS)
        chan.close()

    async def _forget(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._conn is conn:
            await self.close()


async def call_with_reconnect(session: GuestSession, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run `fn`; when the cached connection turned out dead, reconnect once and retry."""
    try:
        return await fn()
    except GuestConnectionError:
        await session.close()
        return await fn()

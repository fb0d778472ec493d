"""The RPC over ssh: `ssh … -- host banger daemon dial-stdio`, its pipes as the byte stream.

Ctrl-C at the terminal must not kill ssh (the client half-closes instead, which is closing ssh's
stdin; the remote dial-stdio half-closes the daemon's socket and the daemon cancels): ssh runs
guarded by `banger.proc` in a session of its own, so the terminal's SIGINT reaches only the CLI,
and ssh still dies with the CLI if the CLI is killed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from typing import IO

from banger.client.ssh_host import RemoteHost
from banger.proc import kill_tree, popen

DIAL_COMMAND = ("banger", "daemon", "dial-stdio")
# How much of ssh's stderr an error quotes.
STDERR_TAIL = 2000
CLOSE_WAIT_SECONDS = 5.0


class SSHTransport:
    """One ssh process per connection (the CLI makes one connection per command)."""

    def __init__(self, remote: RemoteHost) -> None:
        self.remote = remote
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @property
    def where(self) -> str:
        return self.remote.url

    def open(self) -> None:
        argv = self.remote.ssh_argv(list(DIAL_COMMAND))
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        try:
            self._proc = popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                close_fds=True,
            )
        except OSError as e:
            self._stderr.close()
            self._stderr = None
            from banger.rpc.client import DaemonUnreachable

            raise DaemonUnreachable(f"cannot run {argv[0]!r} to reach the host: {e}") from None

    def send(self, data: bytes) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(data)
        self._proc.stdin.flush()

    def fileno(self) -> int:
        assert self._proc is not None and self._proc.stdout is not None
        return self._proc.stdout.fileno()

    def recv(self) -> bytes:
        return os.read(self.fileno(), 65536)

    def half_close(self) -> bool:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.close()
        except OSError:
            return False
        return self._proc.poll() is None

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        text = self._stderr.read().decode(errors="replace").strip()
        return text[-STDERR_TAIL:]

    def closed_reason(self) -> str | None:
        """When ssh (or the remote banger) failed, what it said; None when the remote daemon
        simply closed the connection."""
        proc = self._proc
        if proc is None:
            return None
        try:
            code = proc.wait(timeout=CLOSE_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            return None
        said = self._stderr_text()
        if code == 0 and not said:
            return None
        if code == 255:
            return f"ssh could not reach the host: {said or 'exit status 255'}"
        if code == 127:
            return (
                f"`banger` is not on the remote login's PATH ({said or 'exit status 127'}); "
                "install banger there"
            )
        return f"the remote `banger daemon dial-stdio` failed (exit {code}): {said or 'no output'}"

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            for f in (proc.stdin, proc.stdout):
                if f is not None:
                    with contextlib.suppress(OSError):
                        f.close()
            try:
                proc.wait(timeout=CLOSE_WAIT_SECONDS)
            except subprocess.TimeoutExpired:
                kill_tree(proc)
                proc.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

"""How workspace code runs commands in a guest: a `GuestExec` protocol and two implementations.

`SSHGuestExec` runs argv in a real guest over banger's OpenSSH (guest/ssh.py); `LocalGuestExec`
runs the same guest-side commands on the host in a scratch directory, so the workspace logic is
tested with real git and real tar without booting anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from banger import proc
from banger.errors import OperationFailed

if TYPE_CHECKING:
    from banger.guest.ssh import SSHTarget

# bytes are written to the guest command's stdin; an int is a readable file descriptor (e.g. the
# read end of a pipe fed by a host `git pack-objects` or `tar`) streamed without copying through
# Python; None means empty stdin.
Stdin = bytes | int | None

DEFAULT_TIMEOUT = 900.0


@dataclass(frozen=True)
class ExecResult:
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def err_tail(self) -> str:
        lines = self.stderr.decode(errors="replace").strip().splitlines()[-3:]
        return " | ".join(lines) or "(no output)"


class GuestExec(Protocol):
    """Run `argv` in the guest (no shell: argv is executed as given)."""

    @property
    def description(self) -> str: ...

    async def run(
        self, argv: Sequence[str], *, stdin: Stdin = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> ExecResult: ...

    async def spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        """Start `argv` with stdout and stderr as pipes the caller reads (and must reap)."""
        ...

    def transport_failure(self, returncode: int, err_tail: str) -> OperationFailed | None:
        """The transport's own failure (not the command's) behind an exit status, if any."""
        ...


async def spawn_process(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    # Its own process group, so `kill_group` also stops what it started (a pipeline's members
    # would otherwise keep the pipes open, and asyncio's wait() waits for the pipes).
    return await proc.spawn(
        argv,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=str(cwd) if cwd is not None else None,
    )


async def kill_group(child: asyncio.subprocess.Process) -> None:
    """SIGKILL a process started by `spawn_process` and everything in its group, then reap it."""
    if child.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
    await child.wait()


async def run_process(
    argv: Sequence[str],
    *,
    stdin: Stdin,
    timeout: float | None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    what: str,
) -> ExecResult:
    """Run a host process feeding it `stdin`; on timeout or cancellation the process is killed."""
    if isinstance(stdin, int):
        stdin_arg: int = stdin
        data: bytes | None = None
    elif stdin is None:
        stdin_arg, data = subprocess.DEVNULL, None
    else:
        stdin_arg, data = subprocess.PIPE, stdin
    child = await proc.spawn(
        argv,
        stdin=stdin_arg,
        env=env,
        cwd=str(cwd) if cwd is not None else None,
    )
    try:
        out, err = await proc.communicate(child, data, timeout)
    except TimeoutError:
        raise OperationFailed(f"{what} timed out after {timeout:.0f}s") from None
    assert child.returncode is not None
    return ExecResult(child.returncode, out, err)


class LocalGuestExec:
    """Runs guest-side commands on this host with HOME (and git's global config) in `root`.

    Guest paths are used verbatim, so tests pass guest paths inside `root`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    @property
    def description(self) -> str:
        return f"local guest at {self.root}"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            {
                "HOME": str(self.root),
                "GIT_CONFIG_GLOBAL": str(self.root / ".gitconfig"),
                "GIT_CONFIG_NOSYSTEM": "1",
                "TMPDIR": str(self.root),
            }
        )
        for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
            env.pop(var, None)
        return env

    async def run(
        self, argv: Sequence[str], *, stdin: Stdin = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> ExecResult:
        return await run_process(
            argv,
            stdin=stdin,
            timeout=timeout,
            env=self._env(),
            cwd=self.root,
            what=self.description,
        )

    async def spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        return await spawn_process(argv, env=self._env(), cwd=self.root)

    def transport_failure(self, returncode: int, err_tail: str) -> OperationFailed | None:
        return None


class SSHGuestExec:
    """Runs commands in a real guest through banger's OpenSSH client options.

    Used as an async context manager it opens one master connection and multiplexes every
    command over it (a new SSH handshake costs ~0.5 s against a TCG guest; a session on an open
    master costs tens of milliseconds). Without it each command connects on its own.
    """

    def __init__(
        self, target: SSHTarget, *, via: Callable[[list[str]], list[str]] | None = None
    ) -> None:
        self.target = target
        # A remote daemon's guest: `via` wraps each guest ssh argv to run on the remote host
        # (docs/remote.md), where the guest key and known_hosts live. No local master then.
        self.via = via
        self._control_dir: str | None = None

    @property
    def description(self) -> str:
        return f"ssh to vm {self.target.vm_name}"

    def _ssh_argv(self, remote: Sequence[str] | None) -> list[str]:
        from banger.guest.ssh import ssh_argv

        argv = ssh_argv(self.target, remote, tty=False)
        if self.via is not None:
            return self.via(argv)
        if self._control_dir is None:
            return argv
        opts = ["-o", f"ControlPath={self._control_dir}/m", "-o", "ControlMaster=no"]
        return [argv[0], *opts, *argv[1:]]

    def host_argv(self, argv: Sequence[str]) -> list[str]:
        # The remote side hands the command to the login shell as one string: quote it once.
        return self._ssh_argv([shlex.join(argv)])

    async def __aenter__(self) -> SSHGuestExec:
        if self.via is not None:
            return self  # each command is its own ssh through the remote host
        control_dir = tempfile.mkdtemp(prefix="bgmux-", dir="/tmp")  # short: sun_path limit
        base = self._ssh_argv(None)
        # -f -N: background once authenticated; its output goes nowhere we wait on.
        master = [
            base[0], "-o", "ControlMaster=yes", "-o", f"ControlPath={control_dir}/m",
            "-o", "ControlPersist=300", "-f", "-N", *base[1:],
        ]  # fmt: skip
        res = await run_process(master, stdin=None, timeout=60, what=self.description)
        if res.returncode != 0:
            shutil.rmtree(control_dir, ignore_errors=True)
            raise OperationFailed(f"{self.description} failed: {res.err_tail}")
        self._control_dir = control_dir
        return self

    async def __aexit__(self, *exc: object) -> None:
        control_dir, self._control_dir = self._control_dir, None
        if control_dir is None:
            return
        base = self._ssh_argv(None)
        stop = [base[0], "-o", f"ControlPath={control_dir}/m", "-O", "exit", *base[1:]]
        with contextlib.suppress(Exception):
            await run_process(stop, stdin=None, timeout=10, what=self.description)
        shutil.rmtree(control_dir, ignore_errors=True)

    async def run(
        self, argv: Sequence[str], *, stdin: Stdin = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> ExecResult:
        result = await run_process(
            self.host_argv(argv), stdin=stdin, timeout=timeout, what=self.description
        )
        failed = self.transport_failure(result.returncode, result.err_tail)
        if failed is not None:
            raise failed
        return result

    async def spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        return await spawn_process(self.host_argv(argv))

    def transport_failure(self, returncode: int, err_tail: str) -> OperationFailed | None:
        if returncode == 255:
            # OpenSSH's own failure (connection refused, host key mismatch…), not the command's.
            return OperationFailed(f"{self.description} failed: {err_tail}")
        return None

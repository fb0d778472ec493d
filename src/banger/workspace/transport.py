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
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from banger.rpc.errors import OperationFailed

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
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=stdin_arg,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=str(cwd) if cwd is not None else None,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(data), timeout)
    except (TimeoutError, asyncio.CancelledError) as e:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(e, asyncio.CancelledError):
            raise
        raise OperationFailed(f"{what} timed out after {timeout:.0f}s") from None
    assert proc.returncode is not None
    return ExecResult(proc.returncode, out, err)


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

    async def run(
        self, argv: Sequence[str], *, stdin: Stdin = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> ExecResult:
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
        return await run_process(
            argv, stdin=stdin, timeout=timeout, env=env, cwd=self.root, what=self.description
        )


class SSHGuestExec:
    """Runs commands in a real guest through banger's OpenSSH client options."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target

    @property
    def description(self) -> str:
        return f"ssh to vm {self.target.vm_name}"

    def host_argv(self, argv: Sequence[str]) -> list[str]:
        from banger.guest.ssh import ssh_argv

        # The remote side hands the command to the login shell as one string: quote it once.
        return ssh_argv(self.target, [shlex.join(argv)], tty=False)

    async def run(
        self, argv: Sequence[str], *, stdin: Stdin = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> ExecResult:
        result = await run_process(
            self.host_argv(argv), stdin=stdin, timeout=timeout, what=self.description
        )
        if result.returncode == 255:
            # OpenSSH's own failure (connection refused, host key mismatch…), not the command's.
            raise OperationFailed(f"{self.description} failed: {result.err_tail}")
        return result

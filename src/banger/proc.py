"""Run host tools without a shell; failures become OperationFailed naming the tool and stderr."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from banger.rpc.errors import OperationFailed


@dataclass(frozen=True)
class Result:
    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode(errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


def _fail(
    argv: Sequence[str], code: int | None, stderr: bytes, what: str | None
) -> OperationFailed:
    tail = stderr.decode(errors="replace").strip().splitlines()[-3:]
    label = what or argv[0]
    status = "timed out" if code is None else f"exited {code}"
    return OperationFailed(f"{label} {status}: {' | '.join(tail) or '(no output)'}")


async def communicate(
    proc: asyncio.subprocess.Process, input: bytes | None, timeout: float | None
) -> tuple[bytes, bytes]:
    """`proc.communicate(input)` within `timeout`. On timeout or cancellation the child is killed
    and reaped first, then TimeoutError / CancelledError propagates."""
    try:
        return await asyncio.wait_for(proc.communicate(input), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise


async def run(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 300,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    what: str | None = None,
) -> Result:
    """Run `argv` asynchronously; on cancellation or timeout the child is killed."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=dict(env) if env is not None else None,
        cwd=cwd,
    )
    try:
        stdout, stderr = await communicate(proc, input, timeout)
    except TimeoutError:
        raise _fail(argv, None, b"", what) from None
    assert proc.returncode is not None
    if check and proc.returncode != 0:
        raise _fail(argv, proc.returncode, stderr, what)
    return Result(tuple(argv), proc.returncode, stdout, stderr)


def run_sync(
    argv: Sequence[str],
    *,
    input: bytes | None = None,
    check: bool = True,
    timeout: float | None = 300,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    what: str | None = None,
) -> Result:
    """Blocking twin of `run` for code already on a worker thread (or the CLI)."""
    try:
        p = subprocess.run(
            list(argv),
            input=input,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise _fail(argv, None, b"", what) from None
    if check and p.returncode != 0:
        raise _fail(argv, p.returncode, p.stderr, what)
    return Result(tuple(argv), p.returncode, p.stdout, p.stderr)

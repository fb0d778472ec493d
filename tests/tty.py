"""Run the real CLI at a terminal (a pty, through pexpect): what a user at a shell sees, Ctrl-C
included (`sendintr` types the terminal's interrupt character, so the kernel sends SIGINT to the
foreground process group, as at a real shell)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pexpect

from tests.conftest import BangerEnv


def spawn(
    be: BangerEnv,
    *args: str,
    cols: int = 160,
    rows: int = 45,
    cwd: str | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 60,
) -> pexpect.spawn[str]:
    env = {**be.env, **(extra_env or {})}
    return pexpect.spawn(
        sys.executable,
        ["-m", "banger.cli.main", *args],
        env=env,
        cwd=cwd,
        dimensions=(rows, cols),
        encoding="utf-8",
        codec_errors="replace",
        timeout=timeout,
    )


def wait_for(child: pexpect.spawn[str], cond: Callable[[], bool], timeout: float) -> None:
    """Poll `cond` while draining the child's output (a full pty would block its writer)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out; output so far:\n{child.before}"
        child.expect([pexpect.TIMEOUT, pexpect.EOF], timeout=0.1)
        assert child.isalive(), f"exited early:\n{child.before}"


def finish(child: pexpect.spawn[str], timeout: float = 60) -> tuple[int | None, str]:
    """Wait for the child to exit: (exit status, everything it printed since the last expect)."""
    child.expect(pexpect.EOF, timeout=timeout)
    out = str(child.before)
    child.close()
    return child.exitstatus, out

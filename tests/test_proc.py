"""banger.proc: a timed-out or cancelled child is killed and reaped, never left running."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from banger import proc
from banger.rpc.errors import OperationFailed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_timeout_kills_the_child() -> None:
    started = time.monotonic()
    with pytest.raises(OperationFailed, match="sleep timed out"):
        asyncio.run(proc.run(["sleep", "30"], timeout=0.3))
    assert time.monotonic() - started < 10


def test_cancellation_kills_and_reaps_the_child() -> None:
    async def scenario() -> int:
        child = await asyncio.create_subprocess_exec("sleep", "30")
        task = asyncio.create_task(proc.communicate(child, None, 60))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert child.returncode is not None  # reaped, not a zombie
        return child.pid

    assert not _alive(asyncio.run(scenario()))


def test_output_and_failure() -> None:
    r = asyncio.run(proc.run(["sh", "-c", "echo out; echo err >&2"]))
    assert (r.out, r.err) == ("out\n", "err\n")
    with pytest.raises(OperationFailed, match="sh exited 3: boom"):
        asyncio.run(proc.run(["sh", "-c", "echo boom >&2; exit 3"]))

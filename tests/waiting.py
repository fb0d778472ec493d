"""Wait for a condition with a deadline, never a bare sleep: a failure says what did not happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
POLL_SECONDS = 0.02


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """Poll `predicate` until it returns something truthy (returned); AssertionError naming
    `what` once `timeout` seconds pass without it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        time.sleep(POLL_SECONDS)


async def async_wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """`wait_until` for a test running on an event loop (the loop keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:g}s")
        await asyncio.sleep(POLL_SECONDS)

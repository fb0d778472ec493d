"""Cancelling an offline-image build leaves no unretrieved-exception noise in the daemon log."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

from banger.images.debian import BUILTIN_NAME, Recipe, build_tarball
from tests.waiting import async_wait_until


@pytest.mark.slow
async def test_cancelled_build_logs_no_unretrieved_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = Recipe.builtin(BUILTIN_NAME, "http://deb.debian.org/debian")
    lines: list[str] = []
    task = asyncio.create_task(build_tarball(recipe, tmp_path / "out.tar", lines.append))
    # mmdebstrap is running once it has said something (it runs far longer than that).
    await async_wait_until(lambda: lines, 120, "mmdebstrap's first progress line")
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
        # Not a wait for something: a few loop turns in which a leaked exception would be
        # reported (the assertion is that nothing is).
        await asyncio.sleep(0.1)
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]

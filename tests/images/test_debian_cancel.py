"""Cancelling an offline-image build leaves no unretrieved-exception noise in the daemon log."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

import pytest

from banger.images.debian import BUILTIN_NAME, Recipe, build_tarball


@pytest.mark.slow
async def test_cancelled_build_logs_no_unretrieved_exception(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    recipe = Recipe.builtin(BUILTIN_NAME, "http://deb.debian.org/debian")
    task = asyncio.create_task(build_tarball(recipe, tmp_path / "out.tar", lambda _l: None))
    await asyncio.sleep(1.0)  # mmdebstrap is running (it takes far longer than this)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
        await asyncio.sleep(0.1)
        gc.collect()
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]

"""Daemon-level methods: ping and shutdown."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from banger.buildinfo import build_info
from banger.daemon.params import Params, parse_params
from banger.request import RequestContext

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class _NoParams(Params):
    pass


async def ping(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    parse_params(_NoParams, params)
    return {
        **build_info().as_dict(),
        "pid": os.getpid(),
        "uptime_seconds": round(time.monotonic() - d.started_monotonic, 3),
        "socket": str(d.paths.socket),
        "log": str(d.paths.daemon_log),
    }


async def shutdown(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    parse_params(_NoParams, params)
    d.request_shutdown()
    return {"stopping": True, "pid": os.getpid()}

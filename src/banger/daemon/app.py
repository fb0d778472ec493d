"""The daemon's composition root: paths, config, store, services, and the RPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import Any

from banger import __version__
from banger.config import Config
from banger.daemon import dispatch as dispatch_mod
from banger.paths import Paths
from banger.rpc.server import RPCServer
from banger.store.db import Store

log = logging.getLogger("banger.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0


class Daemon:
    def __init__(self, paths: Paths, config: Config) -> None:
        self.paths = paths
        self.config = config
        self.started_monotonic = time.monotonic()
        self.store = Store(paths.db_file)
        self._stopping = asyncio.Event()
        self.server = RPCServer(paths.socket, self._dispatch, may_cancel=self._may_cancel)

    async def _dispatch(self, obj: object, emit: Any) -> dict[str, Any]:
        return await dispatch_mod.dispatch(self, obj, progress_sink=emit)

    @staticmethod
    def _may_cancel(obj: object) -> bool:
        method = obj.get("method") if isinstance(obj, dict) else None
        return method not in dispatch_mod.UNCANCELLABLE

    def request_shutdown(self) -> None:
        self._stopping.set()

    async def start_services(self) -> None:
        """Open the store and let each service reconcile with what is on disk."""
        self.store.open()

    async def stop_services(self) -> None:
        self.store.close()

    async def run(self) -> None:
        self.paths.ensure()
        await self.start_services()
        await self.server.start()
        self.paths.pid_file.write_text(f"{os.getpid()}\n")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        log.info(
            "daemon ready",
            extra={"version": __version__, "pid": os.getpid(), "socket": str(self.paths.socket)},
        )
        await self._stopping.wait()
        log.info("daemon stopping", extra={"inflight": len(self.server.inflight)})
        # Let the shutdown response itself reach its client before the socket goes away.
        await asyncio.sleep(0.05)
        await self.server.close(SHUTDOWN_GRACE_SECONDS)
        await self.stop_services()
        with contextlib.suppress(FileNotFoundError):
            self.paths.pid_file.unlink()
        log.info("daemon stopped")

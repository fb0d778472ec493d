"""The daemon's composition root: paths, config, store, services, and the RPC server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from banger import __version__
from banger.config import Config
from banger.daemon import dispatch as dispatch_mod
from banger.images.service import ImageService
from banger.kernels.service import KernelService
from banger.network.service import NetworkService
from banger.paths import Paths, UnsafePathError
from banger.privhelper.client import HelperPrivOps
from banger.rpc.server import RPCServer
from banger.store.db import Store
from banger.vmm.registry import DriverRegistry
from banger.vms.observe import ObservationService
from banger.vms.service import VMService

log = logging.getLogger("banger.daemon")

SHUTDOWN_GRACE_SECONDS = 10.0


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    return "a special file"


def write_pid_file(path: Path) -> None:
    """Informational only (the lock decides who runs). Staged and renamed: whatever was at the
    path (a stale file, a planted link) is replaced, never written through."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    os.rename(tmp, path)


class Service(Protocol):
    async def start(self) -> None:
        """Reconcile with what is on disk (called once, after the store is open)."""
        ...

    async def stop(self) -> None: ...


# (kind, id) -> names of things that still use it, e.g. ("image", id) -> ["vm devbox"].
ReferenceCheck = Callable[[str, str], list[str]]


class Daemon:
    """Builds everything once, in dependency order, and hands each service what it uses."""

    def __init__(self, paths: Paths, config: Config) -> None:
        self.paths = paths
        self.config = config
        self.started_monotonic = time.monotonic()
        self.store = Store(paths.db_file)
        self._stopping = asyncio.Event()
        self.server = RPCServer(paths.socket, self._dispatch, may_cancel=self._may_cancel)
        # Deleting an image or kernel asks these first and refuses with `conflict` if any answer.
        self.reference_checks: list[ReferenceCheck] = []
        # System mode: privileged network work goes to bangerd-root (docs/privileges.md), and
        # so does starting Firecracker's jailer when this daemon is not root.
        privops = HelperPrivOps(paths.helper_socket) if paths.is_system else None
        # One registry for the daemon's life: drivers are built once, not per call.
        self.drivers = DriverRegistry(config, jail_launcher=privops)

        self.kernels = KernelService(paths, config, references=self.references)
        self.network = NetworkService(paths, config, self.store, privops)
        self.images = ImageService(
            paths, config, self.store, kernels=self.kernels, references=self.references
        )

        # After images, kernels and network: it re-adopts running VMs into them at start.
        self.vms = VMService(
            store=self.store,
            paths=paths,
            config=config,
            registry=self.drivers,
            images=self.images,
            kernels=self.kernels,
            network=self.network,
        )
        self.reference_checks.append(self.vms.references)

        # Start order: each service after the ones it uses (the VM service re-adopts running
        # VMs into kernels, images and network at its start). Stop runs in reverse.
        self.services: list[Service] = [self.kernels, self.network, self.images, self.vms]
        # Observation (vm.ping/health/stats/ports): no start/stop, not in self.services.
        self.observe = ObservationService(self.vms, self.drivers, self.network)

    @staticmethod
    def check_socket_path(path: Path) -> None:
        """Before binding (the lock is ours): a leftover socket nobody answers on is stale and the
        server replaces it; a live one belongs to someone else (a bangerd on another state dir
        sharing this runtime dir), and anything that is not a socket is not banger's to remove."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise UnsafePathError(
                f"{path} is {_kind(st.st_mode)}, not a socket; remove it and retry"
            )
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(str(path))
        except OSError:
            return  # nobody listens: stale
        else:
            creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", creds)[0]
            raise UnsafePathError(
                f"{path} is served by another process (pid {pid}): a bangerd for another state "
                "dir sharing this runtime dir? Stop it or give each its own XDG_RUNTIME_DIR"
            )
        finally:
            s.close()

    def references(self, kind: str, ident: str) -> list[str]:
        return [name for check in self.reference_checks for name in check(kind, ident)]

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
        for service in self.services:
            await service.start()

    async def stop_services(self) -> None:
        for service in reversed(self.services):
            try:
                await service.stop()
            except Exception:
                log.exception("service stop failed", extra={"service": type(service).__name__})
        self.store.close()

    async def run(self) -> None:
        self.paths.ensure()
        await self.start_services()
        # Handlers first: a SIGTERM right after the socket appears must still stop us cleanly.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_shutdown)
        await self.server.start()
        write_pid_file(self.paths.pid_file)
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

"""Find the daemon, starting it in the background when nothing answers on its socket."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from banger.paths import Paths, ensure_private_dir
from banger.rpc.client import Client, DaemonUnreachable
from banger.rpc.errors import OperationFailed

START_TIMEOUT_SECONDS = 15.0


def ping(paths: Paths) -> dict[str, object] | None:
    try:
        with Client(paths.socket) as c:
            result = c.call("ping", timeout=5)
            return result if isinstance(result, dict) else None
    except DaemonUnreachable:
        return None


def start_daemon(paths: Paths) -> dict[str, object]:
    """Spawn `bangerd` detached from this terminal and wait until it answers ping."""
    ensure_private_dir(paths.runtime_dir)
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    boot_log = paths.state_dir / "bangerd.stderr.log"
    with open(boot_log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "banger.daemon.main"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
            close_fds=True,
            env=os.environ.copy(),
        )
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        info = ping(paths)
        if info is not None:
            return info
        if proc.poll() is not None:
            tail = boot_log.read_text(errors="replace").strip().splitlines()[-5:]
            detail = "; ".join(tail) or f"exit status {proc.returncode}"
            raise OperationFailed(f"the daemon failed to start: {detail} (log: {boot_log})")
        time.sleep(0.05)
    raise OperationFailed(
        f"the daemon did not answer within {START_TIMEOUT_SECONDS:.0f}s (log: {paths.daemon_log})"
    )


def client() -> Client:
    """A connected client, starting the daemon first when needed."""
    paths = Paths.from_env()
    c = Client(paths.socket)
    try:
        c.connect()
        return c
    except DaemonUnreachable:
        start_daemon(paths)
    c.connect()
    return c

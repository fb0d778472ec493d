"""Find the daemon, starting it in the background when nothing answers on its socket."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

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
        # The log accumulates across starts: report only what this start wrote.
        offset = err.tell()
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
            with open(boot_log, "rb") as f:
                f.seek(offset)
                tail = f.read().decode(errors="replace").strip().splitlines()[-5:]
            detail = "; ".join(tail) or f"exit status {proc.returncode}"
            raise OperationFailed(f"the daemon failed to start: {detail} (log: {boot_log})")
        time.sleep(0.05)
    raise OperationFailed(
        f"the daemon did not answer within {START_TIMEOUT_SECONDS:.0f}s (log: {paths.daemon_log})"
    )


def resolve_paths() -> Paths:
    """The paths to use: the system install's when there is one, and then only for its owner."""
    from banger.paths import InstallError, read_install

    paths = Paths.detect()
    if paths.is_system:
        try:
            info = read_install(paths.system_root)
        except InstallError as e:
            raise OperationFailed(str(e)) from None
        if info is not None and os.getuid() != info.owner_uid:
            raise OperationFailed(
                f"banger is installed system-wide for {info.owner_user} (uid {info.owner_uid}); "
                f"only that user can use it: run `sudo -u {info.owner_user} banger ...` or log in "
                f"as {info.owner_user}"
            )
    return paths


def cancel_notice(method: str) -> None:
    """Ctrl-C landed during a request whose cancellation takes the daemon a moment."""
    from banger.cli.output import dim

    print(
        dim("interrupted; waiting for the daemon to cancel and clean up (Ctrl-C again: stop)"),
        file=sys.stderr,
        flush=True,
    )


def client() -> Client:
    """A connected client, starting the daemon first when needed (user mode only)."""
    paths = resolve_paths()
    c = Client(paths.socket, on_cancel_wait=cancel_notice)
    try:
        c.connect()
        return c
    except DaemonUnreachable:
        if paths.is_system:
            # systemd owns the daemon in system mode; the CLI never starts a second one.
            raise OperationFailed(
                f"the banger service is not reachable at {paths.socket}; "
                "run `sudo banger system restart` (see `banger system status`)"
            ) from None
        start_daemon(paths)
    c.connect()
    return c


def call(method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
    """One request on its own connection (starting the daemon when needed); `kw` goes to
    `Client.call` (on_progress, timeout)."""
    with client() as c:
        return c.call(method, params, **kw)

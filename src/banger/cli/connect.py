"""The CLI's way to the daemon: banger.client's, plus the CLI's own notice when Ctrl-C waits
for the daemon to cancel a request."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from banger.client.local import ping, resolve_paths, start_daemon
from banger.client.target import current_remote, set_remote

if TYPE_CHECKING:
    from banger.rpc.client import Client

__all__ = [
    "call",
    "cancel_notice",
    "client",
    "current_remote",
    "ping",
    "remote_ping",
    "resolve_paths",
    "set_remote",
    "start_daemon",
]


def cancel_notice(method: str) -> None:
    """Ctrl-C landed during a request whose cancellation takes the daemon a moment."""
    from banger.cli.output import dim

    print(
        dim("interrupted; waiting for the daemon to cancel and clean up (Ctrl-C again: stop)"),
        file=sys.stderr,
        flush=True,
    )


def client() -> Client:
    """A connected client (client.target.client), starting the local daemon when needed."""
    from banger.client import target

    return target.client(cancel_notice)


def call(method: str, params: dict[str, Any] | None = None, **kw: Any) -> Any:
    """One request on its own connection (starting the daemon when needed); `kw` goes to
    `Client.call` (on_progress, timeout)."""
    from banger.client import target

    return target.call(method, params, on_cancel_wait=cancel_notice, **kw)


def remote_ping() -> dict[str, object] | None:
    """The remote daemon's ping answer (the remote dial-stdio starts it when needed)."""
    from banger.client import target

    return target.remote_ping(cancel_notice)

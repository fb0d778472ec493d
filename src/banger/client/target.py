"""The daemon this process talks to: the one on this machine (started on demand), or the one
on the remote host chosen with `--host` / BANGER_HOST. While a remote host is set, no local
daemon is ever started or asked."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from banger.rpc.client import Client, DaemonUnreachable
from banger.rpc.errors import OperationFailed

if TYPE_CHECKING:
    from banger.client.ssh_host import RemoteHost

# The remote host this process talks to (set by the CLI's root group), or None for this machine.
REMOTE: RemoteHost | None = None


def set_remote(remote: RemoteHost | None) -> None:
    global REMOTE
    REMOTE = remote


def current_remote() -> RemoteHost | None:
    return REMOTE


def client(on_cancel_wait: Callable[[str], None] | None = None) -> Client:
    """A connected client, starting the daemon first when needed (user mode only). With a
    remote host: a client over ssh to its `banger daemon dial-stdio` (which starts the remote's
    daemon when needed); nothing local is started. `on_cancel_wait` is told when an interrupted
    request waits for the daemon to cancel it."""
    if REMOTE is not None:
        from banger.client.ssh_transport import SSHTransport

        remote_client = Client(transport=SSHTransport(REMOTE), on_cancel_wait=on_cancel_wait)
        remote_client.connect()
        return remote_client
    from banger.client.local import resolve_paths, start_daemon

    paths = resolve_paths()
    c = Client(paths.socket, on_cancel_wait=on_cancel_wait)
    try:
        c.connect()
        return c
    except DaemonUnreachable:
        if paths.is_system:
            # systemd owns the daemon in system mode; a client never starts a second one.
            raise OperationFailed(
                f"the banger service is not reachable at {paths.socket}; "
                "run `sudo banger system restart` (see `banger system status`)"
            ) from None
        start_daemon(paths)
    c.connect()
    return c


def call(
    method: str,
    params: dict[str, Any] | None = None,
    *,
    on_cancel_wait: Callable[[str], None] | None = None,
    **kw: Any,
) -> Any:
    """One request on its own connection (starting the daemon when needed); `kw` goes to
    `Client.call` (on_progress, timeout)."""
    with client(on_cancel_wait) as c:
        return c.call(method, params, **kw)


def remote_ping(on_cancel_wait: Callable[[str], None] | None = None) -> dict[str, object] | None:
    """The remote daemon's ping answer (the remote dial-stdio starts it when needed)."""
    with client(on_cancel_wait) as c:
        result = c.call("ping", timeout=30)
    return result if isinstance(result, dict) else None


def via_remote(argv: list[str], *, tty: bool = False) -> list[str]:
    """`argv` (a guest ssh command) as this process's host runs it: unchanged locally, wrapped
    in ssh to the remote host when one is set. The guest's key and pinned host key stay on the
    remote: the same guest `ssh` argv runs there, through the user's own ssh to it."""
    if REMOTE is None:
        return list(argv)
    return REMOTE.ssh_argv(argv, tty=tty)


def guest_wrapper() -> Callable[[list[str]], list[str]] | None:
    """For SSHGuestExec(via=…): None locally (banger's own multiplexed ssh)."""
    if REMOTE is None:
        return None
    remote = REMOTE
    return lambda argv: remote.ssh_argv(argv)

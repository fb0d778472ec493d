"""How the SDK reaches a daemon: the one seam between the SDK and where the daemon runs.

`DaemonConnection` is what every SDK object talks through: `call()` sends one RPC request
(docs/rpc.md) and `connect_guest()` opens the SSH connection to a sandbox. `LocalDaemon` is the
daemon on this machine (the CLI's socket, started on demand like the CLI does). A remote daemon
(`ssh://host`) is another implementation of the same two methods; `connect_daemon(host=...)` is
where it will be chosen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from banger.rpc import PROTOCOL_VERSION
from banger.sdk.errors import DaemonUnavailable, GuestConnectionError, OperationFailed, from_wire

if TYPE_CHECKING:
    import asyncssh

    from banger.paths import Paths

# One response line can carry a whole patch (vm.workspace.export, base64): allow big lines.
MAX_LINE_BYTES = 1 << 30
# Guest SSH: the one key exchange banger's guest sshd offers (guest/payload.py SSHD_CONFIG).
GUEST_KEX = ("curve25519-sha256", "curve25519-sha256@libssh.org")
GUEST_CONNECT_TIMEOUT = 30.0


class DaemonConnection(Protocol):
    """A daemon the SDK can use. Implementations must be safe for concurrent calls."""

    @property
    def description(self) -> str:
        """Where the daemon is, for error messages ("local daemon at /run/…/bangerd.sock")."""
        ...

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """One RPC request; the result, or the daemon's error as a BangerError subclass."""
        ...

    async def connect_guest(self, target: dict[str, Any]) -> asyncssh.SSHClientConnection:
        """An SSH connection to a sandbox, given the daemon's `vm.ssh` answer."""
        ...


class LocalDaemon:
    """The daemon on this machine, over its Unix socket (one connection per request).

    `LocalDaemon()` finds the socket the way the CLI does (XDG paths, or the system install)
    and starts the daemon when nothing answers (user mode only). `LocalDaemon(socket_path=…)`
    uses that socket and never starts anything.
    """

    def __init__(self, socket_path: Path | str | None = None) -> None:
        self._paths: Paths | None = None
        if socket_path is None:
            from banger.client.local import resolve_paths
            from banger.rpc.errors import RPCError

            try:
                self._paths = resolve_paths()
            except RPCError as e:
                raise DaemonUnavailable(e.message) from None
            self.socket_path = self._paths.socket
        else:
            self.socket_path = Path(socket_path)
        self._start_lock = asyncio.Lock()

    @property
    def description(self) -> str:
        return f"local daemon at {self.socket_path}"

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(str(self.socket_path), limit=MAX_LINE_BYTES)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            if self._paths is None or self._paths.is_system:
                hint = (
                    "run `sudo banger system restart`"
                    if self._paths is not None
                    else "start it with `banger daemon start`"
                )
                raise DaemonUnavailable(f"no daemon at {self.socket_path} ({e}); {hint}") from None
        async with self._start_lock:
            await self._start()
        try:
            return await asyncio.open_unix_connection(str(self.socket_path), limit=MAX_LINE_BYTES)
        except OSError as e:
            raise DaemonUnavailable(f"no daemon at {self.socket_path}: {e}") from None

    async def _start(self) -> None:
        from banger.client.local import ping, start_daemon
        from banger.rpc.errors import RPCError

        assert self._paths is not None
        paths = self._paths
        if await asyncio.to_thread(ping, paths) is not None:
            return  # another caller started it meanwhile
        try:
            await asyncio.to_thread(start_daemon, paths)
        except RPCError as e:
            raise DaemonUnavailable(e.message) from None

    async def call(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        return await asyncio.wait_for(self._call(method, params), timeout)

    async def _call(self, method: str, params: dict[str, Any] | None) -> Any:
        reader, writer = await self._open()
        try:
            request: dict[str, Any] = {"version": PROTOCOL_VERSION, "method": method}
            if params:
                request["params"] = params
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            while True:
                line = await reader.readline()
                if not line:
                    raise OperationFailed(
                        f"the daemon closed the connection during {method}; "
                        "see `banger daemon status` for its log"
                    )
                msg = json.loads(line)
                if not isinstance(msg, dict) or ("progress" in msg and "ok" not in msg):
                    continue
                if msg.get("ok"):
                    return msg.get("result")
                raise from_wire(msg.get("error"))
        finally:
            # Closing early (cancellation, timeout) is how the daemon learns to cancel the request.
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def connect_guest(self, target: dict[str, Any]) -> asyncssh.SSHClientConnection:
        return await connect_guest_ssh(target)


async def connect_guest_ssh(
    target: dict[str, Any],
    *,
    tunnel: object = None,
    proxy_command: list[str] | None = None,
    client_keys: list[Any] | None = None,
    known_hosts: Any = None,
) -> asyncssh.SSHClientConnection:
    """asyncssh to a guest with banger's client key and the host key pinned in banger's own
    known_hosts (under the `<vm>.vm` alias): strict checking, no ~/.ssh/config, no agent.
    A remote daemon's guest passes `proxy_command` (ssh -W through the remote host) and the
    key and known_hosts it read from the remote (sdk/remote.py)."""
    import asyncssh

    try:
        host = str(target["host"])
        port = int(target["port"])
        user = str(target["user"])
        key_path = str(target["key_path"])
        known_hosts_path = str(target["known_hosts_path"])
        alias = str(target.get("host_key_alias") or f"{target['vm_name']}.vm")
    except (KeyError, TypeError, ValueError) as e:
        raise OperationFailed(f"the daemon's vm.ssh answer lacks {e}") from None
    name = str(target.get("vm_name", alias))
    try:
        return await asyncssh.connect(
            host,
            port,
            tunnel=tunnel,
            proxy_command=proxy_command,
            username=user,
            client_keys=client_keys if client_keys is not None else [key_path],
            known_hosts=known_hosts if known_hosts is not None else known_hosts_path,
            host_key_alias=alias,
            config=None,
            agent_path=None,
            preferred_auth="publickey",
            kex_algs=list(GUEST_KEX),
            connect_timeout=GUEST_CONNECT_TIMEOUT,
            keepalive_interval=15,
        )
    except asyncssh.HostKeyNotVerifiable as e:
        raise GuestConnectionError(
            f"sandbox {name}: its SSH host key is not the one banger pinned for {alias} in "
            f"{known_hosts_path} ({e.reason}); refusing to connect"
        ) from None
    except (OSError, asyncssh.Error, TimeoutError) as e:
        detail = getattr(e, "reason", "") or str(e) or type(e).__name__
        raise GuestConnectionError(
            f"sandbox {name}: SSH to {host}:{port} failed: {detail}; check `banger vm logs {name}`"
        ) from None


def connect_daemon(host: str | None = None) -> DaemonConnection:
    """The daemon to use: the local one (`host=None`), or the one on `ssh://[user@]host[:port]`
    over OpenSSH (docs/remote.md). `host=None` also honours BANGER_HOST, as the CLI does."""
    import os

    host = host or os.environ.get("BANGER_HOST") or None
    if host is not None:
        from banger.sdk.remote import RemoteDaemon

        return RemoteDaemon(host)
    return LocalDaemon()

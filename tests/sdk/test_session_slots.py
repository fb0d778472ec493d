"""Commands over one SSH connection when the server refuses sessions beyond its limit (sshd's
MaxSessions counts sessions until they are fully closed): the SDK waits for a slot on the same
connection, never drops it (that would end the other commands on it without exit status).

A real asyncssh server on 127.0.0.1 stands in for the guest's sshd: it runs each command's
exit code from the command line and refuses a session while `limit` are open.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncssh

from banger.sdk.command import OutputSink
from banger.sdk.guest import GuestSession


class _Server(asyncssh.SSHServer):
    open_sessions = 0
    connections = 0
    refused = 0
    limit = 2

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        type(self).connections += 1

    def begin_auth(self, username: str) -> bool:
        return False  # no authentication: a test server on loopback

    def session_requested(self) -> Any:
        cls = type(self)
        if cls.open_sessions >= cls.limit:
            cls.refused += 1
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_CONNECT_FAILED, "open failed")
        cls.open_sessions += 1
        return _Session()


class _Session(asyncssh.SSHServerSession[bytes]):
    def connection_made(self, chan: Any) -> None:
        self._chan = chan

    def exec_requested(self, command: str) -> bool:
        # The command's last line is `exit N`: answer with N after a moment.
        code = int(command.rsplit("exit ", 1)[1])
        asyncio.get_running_loop().call_later(0.05, self._chan.exit, code)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        _Server.open_sessions -= 1


class _Daemon:
    """What GuestSession asks of the daemon: where the guest's sshd is, and a connection."""

    def __init__(self, port: int) -> None:
        self.port = port

    async def call(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port}

    async def connect_guest(self, target: dict[str, Any]) -> asyncssh.SSHClientConnection:
        return await asyncssh.connect(
            target["host"], target["port"], known_hosts=None, username="root"
        )


async def test_commands_beyond_the_servers_session_limit_wait_on_the_same_connection() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = await asyncssh.create_server(
        _Server, "127.0.0.1", 0, server_host_keys=[key], encoding=None
    )
    port = server.sockets[0].getsockname()[1]
    guest = GuestSession(_Daemon(port), "slots")  # type: ignore[arg-type]
    try:

        async def run(i: int) -> int:
            sink = OutputSink(None, None)
            return await guest.run(f"exit {i}", stdin=None, timeout=30, out=sink, err=sink)

        codes = await asyncio.gather(*(run(i) for i in range(8)))
        assert codes == list(range(8))  # every command reported its own exit status
        assert _Server.refused > 0  # the limit was met, and waited out
        assert _Server.connections == 1  # on the one connection it started with
    finally:
        await guest.close()
        server.close()
        await server.wait_closed()

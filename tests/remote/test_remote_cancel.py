"""Ctrl-C and timeouts keep their meaning over ssh: the client closes ssh's stdin, the remote
`banger daemon dial-stdio` half-closes the daemon's socket, the daemon cancels and cleans up,
and only then does the client return. The "daemon" is an RPCServer on the remote's socket path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from banger.client.ssh_host import parse_host
from banger.client.ssh_transport import SSHTransport
from banger.rpc.client import Client, DaemonTimeout, Interrupted
from banger.rpc.server import RPCServer
from tests.remote.conftest import Remote

CLEANUP_SECONDS = 0.6


async def _server(remote: Remote, state: dict[str, Any]) -> RPCServer:
    async def dispatcher(obj: object, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        assert isinstance(obj, dict)
        if obj.get("method") == "silent":
            await asyncio.sleep(60)  # a request that never says anything: under test
        emit({"progress": {"stage": "work"}, "op_id": "op-000000000000"})
        try:
            await asyncio.sleep(60)  # a long request: its cancellation is under test
        except asyncio.CancelledError:
            await asyncio.sleep(CLEANUP_SECONDS)  # undoing what was made takes a while
            state["cleaned_at"] = time.monotonic()
            raise
        return {"ok": True, "result": "finished"}

    path = remote.env.paths.socket
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    srv = RPCServer(path, dispatcher, may_cancel=lambda _obj: True)
    await srv.start()
    return srv


def _interrupt(_: dict[str, Any]) -> None:
    raise KeyboardInterrupt  # Ctrl-C landing while a progress line is handled


@pytest.fixture
def ssh_env(remote: Remote, monkeypatch: pytest.MonkeyPatch) -> Remote:
    monkeypatch.setenv("BANGER_SSH_COMMAND", remote.ssh_command)
    return remote


async def test_ctrl_c_over_ssh_waits_for_the_remote_cleanup(ssh_env: Remote) -> None:
    state: dict[str, Any] = {}
    srv = await _server(ssh_env, state)
    try:

        def call() -> tuple[Interrupted, float]:
            c = Client(transport=SSHTransport(parse_host(ssh_env.url)))
            with c, pytest.raises(Interrupted) as info:
                c.call("slow", on_progress=_interrupt)
            return info.value, time.monotonic()

        e, returned_at = await asyncio.to_thread(call)
    finally:
        await srv.close(grace=1)
    assert e.cleaned and not e.completed
    # The daemon saw the half-close through ssh and dial-stdio, and had cleaned up by then.
    assert state["cleaned_at"] <= returned_at


async def test_a_silent_remote_daemon_times_out_naming_the_host(ssh_env: Remote) -> None:
    srv = await _server(ssh_env, {})
    try:

        def call() -> DaemonTimeout:
            with (
                Client(transport=SSHTransport(parse_host(ssh_env.url))) as c,
                pytest.raises(DaemonTimeout) as info,
            ):
                c.call("silent", timeout=3)
            return info.value

        e = await asyncio.to_thread(call)
    finally:
        await srv.close(grace=1)
    assert e.message == (
        f"the daemon did not answer silent within 3 s ({ssh_env.url}); "
        "see `banger daemon status` for its log"
    )

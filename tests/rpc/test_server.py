"""The RPC server in-process: ordering, progress lines, disconnect cancellation, graceful close."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from banger.rpc.server import RPCServer


async def _roundtrip(
    sock: Path, lines: list[bytes], expect: int | None = None
) -> list[dict[str, Any]]:
    """Send `lines`, read `expect` answers (default: one per line). EOF counts as a disconnect
    (which cancels work), so the connection stays open until the answers are in."""
    reader, writer = await asyncio.open_unix_connection(str(sock), limit=1 << 20)
    for line in lines:
        writer.write(line)
    await writer.drain()
    out: list[dict[str, Any]] = []
    for _ in range(len(lines) if expect is None else expect):
        raw = await asyncio.wait_for(reader.readline(), 10)
        if not raw:
            break
        out.append(json.loads(raw))
    writer.close()
    return out


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[tuple[RPCServer, dict[str, Any]]]:
    state: dict[str, Any] = {"cancelled": 0, "finished": 0}

    async def dispatcher(obj: object, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        assert isinstance(obj, dict)
        method = obj.get("method")
        if method == "sleep":
            try:
                await asyncio.sleep(float(obj["params"]["seconds"]))
            except asyncio.CancelledError:
                state["cancelled"] += 1
                raise
            state["finished"] += 1
            return {"ok": True, "result": "slept"}
        if method == "count":
            for i in range(3):
                emit({"progress": {"i": i}, "op_id": "op-000000000000"})
            return {"ok": True, "result": 3}
        return {"ok": True, "result": obj.get("params")}

    def may_cancel(obj: object) -> bool:
        return not (isinstance(obj, dict) and obj.get("params", {}).get("shield"))

    srv = RPCServer(tmp_path / "s.sock", dispatcher, may_cancel=may_cancel)
    await srv.start()
    yield srv, state
    await srv.close(grace=1)


async def test_socket_is_private(server: tuple[RPCServer, dict[str, Any]]) -> None:
    srv, _ = server
    assert stat.S_IMODE(os.stat(srv.socket_path).st_mode) == 0o600


async def test_pipelined_requests_answer_in_order(server: tuple[RPCServer, dict[str, Any]]) -> None:
    srv, _ = server
    lines = [json.dumps({"method": "echo", "params": {"n": n}}).encode() + b"\n" for n in range(20)]
    out = await _roundtrip(srv.socket_path, lines)
    assert [o["result"]["n"] for o in out] == list(range(20))


async def test_progress_lines_precede_the_answer(server: tuple[RPCServer, dict[str, Any]]) -> None:
    srv, _ = server
    out = await _roundtrip(srv.socket_path, [b'{"method":"count"}\n'], expect=4)
    assert [o.get("progress", {}).get("i") for o in out[:3]] == [0, 1, 2]
    assert out[3] == {"ok": True, "result": 3}


async def test_garbage_gets_bad_request_and_the_connection_keeps_working(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, _ = server
    out = await _roundtrip(srv.socket_path, [b"{nope\n", b'{"method":"echo","params":{"a":1}}\n'])
    assert out[0]["error"]["code"] == "bad_request"
    assert out[0]["error"]["op_id"].startswith("op-")
    assert out[1]["result"] == {"a": 1}


async def test_overlong_line_is_refused_and_the_connection_resyncs(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, _ = server
    huge = b'{"method":"echo","params":{"x":"' + b"a" * (5 * 1024 * 1024) + b'"}}\n'
    out = await _roundtrip(srv.socket_path, [huge, b'{"method":"echo","params":{"n":2}}\n'])
    assert out[0]["error"]["code"] == "bad_request"
    assert "longer than" in out[0]["error"]["message"]
    assert out[1]["result"] == {"n": 2}
    # and the server still serves a new connection
    again = await _roundtrip(srv.socket_path, [b'{"method":"echo","params":{"ok":1}}\n'])
    assert again[0]["result"] == {"ok": 1}


async def test_client_disconnect_cancels_the_request(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, state = server
    _, writer = await asyncio.open_unix_connection(str(srv.socket_path))
    writer.write(b'{"method":"sleep","params":{"seconds":30}}\n')
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    for _ in range(50):
        if state["cancelled"]:
            break
        await asyncio.sleep(0.05)
    assert state["cancelled"] == 1
    assert state["finished"] == 0


async def test_shielded_request_finishes_after_disconnect(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, state = server
    _, writer = await asyncio.open_unix_connection(str(srv.socket_path))
    writer.write(b'{"method":"sleep","params":{"seconds":0.3,"shield":true}}\n')
    await writer.drain()
    await asyncio.sleep(0.1)
    writer.close()
    await asyncio.sleep(0.6)
    assert state["finished"] == 1
    assert state["cancelled"] == 0


async def test_close_lets_inflight_requests_finish(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, state = server
    task = asyncio.create_task(
        _roundtrip(srv.socket_path, [b'{"method":"sleep","params":{"seconds":0.3}}\n'])
    )
    await asyncio.sleep(0.1)
    await srv.close(grace=5)
    assert (await task)[0]["result"] == "slept"
    assert not srv.socket_path.exists()

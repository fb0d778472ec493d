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
from tests.waiting import async_wait_until


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
    state: dict[str, Any] = {"started": 0, "cancelled": 0, "finished": 0}

    async def dispatcher(obj: object, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        assert isinstance(obj, dict)
        method = obj.get("method")
        if method == "sleep":
            state["started"] += 1
            try:
                # A request that takes a while is what these tests are about.
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
    await async_wait_until(lambda: state["started"], 10, "the request starting")
    writer.close()
    await async_wait_until(lambda: state["cancelled"], 10, "the request's cancellation")
    assert state["cancelled"] == 1
    assert state["finished"] == 0


async def test_shielded_request_finishes_after_disconnect(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, state = server
    _, writer = await asyncio.open_unix_connection(str(srv.socket_path))
    writer.write(b'{"method":"sleep","params":{"seconds":0.3,"shield":true}}\n')
    await writer.drain()
    await async_wait_until(lambda: state["started"], 10, "the request starting")
    writer.close()
    await async_wait_until(
        lambda: state["finished"] or state["cancelled"], 10, "the request ending"
    )
    assert state["finished"] == 1
    assert state["cancelled"] == 0


async def test_close_lets_inflight_requests_finish(
    server: tuple[RPCServer, dict[str, Any]],
) -> None:
    srv, state = server
    task = asyncio.create_task(
        _roundtrip(srv.socket_path, [b'{"method":"sleep","params":{"seconds":0.3}}\n'])
    )
    await async_wait_until(lambda: state["started"], 10, "the request starting")
    await srv.close(grace=5)
    assert (await task)[0]["result"] == "slept"
    assert not srv.socket_path.exists()


# --- limits: idle connections, the connection cap -----------------------------------------------


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> list[bytes]:
    """Every line the server sends until it closes the connection (fails after `seconds`)."""
    lines = []
    while True:
        line = await asyncio.wait_for(reader.readline(), seconds)
        if not line:
            return lines
        lines.append(line)


@pytest.fixture
async def limited(tmp_path: Path) -> AsyncIterator[RPCServer]:
    async def dispatcher(obj: object, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        assert isinstance(obj, dict)
        if obj.get("method") == "sleep":
            # Long, and silent: no progress line keeps the connection looking active.
            await asyncio.sleep(float(obj["params"]["seconds"]))
        return {"ok": True, "result": obj.get("method")}

    srv = RPCServer(
        tmp_path / "l.sock",
        dispatcher,
        may_cancel=lambda _: True,
        max_connections=8,
        idle_timeout=0.5,
    )
    await srv.start()
    yield srv
    await srv.close(grace=1)


async def test_idle_connection_is_closed_but_a_long_request_is_not_cut(
    limited: RPCServer,
) -> None:
    idle_r, idle_w = await asyncio.open_unix_connection(str(limited.socket_path))
    busy_r, busy_w = await asyncio.open_unix_connection(str(limited.socket_path))
    # Four times the idle timeout without a byte either way: in flight, so never cut.
    busy_w.write(b'{"method":"sleep","params":{"seconds":2}}\n')
    await busy_w.drain()
    assert await _eof_within(idle_r, 10) == []
    answer = await asyncio.wait_for(busy_r.readline(), 10)
    assert json.loads(answer) == {"ok": True, "result": "sleep"}
    # …and once answered, that connection is idle too and goes the same way.
    assert await _eof_within(busy_r, 10) == []
    idle_w.close()
    busy_w.close()


async def test_at_the_cap_the_longest_idle_connection_makes_room(limited: RPCServer) -> None:
    conns = [await asyncio.open_unix_connection(str(limited.socket_path)) for _ in range(8)]
    # Let the server register all eight before the ninth arrives (its accept order is theirs).
    for r, w in conns:
        w.write(b'{"method":"echo"}\n')
        await w.drain()
        await asyncio.wait_for(r.readline(), 10)
    r9, w9 = await asyncio.open_unix_connection(str(limited.socket_path))
    w9.write(b'{"method":"ping"}\n')
    await w9.drain()
    assert json.loads(await asyncio.wait_for(r9.readline(), 10))["result"] == "ping"
    evicted = await _eof_within(conns[0][0], 10)
    assert len(evicted) == 1
    err = json.loads(evicted[0])["error"]
    assert err["code"] == "busy"
    assert "limit of 8 connections" in err["message"]
    assert err["op_id"].startswith("op-")
    for _, w in [*conns, (r9, w9)]:
        w.close()


async def test_at_the_cap_with_every_connection_busy_the_newcomer_is_refused(
    limited: RPCServer,
) -> None:
    conns = [await asyncio.open_unix_connection(str(limited.socket_path)) for _ in range(8)]
    for _, w in conns:
        w.write(b'{"method":"sleep","params":{"seconds":3}}\n')
        await w.drain()
    await async_wait_until(lambda: len(limited.inflight) == 8, 10, "all eight requests running")
    r, w = await asyncio.open_unix_connection(str(limited.socket_path))
    lines = await _eof_within(r, 10)
    err = json.loads(lines[0])["error"]
    assert err["code"] == "busy"
    assert "all with requests in flight" in err["message"]
    # The busy ones were not touched: each gets its answer.
    for reader, _ in conns:
        assert json.loads(await asyncio.wait_for(reader.readline(), 10))["ok"] is True
    for _, writer in [*conns, (r, w)]:
        writer.close()


async def test_the_cli_client_retries_a_busy_answer_on_a_new_connection(
    limited: RPCServer,
) -> None:
    from banger.rpc.client import Client

    c = Client(limited.socket_path)
    assert await asyncio.to_thread(c.call, "first") == "first"
    # Eight newer connections: c's, idle the longest, is closed to make room for the last.
    others = [await asyncio.open_unix_connection(str(limited.socket_path)) for _ in range(8)]
    for r, w in others:
        w.write(b'{"method":"echo"}\n')
        await w.drain()
        await asyncio.wait_for(r.readline(), 10)
    # The request goes out on the closed connection, reads `busy`, and is sent again.
    assert await asyncio.to_thread(c.call, "second") == "second"
    c.close()
    for _, w in others:
        w.close()


async def test_the_cli_client_reports_busy_when_every_connection_stays_busy(
    limited: RPCServer,
) -> None:
    from banger.rpc.client import Client
    from banger.rpc.errors import Busy

    conns = [await asyncio.open_unix_connection(str(limited.socket_path)) for _ in range(8)]
    for _, w in conns:
        w.write(b'{"method":"sleep","params":{"seconds":30}}\n')
        await w.drain()
    await async_wait_until(lambda: len(limited.inflight) == 8, 10, "all eight requests running")
    with pytest.raises(Busy, match="limit of 8 connections, all with requests in flight"):
        await asyncio.to_thread(Client(limited.socket_path).call, "ping")
    for _, w in conns:
        w.close()


async def test_progress_to_a_client_that_does_not_read_is_dropped_not_queued(
    tmp_path: Path,
) -> None:
    from banger.rpc.server import PROGRESS_BUFFER_LIMIT

    async def chatty(obj: object, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        # 8 MiB of progress in one go, while the client reads nothing.
        for i in range(8192):
            emit({"progress": {"i": i, "pad": "p" * 1000}, "op_id": "op-000000000000"})
        return {"ok": True, "result": "done"}

    srv = RPCServer(tmp_path / "c.sock", chatty, may_cancel=lambda _: True)
    await srv.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(srv.socket_path), limit=1 << 20)
        writer.write(b'{"method":"chatty"}\n')
        await writer.drain()
        lines = []
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            msg = json.loads(line)
            if "ok" in msg:
                break
            lines.append(msg)
        assert msg == {"ok": True, "result": "done"}
        # What was kept is what the socket and the 1 MiB limit could hold; the rest was dropped.
        # (socket buffers take a few hundred KiB before the daemon's own buffer fills.)
        assert 0 < len(lines) < 8192
        assert sum(len(json.dumps(m)) for m in lines) < PROGRESS_BUFFER_LIMIT + 1024 * 1024
        writer.close()
    finally:
        await srv.close(grace=1)

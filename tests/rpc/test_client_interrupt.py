"""Ctrl-C in the blocking client: it half-closes, and returns only once the daemon's side has
cancelled the request and finished its cleanup (what makes an immediate retry safe)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from banger.rpc.client import Client, Interrupted
from banger.rpc.server import RPCServer

CLEANUP_SECONDS = 0.6


async def _server(tmp_path: Path, state: dict[str, Any]) -> RPCServer:
    async def dispatcher(obj: object, emit: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        assert isinstance(obj, dict)
        emit({"progress": {"stage": "work"}, "op_id": "op-000000000000"})
        if obj.get("method") == "quick":
            return {"ok": True, "result": "done"}
        if obj.get("method") == "keep":  # uncancellable: finishes after the disconnect
            await asyncio.sleep(CLEANUP_SECONDS)  # work that takes a while: under test
            return {"ok": True, "result": "kept"}
        try:
            await asyncio.sleep(60)  # a long request: its cancellation is under test
        except asyncio.CancelledError:
            await asyncio.sleep(CLEANUP_SECONDS)  # undoing what was made takes a while
            state["cleaned_at"] = time.monotonic()
            raise
        return {"ok": True, "result": "finished"}

    def may_cancel(obj: object) -> bool:
        return not (isinstance(obj, dict) and obj.get("method") == "keep")

    srv = RPCServer(tmp_path / "s.sock", dispatcher, may_cancel=may_cancel)
    await srv.start()
    return srv


def _interrupt(_: dict[str, Any]) -> None:
    raise KeyboardInterrupt  # Ctrl-C landing while a progress line is handled


async def test_ctrl_c_waits_for_the_cancelled_requests_cleanup(tmp_path: Path) -> None:
    state: dict[str, Any] = {}
    srv = await _server(tmp_path, state)
    notices: list[str] = []
    try:

        def call() -> tuple[Interrupted, float]:
            c = Client(srv.socket_path, on_cancel_wait=notices.append)
            with c, pytest.raises(Interrupted) as info:
                c.call("slow", on_progress=_interrupt)
            return info.value, time.monotonic()

        e, returned_at = await asyncio.to_thread(call)
    finally:
        await srv.close(grace=1)
    assert e.cleaned and not e.completed
    assert state["cleaned_at"] <= returned_at  # the cleanup was over when the call returned
    assert notices == ["slow"]  # it took a moment, so the user was told why nothing happens


async def test_work_that_finishes_anyway_still_answers_the_half_closed_client(
    tmp_path: Path,
) -> None:
    """An uncancellable request (or one past its point of no return) finishes after Ctrl-C: its
    answer reaches the client, which then knows the work was done instead of claiming it was
    cancelled (it used to get no answer at all)."""
    srv = await _server(tmp_path, {})
    try:

        def call() -> Interrupted:
            with Client(srv.socket_path) as c, pytest.raises(Interrupted) as info:
                c.call("keep", on_progress=_interrupt)
            return info.value

        e = await asyncio.to_thread(call)
    finally:
        await srv.close(grace=1)
    assert e.cleaned and e.completed and e.result == "kept"


def test_ctrl_c_after_the_answer_arrived_reports_the_result(tmp_path: Path) -> None:
    """The answer came in the same read as the progress line Ctrl-C interrupted: it sits in the
    client's buffer, and the client must not claim the request was cancelled."""
    path = tmp_path / "one.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)  # the request
            progress = {"progress": {"stage": "work"}, "op_id": "op-000000000000"}
            answer = {"ok": True, "result": "done"}
            conn.sendall(
                json.dumps(progress).encode() + b"\n" + json.dumps(answer).encode() + b"\n"
            )
            while conn.recv(65536):  # until the client's half-close
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        with Client(path) as c, pytest.raises(Interrupted) as info:
            c.call("quick", on_progress=_interrupt)
    finally:
        t.join(10)
        listener.close()
    e = info.value
    assert e.cleaned and e.completed and e.result == "done"


async def test_a_cleanup_longer_than_the_wait_is_reported_unfinished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import banger.rpc.client as client_mod
    from banger.cli.main import _interrupted_message

    monkeypatch.setattr(client_mod, "CANCEL_WAIT_SECONDS", CLEANUP_SECONDS / 3)
    state: dict[str, Any] = {}
    srv = await _server(tmp_path, state)
    try:

        def call() -> Interrupted:
            with Client(srv.socket_path) as c, pytest.raises(Interrupted) as info:
                c.call("slow", on_progress=_interrupt)
            return info.value

        e = await asyncio.to_thread(call)
        assert "cleaned_at" not in state  # the client gave up waiting before the cleanup ended
    finally:
        await srv.close(grace=2)
    assert not e.cleaned and not e.completed
    assert "still cancelling" in _interrupted_message(e)

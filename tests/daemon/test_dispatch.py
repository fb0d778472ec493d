"""Ports of the seed's dispatch tests (dispatch_test.go) plus the finished-table check."""

from __future__ import annotations

from typing import Any

from banger.daemon.context import RequestContext
from banger.daemon.dispatch import RPC_HANDLERS, dispatch
from banger.rpc import PROTOCOL_VERSION
from banger.rpc.errors import OperationFailed

# The methods implemented so far. Each issue adds its own; the finished list is SEED_METHODS.
EXPECTED = [
    "ping",
    "shutdown",
    "kernel.catalog",
    "kernel.delete",
    "kernel.import",
    "kernel.list",
    "kernel.pull",
    "kernel.show",
    "image.cache.prune",
    "image.delete",
    "image.list",
    "image.promote",
    "image.pull",
    "image.register",
    "image.show",
    "vm.create",
    "vm.create.begin",
    "vm.create.cancel",
    "vm.create.status",
    "vm.delete",
    "vm.kill",
    "vm.list",
    "vm.logs",
    "vm.restart",
    "vm.set",
    "vm.show",
    "vm.ssh",
    "vm.ping",
    "vm.health",
    "vm.stats",
    "vm.ports",
    "vm.start",
    "vm.stop",
    "vm.workspace.export",
    "vm.workspace.prepare",
]

# The seed's TestRPCHandlersMatchDocumentedMethods list: where the table must end up.
SEED_METHODS = [
    "image.cache.prune", "image.delete", "image.list", "image.promote", "image.pull",
    "image.register", "image.show", "kernel.catalog", "kernel.delete", "kernel.import",
    "kernel.list", "kernel.pull", "kernel.show", "ping", "shutdown", "vm.create",
    "vm.create.begin", "vm.create.cancel", "vm.create.status", "vm.delete", "vm.health",
    "vm.kill", "vm.list", "vm.logs", "vm.ping", "vm.ports", "vm.restart", "vm.set", "vm.show",
    "vm.ssh", "vm.start", "vm.stats", "vm.stop", "vm.workspace.export", "vm.workspace.prepare",
]  # fmt: skip


def test_rpc_handlers_match_documented_methods() -> None:
    assert sorted(RPC_HANDLERS) == sorted(EXPECTED)


def test_implemented_methods_are_all_seed_methods() -> None:
    assert set(RPC_HANDLERS) <= set(SEED_METHODS)
    assert len(SEED_METHODS) == 35


def test_rpc_handlers_all_callable() -> None:
    for name, handler in RPC_HANDLERS.items():
        assert callable(handler), name


async def test_dispatch_stamps_op_id_on_unknown_method() -> None:
    resp = await dispatch(None, {"version": PROTOCOL_VERSION, "method": "no.such.method"})
    assert resp["ok"] is False
    assert resp["error"]["code"] == "unknown_method"
    assert resp["error"]["op_id"].startswith("op-")


async def test_dispatch_stamps_op_id_on_bad_version() -> None:
    resp = await dispatch(None, {"version": PROTOCOL_VERSION + 99, "method": "ping"})
    assert resp["ok"] is False
    assert resp["error"]["code"] == "bad_version"
    assert resp["error"]["op_id"].startswith("op-")


async def test_dispatch_propagates_op_id_to_handler_errors() -> None:
    async def failing(_d: Any, _ctx: RequestContext, _p: dict[str, Any]) -> Any:
        raise OperationFailed("deliberate test failure")

    resp = await dispatch(
        None, {"version": PROTOCOL_VERSION, "method": "anything"}, handlers={"anything": failing}
    )
    assert resp["ok"] is False
    assert resp["error"]["code"] == "operation_failed"
    assert resp["error"]["message"] == "deliberate test failure"
    assert resp["error"]["op_id"].startswith("op-")


async def test_untyped_exceptions_become_operation_failed_with_message() -> None:
    async def crashing(_d: Any, _ctx: RequestContext, _p: dict[str, Any]) -> Any:
        raise ValueError("disk exploded")

    resp = await dispatch(
        None, {"version": PROTOCOL_VERSION, "method": "boom"}, handlers={"boom": crashing}
    )
    assert resp["error"]["code"] == "operation_failed"
    assert "disk exploded" in resp["error"]["message"]
    assert resp["error"]["op_id"].startswith("op-")


async def test_client_supplied_op_id_is_used() -> None:
    resp = await dispatch(
        None, {"version": PROTOCOL_VERSION, "method": "nope", "op_id": "op-0123456789ab"}
    )
    assert resp["error"]["op_id"] == "op-0123456789ab"

"""Ports of the seed's dispatch tests (dispatch_test.go) plus the finished-table check."""

from __future__ import annotations

from typing import Any

from banger.daemon.dispatch import RPC_HANDLERS, dispatch
from banger.daemon.params import Params
from banger.request import RequestContext
from banger.rpc import PROTOCOL_VERSION
from banger.rpc.errors import NotFound, OperationFailed
from banger.validation import MAX_MESSAGE_CHARS, clip, quote

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

# Methods beyond the seed's 35, each pinned by the issue that added it.
EXTENSIONS = [
    "vm.egress",  # issue 16: egress policy report
    "vm.workspace.record",  # issue 15, remote daemons: a client-shipped workspace (docs/remote.md)
    "vm.snapshot.create",  # issue 14: checkpoints (docs/snapshots.md)
    "vm.snapshot.list",  # issue 14: checkpoints
    "vm.snapshot.restore",  # issue 14: checkpoints
    "vm.snapshot.delete",  # issue 14: checkpoints
    "vm.fork",  # issue 14: children of a running VM with their own identity (docs/snapshots.md)
    "vm.pause",  # issue 14: pause/resume, suspend (docs/snapshots.md)
    "vm.resume",  # issue 14: pause/resume
    "vm.suspend",  # issue 14: suspend to disk
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
    assert sorted(RPC_HANDLERS) == sorted(EXPECTED + EXTENSIONS)


def test_implemented_methods_are_all_seed_methods() -> None:
    assert set(RPC_HANDLERS) - set(EXTENSIONS) <= set(SEED_METHODS)
    assert not set(EXTENSIONS) & set(SEED_METHODS)
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


# --- params: validated in full, up front ---------------------------------------------------------


def _params_models() -> list[type[Params]]:
    import banger.daemon.dispatch  # noqa: F401  (imports every handler module)

    out: list[type[Params]] = []
    todo = [Params]
    while todo:
        cls = todo.pop()
        out.append(cls)
        todo.extend(cls.__subclasses__())
    return out


def _strings_without_bound(schema: dict[str, Any], where: str) -> list[str]:
    """Every string in a JSON schema that has no maxLength, and every array without maxItems."""
    bad: list[str] = []
    free_text = "maxLength" not in schema and "enum" not in schema and "const" not in schema
    if schema.get("type") == "string" and free_text:
        bad.append(where)
    if schema.get("type") == "array" and "maxItems" not in schema:
        bad.append(where + "[]")
    for key in ("anyOf", "allOf", "oneOf"):
        for i, sub in enumerate(schema.get(key, [])):
            bad += _strings_without_bound(sub, f"{where}|{i}")
    if "items" in schema:
        bad += _strings_without_bound(schema["items"], where + "[]")
    for name, sub in schema.get("properties", {}).items():
        bad += _strings_without_bound(sub, f"{where}.{name}")
    return bad


def test_every_string_param_of_every_method_is_bounded() -> None:
    # A new param typed plain `str` fails here: give it a type from daemon/params.py (Ref,
    # HostPath, KernelName, ...) so its length, characters and meaning are checked up front.
    models = _params_models()
    assert len(models) > 15
    unbounded = [
        bad
        for model in models
        for bad in _strings_without_bound(model.model_json_schema(), model.__qualname__)
    ]
    assert unbounded == []


async def test_a_nul_byte_in_any_string_param_is_bad_request_naming_it() -> None:
    cases = [
        ("vm.show", {"ref": "a\x00b"}, "ref"),
        ("vm.create", {"name": "a\x00"}, "name"),
        ("image.register", {"name": "x", "rootfs": "/tmp/a\x00b"}, "rootfs"),
        ("kernel.import", {"name": "k", "kernel": "/boot/\x00"}, "kernel"),
        ("vm.workspace.prepare", {"vm": "v", "path": "/src/\x00"}, "path"),
        ("vm.stop", {"refs": ["ok", "b\x00d"]}, "refs.1"),
    ]
    for method, params, name in cases:
        resp = await dispatch(
            None, {"version": PROTOCOL_VERSION, "method": method, "params": params}
        )
        assert resp["error"]["code"] == "bad_request", (method, resp)
        assert f"parameter '{name}': must not contain a NUL byte" in resp["error"]["message"]


async def test_unknown_method_and_error_messages_never_echo_megabytes() -> None:
    huge = "m" * (1 << 20)
    resp = await dispatch(None, {"version": PROTOCOL_VERSION, "method": huge})
    assert resp["error"]["code"] == "unknown_method"
    assert len(resp["error"]["message"]) < 300
    assert "…" in resp["error"]["message"]

    async def quoting(_d: Any, _ctx: RequestContext, p: dict[str, Any]) -> Any:
        raise NotFound(f"vm {p['ref']!r} not found")

    resp = await dispatch(
        None,
        {"version": PROTOCOL_VERSION, "method": "q", "params": {"ref": huge}},
        handlers={"q": quoting},
    )
    assert resp["error"]["code"] == "not_found"
    assert len(resp["error"]["message"]) <= MAX_MESSAGE_CHARS + 1
    assert resp["error"]["message"].endswith("…")


def test_clip_marks_what_it_cut() -> None:
    assert clip("short") == "short"
    assert clip("x" * 500, 10) == "x" * 10 + "…"
    assert quote("a\x00" + "b" * 300, 5) == repr("a\x00bbb…")

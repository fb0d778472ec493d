"""The RPC as a published contract: every method has a params and a result model, `banger rpc
schema` prints them as valid JSON Schema, the handlers parse what the schema says, and a daemon
checking its results (BANGER_CHECK_RESULTS=1, set for every test daemon) refuses to send one
that is off its schema."""

from __future__ import annotations

import json
import time
from typing import Any

import jsonschema
import pytest

from banger.daemon import contract
from banger.daemon.dispatch import RPC_HANDLERS, dispatch
from banger.request import RequestContext
from banger.rpc import PROTOCOL_VERSION
from banger.rpc.errors import NotFound
from tests.conftest import BangerEnv


def _schema_doc(env: BangerEnv, *args: str) -> dict[str, Any]:
    out = env.banger("rpc", "schema", *args, check=True, timeout=60).stdout
    doc = json.loads(out)
    assert isinstance(doc, dict)
    return doc


# --- the table -----------------------------------------------------------------------------------


def test_every_rpc_method_declares_params_and_result_models() -> None:
    missing = sorted(set(RPC_HANDLERS) - set(contract.CONTRACT))
    assert missing == [], f"add these methods to CONTRACT in daemon/contract.py: {missing}"
    stale = sorted(set(contract.CONTRACT) - set(RPC_HANDLERS))
    assert stale == [], f"CONTRACT names methods RPC_HANDLERS does not have: {stale}"


def test_test_daemons_check_their_results(banger_env: BangerEnv) -> None:
    # The whole suite's result check rests on this one line of tests/conftest.py.
    assert banger_env.env[contract.CHECK_RESULTS_ENV] == "1"


# --- `banger rpc schema` -------------------------------------------------------------------------


def test_rpc_schema_is_valid_json_schema_for_every_method(banger_env: BangerEnv) -> None:
    doc = _schema_doc(banger_env)
    assert list(doc) == ["methods"]
    methods = doc["methods"]
    assert sorted(methods) == sorted(RPC_HANDLERS)
    assert list(methods) == sorted(methods)
    for name, pair in methods.items():
        assert sorted(pair) == ["params", "result"], name
        for part in ("params", "result"):
            schema = pair[part]
            assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
            jsonschema.Draft202012Validator.check_schema(schema)
        # params are objects that refuse unknown keys, as the daemon does (bad_request)
        assert pair["params"]["type"] == "object", name
        assert pair["params"]["additionalProperties"] is False, name
    # stable: the same bytes every time (a client may diff it between versions)
    again = banger_env.banger("rpc", "schema", check=True, timeout=60).stdout
    assert json.loads(again) == doc
    assert again == json.dumps(doc, indent=2, sort_keys=True) + "\n"


def test_rpc_schema_method_filter(banger_env: BangerEnv) -> None:
    doc = _schema_doc(banger_env, "--method", "vm.show", "--method", "ping")
    assert list(doc["methods"]) == ["ping", "vm.show"]
    assert doc["methods"]["vm.show"]["params"]["required"] == ["ref"]
    assert "workspaces" in doc["methods"]["vm.show"]["result"]["required"]


def test_rpc_schema_unknown_method_is_a_usage_error(banger_env: BangerEnv) -> None:
    r = banger_env.banger("rpc", "schema", "--method", "vm.shwo")
    assert r.returncode == 2
    assert r.stdout == ""
    assert "no RPC method 'vm.shwo'." in r.stderr
    assert "'vm.show'" in r.stderr  # the close match is suggested


def _open_objects(schema: Any, where: str) -> list[str]:
    """Object schemas with declared properties that are not closed or do not require them all."""
    bad: list[str] = []
    if isinstance(schema, dict):
        if "properties" in schema:
            if schema.get("additionalProperties") is not False:
                bad.append(f"{where}: not closed")
            optional = sorted(set(schema["properties"]) - set(schema.get("required", [])))
            if optional:
                bad.append(f"{where}: {optional} not required")
        for key, sub in schema.items():
            bad += _open_objects(sub, f"{where}.{key}")
    elif isinstance(schema, list):
        for i, sub in enumerate(schema):
            bad += _open_objects(sub, f"{where}[{i}]")
    return bad


@pytest.mark.parametrize("method", sorted(contract.CONTRACT))
def test_result_objects_are_closed_and_list_every_key(method: str) -> None:
    # What the daemon sends is exactly what the schema says: a key only sometimes present is a
    # separate shape (see daemon/results.py), so the check catches a key nobody declared.
    assert _open_objects(contract.result_schema(method), method) == []


# --- drift: the handler parses exactly the params model the schema is made from ------------------


class _Parsed(Exception):
    def __init__(self, model: type) -> None:
        self.model = model


@pytest.mark.parametrize("method", sorted(RPC_HANDLERS))
async def test_handler_parses_the_params_model_its_schema_shows(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = RPC_HANDLERS[method]

    def spy(model: type, _params: dict[str, Any]) -> Any:
        raise _Parsed(model)

    # Every handler's first step is `parse_params(Model, params)` from its own module namespace.
    monkeypatch.setattr(f"{handler.__module__}.parse_params", spy)
    with pytest.raises(_Parsed) as seen:
        await handler(None, RequestContext(op_id="op-000000000000", method=method), {})  # type: ignore[arg-type]
    parsed = seen.value.model
    declared = contract.CONTRACT[method].params
    assert parsed is declared, f"{method} parses {parsed.__name__}, CONTRACT says {declared}"
    published = contract.schema_document([method])["methods"][method]["params"]
    assert published == {
        "$schema": contract.JSON_SCHEMA_DIALECT,
        **parsed.model_json_schema(mode="validation"),  # type: ignore[attr-defined]
    }


# --- the daemon's result check -------------------------------------------------------------------


async def _ping_returning(result: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    async def fake_ping(_d: Any, _ctx: RequestContext, _p: dict[str, Any]) -> Any:
        return result

    return await dispatch(
        None, {"version": PROTOCOL_VERSION, "method": "ping"}, handlers={"ping": fake_ping}
    )


GOOD_PING = {
    "version": "0.1.0",
    "commit": "",
    "built": "",
    "pid": 4242,
    "uptime_seconds": 1.5,
    "socket": "/run/b.sock",
    "log": "/var/log/b.log",
}


@pytest.mark.parametrize(
    ("result", "where", "why"),
    [
        ({**GOOD_PING, "pid": "4242"}, "result.pid", "'4242' is not of type 'integer'"),
        ({k: v for k, v in GOOD_PING.items() if k != "log"}, "result", "'log' is a required"),
        ({**GOOD_PING, "extra": 1}, "result", "Additional properties are not allowed"),
        ([GOOD_PING], "result", "is not of type 'object'"),
    ],
    ids=["wrong-type", "missing-field", "undeclared-field", "list-not-object"],
)
async def test_a_result_off_its_schema_is_operation_failed_naming_the_mismatch(
    result: Any, where: str, why: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.CHECK_RESULTS_ENV, "1")
    resp = await _ping_returning(result, monkeypatch)
    assert resp["ok"] is False
    assert resp["error"]["code"] == "operation_failed"
    message = resp["error"]["message"]
    assert message.startswith("ping: the result does not match its schema")
    assert f"at {where}:" in message
    assert why in message
    assert resp["error"]["op_id"].startswith("op-")


async def test_a_result_on_its_schema_is_sent_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(contract.CHECK_RESULTS_ENV, "1")
    assert await _ping_returning(GOOD_PING, monkeypatch) == {"ok": True, "result": GOOD_PING}


async def test_without_the_check_results_are_not_inspected(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(contract.CHECK_RESULTS_ENV, raising=False)
    wrong = {"pid": "not a number"}
    assert await _ping_returning(wrong, monkeypatch) == {"ok": True, "result": wrong}


async def test_a_method_without_models_fails_when_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a method added to RPC_HANDLERS but not to CONTRACT meets under the test suite.
    async def newcomer(_d: Any, _ctx: RequestContext, _p: dict[str, Any]) -> Any:
        return {"fine": True}

    monkeypatch.setenv(contract.CHECK_RESULTS_ENV, "1")
    monkeypatch.setitem(RPC_HANDLERS, "vm.newcomer", newcomer)
    resp = await dispatch(None, {"version": PROTOCOL_VERSION, "method": "vm.newcomer"})
    assert resp["error"]["code"] == "operation_failed"
    assert "vm.newcomer: no result model is declared" in resp["error"]["message"]
    assert "daemon/contract.py" in resp["error"]["message"]


async def test_errors_are_not_results_and_pass_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    async def missing(_d: Any, _ctx: RequestContext, _p: dict[str, Any]) -> Any:
        raise NotFound('vm "x" not found')

    monkeypatch.setenv(contract.CHECK_RESULTS_ENV, "1")
    resp = await dispatch(
        None, {"version": PROTOCOL_VERSION, "method": "vm.show"}, handlers={"vm.show": missing}
    )
    assert resp["error"]["code"] == "not_found"


# --- end to end: a real daemon's answers match the published schema ------------------------------


def test_real_daemon_results_validate_against_the_published_schema(daemon: BangerEnv) -> None:
    methods = _schema_doc(daemon)["methods"]

    def check(method: str, result: Any) -> Any:
        jsonschema.Draft202012Validator(methods[method]["result"]).validate(result)
        return result

    with daemon.client() as c:
        check("ping", c.call("ping"))
        assert check("vm.list", c.call("vm.list")) == []
        assert check("image.list", c.call("image.list")) == []
        assert check("kernel.list", c.call("kernel.list")) == []
        assert check("vm.ports", c.call("vm.ports")) == []
        prune = check("image.cache.prune", c.call("image.cache.prune", {"dry_run": True}))
        assert prune["dry_run"] is True
        # An asynchronous create of a missing image: the operation fails, with its error.
        begun = check("vm.create.begin", c.call("vm.create.begin", {"image": "no-such-image"}))
        deadline = time.monotonic() + 60
        status = begun
        while not status["done"]:
            assert time.monotonic() < deadline, status
            status = check("vm.create.status", c.call("vm.create.status", {"id": begun["id"]}))
            time.sleep(0.1)  # polling an operation's state, as `vm create` does
        assert status["error"]["code"] == "not_found"
        assert status["vm"] is None
        check("shutdown", c.call("shutdown"))

from __future__ import annotations

import pytest

from banger.rpc import PROTOCOL_VERSION
from banger.rpc.envelope import OP_ID_RE, new_op_id, parse_request
from banger.rpc.errors import BadRequest, BadVersion, NotFound, OperationFailed, from_wire


def test_op_ids_are_op_dash_12_hex_and_unique() -> None:
    ids = {new_op_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(OP_ID_RE.match(i) for i in ids)


def test_params_may_be_omitted() -> None:
    req = parse_request({"version": PROTOCOL_VERSION, "method": "ping"})
    assert req.method == "ping"
    assert req.params == {}


@pytest.mark.parametrize(
    ("obj", "fragment"),
    [
        ([1, 2], "JSON object"),
        ({"method": "ping"}, "'version'"),
        ({"version": "1", "method": "ping"}, "'version'"),
        ({"version": True, "method": "ping"}, "'version'"),
        ({"version": PROTOCOL_VERSION}, "'method'"),
        ({"version": PROTOCOL_VERSION, "method": 7}, "'method'"),
        ({"version": PROTOCOL_VERSION, "method": "ping", "params": [1]}, "'params'"),
    ],
)
def test_malformed_requests_are_bad_request(obj: object, fragment: str) -> None:
    with pytest.raises(BadRequest, match=fragment):
        parse_request(obj)


def test_version_is_checked_before_method() -> None:
    with pytest.raises(BadVersion, match="protocol version 7"):
        parse_request({"version": 7, "method": 42})


def test_client_op_id_must_be_well_formed_to_be_used() -> None:
    good = parse_request({"version": 1, "method": "x", "op_id": "op-00112233aabb"})
    assert good.op_id == "op-00112233aabb"
    bad = parse_request({"version": 1, "method": "x", "op_id": "op-; rm -rf /"})
    assert bad.op_id == ""


def test_errors_round_trip_with_their_type() -> None:
    err = from_wire({"code": "not_found", "message": "vm x not found", "op_id": "op-1"})
    assert isinstance(err, NotFound)
    assert err.op_id == "op-1"
    weird = from_wire({"code": "from_the_future", "message": "m"})
    assert isinstance(weird, OperationFailed)
    assert "from_the_future" in weird.message

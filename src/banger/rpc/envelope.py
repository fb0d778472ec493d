"""Request/response envelopes of the wire contract.

Request:  {"version": 1, "method": "vm.create", "params": {...}, "op_id"?: …, "progress"?: bool}
Success:  {"ok": true, "result": ...}
Failure:  {"ok": false, "error": {"code": ..., "message": ..., "op_id": "op-…"}}
Progress: {"progress": {...}, "op_id": "op-…"}  (only when the request asked for it; zero or more
          lines before the final response line)
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from banger.rpc import PROTOCOL_VERSION
from banger.rpc.errors import BadRequest, BadVersion

OP_ID_RE = re.compile(r"^op-[0-9a-f]{12}$")


def new_op_id() -> str:
    return "op-" + secrets.token_hex(6)


@dataclass
class Request:
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION
    op_id: str = ""
    progress: bool = False


def parse_request(obj: object) -> Request:
    """Validate a decoded JSON line into a Request; BadRequest/BadVersion on anything else.

    The version is checked before the method so a client from another release learns that first.
    """
    if not isinstance(obj, dict):
        raise BadRequest("request must be a JSON object with version, method and params")
    version = obj.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BadRequest("request field 'version' must be an integer")
    op_id = obj.get("op_id", "")
    if op_id and (not isinstance(op_id, str) or not OP_ID_RE.match(op_id)):
        op_id = ""
    if version != PROTOCOL_VERSION:
        raise BadVersion(
            f"protocol version {version} is not supported (daemon speaks {PROTOCOL_VERSION}); "
            "restart the daemon with `banger daemon stop` so the CLI starts a matching one"
        )
    method = obj.get("method")
    if not isinstance(method, str) or not method:
        raise BadRequest("request field 'method' must be a non-empty string")
    params = obj.get("params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("request field 'params' must be a JSON object")
    progress = obj.get("progress", False)
    return Request(
        method=method,
        params=params,
        version=version,
        op_id=op_id or "",
        progress=progress is True,
    )


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(code: str, message: str, op_id: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message, "op_id": op_id}}

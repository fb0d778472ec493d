"""Typed RPC errors. Services raise these; dispatch turns them into error envelopes.

Anything that is not an RPCError becomes `operation_failed` with the exception's message.
"""

from __future__ import annotations

from typing import ClassVar

CODES = (
    "bad_request",
    "bad_version",
    "unknown_method",
    "not_found",
    "already_exists",
    "not_running",
    "conflict",
    "busy",
    "operation_failed",
)


class RPCError(Exception):
    code: ClassVar[str] = "operation_failed"

    def __init__(self, message: str, *, op_id: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.op_id = op_id

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "op_id": self.op_id}


class BadRequest(RPCError):
    code = "bad_request"


class BadVersion(RPCError):
    code = "bad_version"


class UnknownMethod(RPCError):
    code = "unknown_method"


class NotFound(RPCError):
    code = "not_found"


class AlreadyExists(RPCError):
    code = "already_exists"


class NotRunning(RPCError):
    code = "not_running"


class Conflict(RPCError):
    code = "conflict"


class Busy(RPCError):
    """The daemon is at its connection limit (sent on a connection it then closes)."""

    code = "busy"


class OperationFailed(RPCError):
    code = "operation_failed"


_BY_CODE: dict[str, type[RPCError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        BadVersion,
        UnknownMethod,
        NotFound,
        AlreadyExists,
        NotRunning,
        Conflict,
        Busy,
        OperationFailed,
    )
}


def from_wire(error: dict[str, object]) -> RPCError:
    """Rebuild the typed error a daemon sent (client side)."""
    code = str(error.get("code", "operation_failed"))
    cls = _BY_CODE.get(code, OperationFailed)
    exc = cls(str(error.get("message", "")), op_id=str(error.get("op_id", "")))
    if cls is OperationFailed and code != "operation_failed":
        exc.message = f"{code}: {exc.message}"
    return exc

"""Typed RPC errors: the wire side. Dispatch builds them from domain errors (`banger.errors`,
mapped in rpc/errmap.py); clients rebuild them from an error envelope (`from_wire`).

Anything that is neither becomes `operation_failed` with the exception's message. Each wire class
that has a domain counterpart subclasses it, so a caller catching the domain error also catches
the wire one (a privileged-helper answer, a code path not yet converted).
"""

from __future__ import annotations

from typing import ClassVar

from banger import errors

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
        # The method that answered with this error (set by the client; the CLI's hints use it).
        self.method = ""

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message, "op_id": self.op_id}


class BadRequest(RPCError, errors.InvalidInput):
    code = "bad_request"


class BadVersion(RPCError):
    code = "bad_version"


class UnknownMethod(RPCError):
    code = "unknown_method"


class NotFound(RPCError, errors.NotFound):
    code = "not_found"


class AlreadyExists(RPCError, errors.AlreadyExists):
    code = "already_exists"


class NotRunning(RPCError, errors.NotRunning):
    code = "not_running"


class Conflict(RPCError, errors.Conflict):
    code = "conflict"


class Busy(RPCError):
    """The daemon is at its connection limit (sent on a connection it then closes)."""

    code = "busy"


class OperationFailed(RPCError, errors.OperationFailed):
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

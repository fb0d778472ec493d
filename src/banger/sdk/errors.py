"""The SDK's exceptions: every daemon error keeps its RPC code and op id.

    >>> try:
    ...     Sandbox.connect("nope")
    ... except NotFound as e:
    ...     print(e.code, e.op_id)   # not_found op-1a2b3c4d5e6f

Errors raised by the SDK itself (no daemon request behind them) have an empty `op_id`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from banger.sdk.command import CommandResult


class BangerError(Exception):
    """Base of every SDK error: `code` (the RPC error code), `message`, `op_id`."""

    default_code: ClassVar[str] = "operation_failed"

    def __init__(self, message: str, *, code: str | None = None, op_id: str = "") -> None:
        super().__init__(message)
        self.code = code or self.default_code
        self.message = message
        self.op_id = op_id

    def __str__(self) -> str:
        return f"{self.message} ({self.op_id})" if self.op_id else self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"op_id={self.op_id!r})"
        )


class BadRequest(BangerError):
    default_code = "bad_request"


class BadVersion(BangerError):
    default_code = "bad_version"


class UnknownMethod(BangerError):
    default_code = "unknown_method"


class NotFound(BangerError):
    default_code = "not_found"


class AlreadyExists(BangerError):
    default_code = "already_exists"


class NotRunning(BangerError):
    default_code = "not_running"


class Conflict(BangerError):
    default_code = "conflict"


class Busy(BangerError):
    """The daemon is at its connection limit (retried by the client first; see docs/rpc.md)."""

    default_code = "busy"


class OperationFailed(BangerError):
    default_code = "operation_failed"


class DaemonUnavailable(BangerError):
    """No daemon answers (and none could be started)."""

    default_code = "daemon_unavailable"


class GuestConnectionError(BangerError):
    """The SSH connection to the sandbox failed or was lost (host key mismatch, VM gone…)."""

    default_code = "guest_connection"


class CommandTimeout(BangerError):
    """A command ran past its `timeout`; it was killed. `stdout`/`stderr` hold what it printed."""

    default_code = "timeout"

    def __init__(self, message: str, *, timeout: float, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.timeout = timeout
        self.stdout = stdout
        self.stderr = stderr


class CommandFailed(BangerError):
    """`run(..., check=True)` and the command exited non-zero; `result` is its CommandResult."""

    default_code = "command_failed"

    def __init__(self, message: str, *, result: CommandResult) -> None:
        super().__init__(message)
        self.result = result


_BY_CODE: dict[str, type[BangerError]] = {
    cls.default_code: cls
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


def from_wire(error: object) -> BangerError:
    """The typed exception for a daemon error envelope's `error` object."""
    data = error if isinstance(error, dict) else {}
    code = str(data.get("code") or "operation_failed")
    cls = _BY_CODE.get(code, OperationFailed)
    return cls(
        str(data.get("message") or "the daemon gave no message"),
        code=code,
        op_id=str(data.get("op_id") or ""),
    )


__all__ = [
    "AlreadyExists",
    "BadRequest",
    "BadVersion",
    "BangerError",
    "CommandFailed",
    "CommandTimeout",
    "Conflict",
    "DaemonUnavailable",
    "GuestConnectionError",
    "NotFound",
    "NotRunning",
    "OperationFailed",
    "UnknownMethod",
    "from_wire",
]

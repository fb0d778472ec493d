"""The one place a domain error becomes a wire error code."""

from __future__ import annotations

from banger import errors
from banger.rpc import errors as rpc

# Most specific first: a subclass of a listed class takes its parent's code.
_CODES: tuple[tuple[type[errors.BangerError], type[rpc.RPCError]], ...] = (
    (errors.InvalidInput, rpc.BadRequest),
    (errors.NotFound, rpc.NotFound),
    (errors.AlreadyExists, rpc.AlreadyExists),
    (errors.NotRunning, rpc.NotRunning),
    (errors.Conflict, rpc.Conflict),
    (errors.OperationFailed, rpc.OperationFailed),
)


def to_rpc(exc: errors.BangerError) -> rpc.RPCError:
    """The wire error for a domain error (unlisted subclasses of BangerError: operation_failed)."""
    for domain, wire in _CODES:
        if isinstance(exc, domain):
            return wire(exc.message)
    return rpc.OperationFailed(exc.message)

"""Domain errors: what services raise. They know nothing of RPC, CLI flags or wire codes.

The daemon maps each class to a wire code in one place (`rpc/errmap.py`); the CLI adds the
command a user should run next. A message says what was wrong in the service's own terms.
"""

from __future__ import annotations


class BangerError(Exception):
    """Base of every error a service raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(BangerError):
    """The request itself is wrong (a bad name, size, path, option combination)."""


class NotFound(BangerError):
    """The named thing does not exist."""


class AlreadyExists(BangerError):
    """The name is taken."""


class NotRunning(BangerError):
    """The VM must be running for this."""


class Conflict(BangerError):
    """The thing exists but its state forbids this now (in use, paused, being deleted)."""


class OperationFailed(BangerError):
    """The work was attempted and failed (a tool, the VMM, the guest); the message says where."""

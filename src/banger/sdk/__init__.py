"""banger's Python SDK: sandboxes (microVMs) for programs — test harnesses, coding agents.

    >>> from banger.sdk import Sandbox
    >>> with Sandbox.create() as sbx:                 # deleted when the block ends
    ...     r = sbx.run("echo hi; echo oops >&2; exit 3")
    ...     r.exit_code, r.stdout, r.stderr
    (3, 'hi\\n', 'oops\\n')

`AsyncSandbox` is the same for asyncio. See docs/sdk.md.
"""

from banger.sdk.aio import AsyncSandbox, AsyncWorkspace
from banger.sdk.command import CommandResult
from banger.sdk.daemon import DaemonConnection, LocalDaemon, connect_daemon
from banger.sdk.errors import (
    AlreadyExists,
    BadRequest,
    BangerError,
    Busy,
    CommandFailed,
    CommandTimeout,
    Conflict,
    DaemonUnavailable,
    GuestConnectionError,
    NotFound,
    NotRunning,
    OperationFailed,
)
from banger.sdk.files import AsyncFiles, FileInfo
from banger.sdk.models import Port, PreparedWorkspace, SandboxInfo, Stats, WorkspacePatch
from banger.sdk.sync import Files, Sandbox, Workspace

__all__ = [
    "AlreadyExists",
    "AsyncFiles",
    "AsyncSandbox",
    "AsyncWorkspace",
    "BadRequest",
    "BangerError",
    "Busy",
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "Conflict",
    "DaemonConnection",
    "DaemonUnavailable",
    "FileInfo",
    "Files",
    "GuestConnectionError",
    "LocalDaemon",
    "NotFound",
    "NotRunning",
    "OperationFailed",
    "Port",
    "PreparedWorkspace",
    "Sandbox",
    "SandboxInfo",
    "Stats",
    "Workspace",
    "WorkspacePatch",
    "connect_daemon",
]

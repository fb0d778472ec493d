"""RPC handler for clients on another machine: vm.workspace.record.

A remote CLI ships its checkout to the guest itself (the daemon cannot read the client's disk,
docs/remote.md), then records the workspace here so `vm exec`, `vm show` and `workspace export`
find it as if the daemon had prepared it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field

from banger.daemon.handlers_workspace import _vm_id, check_host_path
from banger.daemon.params import GitRef, GuestPath, HostPath, Params, Ref, parse_params
from banger.errors import InvalidInput
from banger.request import RequestContext
from banger.validation import quote
from banger.workspace import records
from banger.workspace.plan import Mode, PrepareOptions, validate_guest_path

if TYPE_CHECKING:
    from banger.daemon.app import Daemon

# A full object name, as `git rev-parse` prints it (SHA-1 or SHA-256).
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# A checkout's directory name: one path component, no control characters.
RepoName = Annotated[str, Field(min_length=1, max_length=255)]


class RecordParams(Params):
    vm: Ref
    # The checkout's path on the CLIENT's machine (shown, never opened by this daemon).
    host_path: HostPath
    guest_path: GuestPath
    repo_name: RepoName
    head_commit: str | None = Field(default=None, max_length=64)
    base_commit: str | None = Field(default=None, max_length=64)
    mode: Mode = "overlay"
    include_untracked: bool = False
    readonly: bool = False
    branch: GitRef | None = None
    shallow: bool = False


def _check(p: RecordParams) -> None:
    check_host_path(p.host_path)
    validate_guest_path(p.guest_path)
    for field in ("head_commit", "base_commit"):
        value = getattr(p, field)
        if value is not None and not _COMMIT.fullmatch(value):
            raise InvalidInput(f"{field} {quote(value)} is not a full commit id (40 or 64 hex)")
    if "/" in p.repo_name or p.repo_name in (".", "..") or not p.repo_name.isprintable():
        raise InvalidInput(f"repo_name {quote(p.repo_name)} is not a directory name")


async def workspace_record(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(RecordParams, params)
    _check(p)
    vm_id, vm_name = await _vm_id(d, p.vm)
    records.save(
        d.store,
        records.WorkspaceRecord(
            vm_id=vm_id,
            guest_path=p.guest_path,
            host_path=p.host_path,
            repo_name=p.repo_name,
            head_commit=p.head_commit,
            base_commit=p.base_commit,
            mode=p.mode,
            options=PrepareOptions(
                include_untracked=p.include_untracked,
                readonly=p.readonly,
                mode=p.mode,
                branch=p.branch,
                shallow=p.shallow,
                guest_path=p.guest_path,
            ),
            prepared_at=records.now(),
        ),
    )
    return {"vm": vm_name, "guest_path": p.guest_path, "host_path": p.host_path}

"""RPC handlers: vm.workspace.prepare and vm.workspace.export (over SSH into the guest)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from banger.daemon.params import GitRef, GuestPath, HostPath, Params, Ref, parse_params
from banger.errors import InvalidInput
from banger.request import RequestContext
from banger.validation import quote
from banger.workspace import records
from banger.workspace.export import LIMIT_KEY, check_base_commit, export, limit_text
from banger.workspace.plan import (
    DEFAULT_GUEST_PATH,
    Mode,
    PrepareOptions,
    check_guest_path_syntax,
    make_plan,
    validate_guest_path,
)
from banger.workspace.ship import prepare
from banger.workspace.transport import SSHGuestExec

if TYPE_CHECKING:
    from banger.daemon.app import Daemon
    from banger.guest.ssh import SSHTarget


_locks: dict[tuple[str, str], asyncio.Lock] = {}


class PrepareParams(Params):
    vm: Ref
    # Host path of the checkout; omitted = re-sync the recorded workspace from where it came.
    path: HostPath | None = None
    guest_path: GuestPath | None = None
    include_untracked: bool | None = None
    readonly: bool | None = None
    mode: Mode | None = None
    branch: GitRef | None = None
    from_ref: GitRef | None = None
    shallow: bool | None = None
    dry_run: bool = False


class ExportParams(Params):
    vm: Ref
    guest_path: GuestPath | None = None
    base_commit: GitRef | None = None
    # inline: the daemon runs the export and answers with the patch (at most INLINE_EXPORT_MAX);
    # ssh: the daemon only resolves the workspace and answers where and how to fetch it, and the
    # caller streams the patch from the guest itself (what the CLI does: no size in the daemon).
    transfer: Literal["inline", "ssh"] = "inline"


# An inline answer holds the patch, its base64 and the JSON line at once: ~3.3x the patch.
INLINE_EXPORT_MAX = 16 * 1024 * 1024


class _VMRecord(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...


class _VMService(Protocol):
    """What workspace needs from the VM service (`d.vms`)."""

    async def get(self, ref: str) -> _VMRecord: ...
    async def ssh_target(self, ref: str) -> SSHTarget: ...


def _vms(d: Daemon) -> _VMService:
    return d.vms


async def _vm_id(d: Daemon, ref: str) -> tuple[str, str]:
    """(id, name) of the VM `ref` names (NotFound otherwise)."""
    vm = await _vms(d).get(ref)
    return vm.id, vm.name


async def _guest(d: Daemon, ref: str) -> SSHGuestExec:
    return SSHGuestExec(await _vms(d).ssh_target(ref))


def check_host_path(path: str) -> None:
    """The host checkout's path as the CLI sends it: absolute, without NUL, of sane length."""
    if "\0" in path:
        raise InvalidInput(f"path {quote(path)} contains a NUL byte")
    if not os.path.isabs(path):
        raise InvalidInput(f"path {quote(path)} must be absolute (the CLI resolves it)")
    if len(path.encode(errors="surrogatepass")) > 4095:
        raise InvalidInput(f"path {path[:64]!r}… is longer than 4095 bytes")


def _options(p: PrepareParams, rec: records.WorkspaceRecord | None) -> PrepareOptions:
    """Explicit params win; a re-sync without them reuses what the workspace was prepared with."""
    base = rec.options if rec is not None else PrepareOptions()
    return PrepareOptions(
        include_untracked=base.include_untracked
        if p.include_untracked is None
        else p.include_untracked,
        readonly=base.readonly if p.readonly is None else p.readonly,
        mode=base.mode if p.mode is None else p.mode,
        branch=p.branch if p.branch is not None else (base.branch if p.path is None else None),
        from_ref=p.from_ref,
        shallow=base.shallow if p.shallow is None else p.shallow,
        guest_path=p.guest_path or (rec.guest_path if rec is not None else DEFAULT_GUEST_PATH),
    )


async def workspace_prepare(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(PrepareParams, params)
    # Every param is checked before the VM is looked up or anything is read.
    if p.guest_path is not None:
        validate_guest_path(p.guest_path)
    if p.path is not None:
        check_host_path(p.path)
    vm_id, vm_name = await _vm_id(d, p.vm)
    rec = records.find(d.store, vm_id, p.guest_path)
    if p.path is None:
        if rec is None:
            if p.dry_run:
                return {"vm": vm_name, "dry_run": True, "recorded": None, "plan": None}
            raise InvalidInput(
                f"vm {vm_name} has no workspace yet; give the host checkout to prepare"
            )
        host_path = Path(rec.host_path)
    else:
        host_path = Path(p.path)
    opts = _options(p, rec if p.path is None else None)
    try:
        plan, _ = await asyncio.to_thread(make_plan, host_path, opts)
    except InvalidInput as e:
        if p.dry_run and p.path is None:
            # `vm exec` asks whether host HEAD moved; a vanished checkout is a warning there.
            return {
                "vm": vm_name,
                "dry_run": True,
                "plan": None,
                "recorded": rec.model_dump(mode="json") if rec is not None else None,
                "head_moved": False,
                "warning": e.message,
            }
        raise
    recorded = rec.model_dump(mode="json") if rec is not None else None
    if p.dry_run:
        return {
            "vm": vm_name,
            "dry_run": True,
            "plan": plan.model_dump(mode="json"),
            "recorded": recorded,
            "head_moved": rec is not None and rec.head_commit != plan.head_commit,
        }
    guest = await _guest(d, p.vm)
    ctx.progress(stage="inspect", files=len(plan.files), bytes=plan.total_bytes)
    # Two prepares of one workspace at once would share a staging directory: serialise them.
    lock = _locks.setdefault((vm_id, plan.guest_path), asyncio.Lock())
    async with lock, guest:  # one SSH connection for all the steps
        result = await prepare(guest, plan, progress=lambda stage: ctx.progress(stage=stage))
    records.save(
        d.store,
        records.WorkspaceRecord(
            vm_id=vm_id,
            guest_path=plan.guest_path,
            host_path=plan.repo_root,
            repo_name=plan.repo_name,
            head_commit=plan.head_commit,
            base_commit=plan.base_commit,
            mode=plan.mode,
            options=opts.model_copy(update={"guest_path": plan.guest_path, "from_ref": None}),
            prepared_at=records.now(),
        ),
    )
    return {"vm": vm_name, **result.model_dump(mode="json")}


async def workspace_export(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(ExportParams, params)
    # Every param is checked before the VM is looked up or the guest reached.
    if p.guest_path is not None:
        check_guest_path_syntax(p.guest_path)
    check_base_commit(p.base_commit)
    vm_id, vm_name = await _vm_id(d, p.vm)
    rec = records.find(d.store, vm_id, p.guest_path)
    guest_path = p.guest_path or (rec.guest_path if rec is not None else DEFAULT_GUEST_PATH)
    base = p.base_commit or (rec.base_commit if rec is not None else None)
    max_bytes = int(getattr(d.config, LIMIT_KEY))
    target = await _vms(d).ssh_target(p.vm)
    if p.transfer == "ssh":
        return {
            "vm": vm_name,
            "guest_path": guest_path,
            "base_commit": base,
            "max_bytes": max_bytes,
            "ssh": target.to_json(),
        }
    guest = SSHGuestExec(target)
    ctx.progress(stage="export")
    if max_bytes <= INLINE_EXPORT_MAX:
        limit = limit_text(max_bytes)
    else:
        limit = (
            f"the {INLINE_EXPORT_MAX >> 20} MiB an inline vm.workspace.export answer carries "
            '(ask with transfer: "ssh" to stream it, as `banger vm workspace export` does)'
        )
    result = await export(
        guest, guest_path, base, max_bytes=min(max_bytes, INLINE_EXPORT_MAX), limit=limit
    )
    return {
        "vm": vm_name,
        "guest_path": result.guest_path,
        "base_commit": result.base_commit,
        "files": [f.model_dump(mode="json") for f in result.files],
        "patch_bytes": len(result.patch),
        "patch_base64": base64.b64encode(result.patch).decode(),
    }

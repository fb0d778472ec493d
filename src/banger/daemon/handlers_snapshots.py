"""RPC handlers for `vm.snapshot.*` (checkpoints, issue 14). Work lives in vms/checkpoints.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from banger.daemon.params import Params, Ref, Token, parse_params
from banger.request import RequestContext

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class SnapshotRefParams(Params):
    ref: Ref


class SnapshotTagParams(Params):
    ref: Ref
    # Checked by the service (vms/saved.py validate_tag), which says what a tag may hold.
    tag: Token


async def vm_snapshot_create(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(SnapshotTagParams, params)
    return await d.vms.snapshot_create(p.ref, p.tag, ctx)


async def vm_snapshot_list(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(SnapshotRefParams, params)
    return await d.vms.snapshot_list(p.ref)


async def vm_snapshot_restore(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(SnapshotTagParams, params)
    return await d.vms.snapshot_restore(p.ref, p.tag, ctx)


async def vm_snapshot_delete(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(SnapshotTagParams, params)
    gone = await d.vms.snapshot_delete(p.ref, p.tag)
    return {"vm": gone.vm, "tag": gone.tag, "layers_kept": gone.layers_kept}

"""RPC handlers for `vm.pause`, `vm.resume`, `vm.suspend` (issue 14). Work: vms/suspend.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from banger.daemon.params import Params, Ref, parse_params
from banger.request import RequestContext

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class PauseParams(Params):
    ref: Ref


async def vm_pause(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(PauseParams, params)
    return await d.vms.pause_vm(p.ref)


async def vm_resume(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(PauseParams, params)
    return await d.vms.resume_vm(p.ref)


async def vm_suspend(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(PauseParams, params)
    return await d.vms.suspend_vm(p.ref, ctx)

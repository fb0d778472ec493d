"""RPC handlers: vm.ping, vm.health, vm.stats, vm.ports (guest observability).

Thin: parse the params and ask the observation service (vms/observe.py), which owns the probes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from banger.daemon.params import MAX_LIST_ITEMS, Params, Ref, parse_params
from banger.request import RequestContext

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class RefParams(Params):
    ref: Ref


class PortsParams(Params):
    # Empty: every running VM.
    refs: list[Ref] = Field(default_factory=list, max_length=MAX_LIST_ITEMS)


async def vm_ping(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    p = parse_params(RefParams, params)
    return await d.observe.ping(p.ref)


async def vm_health(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    p = parse_params(RefParams, params)
    return await d.observe.health(p.ref)


async def vm_stats(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> dict[str, Any]:
    p = parse_params(RefParams, params)
    return await d.observe.stats(p.ref)


async def vm_ports(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> list[dict[str, Any]]:
    p = parse_params(PortsParams, params)
    return await d.observe.ports(p.refs, op_id=ctx.op_id)

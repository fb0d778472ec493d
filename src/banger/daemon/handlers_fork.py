"""RPC handler for `vm.fork` (issue 14): children of a running VM. Work lives in vms/fork.py."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from banger.daemon.params import Params, Ref, VMName, parse_params
from banger.request import RequestContext

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class ForkParams(Params):
    ref: Ref
    name: VMName
    # None: one child named `name`; K: children name-1 … name-K (the service bounds K).
    count: int | None = None


async def vm_fork(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(ForkParams, params)
    res = await d.vms.fork(p.ref, p.name, p.count, ctx)
    return {
        "parent": res.parent.name,
        "parent_state": res.parent.state,
        "paused_seconds": round(res.paused_seconds, 4),
        "checkpoint_seconds": round(res.checkpoint_seconds, 3),
        "shared_memory": res.shared_memory,
        "children": [
            {
                "name": c.name,
                "ok": c.vm is not None,
                "seconds": round(c.seconds, 3),
                "vm": c.vm.model_dump(mode="json") if c.vm is not None else None,
                "error": c.error,
            }
            for c in res.children
        ],
    }

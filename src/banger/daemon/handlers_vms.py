"""RPC handlers for `vm.*` (lifecycle, async create, logs, ssh info). Work lives in d.vms."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from banger.daemon.params import (
    EgressRules,
    KernelName,
    OpId,
    Params,
    Ref,
    RefList,
    Size,
    Token,
    VMName,
    parse_params,
)
from banger.errors import BangerError
from banger.request import RequestContext
from banger.rpc.errmap import to_rpc
from banger.rpc.errors import RPCError, from_wire
from banger.vms.service import CreateRequest
from banger.vms.spec import VMRecord
from banger.workspace import records as workspace_records

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class CreateParams(Params):
    name: VMName | None = None
    image: Ref | None = None
    kernel: KernelName | None = None
    vcpu: int | None = Field(default=None, ge=1, le=64)
    memory: int | None = Field(default=None, ge=128, le=1024 * 1024, description="MiB")
    disk_size: Size | None = None
    init: Literal["auto", "systemd", "minimal"] = "auto"
    no_start: bool = False
    # outbound NAT for a bridged VM (networking issue); refused in user-mode networking
    nat: bool = False
    # egress allow rules (egress issue): any rule makes egress restricted (and implies NAT)
    allow: EgressRules = Field(default_factory=list)
    egress: Literal["open", "restricted"] | None = None
    # boot cold even when a warm-create template of this combination exists (issue 14)
    cold: bool = False

    def request(self) -> CreateRequest:
        return CreateRequest(
            name=self.name or None,
            image=self.image or None,
            kernel=self.kernel or None,
            vcpus=self.vcpu,
            memory_mib=self.memory,
            disk_size=self.disk_size,
            init=self.init,
            start=not self.no_start,
            nat=self.nat,
            allow=tuple(self.allow),
            egress=self.egress,
            cold=self.cold,
        )


class OpParams(Params):
    id: OpId


class RefParams(Params):
    ref: Ref


class RefsParams(Params):
    refs: RefList


class StopParams(RefsParams):
    timeout: float = Field(default=30.0, gt=0, le=600)


class KillParams(RefsParams):
    signal: Token = "KILL"


class SetParams(RefsParams):
    vcpu: int | None = Field(default=None, ge=1, le=64)
    memory: int | None = Field(default=None, ge=128, le=1024 * 1024)
    disk_size: Size | None = None
    # outbound NAT (bridged VMs); unlike the sizes it may change while the VM runs
    nat: bool | None = None
    # egress policy changes (live, like NAT)
    allow: EgressRules = Field(default_factory=list)
    disallow: EgressRules = Field(default_factory=list)
    egress: Literal["open", "restricted"] | None = None


class LogsParams(RefParams):
    max_bytes: int = Field(default=256 * 1024, ge=0, le=64 * 1024 * 1024)
    # Read from this byte on (`vm logs -f` over a remote host): the answer's `offset` and
    # exact `data_base64` (at most max_bytes) instead of the tail.
    offset: int | None = Field(default=None, ge=0, le=1 << 62)


async def vm_create(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(CreateParams, params)
    return await d.vms.create(p.request(), ctx)


async def vm_create_begin(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(CreateParams, params)
    return d.vms.begin_create(p.request(), ctx.op_id).status(describe_error)


async def vm_create_status(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(OpParams, params)
    return d.vms.ops.get(p.id).status(describe_error)


async def vm_create_cancel(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(OpParams, params)
    return (await d.vms.cancel_create(p.id)).status(describe_error)


def describe_error(e: Exception) -> dict[str, str]:
    """A service failure as the wire's {code, message} (domain errors mapped by errmap)."""
    wire = to_rpc(e) if isinstance(e, BangerError) else e
    if isinstance(wire, RPCError):
        return {"code": wire.code, "message": wire.message}
    return {"code": "operation_failed", "message": str(e) or type(e).__name__}


async def for_each(
    refs: Sequence[VMRecord], fn: Callable[[VMRecord], Awaitable[VMRecord]]
) -> list[dict[str, Any]]:
    """Run `fn` on every VM concurrently; results in the given order, errors per VM."""

    async def one(vm: VMRecord) -> dict[str, Any]:
        try:
            done = await fn(vm)
            return {"vm": vm.name, "ok": True, "result": done.model_dump(mode="json")}
        except (BangerError, RPCError) as e:
            return {"vm": vm.name, "ok": False, "error": describe_error(e)}

    return list(await asyncio.gather(*(one(vm) for vm in refs)))


async def _fan_out(d: Daemon, refs: list[str], fn: Any) -> Any:
    """One VM: its record (or its error, with its code). Several: per-VM results, concurrently."""
    vms = await d.vms.get_many(refs)
    results = await for_each(vms, fn)
    if len(results) == 1:
        r = results[0]
        if not r["ok"]:
            raise from_wire(r["error"])
        return r["result"]
    return {"results": results}


async def vm_start(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(RefsParams, params)

    async def fn(vm: VMRecord) -> VMRecord:
        return await d.vms.start_vm(vm.id, ctx)

    return await _fan_out(d, p.refs, fn)


async def vm_stop(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(StopParams, params)

    async def fn(vm: VMRecord) -> VMRecord:
        return await d.vms.stop_vm(vm.id, p.timeout)

    return await _fan_out(d, p.refs, fn)


async def vm_restart(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(RefsParams, params)

    async def fn(vm: VMRecord) -> VMRecord:
        return await d.vms.restart_vm(vm.id, ctx)

    return await _fan_out(d, p.refs, fn)


async def vm_kill(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(KillParams, params)

    async def fn(vm: VMRecord) -> VMRecord:
        return await d.vms.kill_vm(vm.id, p.signal)

    return await _fan_out(d, p.refs, fn)


async def vm_delete(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(RefsParams, params)

    async def fn(vm: VMRecord) -> VMRecord:
        return await d.vms.delete(vm.id)

    return await _fan_out(d, p.refs, fn)


async def vm_set(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(SetParams, params)

    async def fn(vm: VMRecord) -> VMRecord:
        return await d.vms.set_vm(
            vm.id,
            p.vcpu,
            p.memory,
            p.disk_size,
            nat=p.nat,
            allow=p.allow,
            disallow=p.disallow,
            egress=p.egress,
        )

    return await _fan_out(d, p.refs, fn)


def _with_workspaces(d: Daemon, vm: VMRecord) -> dict[str, Any]:
    """The VM as JSON plus `workspaces`: its prepared checkouts (host → guest), newest first."""
    spaces = [
        {"host_path": w.host_path, "guest_path": w.guest_path}
        for w in workspace_records.list_for(d.store, vm.id)
    ]
    return {**vm.model_dump(mode="json"), "workspaces": spaces}


async def vm_list(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    parse_params(Params, params)
    return [_with_workspaces(d, vm) for vm in await d.vms.list()]


async def vm_show(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(RefParams, params)
    return _with_workspaces(d, await d.vms.get(p.ref))


async def vm_logs(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(LogsParams, params)
    return await d.vms.logs(p.ref, p.max_bytes, offset=p.offset)


async def vm_ssh(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(RefParams, params)
    return (await d.vms.ssh_target(p.ref)).to_json()


async def vm_egress(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    """The VM's egress policy, the names resolved for it and what it was denied."""
    p = parse_params(RefParams, params)
    vm = await d.vms.get(p.ref)
    return await d.network.egress_report(vm.id, vm.name)

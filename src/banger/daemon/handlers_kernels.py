"""RPC handlers for `kernel.*`: thin wrappers over KernelService (d.kernels)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from banger.daemon.params import HostPath, KernelName, KernelVersion, Params, parse_params
from banger.request import RequestContext

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class NameParams(Params):
    name: KernelName


class PullParams(Params):
    name: KernelName
    force: bool = False


class ImportParams(Params):
    name: KernelName
    kernel: HostPath | None = None
    initrd: HostPath | None = None
    modules: HostPath | None = None
    from_host: bool = False
    host_version: KernelVersion | None = None
    force: bool = False


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


async def kernel_catalog(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    parse_params(Params, params)
    return await d.kernels.catalog()


async def kernel_list(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    parse_params(Params, params)
    return await d.kernels.list()


async def kernel_show(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(NameParams, params)
    return await d.kernels.get(p.name)


async def kernel_pull(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(PullParams, params)
    return await d.kernels.pull(p.name, ctx, force=p.force)


async def kernel_import(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(ImportParams, params)
    return await d.kernels.import_(
        p.name,
        ctx,
        kernel=_path(p.kernel),
        initrd=_path(p.initrd),
        modules=_path(p.modules),
        from_host=p.from_host,
        host_version=p.host_version,
        force=p.force,
    )


async def kernel_delete(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> Any:
    p = parse_params(NameParams, params)
    return await d.kernels.delete(p.name)

"""RPC handlers for `image.*`: thin wrappers that parse params and call `d.images`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import field_validator

from banger.daemon.params import (
    HostPath,
    ImageName,
    KernelName,
    OCIRef,
    Params,
    Ref,
    Size,
    parse_params,
)
from banger.images import kernel_attach
from banger.images.model import ImageRecord
from banger.request import RequestContext
from banger.units import MAX_SIZE, parse_size

if TYPE_CHECKING:
    from banger.daemon.app import Daemon


class PullParams(Params):
    ref: OCIRef
    name: ImageName | None = None
    # Bytes, or a size string like "4G".
    size: int | Size | None = None
    # A kernel to boot the image with: a known kernel, or files imported under the image's name.
    kernel_ref: KernelName | None = None
    kernel: HostPath | None = None
    initrd: HostPath | None = None
    modules: HostPath | None = None

    @field_validator("size")
    @classmethod
    def _size(cls, v: int | str | None) -> int | str | None:
        if isinstance(v, str):
            return parse_size(v)
        if isinstance(v, int) and v <= 0:
            raise ValueError("size must be greater than zero")
        if isinstance(v, int) and v > MAX_SIZE:
            raise ValueError(f"size {v} is larger than the 16 TiB maximum")
        return v


class RefParams(Params):
    ref: Ref


class NoParams(Params):
    pass


class RegisterParams(Params):
    name: ImageName
    rootfs: HostPath
    kernel_ref: KernelName | None = None
    kernel: HostPath | None = None
    initrd: HostPath | None = None
    modules: HostPath | None = None


class PruneParams(Params):
    dry_run: bool = False


async def image_pull(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> ImageRecord:
    p = parse_params(PullParams, params)
    size = p.size if isinstance(p.size, int) else None
    attach = kernel_attach.attachment(p.kernel_ref, p.kernel, p.initrd, p.modules)
    if attach is None:
        return await d.images.pull(p.ref, p.name, size, ctx)
    return await kernel_attach.pull_with_kernel(
        d.images, d.kernels, p.ref, p.name, size, ctx, attach
    )


async def image_list(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> list[ImageRecord]:
    parse_params(NoParams, params)
    return await d.images.list()


async def image_show(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> ImageRecord:
    p = parse_params(RefParams, params)
    rec = await d.images.get(p.ref)
    return rec.model_copy(update={"templates": d.vms.templates_of(rec.id)})


async def image_delete(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> ImageRecord:
    p = parse_params(RefParams, params)
    rec = await d.images.delete(p.ref)
    # Its warm-create templates go with it (VMs made from them keep the layers they read).
    await d.vms.remove_templates(rec.id)
    return rec


async def image_register(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> ImageRecord:
    p = parse_params(RegisterParams, params)
    return await d.images.register(
        name=p.name,
        rootfs=p.rootfs,
        kernel_ref=p.kernel_ref,
        kernel=p.kernel,
        initrd=p.initrd,
        modules=p.modules,
    )


async def image_promote(d: Daemon, ctx: RequestContext, params: dict[str, Any]) -> ImageRecord:
    p = parse_params(RefParams, params)
    return await d.images.promote(p.ref, ctx)


async def image_cache_prune(
    d: Daemon, ctx: RequestContext, params: dict[str, Any]
) -> dict[str, Any]:
    p = parse_params(PruneParams, params)
    out = await d.images.prune(p.dry_run)
    if p.dry_run:
        out["templates"] = len(d.vms.templates_of(None))
    else:
        out["templates"] = await d.vms.remove_templates(None)
    return out

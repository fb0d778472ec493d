"""`image pull … --kernel-ref K` or `--kernel F [--initrd F] [--modules DIR]`: a pulled image
that boots with its own kernel.

Everything is checked before the pull starts (the ref, the kernel name, the files). Kernel files
are imported into the kernel store under the image's name — the same import as `kernel import`,
so they boot like any kernel (vmlinux extracted, initramfs generated from the modules) — before
the pull, and removed again when the pull fails: a failure leaves neither half.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from banger.errors import AlreadyExists, InvalidInput, NotFound
from banger.images import debian
from banger.images.model import ImageRecord
from banger.images.reference import ReferenceError, parse_reference

if TYPE_CHECKING:
    from banger.images.service import ImageService
    from banger.request import RequestContext


class Kernels(Protocol):
    async def get(self, name: str) -> object: ...
    async def import_(
        self,
        name: str,
        ctx: RequestContext,
        *,
        kernel: Path | None = None,
        initrd: Path | None = None,
        modules: Path | None = None,
    ) -> object: ...
    async def delete(self, name: str) -> object: ...


@dataclass(frozen=True)
class KernelAttachment:
    kernel_ref: str | None = None
    kernel: Path | None = None
    initrd: Path | None = None
    modules: Path | None = None


def _existing(value: str, what: str, want_dir: bool = False) -> Path:
    p = Path(value)
    if not p.is_absolute():
        raise InvalidInput(f"{what} path {value!r} must be absolute")
    ok = p.is_dir() if want_dir else p.is_file()
    if not ok:
        kind = "directory" if want_dir else "file"
        raise InvalidInput(f"{what} {value!r} is not an existing {kind}")
    return Path(os.path.realpath(p))


def attachment(
    kernel_ref: str | None, kernel: str | None, initrd: str | None, modules: str | None
) -> KernelAttachment | None:
    """The kernel to attach, checked; None when the pull attaches none."""
    if kernel_ref and (kernel or initrd or modules):
        raise InvalidInput("give either a kernel ref or kernel/initrd/modules files, not both")
    if (initrd or modules) and not kernel:
        raise InvalidInput("an initrd or modules directory needs a kernel file")
    if kernel_ref:
        return KernelAttachment(kernel_ref=kernel_ref)
    if not kernel:
        return None
    return KernelAttachment(
        kernel=_existing(kernel, "kernel"),
        initrd=_existing(initrd, "initrd") if initrd else None,
        modules=_existing(modules, "modules", want_dir=True) if modules else None,
    )


def image_name(ref_text: str, name: str | None) -> str:
    """The name `image pull` will give the image (the attached kernel is named after it)."""
    if name or ref_text in debian.BUILTINS:
        return name or ref_text
    try:
        return parse_reference(ref_text).default_name()
    except ReferenceError as e:
        raise InvalidInput(str(e)) from None


async def pull_with_kernel(
    images: ImageService,
    kernels: Kernels,
    ref_text: str,
    name: str | None,
    size_bytes: int | None,
    ctx: RequestContext,
    attach: KernelAttachment,
) -> ImageRecord:
    target = image_name(ref_text, name)
    if attach.kernel_ref is not None:
        try:
            await kernels.get(attach.kernel_ref)
        except NotFound as e:
            raise NotFound(f"{e.message} (given as the kernel ref)") from None
        rec = await images.pull(ref_text, name, size_bytes, ctx)
        return await images.set_kernel_ref(rec.id, attach.kernel_ref)
    images.check_name_free(target)
    try:
        await kernels.get(target)
    except NotFound:
        pass
    else:
        raise AlreadyExists(
            f"a kernel named {target!r} exists already (a kernel file given with a pull is "
            f"stored under the image's name): give {target!r} as the kernel ref, or another "
            "image name"
        )
    await kernels.import_(
        target, ctx, kernel=attach.kernel, initrd=attach.initrd, modules=attach.modules
    )
    try:
        rec = await images.pull(ref_text, name, size_bytes, ctx)
    except BaseException:
        await kernels.delete(target)
        raise
    return await images.set_kernel_ref(rec.id, target)

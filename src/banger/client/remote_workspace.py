"""A checkout shipped from this machine to a remote daemon's guest (CLI and SDK).

A remote daemon cannot read this machine's checkout: the client plans it here and streams the
git pack / tar to the guest itself, through the remote host (the same steps the daemon runs
locally), then asks the daemon to record the workspace (`vm.workspace.record`) so `vm exec`
and `workspace export` find it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from banger.workspace.plan import PrepareOptions, WorkspacePlan


def record_params(vm: str, plan: WorkspacePlan, options: PrepareOptions) -> dict[str, Any]:
    """`vm.workspace.record` params for a workspace the client shipped itself (CLI and SDK)."""
    return {
        "vm": vm,
        "host_path": plan.repo_root,
        "guest_path": plan.guest_path,
        "repo_name": plan.repo_name,
        "head_commit": plan.head_commit,
        "base_commit": plan.base_commit,
        "mode": plan.mode,
        "include_untracked": options.include_untracked,
        "readonly": options.readonly,
        "branch": options.branch,
        "shallow": options.shallow,
    }


def prepare_from_client(
    vm: str,
    path: str,
    opts: dict[str, Any],
    say: Callable[[str], None],
    on_cancel_wait: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """`vm.workspace.prepare` for the remote daemon this process talks to (client.target)."""
    from banger.client.target import call, guest_wrapper
    from banger.guest.ssh import SSHTarget
    from banger.workspace.plan import PrepareOptions, make_plan
    from banger.workspace.ship import prepare
    from banger.workspace.transport import SSHGuestExec

    options = PrepareOptions(**opts)
    plan, _ = make_plan(Path(path).resolve(), options)
    info = call("vm.ssh", {"ref": vm}, on_cancel_wait=on_cancel_wait)
    target = SSHTarget.from_json(info.get("target", info))
    guest = SSHGuestExec(target, via=guest_wrapper())
    say("inspect")
    result = asyncio.run(prepare(guest, plan, progress=say))
    call("vm.workspace.record", record_params(vm, plan, options), on_cancel_wait=on_cancel_wait)
    return {"vm": target.vm_name, **result.model_dump(mode="json")}

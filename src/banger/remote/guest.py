"""Guests of a remote daemon, reached from the CLI through the remote host.

The guest's key and its pinned host key stay on the remote (in the remote daemon's state dir):
the CLI runs the same guest `ssh` argv it would run locally, on the remote, through the user's
own ssh to it (`ssh [opts] -- host '<guest ssh argv>'`). Nothing secret is copied here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from banger.workspace.plan import PrepareOptions, WorkspacePlan


def via_remote(argv: list[str], *, tty: bool = False) -> list[str]:
    """`argv` (a guest ssh command) as this command's host runs it: unchanged locally, wrapped
    in ssh to the remote host when one is set."""
    from banger.cli import connect

    if connect.REMOTE is None:
        return list(argv)
    return connect.REMOTE.ssh_argv(argv, tty=tty)


def guest_wrapper() -> Callable[[list[str]], list[str]] | None:
    """For SSHGuestExec(via=…): None locally (banger's own multiplexed ssh)."""
    from banger.cli import connect

    if connect.REMOTE is None:
        return None
    remote = connect.REMOTE
    return lambda argv: remote.ssh_argv(argv)


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
    vm: str, path: str, opts: dict[str, Any], say: Callable[[str], None]
) -> dict[str, Any]:
    """`vm.workspace.prepare` for a remote daemon: it cannot read this machine's checkout, so
    the CLI plans it here and streams the git pack / tar to the guest itself (through the remote
    host, the same steps the daemon runs locally), then asks the daemon to record the workspace
    (`vm.workspace.record`) so `vm exec` and `workspace export` find it."""
    from banger.cli.connect import call
    from banger.guest.ssh import SSHTarget
    from banger.workspace.plan import PrepareOptions, make_plan
    from banger.workspace.ship import prepare
    from banger.workspace.transport import SSHGuestExec

    options = PrepareOptions(**opts)
    plan, _ = make_plan(Path(path).resolve(), options)
    info = call("vm.ssh", {"ref": vm})
    target = SSHTarget.from_json(info.get("target", info))
    guest = SSHGuestExec(target, via=guest_wrapper())
    say("inspect")
    result = asyncio.run(prepare(guest, plan, progress=say))
    call("vm.workspace.record", record_params(vm, plan, options))
    return {"vm": target.vm_name, **result.model_dump(mode="json")}

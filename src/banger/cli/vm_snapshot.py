"""`banger vm snapshot create|list|restore|delete`: checkpoints of a VM (docs/snapshots.md)."""

from __future__ import annotations

import click
from click.shell_completion import CompletionItem

from banger.cli.complete import TIMEOUT_SECONDS, VM_REF
from banger.cli.connect import call
from banger.cli.output import age, print_json, print_table
from banger.cli.progress import Stages
from banger.units import format_bytes


def _tags(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The VM's checkpoint tags (nothing without a daemon, or over a remote host: see
    cli/complete.py)."""
    import os

    ref = ctx.params.get("ref")
    if not ref or os.environ.get("BANGER_HOST"):
        return []
    try:
        from banger.cli.connect import resolve_paths
        from banger.rpc.client import Client

        with Client(resolve_paths().socket, connect_timeout=TIMEOUT_SECONDS) as c:
            snaps = c.call("vm.snapshot.list", {"ref": ref}, timeout=TIMEOUT_SECONDS)
    except Exception:
        return []
    return [
        CompletionItem(str(s["tag"]), help=str(s.get("created_at") or ""))
        for s in snaps
        if isinstance(s, dict)
        and s.get("kind") != "suspend"  # the suspend image: no snapshot verb takes its tag
        and str(s.get("tag", "")).startswith(incomplete)
    ]


TAG = click.argument("tag", metavar="TAG")
EXISTING_TAG = click.argument("tag", metavar="TAG", shell_complete=_tags)


@click.group("snapshot")
def snapshot() -> None:
    """Checkpoint a running VM (RAM and disks); roll it back later."""


@snapshot.command("create")
@VM_REF
@TAG
def create(ref: str, tag: str) -> None:
    """Checkpoint a running VM under TAG; it keeps running.

    RAM and every writable disk are saved; the guest pauses only for the switchover."""
    with Stages() as display:
        s = call("vm.snapshot.create", {"ref": ref, "tag": tag}, on_progress=display)
    paused = f", paused {s['paused_ms']} ms" if s["paused_ms"] is not None else ""
    print(f"{s['vm']}: snapshot {s['tag']} ({format_bytes(s['size_bytes'])} on disk{paused})")


@snapshot.command("list")
@VM_REF
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_(ref: str, as_json: bool) -> None:
    """List a VM's checkpoints, oldest first."""
    snaps = call("vm.snapshot.list", {"ref": ref})
    if as_json:
        print_json(snaps)
        return
    if not snaps:
        print(f"no snapshots of {ref}: `banger vm snapshot create {ref} TAG` takes one")
        return
    rows = [
        [
            s["tag"],
            s["kind"],
            s["created_at"],
            age(s["created_at"]),
            format_bytes(s["size_bytes"]),
            "" if s["paused_ms"] is None else f"{s['paused_ms']} ms",
        ]
        for s in snaps
    ]
    print_table(["TAG", "KIND", "CREATED", "AGE", "SIZE", "PAUSED"], rows, droppable=(2, 5))


@snapshot.command("restore")
@VM_REF
@EXISTING_TAG
def restore(ref: str, tag: str) -> None:
    """Roll a VM back to checkpoint TAG (memory and disks).

    Whatever the VM ran since is discarded; it ends running."""
    with Stages() as display:
        vm = call("vm.snapshot.restore", {"ref": ref, "tag": tag}, on_progress=display)
    print(f"{vm['name']}: restored {tag} ({vm['state']})")


@snapshot.command("delete")
@VM_REF
@EXISTING_TAG
def delete(ref: str, tag: str) -> None:
    """Delete checkpoint TAG of a VM."""
    r = call("vm.snapshot.delete", {"ref": ref, "tag": tag})
    kept = ""
    if r["layers_kept"]:
        kept = " (its disk layers stay while the VM's disks read through them)"
    print(f"{r['vm']}: deleted snapshot {r['tag']}{kept}")

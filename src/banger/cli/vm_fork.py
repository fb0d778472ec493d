"""`banger vm fork VM --name NEW [-n K]`: children of a running VM (docs/snapshots.md, "Fork")."""

from __future__ import annotations

import sys
from typing import Any

import click

from banger.cli.complete import VM_REF
from banger.cli.connect import call
from banger.cli.output import print_json, style
from banger.cli.progress import Stages


class ForkStages(Stages):
    """The create's stage display, plus the checkpoint and which child a stage is about."""

    def __init__(self) -> None:
        super().__init__()
        self.LABELS = {**Stages.LABELS, "checkpoint": "checkpointing the parent"}

    def __call__(self, ev: dict[str, Any]) -> None:
        child = ev.get("vm")
        if child and str(ev.get("stage", "")) in self.LABELS:
            label = self.LABELS[str(ev["stage"])]
            ev = {**ev, "stage": "_child"}
            self.LABELS["_child"] = f"{child}: {label}"
        super().__call__(ev)


@click.command(name="fork", short_help="Fork a running VM into new VMs.")
@VM_REF
@click.option("--name", "new", required=True, metavar="NEW", help="the child's name (a DNS label)")
@click.option(
    "-n",
    "count",
    type=int,
    default=None,
    metavar="K",
    help="make K children, named NEW-1 … NEW-K (at most 16)",
)
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def fork_cmd(ref: str, new: str, count: int | None, as_json: bool) -> None:
    """Fork a running (or paused) VM: children with its memory and disks as they are now, each
    with its own name, address, hostname, SSH host key and machine-id. The parent runs on."""
    params: dict[str, Any] = {"ref": ref, "name": new}
    if count is not None:
        params["count"] = count
    stages = ForkStages()
    try:
        res = call("vm.fork", params, on_progress=stages)
    finally:
        stages.close()
    if as_json:
        print_json(res)
    else:
        paused = f"paused {res['paused_seconds'] * 1000:.0f} ms for the checkpoint"
        print(f"{res['parent']}: {res['parent_state']} ({paused})")
        for c in res["children"]:
            if c["ok"]:
                vm = c["vm"]
                where = f" · {vm['ip']}" if vm.get("ip") else ""
                print(f"{style(c['name'], '1')} ready in {c['seconds']:.1f}s{where}")
            else:
                print(f"{c['name']}: failed: {c['error']}", file=sys.stderr)
    if not all(c["ok"] for c in res["children"]):
        from banger.cli.main import ExitCode

        raise ExitCode(1)

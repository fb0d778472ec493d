"""`banger vm pause|resume|suspend`: freeze a VM in place, or save it to disk (docs/snapshots.md).
`vm start` wakes a suspended VM; `vm stop` discards its saved state."""

from __future__ import annotations

from typing import Any

import click

from banger.cli.complete import VM_REF
from banger.cli.connect import call
from banger.cli.output import print_json
from banger.cli.progress import Stages
from banger.units import format_bytes

JSON = click.option("--json", "as_json", is_flag=True, help="print the VM as JSON")


def suspend_image_size(ref: str) -> int | None:
    """Bytes on disk of the VM's suspend image (it is listed with its checkpoints), or None."""
    snaps = call("vm.snapshot.list", {"ref": ref})
    sizes = [int(s["size_bytes"]) for s in snaps if s.get("kind") == "suspend"]
    return sizes[0] if sizes else None


def _done(vm: dict[str, Any], as_json: bool, line: str) -> None:
    if as_json:
        print_json(vm)
    else:
        print(line)


@click.command()
@VM_REF
@JSON
def pause(ref: str, as_json: bool) -> None:
    """Freeze a running VM in place (memory and VMM stay).

    `banger vm resume` thaws it."""
    vm = call("vm.pause", {"ref": ref})
    _done(vm, as_json, f"{vm['name']}: paused")


@click.command()
@VM_REF
@JSON
def resume(ref: str, as_json: bool) -> None:
    """Thaw a paused VM."""
    vm = call("vm.resume", {"ref": ref})
    _done(vm, as_json, f"{vm['name']}: running")


@click.command()
@VM_REF
@JSON
def suspend(ref: str, as_json: bool) -> None:
    """Save a running VM's RAM and devices to disk.

    The VMM exits. `banger vm start` resumes it with its processes as they
    were; `banger vm stop` discards the saved state."""
    with Stages() as display:
        vm = call("vm.suspend", {"ref": ref}, on_progress=display)
    size = suspend_image_size(vm["id"])
    saved = f" ({format_bytes(size)} saved)" if size is not None else ""
    _done(vm, as_json, f"{vm['name']}: suspended{saved}")


COMMANDS = (pause, resume, suspend)

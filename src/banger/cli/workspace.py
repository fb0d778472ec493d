"""`banger vm workspace prepare|export`: ship a checkout into a VM, bring its changes back."""

from __future__ import annotations

import base64
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

import click

from banger.cli.complete import vm_names
from banger.cli.output import dim, print_json


def _show_stage(fields: dict[str, Any]) -> None:
    stage = fields.get("stage")
    if stage and sys.stderr.isatty():
        print(dim(f"  {stage}…"), file=sys.stderr)


def call(method: str, params: dict[str, Any], *, progress: bool = False) -> Any:
    """An RPC call; with `progress`, the workspace stages as dim lines on a terminal."""
    from banger.cli import connect

    return connect.call(method, params, on_progress=_show_stage if progress else None)


def print_plan(plan: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print_json(plan)
        return
    from banger.units import format_bytes

    extra = " + untracked" if plan["include_untracked"] else ""
    click.echo(
        f"mode: {plan['mode']}{extra} · {len(plan['files'])} file(s) · "
        f"{format_bytes(plan['total_bytes'])} → {plan['guest_path']}"
    )
    click.echo(f"repo: {plan['repo_root']} @ {(plan['base_commit'] or 'no commit')[:12]}")
    for f in plan["files"]:
        click.echo(f"  {f}")
    for f in plan["deleted"]:
        click.echo(f"  (deleted) {f}")


def local_plan(path: str, **opts: Any) -> dict[str, Any]:
    """The dry-run plan, computed here: it needs the checkout only, never the VM."""
    from banger.workspace.plan import PrepareOptions, make_plan

    plan, _ = make_plan(Path(path).resolve(), PrepareOptions(**opts))
    return plan.model_dump(mode="json")


def prepare_options(f: Any) -> Any:
    """The options of `vm workspace prepare` and `vm run`: the command receives them as keyword
    arguments named like PrepareOptions' fields, plus `dry_run`."""
    for deco in reversed(
        [
            click.option(
                "--include-untracked", is_flag=True, help="also ship untracked, non-ignored files"
            ),
            click.option("--readonly", is_flag=True, help="drop write bits in the guest checkout"),
            click.option(
                "--mode",
                type=click.Choice(["overlay", "full_copy"]),
                default="overlay",
                show_default=True,
                help="overlay: HEAD's history + your changes; full_copy: the whole tree as is",
            ),
            click.option("--branch", help="create and check out this branch in the guest"),
            click.option(
                "--from", "from_ref", help="start --branch at this commit instead of HEAD"
            ),
            click.option(
                "--shallow", is_flag=True, help="ship HEAD's snapshot only, not its history"
            ),
            click.option("--dry-run", is_flag=True, help="list the files and mode; touch nothing"),
            click.option(
                "--guest-path",
                default="/root/repo",
                show_default=True,
                help="where the checkout goes in the guest",
            ),
        ]
    ):
        f = deco(f)
    return f


@click.group("workspace", short_help="Ship a checkout into a VM; export its changes as a patch.")
def workspace() -> None:
    """Ship a git checkout into a VM and export the guest's changes as a patch."""


@workspace.command("prepare")
@click.argument("vm_ref", metavar="VM", shell_complete=vm_names)
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@prepare_options
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def prepare_cmd(vm_ref: str, path: str, as_json: bool, dry_run: bool, **opts: Any) -> None:
    """Copy the checkout at PATH into VM (default /root/repo) as a real git repository."""
    if dry_run:
        print_plan(local_plan(path, **opts), as_json=as_json)
        return
    result = call(
        "vm.workspace.prepare",
        {"vm": vm_ref, "path": str(Path(path).resolve()), **opts},
        progress=True,
    )
    if as_json:
        print_json(result)
        return
    print_prepared(result)


def print_prepared(result: dict[str, Any]) -> None:
    from banger.units import format_bytes

    base = (result.get("base_commit") or "no commit")[:12]
    click.echo(
        f"prepared {result['repo_name']} in vm {result['vm']} at {result['guest_path']} "
        f"({result['mode']}, {result['files']} file(s), {format_bytes(result['total_bytes'])}, "
        f"base {base}) in {result['seconds']:.1f}s",
        err=True,
    )


def write_atomically(path: Path, data: bytes) -> None:
    """Stage next to the target and rename, so a failed write never leaves half a patch."""
    path = path.resolve()
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        # A device, FIFO or terminal (`-o /dev/stdout`, `-o /dev/null`): write through it as `>`
        # would. Renaming over it would replace the device node itself (as root: /dev/null).
        with open(path, "wb") as f:
            f.write(data)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        # mkstemp makes 0600: keep an existing file's mode, give a new one the umask's default.
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
        else:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@workspace.command("export")
@click.argument("vm_ref", metavar="VM", shell_complete=vm_names)
@click.option("--base-commit", help="diff against this commit (default: the prepared HEAD)")
@click.option("--guest-path", help="which workspace (default: the last one prepared)")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="write the patch here")
@click.option("--json", "as_json", is_flag=True, help="print the changed files as JSON")
def export_cmd(
    vm_ref: str, base_commit: str | None, guest_path: str | None, output: str | None, as_json: bool
) -> None:
    """A binary git patch of the guest's changes (stdout: pipe it to `git apply`)."""
    params: dict[str, Any] = {"vm": vm_ref}
    if base_commit:
        params["base_commit"] = base_commit
    if guest_path:
        params["guest_path"] = guest_path
    result = call("vm.workspace.export", params)
    patch = base64.b64decode(result.pop("patch_base64"))
    if output:
        write_atomically(Path(output), patch)
        result["output"] = str(Path(output).resolve())
    if as_json:
        if not output:
            result["patch"] = patch.decode(errors="replace")
        print_json(result)
        return
    if output:
        n = len(result["files"])
        click.echo(f"wrote {len(patch)} bytes ({n} changed file(s)) to {output}", err=True)
        return
    sys.stdout.buffer.write(patch)
    sys.stdout.buffer.flush()

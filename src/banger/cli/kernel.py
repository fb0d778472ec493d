"""`banger kernel catalog|list|show|pull|import|delete`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from banger.cli.complete import catalog_names, kernel_names
from banger.cli.connect import call
from banger.cli.output import print_fields, print_json, print_table
from banger.units import format_bytes


def _catalog_table(items: list[dict[str, Any]]) -> None:
    if not items:
        click.echo("the kernel catalog is empty (set kernel_catalog in the config to add one)")
        return
    rows = [
        [
            i["name"],
            i["state"],
            i.get("distro", ""),
            i.get("kernel_version", ""),
            format_bytes(i["size_bytes"]) if i.get("size_bytes") else "-",
            i.get("description", ""),
        ]
        for i in items
    ]
    print_table(["NAME", "STATE", "DISTRO", "VERSION", "SIZE", "DESCRIPTION"], rows)


@click.group(short_help="Import, pull and manage guest kernels.")
def kernel() -> None:
    """Manage kernels: pull from the catalog, import local or host kernels."""


@kernel.command("catalog")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def catalog_cmd(as_json: bool) -> None:
    """Kernels the catalog offers, each marked pulled or available."""
    _print_catalog(as_json)


def _print_catalog(as_json: bool) -> None:
    items = call("kernel.catalog", {})
    if as_json:
        print_json(items)
    else:
        _catalog_table(items)


@kernel.command("list")
@click.option("--available", is_flag=True, help="show the catalog (pulled/available) instead")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_cmd(available: bool, as_json: bool) -> None:
    """Local kernels."""
    if available:
        _print_catalog(as_json)
        return
    kernels = call("kernel.list", {})
    if as_json:
        print_json(kernels)
        return
    if not kernels:
        click.echo(
            "no kernels yet: `banger kernel import NAME --from-host` or `banger kernel pull`"
        )
        return
    rows = [
        [
            k["name"],
            k["kernel_version"],
            k["format"],
            "yes" if k.get("vmlinux") else "no",
            "generated" if k.get("initrd_generated") else ("yes" if k.get("initrd") else "no"),
            format_bytes(k.get("size_bytes", 0)),
            k["source"],
        ]
        for k in kernels
    ]
    headers = ["NAME", "VERSION", "FORMAT", "VMLINUX", "INITRD", "SIZE", "SOURCE"]
    print_table(headers, rows, droppable=(3, 2))  # narrow terminal: boot details go first


def _print_record(k: dict[str, Any]) -> None:
    fields = [
        ("name", k["name"]),
        ("distro", k.get("distro") or "-"),
        ("arch", k.get("arch")),
        ("version", k.get("kernel_version") or "-"),
        ("format", k["format"]),
        ("sha256", k["sha256"]),
        ("source", k["source"]),
        ("imported", k["imported_at"]),
        ("size", format_bytes(k.get("size_bytes", 0))),
        ("kernel", k["kernel"]),
        ("vmlinux", k.get("vmlinux") or "-"),
        (
            "initrd",
            (k.get("initrd") or "-") + (" (generated)" if k.get("initrd_generated") else ""),
        ),
        ("modules", k.get("modules_dir") or "-"),
    ]
    print_fields(fields)


@kernel.command("show")
@click.argument("name", metavar="KERNEL", shell_complete=kernel_names)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show_cmd(name: str, as_json: bool) -> None:
    """Details of one local kernel."""
    k = call("kernel.show", {"name": name})
    if as_json:
        print_json(k)
    else:
        _print_record(k)


@contextmanager
def _progress_bar(
    description: str, *, downloads: bool = True
) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A rich progress bar fed by the daemon's progress lines (plain lines when not a TTY); a
    spinner with the stage when nothing is downloaded (no empty byte counters)."""
    if not sys.stderr.isatty():
        last_stage: list[str] = []

        def plain(p: dict[str, Any]) -> None:
            stage = str(p.get("stage", ""))
            if stage and (not last_stage or last_stage[-1] != stage):
                last_stage.append(stage)
                click.echo(f"{description}: {stage}", err=True)

        yield plain
        return
    if not downloads:
        from rich.console import Console

        with Console(stderr=True).status(description) as status:

            def stage_only(p: dict[str, Any]) -> None:
                if p.get("stage"):
                    status.update(f"{description} ({p['stage']})")

            yield stage_only
        return
    from banger.cli.progress import transfer_bars

    with transfer_bars(transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(p: dict[str, Any]) -> None:
            stage = p.get("stage", "")
            total = p.get("total")
            bar.update(
                task,
                description=f"{description} ({stage})" if stage else description,
                completed=p.get("current", 0) if stage == "download" else None,
                total=total if stage == "download" else None,
            )

        yield update


def _report(result: dict[str, Any], verb: str) -> None:
    for w in result.get("warnings", []):
        click.echo(f"warning: {w}", err=True)
    k = result["kernel"]
    boots = "vmlinux" if k.get("vmlinux") else k["format"]
    initrd = (
        "generated initramfs"
        if k.get("initrd_generated")
        else ("initrd" if k.get("initrd") else "no initrd")
    )
    click.echo(
        f"{verb} kernel {k['name']} ({k.get('kernel_version') or '?'}; boots {boots}, {initrd})"
    )


@kernel.command("pull")
@click.argument("name", shell_complete=catalog_names)
@click.option("-f", "--force", is_flag=True, help="replace a local kernel of the same name")
def pull_cmd(name: str, force: bool) -> None:
    """Download a catalog kernel, verify its sha256 and install it."""
    with _progress_bar(f"pulling {name}") as cb:
        result = call("kernel.pull", {"name": name, "force": force}, on_progress=cb)
    _report(result, "pulled")


@kernel.command("import", short_help="Import the host's kernel or kernel files you give.")
@click.argument("name")
@click.option("--kernel", "kernel_file", type=click.Path(dir_okay=False), help="bzImage or vmlinux")
@click.option("--initrd", type=click.Path(dir_okay=False), help="initrd to use as is")
@click.option("--modules", type=click.Path(file_okay=False), help="its /lib/modules/<ver> dir")
@click.option(
    "--from-host",
    "from_host",
    is_flag=False,
    flag_value="",
    default=None,
    metavar="[VERSION]",
    help="import an installed distro kernel (/boot/vmlinuz-*, newest unless VERSION)",
)
@click.option("-f", "--force", is_flag=True, help="replace a local kernel of the same name")
def import_cmd(
    name: str,
    kernel_file: str | None,
    initrd: str | None,
    modules: str | None,
    from_host: str | None,
    force: bool,
) -> None:
    """Import a local kernel (and generate a banger initramfs for a modular one)."""
    params: dict[str, Any] = {"name": name, "force": force}
    if from_host is not None:
        params["from_host"] = True
        if from_host:
            params["host_version"] = from_host
    for key, value in (("kernel", kernel_file), ("initrd", initrd), ("modules", modules)):
        if value is not None:
            params[key] = os.path.abspath(value)
    with _progress_bar(f"importing {name}", downloads=False) as cb:
        result = call("kernel.import", params, on_progress=cb)
    _report(result, "imported")


@kernel.command("delete")
@click.argument("name", metavar="KERNEL", shell_complete=kernel_names)
def delete_cmd(name: str) -> None:
    """Delete a local kernel (refused while an image or VM uses it)."""
    k = call("kernel.delete", {"name": name})
    click.echo(f"deleted kernel {k['name']}")


# `rm` is the name the original banger used.
kernel.add_command(
    click.Command(
        "rm",
        callback=delete_cmd.callback,
        params=delete_cmd.params,
        help="Alias of delete.",
        hidden=True,
    )
)

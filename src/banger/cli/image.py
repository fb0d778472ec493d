"""`banger image pull|list|show|delete|register|promote|cache prune`."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from banger.cli.complete import image_names, kernel_names
from banger.cli.connect import call
from banger.cli.output import age, print_fields, print_json, print_table
from banger.units import format_bytes

F = TypeVar("F", bound=Callable[..., Any])


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


@click.group(short_help="Pull, register and manage root-filesystem images.")
def image() -> None:
    """Manage images: pull OCI images into ext4 root disks, register your own."""


class _PullProgress:
    """Per-layer rich progress bars (bytes, speed) fed by the daemon's progress lines."""

    def __init__(self) -> None:
        self.tasks: dict[str, Any] = {}
        self.progress: Any = None
        # Bars only on a terminal; piped output gets plain lines (and skips importing rich).
        self.enabled = sys.stderr.isatty()
        if not self.enabled:
            return
        from banger.cli.progress import transfer_bars

        self.progress = transfer_bars(transient=False)

    def __enter__(self) -> _PullProgress:
        if self.enabled:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.stop()

    def _line(self, text: str) -> None:
        if self.enabled:
            self.progress.console.print(text)
        else:
            print(text, file=sys.stderr)

    def __call__(self, ev: dict[str, Any]) -> None:
        stage = ev.get("stage")
        if stage == "resolve":
            self._line(f"resolving {ev.get('ref')}")
        elif stage == "layers":
            layers = ev.get("layers") or []
            self._line(f"{len(layers)} layer(s)")
            for layer in layers:
                digest = str(layer["digest"])
                if self.enabled:
                    self.tasks[digest] = self.progress.add_task(
                        digest.removeprefix("sha256:")[:12], total=layer["size"]
                    )
        elif stage == "download":
            task = self.tasks.get(str(ev.get("digest")))
            if task is not None:
                self.progress.update(task, completed=ev.get("current", 0), total=ev.get("total"))
        elif stage == "apply":
            digest = str(ev.get("digest", "")).removeprefix("sha256:")[:12]
            self._line(f"applying layer {int(ev['current']) + 1}/{ev['total']} {digest}")
        elif stage == "reuse":
            self._line("reusing the root filesystem already built from this image")
        elif stage == "mkfs":
            self._line(f"writing ext4 ({format_bytes(int(ev['size_bytes']))}, sparse)")
        elif stage == "warning":
            self._line(f"warning: {ev.get('message')}")
        elif stage in ("build", "copy"):
            self._line(str(ev.get("message") or ev.get("what") or stage))


def _kernel_options(kernel_help: str) -> Callable[[F], F]:
    """--kernel-ref, or --kernel with --initrd/--modules (the same on pull and register)."""

    def decorate(f: F) -> F:
        f = click.option("--modules", type=click.Path(), help="modules directory for --kernel")(f)
        f = click.option("--initrd", type=click.Path(), help="initramfs for --kernel")(f)
        f = click.option("--kernel", type=click.Path(), help=f"kernel file {kernel_help}")(f)
        return click.option(
            "--kernel-ref",
            metavar="KERNEL",
            shell_complete=kernel_names,
            help="a kernel banger knows (`banger kernel list`)",
        )(f)

    return decorate


def _kernel_params(
    kernel_ref: str | None, kernel: str | None, initrd: str | None, modules: str | None
) -> dict[str, str]:
    given = {
        "kernel_ref": kernel_ref,
        "kernel": _abs(kernel),
        "initrd": _abs(initrd),
        "modules": _abs(modules),
    }
    return {k: v for k, v in given.items() if v}


@image.command("pull", short_help="Pull an OCI image, or build the built-in debian-bookworm.")
@click.argument("ref")
@click.option(
    "--name",
    metavar="NAME",
    help="image name (default: derived from the ref, e.g. debian-bookworm)",
)
@click.option(
    "--size", metavar="SIZE", help="ext4 size, e.g. 4G (default: content x 1.5, at least 1 GiB)"
)
@_kernel_options("to boot this image with (imported under the image's name)")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def pull_cmd(
    ref: str,
    name: str | None,
    size: str | None,
    kernel_ref: str | None,
    kernel: str | None,
    initrd: str | None,
    modules: str | None,
    as_json: bool,
) -> None:
    """Pull an OCI image (or build the built-in `debian-bookworm`, or `debian-bookworm-systemd`
    for `vm create --init systemd`) into an ext4 root disk. `--kernel-ref` or
    `--kernel/--initrd/--modules` attach the kernel its VMs boot by default."""
    params: dict[str, Any] = {"ref": ref, **_kernel_params(kernel_ref, kernel, initrd, modules)}
    if name:
        params["name"] = name
    if size:
        params["size"] = size
    with _PullProgress() as progress:
        rec = call("image.pull", params, on_progress=progress)
    if as_json:
        print_json(rec)
        return
    click.echo(
        f"pulled {rec['name']} ({rec['id']}) digest {rec.get('digest') or '-'} "
        f"size {format_bytes(rec['size_bytes'])}"
    )


def _image_rows(images: list[dict[str, Any]]) -> list[list[Any]]:
    # Registered (unmanaged) images say so in SOURCE (`register:/path`); `image show` has it all.
    return [
        [
            i["name"],
            i["id"],
            format_bytes(i["size_bytes"]),
            (i.get("digest") or "-").removeprefix("sha256:")[:12],
            i["source"],
            age(i["created_at"]),
        ]
        for i in images
    ]


@image.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def list_cmd(as_json: bool) -> None:
    """Images banger knows."""
    images = call("image.list", {})
    if as_json:
        print_json(images)
        return
    if not images:
        click.echo("no images yet: `banger image pull debian-bookworm` builds the default one")
        return
    headers = ["NAME", "ID", "SIZE", "DIGEST", "SOURCE", "AGE"]
    # A narrow terminal: hashes go first (`image show` has them), then SOURCE is shortened.
    print_table(headers, _image_rows(images), droppable=(1, 3), cut=4)


@image.command("show")
@click.argument("ref", metavar="IMAGE", shell_complete=image_names)
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show_cmd(ref: str, as_json: bool) -> None:
    """One image: by name, id or unique id prefix."""
    i = call("image.show", {"ref": ref})
    if as_json:
        print_json(i)
        return
    cfg = i.get("config") or {}
    rows: list[list[Any]] = [
        ["name", i["name"]],
        ["id", i["id"]],
        ["rootfs", i["rootfs"]],
        ["size", f"{format_bytes(i['size_bytes'])} ({i['size_bytes']} bytes)"],
        ["managed", "yes" if i["managed"] else "no"],
        ["digest", i.get("digest") or "-"],
        ["source", i["source"]],
        ["created", i["created_at"]],
        ["kernel ref", i.get("kernel_ref") or "-"],
    ]
    for key in ("kernel", "initrd", "modules_dir"):
        if i.get(key):
            rows.append([key.replace("_", " "), i[key]])
    rows += [
        ["entrypoint", " ".join(cfg.get("entrypoint") or []) or "-"],
        ["cmd", " ".join(cfg.get("cmd") or []) or "-"],
        ["workdir", cfg.get("working_dir") or "-"],
        ["user", cfg.get("user") or "-"],
        ["env", "; ".join(cfg.get("env") or []) or "-"],
    ]
    print_fields(rows)
    templates = i.get("templates") or []
    if templates:
        # Warm-create templates (docs/snapshots.md): creates of this sizing wake from these.
        print()
        print_table(
            ["TEMPLATE", "KERNEL", "INIT", "VCPU", "MEMORY", "DISK", "SIZE", "CREATED", "USES"],
            [
                [
                    t["key"][:12], t["kernel"], t["init_mode"], t["vcpus"],
                    f"{t['memory_mib']} MiB", format_bytes(t["disk_size_bytes"]),
                    format_bytes(t["size_bytes"]), t["created_at"], t["uses"],
                ]
                for t in templates
            ],
        )  # fmt: skip


@image.command("delete")
@click.argument("ref", metavar="IMAGE", shell_complete=image_names)
def delete_cmd(ref: str) -> None:
    """Delete an image (refused while a VM uses it). Registered images keep their files."""
    rec = call("image.delete", {"ref": ref})
    click.echo(f"deleted {rec['name']} ({rec['id']})")


@image.command("register", short_help="Record an ext4 image made elsewhere (not copied).")
@click.option("--name", required=True, metavar="NAME", help="image name")
@click.option("--rootfs", required=True, type=click.Path(), help="an ext4 root filesystem image")
@_kernel_options("to boot this image with")
def register_cmd(
    name: str,
    rootfs: str,
    kernel_ref: str | None,
    kernel: str | None,
    initrd: str | None,
    modules: str | None,
) -> None:
    """Record an image made elsewhere (banger does not own or copy its files)."""
    params: dict[str, Any] = {
        "name": name,
        "rootfs": _abs(rootfs),
        **_kernel_params(kernel_ref, kernel, initrd, modules),
    }
    rec = call("image.register", params)
    click.echo(f"registered {rec['name']} ({rec['id']}) -> {rec['rootfs']}")


@image.command("promote", short_help="Copy a registered image into banger's own storage.")
@click.argument("ref", metavar="IMAGE", shell_complete=image_names)
def promote_cmd(ref: str) -> None:
    """Copy a registered image into banger's own storage (sparse-aware)."""
    rec = call("image.promote", {"ref": ref})
    click.echo(f"promoted {rec['name']} ({rec['id']}) -> {rec['rootfs']}")


@image.group("cache")
def cache_group() -> None:
    """The OCI blob cache."""


@cache_group.command("prune")
@click.option("--dry-run", is_flag=True, help="only report what would be freed")
def prune_cmd(dry_run: bool) -> None:
    """Delete every cached blob and every warm-create template (images already pulled are
    not affected; VMs made from a template keep working)."""
    r = call("image.cache.prune", {"dry_run": dry_run})
    verb = "would free" if r["dry_run"] else "freed"
    click.echo(f"{verb} {format_bytes(r['bytes'])} across {r['blobs']} blob(s) in {r['dir']}")
    if r.get("templates"):
        what = "would remove" if r["dry_run"] else "removed"
        click.echo(f"{what} {r['templates']} warm-create template(s)")

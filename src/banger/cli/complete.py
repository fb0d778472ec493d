"""Shell completion of live VM, image and kernel names, asked of a running daemon.

Completion runs on every TAB: it never starts a daemon, waits at most about a second, and any
failure (no daemon, a system install this user may not use, a slow answer) completes nothing.
"""

from __future__ import annotations

from typing import Any

import click
from click.shell_completion import CompletionItem

TIMEOUT_SECONDS = 1.0


def _ask(method: str) -> list[dict[str, Any]]:
    import os

    if os.environ.get("BANGER_HOST"):
        return []  # an ssh round trip per TAB is too slow; a remote host completes nothing
    try:
        from banger.cli.connect import resolve_paths
        from banger.rpc.client import Client

        with Client(resolve_paths().socket, connect_timeout=TIMEOUT_SECONDS) as c:
            result = c.call(method, timeout=TIMEOUT_SECONDS)
    except Exception:
        return []
    return [r for r in result if isinstance(r, dict)] if isinstance(result, list) else []


def _items(
    ctx: click.Context, param: click.Parameter, incomplete: str, method: str, detail: str
) -> list[CompletionItem]:
    # Several refs (`vm stop a b`): do not offer the ones already on the line again.
    given = ctx.params.get(param.name or "")
    taken = set(given) if isinstance(given, tuple | list) else set()
    return [
        CompletionItem(str(r["name"]), help=str(r.get(detail) or ""))
        for r in _ask(method)
        if str(r.get("name", "")).startswith(incomplete) and r.get("name") not in taken
    ]


def vm_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    return _items(ctx, param, incomplete, "vm.list", "state")


def image_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _items(ctx, param, incomplete, "image.list", "source")


def kernel_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _items(ctx, param, incomplete, "kernel.list", "kernel_version")


def catalog_names(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    return _items(ctx, param, incomplete, "kernel.catalog", "description")


# The VM arguments of the `vm` verbs: one VM, or one or more (acted on together).
VM_REF = click.argument("ref", metavar="VM", shell_complete=vm_names)
VM_REFS = click.argument("refs", nargs=-1, required=True, metavar="VM...", shell_complete=vm_names)

# Options naming a new VM and what it boots (`vm create`, `vm run`).
NEW_VM_NAME = click.option(
    "--name", metavar="NAME", help="VM name (a DNS label); generated when omitted"
)
IMAGE_OPTION = click.option(
    "--image",
    metavar="IMAGE",
    shell_complete=image_names,
    help="image name or id (default: config default_image)",
)
COLD_OPTION = click.option(
    "--cold",
    is_flag=True,
    help="boot cold even when a warm-create template of this image and sizing exists",
)
NAT_OPTION = click.option("--nat", is_flag=True, help="outbound NAT for a bridged VM (masquerade)")
ALLOW_OPTION = click.option(
    "--allow",
    "allow",
    multiple=True,
    metavar="RULE",
    help="restrict egress to this (repeatable; implies --nat): a name (pypi.org), *.wildcard, "
    "IPv4 address or CIDR, optional :PORT",
)

"""`banger vm` commands."""

from __future__ import annotations

import click


@click.group()
def vm() -> None:
    """Manage vms."""


# `vm run`, `vm exec` and `vm workspace …` live in their own modules (cli/vm_run.py, workspace.py).
from banger.cli.vm_run import register as _register_run  # noqa: E402

_register_run(vm)

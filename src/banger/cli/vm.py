"""`banger vm` commands."""

from __future__ import annotations

import click


@click.group()
def vm() -> None:
    """Manage vms."""

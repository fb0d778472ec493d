"""`banger image` commands."""

from __future__ import annotations

import click


@click.group()
def image() -> None:
    """Manage images."""

"""`banger kernel` commands."""

from __future__ import annotations

import click


@click.group()
def kernel() -> None:
    """Manage kernels."""

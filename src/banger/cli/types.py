"""click parameter types shared by the command groups."""

from __future__ import annotations

from typing import Any

import click

from banger.units import parse_size


class MemorySize(click.ParamType):
    """MiB as a plain number (`2048`) or a size like --disk-size's (`2G`, `512M`)."""

    name = "MIB|SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            mib = int(text) if text.isdigit() else parse_size(text) >> 20
        except ValueError as e:
            self.fail(str(e), param, ctx)
        if not 128 <= mib <= 1 << 20:
            self.fail(
                f"{mib} MiB is out of range: give 128 MiB to 1 TiB (e.g. 2048 or 2G)", param, ctx
            )
        return mib


MEMORY = MemorySize()
# A timeout in seconds: any positive number.
SECONDS = click.FloatRange(0, min_open=True)

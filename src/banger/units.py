"""Human sizes: parse `8G`, `512M`, `1.5GiB`, format bytes as `1.2 GiB`."""

from __future__ import annotations

import re
from fractions import Fraction

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_MULT = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


# The largest size banger accepts: ext4's file size limit (4 KiB blocks) for disk images; far
# above anything real, and small enough for SQLite integers and `truncate`.
MAX_SIZE = 16 << 40


def parse_size(text: str) -> int:
    """Bytes in `text` (`8G`, `512M`, `1024`, `2GiB`); binary multiples, like dd and qemu-img."""
    m = _SIZE_RE.match(text) if len(text) <= 64 else None
    if not m:
        raise ValueError(
            f"size {text!r} is not understood; use a number with K, M, G or T (e.g. 8G)"
        )
    # Exact arithmetic: a float overflows on long digit strings and rounds big sizes.
    value = int(Fraction(m.group(1)) * _MULT[m.group(2).lower()])
    if value <= 0:
        raise ValueError(f"size {text!r} must be at least one byte")
    if value > MAX_SIZE:
        raise ValueError(f"size {text!r} is larger than the 16 TiB maximum")
    return value


def format_bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    value = float(n)
    for unit in units:
        if abs(value) < 1024 or unit == units[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")

"""One readable line for a pydantic ValidationError (config files and RPC params share it)."""

from __future__ import annotations

from pydantic import ValidationError


def describe(err: ValidationError, *, noun: str, top: str, unknown_hint: str = "") -> str:
    """`unknown <noun> 'a.b'<unknown_hint>; <noun> 'c': <what is wrong>`, every problem named.

    `top` names the location of errors about the whole object (no field).
    """
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or top
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown {noun} '{key}'{unknown_hint}")
        else:
            parts.append(f"{noun} '{key}': {e['msg']}")
    return "; ".join(parts)

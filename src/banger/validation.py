"""Readable validation messages: one line for a pydantic ValidationError (config files and RPC
params share it), and `clip`, which every message or log line quoting user input goes through."""

from __future__ import annotations

import ipaddress

from pydantic import ValidationError

# How much of a user-supplied string a message or log line quotes (names are at most 64).
CLIP_CHARS = 120
# The longest error message the daemon sends or logs; the rest is cut with `…`.
MAX_MESSAGE_CHARS = 2000


def clip(value: object, limit: int = CLIP_CHARS) -> str:
    """`value` as text, cut to `limit` characters with `…`: user input quoted in an error or a log
    line must never echo megabytes back (a 1 MiB name would otherwise return in every answer)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit] + "…"


def quote(value: object, limit: int = CLIP_CHARS) -> str:
    """`repr` of the clipped text: `'abc…'` (control characters and NUL escaped)."""
    return repr(clip(value, limit))


def describe(err: ValidationError, *, noun: str, top: str, unknown_hint: str = "") -> str:
    """`unknown <noun> 'a.b'<unknown_hint>; <noun> 'c': <what is wrong>`, every problem named.

    `top` names the location of errors about the whole object (no field).
    """
    parts = []
    for e in err.errors():
        key = clip(".".join(str(p) for p in e["loc"]) or top, 64)
        if e["type"] == "extra_forbidden":
            parts.append(f"unknown {noun} '{key}'{unknown_hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            parts.append(f"{noun} '{key}': {clip(msg, 300)}")
    return clip("; ".join(parts), MAX_MESSAGE_CHARS)


def parse_upstream(text: str) -> tuple[str, int]:
    """`IP` or `IP:port` (IPv4) → (ip, port); ValueError saying what is wrong."""
    host, sep, port = text.partition(":")
    try:
        ip = str(ipaddress.IPv4Address(host))
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address or IPv4:port") from None
    if not sep:
        return ip, 53
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port must be 1-65535")
    return ip, int(port)

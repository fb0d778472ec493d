"""How network modules run host tools: an argv runner, optionally inside a network namespace.

The namespace prefix exists so tests can exercise the real `ip`/`nft`/`sysctl` calls inside a
namespace they created, never touching the host's own network.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from banger import proc

NETNS_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,30}$")
COMMAND_TIMEOUT = 20.0


class Runner:
    def __init__(self, netns: str | None = None) -> None:
        if netns is not None and not NETNS_RE.fullmatch(netns):
            raise ValueError(f"invalid network namespace name {netns!r}")
        self.netns = netns

    def argv(self, argv: Sequence[str]) -> list[str]:
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        return [*prefix, *argv]

    async def __call__(
        self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True
    ) -> proc.Result:
        return await proc.run(
            self.argv(argv), input=input, check=check, timeout=COMMAND_TIMEOUT, what=argv[0]
        )

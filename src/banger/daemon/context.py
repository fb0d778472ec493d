"""What a handler gets besides its params: the op id and a way to report progress."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def _drop(_: dict[str, Any]) -> None:
    return None


@dataclass
class RequestContext:
    op_id: str
    method: str
    # Sends a progress line to the client when it asked for progress; a no-op otherwise.
    emit: Callable[[dict[str, Any]], None] = field(default=_drop)

    def progress(self, **fields: Any) -> None:
        self.emit(fields)

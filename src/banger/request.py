"""What a service call gets besides its arguments: the op id and a way to report progress.

It lives below the services (they import it) and above nothing: the daemon builds one per request.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# The op id of the request being served; log lines (daemon/logs.py) and privileged-helper calls
# carry it without every function passing it along. Set by the daemon's dispatch.
current_op_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_op_id", default="")


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

"""Asynchronous `vm.create` operations: begin returns the operation id, status polls it, cancel
stops it (the create cleans up everything it made)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from banger.errors import NotFound

# Finished operations stay queryable this long.
KEEP_SECONDS = 3600.0


@dataclass
class Operation:
    id: str
    kind: str
    stage: str = "queued"
    detail: str = ""
    stages_done: int = 0
    stages_total: int = 0
    done: bool = False
    cancelled: bool = False
    # Why it failed; the daemon turns it into a wire error (`status(describe)`).
    failure: Exception | None = None
    vm: dict[str, Any] | None = None
    spec: str = ""
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    task: asyncio.Task[Any] | None = None

    def update(self, stage: str, detail: str = "", *, done: int, total: int) -> None:
        self.stage, self.detail = stage, detail
        self.stages_done, self.stages_total = done, total

    def status(self, describe: Callable[[Exception], dict[str, str]]) -> dict[str, Any]:
        """The wire view; `describe` gives a failure's {code, message}."""
        end = self.finished if self.finished is not None else time.monotonic()
        error: dict[str, str] | None = None
        if self.cancelled:
            error = {"code": "cancelled", "message": "the create was cancelled"}
        elif self.failure is not None:
            error = describe(self.failure)
        return {
            "id": self.id,
            "kind": self.kind,
            "stage": self.stage,
            "detail": self.detail,
            "progress": {"current": self.stages_done, "total": self.stages_total},
            "done": self.done,
            "cancelled": self.cancelled,
            "error": error,
            "vm": self.vm,
            "spec": self.spec,
            "elapsed_seconds": round(end - self.started, 3),
        }


class Operations:
    def __init__(self) -> None:
        self._ops: dict[str, Operation] = {}

    def add(self, op: Operation) -> Operation:
        self._gc()
        self._ops[op.id] = op
        return op

    def get(self, op_id: str) -> Operation:
        op = self._ops.get(op_id)
        if op is None:
            raise NotFound(f"operation {op_id!r} not found (finished operations expire after 1h)")
        return op

    def running(self) -> list[Operation]:
        return [op for op in self._ops.values() if not op.done]

    def _gc(self) -> None:
        now = time.monotonic()
        for op_id, op in list(self._ops.items()):
            if op.done and op.finished is not None and now - op.finished > KEEP_SECONDS:
                del self._ops[op_id]

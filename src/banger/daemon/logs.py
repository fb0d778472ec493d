"""JSON-lines logging for the daemon; every line of a request carries that request's op id."""

from __future__ import annotations

import contextvars
import json
import logging
import logging.handlers
import time
from pathlib import Path
from typing import Any

current_op_id: contextvars.ContextVar[str] = contextvars.ContextVar("current_op_id", default="")

_STD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        op_id = getattr(record, "op_id", "") or current_op_id.get()
        if op_id:
            entry["op_id"] = op_id
        for key, value in record.__dict__.items():
            if key not in _STD_ATTRS and key != "op_id" and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_file: Path, level: str, *, also_stderr: bool = False) -> None:
    root = logging.getLogger("banger")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    handler: logging.Handler = logging.handlers.WatchedFileHandler(log_file)
    handler.setFormatter(JSONFormatter())
    root.addHandler(handler)
    if also_stderr:
        err = logging.StreamHandler()
        err.setFormatter(JSONFormatter())
        root.addHandler(err)

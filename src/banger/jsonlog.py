"""Log lines as JSON objects, one per line (the daemon's and the root helper's logs).

The op id of the request being served (banger.request.current_op_id) joins every line.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from banger.request import current_op_id

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

"""JSON-lines logging for the daemon; every line of a request carries that request's op id."""

from __future__ import annotations

import logging
import logging.handlers
import os
from pathlib import Path
from typing import Any

from banger.request import current_op_id

__all__ = ["JSONFormatter", "PrivateRotatingFileHandler", "current_op_id", "setup_logging"]

from banger.jsonlog import JSONFormatter

__all__ = ["JSONFormatter", "current_op_id"]


# The daemon log rotates by size: bangerd.log, then bangerd.log.1 … .N (oldest dropped).
LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUP_COUNT = 3


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """RotatingFileHandler that opens its file 0600 without following a link, and refuses a file
    that is not our own plain file (a planted symlink or hard link would send log lines, and the
    rotation's renames, outside the state dir)."""

    def _open(self) -> Any:
        from banger.daemon.lock import open_own_file

        path = Path(self.baseFilename)
        fd = open_own_file(path, os.O_WRONLY | os.O_APPEND, "daemon log")
        return open(fd, "a", encoding=self.encoding, errors=self.errors)


def setup_logging(
    log_file: Path,
    level: str,
    *,
    also_stderr: bool = False,
    max_bytes: int = LOG_MAX_BYTES,
    backup_count: int = LOG_BACKUP_COUNT,
) -> None:
    root = logging.getLogger("banger")
    root.handlers.clear()
    root.setLevel(level.upper())
    root.propagate = False
    handler: logging.Handler = PrivateRotatingFileHandler(
        log_file, maxBytes=max_bytes, backupCount=backup_count, encoding="utf-8"
    )
    handler.setFormatter(JSONFormatter())
    root.addHandler(handler)
    if also_stderr:
        err = logging.StreamHandler()
        err.setFormatter(JSONFormatter())
        root.addHandler(err)

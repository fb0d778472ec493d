"""Blocking RPC client (the CLI's side). Stdlib only, so `banger` starts fast."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from banger.rpc import PROTOCOL_VERSION
from banger.rpc.errors import OperationFailed, RPCError, from_wire

ProgressCallback = Callable[[dict[str, Any]], None]


class DaemonUnreachable(Exception):
    """Nothing answers on the daemon socket."""


class Client:
    def __init__(self, socket_path: Path, *, connect_timeout: float = 2.0) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._file: Any = None

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.connect_timeout)
        try:
            sock.connect(str(self.socket_path))
        except (FileNotFoundError, ConnectionRefusedError, TimeoutError) as e:
            sock.close()
            raise DaemonUnreachable(f"no daemon at {self.socket_path}: {e}") from None
        sock.settimeout(None)
        self._sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._file = None

    def __enter__(self) -> Client:
        if self._sock is None:
            self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send one request and return its result; raise the daemon's typed error on failure."""
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        request: dict[str, Any] = {"version": PROTOCOL_VERSION, "method": method}
        if params:
            request["params"] = params
        if on_progress is not None:
            request["progress"] = True
        self._sock.settimeout(timeout)
        self._sock.sendall(json.dumps(request).encode() + b"\n")
        while True:
            line = self._file.readline()
            if not line:
                raise OperationFailed(
                    f"the daemon closed the connection during {method}; see `banger daemon status`"
                    " for its log"
                )
            msg = json.loads(line)
            if "progress" in msg and "ok" not in msg:
                if on_progress is not None:
                    on_progress(msg["progress"])
                continue
            if msg.get("ok"):
                return msg.get("result")
            err = msg.get("error") or {}
            raise from_wire(err)


__all__ = ["Client", "DaemonUnreachable", "RPCError"]

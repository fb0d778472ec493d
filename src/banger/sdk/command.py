"""Commands in a sandbox: the result type and the one line the guest's shell runs.

A `str` command is a shell line, run as typed (`"make && make test"`). A list is an argv: every
element is one argument, quoted for the guest's shell (`["printf", "%s\\n", "a b", "c;d"]`
prints two lines, and `;` is no command separator). This is the rule `banger vm ssh` follows.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from banger.sdk.errors import BadRequest

Command = str | Sequence[str]
# Called with each decoded chunk of output as it arrives (on the SDK's event loop: keep it quick).
OutputCallback = Callable[[str], object]

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class CommandResult:
    """What a command did: its exit code and output (decoded as UTF-8, bad bytes replaced).

    A command killed by a signal has exit code 128 + the signal number, as in a shell.
    `stdout_bytes`/`stderr_bytes` are the raw bytes. With `output_limit`, the `*_truncated` flags
    say that output beyond the limit was dropped (the first `output_limit` bytes are kept).
    """

    exit_code: int
    stdout: str
    stderr: str
    stdout_bytes: bytes = field(default=b"", repr=False)
    stderr_bytes: bytes = field(default=b"", repr=False)
    stdout_truncated: bool = False
    stderr_truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0


def shell_line(command: Command, *, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The line for the guest's login shell (sshd runs it with `$SHELL -c`)."""
    if isinstance(command, str):
        if not command.strip():
            raise BadRequest("command is empty; give a shell line or a non-empty argv list")
        line = command
    else:
        argv = list(command)
        if not argv:
            raise BadRequest("command is an empty list; give at least the program to run")
        for word in argv:
            if not isinstance(word, str):
                raise BadRequest(f"command words must be strings, not {type(word).__name__}")
        line = shlex.join(argv)
    if "\0" in line:
        raise BadRequest("command contains a NUL byte, which no shell can run")
    prelude: list[str] = []
    for name, value in (env or {}).items():
        if not ENV_NAME.fullmatch(name):
            raise BadRequest(f"environment variable name {name!r} is not a valid shell name")
        if "\0" in value:
            raise BadRequest(f"environment variable {name} contains a NUL byte")
        prelude.append(f"export {name}={shlex.quote(value)}")
    if cwd is not None:
        if not cwd or "\0" in cwd:
            raise BadRequest(f"cwd {cwd!r} is not a usable directory path")
        prelude.append(f"cd -- {shlex.quote(cwd)}")
    if not prelude:
        return line
    # eval: the command is parsed only after the prelude ran, exactly as if typed there.
    return " && ".join([*prelude, f"eval {shlex.quote(line)}"])


class OutputSink:
    """Collects one stream (up to `limit` bytes) and feeds its callback decoded text."""

    def __init__(self, callback: OutputCallback | None, limit: int | None) -> None:
        import codecs

        self.callback = callback
        self.limit = limit
        self.chunks: list[bytes] = []
        self.size = 0
        self.truncated = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> None:
        if self.limit is None:
            self.chunks.append(data)
        else:
            room = self.limit - self.size
            if len(data) > room:
                self.truncated = True
                data_kept = data[: max(room, 0)]
            else:
                data_kept = data
            if data_kept:
                self.chunks.append(data_kept)
                self.size += len(data_kept)
        if self.callback is not None:
            text = self._decoder.decode(data)
            if text:
                self.callback(text)

    def finish(self) -> None:
        if self.callback is not None:
            text = self._decoder.decode(b"", final=True)
            if text:
                self.callback(text)

    def value(self) -> bytes:
        return b"".join(self.chunks)

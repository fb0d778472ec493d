"""Terminal output: colour only on a TTY and never with NO_COLOR; tables; JSON; errors."""

from __future__ import annotations

import calendar
import codecs
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

# What a guest (or any untrusted text) could drive a terminal with: the C0 controls except
# newline and tab, DEL, the C1 controls U+0080 to U+009F (U+009B is a one-character CSI), and a
# carriage return that does not end a line (it would let a line overwrite what came before).
_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")


def escape_controls(text: str) -> str:
    """`text` safe for a terminal: each unsafe control character becomes `\\xNN` (ESC is
    `\\x1b`, BEL `\\x07`, a lone CR `\\x0d`); newline, tab and CR LF stay as they are."""
    return _UNSAFE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class TerminalText:
    """Bytes in, terminal-safe text out, across chunk boundaries: UTF-8 (invalid sequences as
    U+FFFD), controls escaped, a CR at the end of a chunk held until the next shows whether a
    newline follows it."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._held = ""

    def feed(self, data: bytes, *, final: bool = False) -> str:
        text = self._held + self._decoder.decode(data, final)
        self._held = ""
        if text.endswith("\r") and not final:
            text, self._held = text[:-1], "\r"
        return escape_controls(text)


class GuestOutput:
    """Writes guest-controlled bytes (console logs, patches) to `stream`: byte-exact when it is
    not a terminal (`banger vm logs X > file` is the raw log), escaped when it is."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.escaped = self.stream.isatty()
        self._text = TerminalText()

    def _put(self, data: bytes) -> None:
        self.stream.flush()
        self.stream.buffer.write(data)
        self.stream.buffer.flush()

    def write(self, data: bytes) -> None:
        if not self.escaped:
            self._put(data)
        elif out := self._text.feed(data):
            self._put(out.encode("utf-8", errors="replace"))

    def close(self) -> None:
        if self.escaped and (out := self._text.feed(b"", final=True)):
            self._put(out.encode("utf-8", errors="replace"))


def use_color(stream: TextIO) -> bool:
    return "NO_COLOR" not in os.environ and stream.isatty()


def style(text: str, code: str, stream: TextIO = sys.stdout) -> str:
    """ANSI SGR `code` (e.g. "1;32") when colour is allowed on `stream`."""
    return f"\x1b[{code}m{text}\x1b[0m" if use_color(stream) else text


def dim(text: str, stream: TextIO = sys.stderr) -> str:
    return style(text, "2", stream)


def print_error(message: str, op_id: str = "") -> None:
    # Messages quote names, paths and guest output: never let them drive the terminal.
    suffix = f" {dim('(' + escape_controls(op_id) + ')')}" if op_id else ""
    print(
        f"{style('banger:', '1;31', sys.stderr)} {escape_controls(message)}{suffix}",
        file=sys.stderr,
    )


def print_hint(hint: str) -> None:
    """The command to run next after an error (cli/hints.py), on its own line."""
    print(f"{dim('hint:')} {escape_controls(hint)}", file=sys.stderr)


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


# The cut column keeps at least this many characters when a table is fitted to the terminal.
MIN_CUT_WIDTH = 16


def fit_columns(
    widths: Sequence[int], width: int, droppable: Sequence[int] = (), cut: int = -1
) -> list[int]:
    """The columns to show in `width` characters: the `droppable` ones go first (in order) while
    the rest does not fit with the `cut` column (default: the last) cut to MIN_CUT_WIDTH. All
    of them when nothing helps (the terminal wraps, as before)."""
    cut = cut % len(widths)

    def fits(cols: list[int]) -> bool:
        fixed = sum(widths[i] for i in cols if i != cut)
        return fixed + min(widths[cut], MIN_CUT_WIDTH) + 2 * (len(cols) - 1) <= width

    cols = list(range(len(widths)))
    for d in droppable:
        if fits(cols):
            break
        if d in cols and d != cut:
            cols.remove(d)
    return cols if fits(cols) else list(range(len(widths)))


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    droppable: Sequence[int] = (),
    cut: int = -1,
) -> None:
    """Aligned columns, two spaces apart; header bold on a TTY. Plain text when piped.

    On a terminal narrower than the table, the `droppable` columns are left out (in order) and
    the `cut` column's cells (default: the last column) are shortened with `…`, so each row
    stays on one line. Piped output always has every column in full (scripts parse it)."""
    import shutil

    # Cells come from guests and images too (process names, mounts): escaped, on any output.
    cells = [[str(c) for c in headers]] + [
        ["" if c is None else escape_controls(str(c)) for c in r] for r in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    cols = list(range(len(headers)))
    if sys.stdout.isatty():
        term = shutil.get_terminal_size().columns
        if sum(widths) + 2 * (len(widths) - 1) > term:
            cols = fit_columns(widths, term, droppable, cut)
            c = cut % len(widths)
            room = term - sum(widths[i] for i in cols if i != c) - 2 * (len(cols) - 1)
            if min(widths[c], MIN_CUT_WIDTH) <= room < widths[c]:
                widths[c] = room
                for r in cells:
                    if len(r[c]) > room:
                        r[c] = r[c][: room - 1] + "…"
    for n, row in enumerate(cells):
        line = "  ".join(row[i].ljust(widths[i]) for i in cols).rstrip()
        print(style(line, "1") if n == 0 else line)


def print_fields(rows: Sequence[Sequence[Any]]) -> None:
    """`key  value` lines (pairs) with the values aligned: the `show` commands."""
    width = max(len(str(r[0])) for r in rows)
    for key, value in rows:
        print(f"{str(key).ljust(width)}  {escape_controls(str(value))}")


def age(timestamp: str) -> str:
    """`3m`, `2h`, `5d`: how long ago a daemon timestamp (UTC, `2026-01-02T03:04:05Z`) was."""
    try:
        t = calendar.timegm(time.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return "?"
    s = max(0, int(time.time() - t))
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"


def home_relative(path: str) -> str:
    """`~/src/app` for a path under the user's home; other paths unchanged."""
    home = os.path.expanduser("~")
    if home not in ("", "/") and (path == home or path.startswith(home + "/")):
        return "~" + path[len(home) :]
    return path


def boot_note(vm: Any) -> str:
    """` (warm)` after a create's `ready in` when it woke from a template (docs/snapshots.md)."""
    return " (warm)" if isinstance(vm, dict) and vm.get("boot") == "warm" else ""

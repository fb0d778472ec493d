"""Guest-controlled text at the terminal: escaped there, byte-exact when piped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from banger.cli.output import TerminalText, escape_controls

HOSTILE = (
    b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x1b[0m\r\nover\rwrite\x08\x7f \xc2\x9b31m tab\there \xff\n"
)


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("\x1b[2J", "\\x1b[2J"),  # ESC: clear screen
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),  # OSC window title, BEL
        ("a\rb", "a\\x0db"),  # a lone CR would overwrite the line
        ("a\r\nb", "a\r\nb"),  # CR LF (serial consoles) is a line end
        ("a\tb\nc", "a\tb\nc"),  # tab and newline pass
        ("\x00\x08\x7f", "\\x00\\x08\\x7f"),  # NUL, backspace, DEL
        ("\x9b31m\x85", "\\x9b31m\\x85"),  # C1 controls (U+009B is a one-character CSI)
        ("é ✓ 🙂", "é ✓ 🙂"),  # printable non-ASCII passes
    ],
)
def test_escape_controls(text: str, shown: str) -> None:
    assert escape_controls(text) == shown


def test_terminal_text_across_chunk_boundaries() -> None:
    t = TerminalText()
    out = [t.feed(b"line\r"), t.feed(b"\nnext \xc3"), t.feed(b"\xa9 \x1b"), t.feed(b"[0m\r")]
    out.append(t.feed(b"", final=True))
    # The CR LF split across chunks stays a line end; a CR at the very end is a lone one.
    assert "".join(out) == "line\r\nnext é \\x1b[0m\\x0d"


WRITER = """
import sys
from banger.cli.output import GuestOutput
out = GuestOutput(sys.stdout)
data = sys.stdin.buffer.read()
for i in range(0, len(data), 5):  # small chunks: sequences split across writes
    out.write(data[i : i + 5])
out.close()
"""


def test_guest_output_is_escaped_at_a_pty_and_exact_when_piped(tmp_path: Path) -> None:
    src = tmp_path / "log"
    src.write_bytes(HOSTILE)
    piped = subprocess.run(
        [sys.executable, "-c", WRITER], input=HOSTILE, capture_output=True, check=True
    )
    assert piped.stdout == HOSTILE
    child = pexpect.spawn(
        "sh",
        ["-c", f'"{sys.executable}" -c "$0" < "$1"', WRITER, str(src)],
        env={**os.environ, "NO_COLOR": "1"},
        timeout=30,
    )
    child.expect(pexpect.EOF)
    shown = bytes(child.before or b"")
    child.close()
    assert child.exitstatus == 0
    for raw in (b"\x1b", b"\x07", b"\x08", b"\x7f", b"\xc2\x9b"):
        assert raw not in shown
    text = shown.decode()
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred\\x1b[0m" in text
    assert "over\\x0dwrite\\x08\\x7f \\x9b31m tab\there \ufffd" in text


def test_tables_and_fields_escape_cells(capsys: pytest.CaptureFixture[str]) -> None:
    from banger.cli.output import print_fields, print_table

    print_table(["VM", "PROCESS"], [["web", "evil\x1b[2J"]])
    print_fields([("error", "guest said \x1b]0;x\x07")])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2J" in out and "guest said \\x1b]0;x\\x07" in out


def test_json_export_streams_the_same_text_print_json_gives(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import banger.cli.workspace as ws
    from banger.cli.output import print_json

    monkeypatch.setattr(ws, "CHUNK", 3)  # split every multi-byte character somewhere
    patch = 'diff --git a/é b/é\n+🙂 "quoted" \\ back\x1b\n'.encode() + b"\xff\xfe tail\n"
    result = {"vm": "v", "guest_path": "/root/repo", "base_commit": "a" * 40, "files": []}
    with ws.StagedOutput(None) as stage:
        stage.write(patch)
        ws.print_json_with_patch({**result, "patch_bytes": len(patch)}, stage)
    streamed = capsys.readouterr().out
    print_json({**result, "patch_bytes": len(patch), "patch": patch.decode(errors="replace")})
    assert streamed == capsys.readouterr().out
    assert json.loads(streamed)["patch"].startswith("diff --git a/é b/é\n+🙂")

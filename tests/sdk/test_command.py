"""How the SDK builds the guest's shell line and reads a command's output (no guest: the lines
are run by a real local `sh`, as the guest's login shell would run them)."""

from __future__ import annotations

import subprocess

import pytest

from banger.sdk.command import OutputSink, shell_line
from banger.sdk.errors import (
    AlreadyExists,
    BangerError,
    NotFound,
    OperationFailed,
    from_wire,
)
from banger.sdk.guest import PGID_PRELUDE, _RunSession


def sh(line: str) -> str:
    return subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize(
    ("argv", "printed"),
    [
        (["printf", "%s\\n", "a b", "c;d"], "a b\nc;d\n"),
        (["printf", "%s\\n", "$HOME", "`id`", "$(id)"], "$HOME\n`id`\n$(id)\n"),
        (["printf", "%s\\n", "it's", '"q"', "*"], 'it\'s\n"q"\n*\n'),
        (["printf", "%s\\n", "-oProxyCommand=x", ""], "-oProxyCommand=x\n\n"),
        (["printf", "%s\\n", "new\nline"], "new\nline\n"),
    ],
    ids=["space-semicolon", "expansions", "quotes-glob", "dash-and-empty", "newline"],
)
def test_a_list_keeps_every_word(argv: list[str], printed: str) -> None:
    assert sh(shell_line(argv, env=None, cwd=None)) == printed


def test_a_string_is_a_shell_line_untouched() -> None:
    assert shell_line("echo a; echo b", env=None, cwd=None) == "echo a; echo b"
    assert sh(shell_line("echo a; echo b", env=None, cwd=None)) == "a\nb\n"


def test_env_and_cwd_apply_before_the_command_is_parsed(tmp_path: object) -> None:
    line = shell_line('echo "$A|$B"; pwd', env={"A": "x y; $(id)", "B": "it's"}, cwd="/tmp")
    assert sh(line) == "x y; $(id)|it's\n/tmp\n"
    assert sh(shell_line(["sh", "-c", "echo $A"], env={"A": "1"}, cwd=None)) == "1\n"


def test_a_failing_cd_fails_the_command() -> None:
    line = shell_line("echo ran", env=None, cwd="/no/such/dir")
    p = subprocess.run(["sh", "-c", line], capture_output=True, text=True, check=False)
    assert p.returncode != 0 and p.stdout == ""


def test_output_sink_limits_and_decodes_split_characters() -> None:
    seen: list[str] = []
    sink = OutputSink(seen.append, limit=3)
    data = "é€x".encode()  # 2 + 3 + 1 bytes; fed split inside characters
    for i in range(len(data)):
        sink.feed(data[i : i + 1])
    sink.finish()
    assert "".join(seen) == "é€x"
    assert sink.value() == data[:3] and sink.truncated


def test_the_pgid_line_is_taken_out_of_stderr() -> None:
    async def go() -> tuple[int | None, bytes, bytes]:
        out, err = OutputSink(None, None), OutputSink(None, None)
        s = _RunSession(out, err)
        s.data_received(b"warn: locale\n\x1ebanger-", 1)
        s.data_received(b"pgid:4242\nreal err\n", 1)
        s.data_received(b"out\n", 0)
        s.flush_head()
        return s.pgid, out.value(), err.value()

    import asyncio

    assert asyncio.run(go()) == (4242, b"out\n", b"warn: locale\nreal err\n")
    # and the prelude really prints that line, first
    p = subprocess.run(["sh", "-c", PGID_PRELUDE + "echo hi >&2"], capture_output=True, check=True)
    first, rest = p.stderr.split(b"\n", 1)
    assert first.startswith(b"\x1ebanger-pgid:") and int(first.split(b":")[1]) > 1
    assert rest == b"hi\n"


@pytest.mark.parametrize(
    ("wire", "cls", "code"),
    [
        ({"code": "not_found", "message": "m", "op_id": "op-0123456789ab"}, NotFound, "not_found"),
        ({"code": "already_exists", "message": "m"}, AlreadyExists, "already_exists"),
        ({"code": "brand_new_code", "message": "m"}, OperationFailed, "brand_new_code"),
        ("garbage", OperationFailed, "operation_failed"),
    ],
    ids=["not-found", "exists", "unknown-code", "not-a-dict"],
)
def test_wire_errors_become_typed_exceptions(wire: object, cls: type, code: str) -> None:
    e = from_wire(wire)
    assert type(e) is cls and isinstance(e, BangerError) and e.code == code
    if isinstance(wire, dict) and wire.get("op_id"):
        assert e.op_id == wire["op_id"] and str(e) == f"m ({wire['op_id']})"


def test_every_daemon_error_code_has_its_sdk_exception() -> None:
    from banger.rpc.errors import _BY_CODE as DAEMON_CODES
    from banger.sdk.errors import from_wire

    for code in DAEMON_CODES:
        err = from_wire({"code": code, "message": "m", "op_id": "op-1"})
        assert (err.code, type(err).default_code, err.op_id) == (code, code, "op-1")

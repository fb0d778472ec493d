"""What a user at a terminal sees from commands that need no VM: typo hints, tables that fit."""

from __future__ import annotations

import os
import subprocess
import sys

import pexpect

from tests.conftest import BangerEnv

TABLE_SCRIPT = """
from banger.cli.output import print_table
rows = [["calm-otter", "running", "debian-bookworm", 1, "3013 MiB", "127.0.0.1:43429", "2m",
         "~/src/some/deeply/nested/project -> /root/repo"]]
print_table(["NAME", "STATE", "IMAGE", "VCPU", "MEMORY", "IP/PORT", "AGE", "WORKSPACE"], rows,
            droppable=(3, 4, 6))
"""


def test_mistyped_command_suggests_the_close_ones(banger_env: BangerEnv) -> None:
    p = banger_env.banger("vm", "shwo")
    assert p.returncode == 2
    assert "No such command 'shwo'. Did you mean 'show'?" in p.stderr
    p = banger_env.banger("vm", "workspace", "exprot")
    assert "Did you mean 'export'?" in p.stderr
    p = banger_env.banger("imag", "list")
    assert "Did you mean 'image'?" in p.stderr
    p = banger_env.banger("vm", "zzzz")  # nothing close: no guess
    assert "No such command 'zzzz'." in p.stderr and "Did you mean" not in p.stderr


def test_tables_fit_an_80_column_terminal_and_stay_whole_when_piped() -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-c", TABLE_SCRIPT],
        env={**os.environ, "NO_COLOR": "1"},
        dimensions=(24, 80),
        encoding="utf-8",
        timeout=30,
    )
    child.expect(pexpect.EOF)
    lines = [x for x in str(child.before).split("\r\n") if x]
    child.close()
    assert child.exitstatus == 0
    assert len(lines) == 2, lines  # header + row: nothing wrapped
    assert all(len(x) <= 80 for x in lines), lines
    header, row = lines
    # Sizes gave way first; the rest of the row is whole, the workspace cut with an ellipsis.
    assert header.split() == ["NAME", "STATE", "IMAGE", "IP/PORT", "AGE", "WORKSPACE"]
    assert row.startswith("calm-otter  running  debian-bookworm  127.0.0.1:43429  2m")
    assert row.endswith("…")
    piped = subprocess.run(
        [sys.executable, "-c", TABLE_SCRIPT], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert piped[0].split() == [
        "NAME", "STATE", "IMAGE", "VCPU", "MEMORY", "IP/PORT", "AGE", "WORKSPACE",
    ]  # fmt: skip
    assert piped[1].endswith("~/src/some/deeply/nested/project -> /root/repo")

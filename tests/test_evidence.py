"""The leak check every test env's teardown runs (tests/evidence.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil

from tests.evidence import failure_sections, leftovers


def test_a_process_left_in_an_env_root_is_found_and_killed(tmp_path: Path) -> None:
    stray = subprocess.Popen(["sleep", "600"], cwd=tmp_path)
    other = subprocess.Popen(["sleep", "600"])  # not under the root: none of this env's business
    try:
        found = leftovers(tmp_path)
        assert found == [f"process {stray.pid}: sleep 600"]
        assert stray.wait(timeout=30) == -9
        assert psutil.pid_exists(other.pid) and other.poll() is None
        assert leftovers(tmp_path) == []
    finally:
        for p in (stray, other):
            p.kill()
            p.wait()


def test_failure_sections_tail_the_daemon_and_console_logs(tmp_path: Path) -> None:
    (tmp_path / "bangerd.log").write_text("x" * 10_000 + "last daemon line\n")
    console = tmp_path / "vms" / "abc" / "console.log"
    console.parent.mkdir(parents=True)
    console.write_text("guest says hi\n")
    sections = dict(failure_sections(tmp_path))
    daemon_log = sections[f"daemon log {tmp_path / 'bangerd.log'} (tail)"]
    assert daemon_log.endswith("last daemon line\n") and len(daemon_log) == 8192
    assert sections[f"console {console} (tail)"] == "guest says hi\n"

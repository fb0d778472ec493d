"""`banger --version`, `banger version`, ping's build info and `banger ps`."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from banger import __version__
from tests.conftest import BangerEnv

REPO = Path(__file__).resolve().parents[2]


def _head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_version_flag_names_commit_and_build_time(banger_env: BangerEnv) -> None:
    out = banger_env.banger("--version", check=True).stdout.strip()
    m = re.fullmatch(rf"banger {re.escape(__version__)} \(commit (\w+), built (\S+)\)", out)
    assert m, out
    assert m.group(1) == _head()[:8]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", m.group(2)), out


def test_version_without_a_daemon_does_not_start_one(banger_env: BangerEnv) -> None:
    out = banger_env.banger("version", check=True).stdout
    assert f"banger   {__version__}" in out and f"commit   {_head()}" in out
    assert "daemon   not running" in out
    assert not banger_env.paths.socket.exists()


def test_version_and_ping_report_the_daemon_build(daemon: BangerEnv) -> None:
    with daemon.client() as c:
        info = c.call("ping")
    assert info["version"] == __version__ and info["commit"] == _head()
    assert info["built"]
    data = json.loads(daemon.banger("version", "--json", check=True).stdout)
    assert data["cli"]["commit"] == _head() and data["daemon"]["pid"] == info["pid"]
    out = daemon.banger("version", check=True).stdout
    assert f"daemon   {__version__} (commit {_head()[:8]}, pid {info['pid']})" in out


def test_ps_is_vm_list(daemon: BangerEnv) -> None:
    ps = daemon.banger("ps", check=True).stdout
    assert ps == daemon.banger("vm", "list", check=True).stdout
    assert json.loads(daemon.banger("ps", "--json", check=True).stdout) == []

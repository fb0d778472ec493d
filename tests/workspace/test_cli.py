"""The workspace CLI paths that need no VM: dry runs, refusals, argument parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from banger.cli.vm_run import remote_script
from tests.conftest import BangerEnv


def test_vm_run_dry_run_lists_files_without_a_daemon(repo: Path, banger_env: BangerEnv) -> None:
    p = banger_env.banger("vm", "run", str(repo), "--dry-run", "--", "make", "test")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("mode: overlay · 7 file(s)")
    assert "  README.md\n" in p.stdout and "  src/app.py\n" in p.stdout
    assert "  (deleted) gone.txt\n" in p.stdout
    assert "notes.txt" not in p.stdout and "debug.log" not in p.stdout
    assert not banger_env.paths.pid_file.exists()  # no daemon was started, no VM created


def test_workspace_prepare_dry_run_json(repo: Path, banger_env: BangerEnv) -> None:
    p = banger_env.banger(
        "vm", "workspace", "prepare", "anyvm", str(repo), "--dry-run", "--json",
        "--include-untracked", "--mode", "overlay",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    plan = json.loads(p.stdout)
    assert plan["mode"] == "overlay" and plan["include_untracked"] is True
    assert "notes.txt" in plan["files"] and "debug.log" not in plan["files"]
    assert plan["guest_path"] == "/root/repo"


def test_non_repo_refused_before_anything_boots(tmp_path: Path, banger_env: BangerEnv) -> None:
    p = banger_env.banger("vm", "run", str(tmp_path), "--", "true")
    assert p.returncode == 1
    assert "is not inside a git work tree" in p.stderr
    assert not banger_env.paths.pid_file.exists()


def test_exec_needs_a_command(banger_env: BangerEnv) -> None:
    p = banger_env.banger("vm", "exec", "somevm")
    assert p.returncode == 2
    assert "give the command after `--`" in p.stderr


def test_remote_script_quotes_the_command() -> None:
    assert remote_script("/root/my repo", ["sh", "-c", "exit 7"]) == (
        "cd -- '/root/my repo' && trap : INT QUIT && sh -c 'exit 7'; exit"
    )
    assert remote_script(None, []) == 'exec "${SHELL:-/bin/sh}" -l'


def test_vm_run_with_a_missing_image_fails_cleanly(repo: Path, daemon: BangerEnv) -> None:
    p = daemon.banger("vm", "run", str(repo), "--image", "no-such-image", "--rm", "--", "true")
    assert p.returncode == 1
    assert "no-such-image" in p.stderr and "kept for inspection" not in p.stderr
    listed = json.loads(daemon.banger("vm", "list", "--json", check=True).stdout)
    assert listed == []


def test_workspace_rpcs_refuse_unknown_vm_and_bad_params(repo: Path, daemon: BangerEnv) -> None:
    from banger.rpc.errors import BadRequest, NotFound

    with daemon.client() as c:
        with pytest.raises(NotFound, match="ghost"):
            c.call("vm.workspace.prepare", {"vm": "ghost", "path": str(repo)})
        with pytest.raises(NotFound, match="ghost"):
            c.call("vm.workspace.export", {"vm": "ghost", "base_commit": "abcdef1"})
        with pytest.raises(BadRequest, match="bogus"):
            c.call("vm.workspace.prepare", {"vm": "ghost", "path": "rel", "bogus": 1})


def test_one_word_command_is_a_shell_line_like_vm_ssh(tmp_path: Path) -> None:
    # `vm run ./repo -- 'make && make test'` runs both commands, as `vm ssh VM -- '…'` does;
    # several words keep their boundaries.
    import subprocess

    line = remote_script(str(tmp_path), ["echo one > a && echo two > b"])
    subprocess.run(["sh", "-c", line], check=True)
    assert (tmp_path / "a").read_text() == "one\n"
    assert (tmp_path / "b").read_text() == "two\n"
    out = subprocess.run(
        ["sh", "-c", remote_script(None, ["printf", "%s\\n", "a b", "c;d"])],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout == "a b\nc;d\n"

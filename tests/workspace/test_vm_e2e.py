"""Workspaces through real guests: the CLI, the daemon, OpenSSH and QEMU, two boots in all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env
from tests.workspace.conftest import BINARY, git, tree_of

pytestmark = pytest.mark.slow

GUEST_EDITS = r"""set -e
echo "guest edit" >> README.md
printf 'new\n' > added.txt
mkdir -p assets && printf '\000\001\002\377' > assets/logo.bin
rm gone_in_guest.txt
mv old_name.txt new_name.txt
chmod +x run.sh
head -c 3000 blob.bin > blob.tmp && mv blob.tmp blob.bin
echo "ignored" > trace.log
"""

GUEST_TREE = (
    "set -e; i=$(mktemp -d); GIT_INDEX_FILE=$i/index git add -A; "
    "GIT_INDEX_FILE=$i/index git write-tree; rm -rf $i"
)


@pytest.fixture(scope="module")
def env(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_env("bgw-", cache_home=debian_image.cache_home)
    be.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
    yield be
    be.banger("vm", "delete", "wsrt", timeout=120)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(env: BangerEnv) -> str:
    env.banger("vm", "create", "--name", "wsrt", check=True, timeout=300)
    return "wsrt"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    r = tmp_path / "sample"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.name", "Grace Hopper")
    git(r, "config", "user.email", "grace@example.test")
    (r / "README.md").write_text("sample\n")
    (r / "old_name.txt").write_text("rename me\n" * 30)
    (r / "gone_in_guest.txt").write_text("x\n")
    (r / "run.sh").write_text("#!/bin/sh\necho run\n")
    (r / "blob.bin").write_bytes(BINARY)
    (r / ".gitignore").write_text("*.log\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "sample")
    (r / "README.md").write_text("sample, edited on the host\n")
    (r / "untracked.txt").write_text("untracked\n")
    (r / "host.log").write_text("ignored\n")
    return r


def test_round_trip_through_a_real_guest(
    env: BangerEnv, vm: str, sample: Path, tmp_path: Path
) -> None:
    p = env.banger("vm", "workspace", "prepare", vm, str(sample), "--include-untracked", "--json")
    assert p.returncode == 0, p.stderr
    prepared = json.loads(p.stdout)
    base = git(sample, "rev-parse", "HEAD").strip()
    assert prepared["base_commit"] == base and prepared["guest_path"] == "/root/repo"
    # `vm list` and `vm show` name the prepared checkout: host path → guest path.
    listed = env.banger("vm", "list", check=True).stdout
    assert f"{sample.resolve()} → /root/repo" in listed
    shown = json.loads(env.banger("vm", "show", vm, "--json", check=True).stdout)
    assert shown["workspaces"] == [{"host_path": str(sample.resolve()), "guest_path": "/root/repo"}]

    p = env.banger(
        "vm", "exec", vm, "--", "sh", "-c", "git status --porcelain; git log --format=%H"
    )
    assert p.returncode == 0, p.stderr
    assert " M README.md" in p.stdout and "?? untracked.txt" in p.stdout
    assert "host.log" not in p.stdout
    assert p.stdout.strip().endswith(base)

    p = env.banger("vm", "exec", vm, "--", "sh", "-c", GUEST_EDITS)
    assert p.returncode == 0, p.stderr
    status_before = env.banger("vm", "exec", vm, "--", "git", "status", "--porcelain").stdout

    patch_file = tmp_path / "guest.patch"
    p = env.banger("vm", "workspace", "export", vm, "--output", str(patch_file), "--json")
    assert p.returncode == 0, p.stderr
    files = {(f["status"], f["path"]) for f in json.loads(p.stdout)["files"]}
    assert {("M", "README.md"), ("A", "added.txt"), ("A", "assets/logo.bin"),
            ("D", "gone_in_guest.txt"), ("R", "new_name.txt"), ("M", "run.sh"),
            ("M", "blob.bin"), ("A", "untracked.txt")} <= files  # fmt: skip
    assert not any(path == "trace.log" for _s, path in files)
    # Export changed nothing in the guest.
    assert env.banger("vm", "exec", vm, "--", "git", "status", "--porcelain").stdout == (
        status_before
    )
    # stdout mode gives the same patch, ready for `| git apply`.
    raw = subprocess.run(
        [*_cli(env), "vm", "workspace", "export", vm], env=env.env, capture_output=True, timeout=120
    )
    assert raw.returncode == 0 and raw.stdout == patch_file.read_bytes()

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(sample), str(clone)], check=True)
    git(clone, "apply", "--index", input=patch_file.read_bytes())
    guest_tree = env.banger("vm", "exec", vm, "--", "sh", "-c", GUEST_TREE).stdout.strip()
    assert tree_of(clone) == guest_tree
    assert os.access(clone / "run.sh", os.X_OK)

    # Exit status verbatim; a moved host HEAD warns, and --auto-prepare re-syncs.
    assert env.banger("vm", "exec", vm, "--", "sh", "-c", "exit 3").returncode == 3
    git(sample, "commit", "-qam", "host moves on")
    p = env.banger("vm", "exec", vm, "--", "git", "rev-parse", "HEAD")
    assert "host HEAD moved since prepare" in p.stderr and p.stdout.strip() == base
    p = env.banger("vm", "exec", vm, "--auto-prepare", "--", "git", "rev-parse", "HEAD")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == git(sample, "rev-parse", "HEAD").strip()


def _cli(env: BangerEnv) -> list[str]:
    import sys

    return [sys.executable, "-m", "banger.cli.main"]


def test_vm_run_exits_with_the_command_status_and_rm_leaves_nothing(
    env: BangerEnv, sample: Path
) -> None:
    vms_before = sorted(os.listdir(env.paths.vms_dir)) if env.paths.vms_dir.exists() else []
    p = env.banger(
        "vm", "run", str(sample), "--rm", "--name", "wsrun", "--",
        "sh", "-c", "test -f README.md && test ! -e untracked.txt && exit 7",
    )  # fmt: skip
    assert p.returncode == 7, p.stderr
    assert "prepared sample in vm wsrun at /root/repo" in p.stderr
    listed = json.loads(env.banger("vm", "list", "--json", check=True).stdout)
    assert "wsrun" not in [v["name"] for v in listed]
    assert sorted(os.listdir(env.paths.vms_dir)) == vms_before
    # Its workspace record went with it.
    import sqlite3

    with sqlite3.connect(env.paths.db_file) as db:
        orphans = db.execute(
            "SELECT count(*) FROM vm_workspaces WHERE vm_id NOT IN (SELECT id FROM vms)"
        ).fetchone()[0]
    assert orphans == 0

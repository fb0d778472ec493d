"""Prepare/export round trips with real git and tar against a local guest directory."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from banger.errors import InvalidInput, NotFound
from banger.workspace.export import export
from banger.workspace.plan import PrepareOptions, make_plan
from banger.workspace.ship import prepare
from banger.workspace.transport import LocalGuestExec
from tests.workspace.conftest import BINARY, git, tree_of


async def _prepare(repo: Path, guest: LocalGuestExec, **opts: object) -> Path:
    gp = guest.root / "root" / "repo"
    plan, _ = make_plan(repo, PrepareOptions(guest_path=str(gp), **opts))  # type: ignore[arg-type]
    await prepare(guest, plan)
    return gp


async def test_prepare_ships_tracked_work_tree_with_history(
    repo: Path, guest: LocalGuestExec
) -> None:
    gp = await _prepare(repo, guest)
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git(gp, "rev-parse", "HEAD").strip() == head
    assert git(gp, "symbolic-ref", "--short", "HEAD").strip() == "main"
    assert git(gp, "log", "--format=%s").split() == ["second", "first"]
    # Working-tree contents, uncommitted changes included.
    assert (gp / "README.md").read_text() == "hello, edited\n"
    assert (gp / "staged_new.txt").read_text() == "staged\n"
    assert not (gp / "gone.txt").exists()
    assert (gp / "blob.bin").read_bytes() == BINARY
    # Untracked and ignored files stay home by default.
    assert not (gp / "notes.txt").exists()
    assert not (gp / "debug.log").exists()
    assert not (gp / "build").exists()
    # The guest sees the same uncommitted changes the host has, relative to the same HEAD.
    status = git(gp, "status", "--porcelain").splitlines()
    assert sorted(status) == sorted([" M README.md", " D gone.txt", "?? staged_new.txt"]) or sorted(
        status
    ) == sorted([" M README.md", " D gone.txt", "A  staged_new.txt"])
    assert git(gp, "config", "user.name").strip() == "Ada Lovelace"
    assert git(gp, "config", "user.email").strip() == "ada@example.test"
    # The staging directory is gone.
    assert sorted(p.name for p in gp.parent.iterdir()) == ["repo"]


async def test_include_untracked_adds_untracked_but_never_ignored(
    repo: Path, guest: LocalGuestExec
) -> None:
    gp = await _prepare(repo, guest, include_untracked=True)
    assert (gp / "notes.txt").read_text() == "untracked\n"
    assert not (gp / "debug.log").exists()
    assert not (gp / "build").exists()
    assert tree_of(gp) == tree_of(repo)


async def test_export_round_trip_reproduces_guest_tree(
    repo: Path, guest: LocalGuestExec, tmp_path: Path
) -> None:
    gp = await _prepare(repo, guest)
    base = git(repo, "rev-parse", "HEAD").strip()
    # Work in the guest: edit, add, delete, binary change, rename, chmod, plus a guest commit.
    (gp / "src" / "app.py").write_text("print('guest')\n")
    (gp / "added.txt").write_text("new in guest\n")
    (gp / "assets").mkdir()
    (gp / "assets" / "logo.bin").write_bytes(bytes(reversed(BINARY)) + b"\0\xff")
    (gp / "README.md").unlink()
    (gp / "blob.bin").write_bytes(BINARY[:1000] + b"\x00changed\x00" + BINARY[1000:])
    os.rename(gp / "old_name.txt", gp / "new_name.txt")
    os.chmod(gp / "run.sh", 0o755)
    (gp / "scratch.log").write_text("ignored in guest too\n")
    git(gp, "add", "added.txt")
    git(gp, "commit", "-qm", "guest commit")
    index_before = (gp / ".git" / "index").read_bytes()
    status_before = git(gp, "status", "--porcelain")

    result = await export(guest, str(gp), base)

    # Export never mutates the guest: same index bytes, same status.
    assert (gp / ".git" / "index").read_bytes() == index_before
    assert git(gp, "status", "--porcelain") == status_before
    changes = {(f.status, f.path) for f in result.files}
    assert ("M", "src/app.py") in changes
    assert ("A", "added.txt") in changes
    assert ("A", "assets/logo.bin") in changes
    assert ("M", "blob.bin") in changes
    assert ("M", "run.sh") in changes
    assert ("A", "staged_new.txt") in changes  # host's uncommitted work, carried over
    assert ("D", "gone.txt") in changes
    assert ("D", "README.md") in changes
    renames = [f for f in result.files if f.status == "R"]
    assert [(f.old_path, f.path) for f in renames] == [("old_name.txt", "new_name.txt")]
    assert not any(f.path == "scratch.log" for f in result.files)
    assert b"GIT binary patch" in result.patch
    assert b"new mode 100755" in result.patch or b"old mode 100644" in result.patch

    # Applied to a clean clone at the base commit, the patch reproduces the guest's tree.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", base)
    git(clone, "apply", "--index", input=result.patch)
    assert tree_of(clone) == tree_of(gp)
    assert os.stat(clone / "run.sh").st_mode & stat.S_IXUSR


async def test_export_defaults_to_guest_head_and_empty_patch_when_clean(
    repo: Path, guest: LocalGuestExec
) -> None:
    git(repo, "stash", "-q", "--include-untracked")
    gp = await _prepare(repo, guest)
    result = await export(guest, str(gp), None)
    assert result.base_commit == git(repo, "rev-parse", "HEAD").strip()
    assert result.files == []
    assert result.patch == b""


async def test_export_errors(repo: Path, guest: LocalGuestExec) -> None:
    with pytest.raises(NotFound, match="no workspace"):
        await export(guest, str(guest.root / "nothing"), None)
    gp = await _prepare(repo, guest)
    with pytest.raises(InvalidInput, match="not in the guest"):
        await export(guest, str(gp), "deadbeef" * 5)
    with pytest.raises(InvalidInput, match="hexadecimal"):
        await export(guest, str(gp), "HEAD; rm -rf /")


async def test_re_prepare_replaces_the_workspace(repo: Path, guest: LocalGuestExec) -> None:
    gp = await _prepare(repo, guest)
    (gp / "guest_only.txt").write_text("x")
    (repo / "README.md").write_text("second prepare\n")
    await _prepare(repo, guest)
    assert (gp / "README.md").read_text() == "second prepare\n"
    assert not (gp / "guest_only.txt").exists()
    assert sorted(p.name for p in gp.parent.iterdir()) == ["repo"]


async def test_readonly_drops_write_bits(repo: Path, guest: LocalGuestExec) -> None:
    gp = await _prepare(repo, guest, readonly=True)
    assert not os.stat(gp / "README.md").st_mode & 0o222
    assert not os.stat(gp / "src").st_mode & 0o222
    assert os.stat(gp / ".git" / "config").st_mode & 0o200


async def test_branch_and_from(repo: Path, guest: LocalGuestExec) -> None:
    gp = await _prepare(repo, guest, branch="feature")
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git(gp, "symbolic-ref", "--short", "HEAD").strip() == "feature"
    assert git(gp, "rev-parse", "feature").strip() == head
    assert git(gp, "rev-parse", "main").strip() == head
    assert (gp / "README.md").read_text() == "hello, edited\n"

    first = git(repo, "rev-parse", "HEAD~1").strip()
    gp = await _prepare(repo, guest, branch="fix", from_ref="HEAD~1")
    assert git(gp, "rev-parse", "HEAD").strip() == first
    assert git(gp, "symbolic-ref", "--short", "HEAD").strip() == "fix"
    assert (gp / "src" / "app.py").read_text() == "print('v1')\n"
    assert (gp / "gone.txt").exists()  # clean checkout of the --from commit
    assert git(gp, "status", "--porcelain") == ""
    with pytest.raises(InvalidInput, match="valid branch"):
        make_plan(repo, PrepareOptions(branch="bad..name"))
    with pytest.raises(InvalidInput, match="needs --branch"):
        make_plan(repo, PrepareOptions(from_ref="HEAD~1"))
    with pytest.raises(InvalidInput, match="not a commit"):
        make_plan(repo, PrepareOptions(branch="x", from_ref="nope"))


async def test_full_copy_ships_everything_including_submodules(
    repo: Path, guest: LocalGuestExec, tmp_path: Path
) -> None:
    sub = tmp_path / "host" / "lib"
    sub.mkdir()
    git(sub, "init", "-q", "-b", "main")
    (sub / "lib.c").write_text("int x;\n")
    git(sub, "add", "-A")
    git(sub, "commit", "-qm", "lib")
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "vendor/lib")
    with pytest.raises(InvalidInput, match="full_copy"):
        make_plan(repo, PrepareOptions())
    gp = await _prepare(repo, guest, mode="full_copy")
    assert (gp / "vendor" / "lib" / "lib.c").read_text() == "int x;\n"
    assert (gp / "debug.log").exists()  # the whole tree
    assert git(gp, "rev-parse", "HEAD").strip() == git(repo, "rev-parse", "HEAD").strip()
    assert (
        git(gp / "vendor" / "lib", "rev-parse", "HEAD").strip()
        == git(sub, "rev-parse", "HEAD").strip()
    )
    assert git(gp, "status", "--porcelain") == git(repo, "status", "--porcelain")


def test_dry_run_plan_lists_files_and_mode(repo: Path) -> None:
    plan, _ = make_plan(repo, PrepareOptions())
    assert plan.mode == "overlay"
    assert plan.files == sorted(
        [".gitignore", "README.md", "blob.bin", "old_name.txt", "run.sh", "src/app.py",
         "staged_new.txt"]
    )  # fmt: skip
    assert plan.total_bytes == sum((repo / f).stat().st_size for f in plan.files)
    plan, _ = make_plan(repo / "src", PrepareOptions(include_untracked=True))
    assert plan.repo_root == str(repo)
    assert "notes.txt" in plan.files and "debug.log" not in plan.files
    full, _ = make_plan(repo, PrepareOptions(mode="full_copy"))
    assert "build/out.o" in full.files and "debug.log" in full.files


def test_non_repo_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidInput, match="not inside a git work tree"):
        make_plan(tmp_path / "plain", PrepareOptions())
    with pytest.raises(InvalidInput, match="does not exist"):
        make_plan(tmp_path / "missing", PrepareOptions())


def test_guest_path_validation(repo: Path) -> None:
    for bad in ("relative/path", "/", "/root", "/a/../b", "/x\ny"):
        with pytest.raises(InvalidInput):
            make_plan(repo, PrepareOptions(guest_path=bad))


async def test_repo_without_commits(tmp_path: Path, guest: LocalGuestExec) -> None:
    r = tmp_path / "fresh"
    r.mkdir()
    git(r, "init", "-q", "-b", "trunk")
    (r / "a.txt").write_text("a\n")
    git(r, "add", "a.txt")
    gp = await _prepare(r, guest)
    assert (gp / "a.txt").read_text() == "a\n"
    assert git(gp, "symbolic-ref", "--short", "HEAD").strip() == "trunk"
    result = await export(guest, str(gp), None)
    assert [(f.status, f.path) for f in result.files] == [("A", "a.txt")]


async def test_awkward_file_names_survive_the_round_trip(
    repo: Path, guest: LocalGuestExec, tmp_path: Path
) -> None:
    awkward = [b"sp ace.txt", b"new\nline.txt", b"-dash.txt", b"caf\xe9-latin1.txt"]
    for name in awkward:
        (repo / os.fsdecode(name)).write_bytes(b"x " + name + b"\n")
    git(repo, "add", "-A")
    gp = await _prepare(repo, guest)
    for name in awkward:
        assert (gp / os.fsdecode(name)).read_bytes() == b"x " + name + b"\n"
    (gp / os.fsdecode(b"new\nline.txt")).write_text("changed in guest\n")
    base = git(repo, "rev-parse", "HEAD").strip()
    result = await export(guest, str(gp), base)
    clone = tmp_path / "clone2"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "apply", "--index", input=result.patch)
    assert tree_of(clone) == tree_of(gp)


async def test_shallow_ships_the_snapshot_only(
    repo: Path, guest: LocalGuestExec, tmp_path: Path
) -> None:
    gp = await _prepare(repo, guest, shallow=True)
    head = git(repo, "rev-parse", "HEAD").strip()
    assert git(gp, "rev-parse", "HEAD").strip() == head
    assert git(gp, "log", "--format=%s").split() == ["second"]  # no ancestors
    assert git(gp, "rev-parse", "--is-shallow-repository").strip() == "true"
    assert (gp / "README.md").read_text() == "hello, edited\n"
    assert git(gp, "fsck", "--no-progress").strip() == ""
    (gp / "src" / "app.py").write_text("print('shallow')\n")
    result = await export(guest, str(gp), None)
    clone = tmp_path / "clone3"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "apply", "--index", input=result.patch)
    assert tree_of(clone) == tree_of(gp)

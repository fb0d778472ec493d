"""Read what a host checkout holds: work tree root, HEAD, branch, identity and its file sets.

Only read-only git plumbing is used, so inspecting never changes the user's repository (not even
the index's stat cache).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from banger import errors
from banger.errors import InvalidInput, OperationFailed
from banger.proc import run_sync

GITLINK_MODE = "160000"


def git(root: Path, *args: str, check: bool = True, input: bytes | None = None) -> bytes:
    """Run git in `root` with quoting off and no pager; returns stdout."""
    env = dict(os.environ)
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(var, None)
    env["GIT_OPTIONAL_LOCKS"] = "0"  # never take the index lock to refresh stat data
    res = run_sync(
        ["git", "-c", "core.quotepath=off", *args],
        cwd=str(root),
        env=env,
        check=check,
        input=input,
        what=f"git {args[0]}",
    )
    return res.stdout


def _split_z(data: bytes) -> list[str]:
    return [p.decode(errors="surrogateescape") for p in data.split(b"\0") if p]


@dataclass
class RepoInfo:
    root: Path
    head: str | None  # None on an unborn branch (no commit yet)
    branch: str | None  # None when HEAD is detached
    user_name: str | None
    user_email: str | None
    origin: str | None
    # Paths relative to root (posix). `tracked` = index entries whose file exists in the work tree.
    tracked: list[str] = field(default_factory=list)
    untracked: list[str] = field(default_factory=list)
    submodules: list[str] = field(default_factory=list)
    # Differences between the work tree and HEAD: files to ship over the HEAD checkout, files to
    # delete from it.
    changed: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name


def find_root(path: Path) -> Path:
    """The work tree root containing `path`, or a clear error when it is not in one."""
    if not path.exists():
        raise InvalidInput(f"{path} does not exist")
    where = path if path.is_dir() else path.parent
    res = run_sync(
        ["git", "rev-parse", "--is-inside-work-tree", "--show-toplevel"],
        cwd=str(where),
        check=False,
    )
    lines = res.out.strip().splitlines()
    if res.returncode != 0 or not lines or lines[0] != "true" or len(lines) < 2:
        raise InvalidInput(
            f"{path} is not inside a git work tree; run `git init` (and commit) there first, "
            "or point at a checkout"
        )
    return Path(lines[1])


def _config(root: Path, key: str) -> str | None:
    value = git(root, "config", "--get", key, check=False).decode(errors="replace").strip()
    return value or None


def check_git_dir(root: Path) -> None:
    """A `.git` that is a file or a symlink leads elsewhere: accept it only when that repository
    says the link is its own (a linked worktree's `gitdir` file, a submodule's `core.worktree`).
    A checkout unpacked from somewhere else could otherwise carry `gitdir: /home/you/secret/.git`
    and have banger ship that repository's history into the guest."""
    dotgit = root / ".git"
    if dotgit.is_dir() and not dotgit.is_symlink():
        return
    out = git(root, "rev-parse", "--absolute-git-dir", check=False).decode(errors="replace")
    gitdir = Path(out.strip()) if out.strip() else None
    if gitdir is not None:
        backlink = gitdir / "gitdir"  # a linked worktree's admin dir points back at our .git
        if backlink.is_file() and _same(backlink.read_text().strip(), dotgit):
            return
        worktree = (
            git(
                root,
                "config",
                "--file",
                str(gitdir / "config"),
                "--get",
                "core.worktree",
                check=False,
            )
            .decode(errors="replace")
            .strip()
        )
        if worktree and _same(str(gitdir / worktree), root):  # a submodule's git dir
            return
    where = gitdir if gitdir is not None else "(unreadable)"
    raise InvalidInput(
        f"{dotgit} is a {'symlink' if dotgit.is_symlink() else 'file'} leading to {where}, which "
        "is not a worktree or submodule of this checkout; refusing to ship another repository's "
        "history (point banger at that repository itself)"
    )


def _same(a: str | Path, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def inspect_repo(path: Path, *, include_untracked: bool = False) -> RepoInfo:
    root = find_root(path.resolve())
    check_git_dir(root)
    head_out = git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    head = head_out.decode().strip() or None
    branch_out = git(root, "symbolic-ref", "-q", "--short", "HEAD", check=False)
    info = RepoInfo(
        root=root,
        head=head,
        branch=branch_out.decode().strip() or None,
        user_name=_config(root, "user.name"),
        user_email=_config(root, "user.email"),
        origin=_config(root, "remote.origin.url"),
    )
    seen: set[str] = set()
    for entry in _split_z(git(root, "ls-files", "-z", "--stage")):
        meta, _, rel = entry.partition("\t")
        if rel in seen:  # unmerged paths appear once per stage
            continue
        seen.add(rel)
        if meta.split(" ", 1)[0] == GITLINK_MODE:
            info.submodules.append(rel)
        elif os.path.lexists(root / rel):
            info.tracked.append(rel)
    if include_untracked:
        info.untracked = _split_z(git(root, "ls-files", "-z", "--others", "--exclude-standard"))
    if head is not None:
        # Work tree vs HEAD for everything git tracks. Stat-dirty files may show up as modified:
        # that only ships a few extra bytes, and refreshing would write the user's index.
        out = _split_z(git(root, "diff-index", "-z", "--name-status", "--no-renames", head))
        for status, rel in zip(out[0::2], out[1::2], strict=True):
            if rel in info.submodules:
                continue
            if status == "D" or not os.path.lexists(root / rel):
                info.deleted.append(rel)
            else:
                info.changed.append(rel)
    else:
        info.changed = list(info.tracked)
    return info


def resolve_commit(root: Path, ref: str) -> str:
    if ref.startswith("-"):
        raise InvalidInput(f"invalid ref {ref!r}")
    out = git(root, "rev-parse", "--verify", "-q", f"{ref}^{{commit}}", check=False)
    sha = out.decode().strip()
    if not sha:
        raise InvalidInput(f"{ref!r} is not a commit in {root}")
    return sha


def check_branch_name(root: Path, name: str) -> None:
    res = run_sync(["git", "check-ref-format", "--branch", name], cwd=str(root), check=False)
    if res.returncode != 0 or name.startswith("-"):
        raise InvalidInput(f"{name!r} is not a valid branch name")


def host_head(root: Path) -> str | None:
    """HEAD of the checkout at `root` now (None when it is gone or has no commit)."""
    try:
        out = git(root, "rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
    except (OSError, OperationFailed, errors.OperationFailed):
        return None
    return out.decode().strip() or None

"""What a prepare will put in the guest: the file list and mode (`--dry-run` prints this)."""

from __future__ import annotations

import os
import posixpath
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from banger.errors import InvalidInput
from banger.workspace.inspect import (
    RepoInfo,
    check_branch_name,
    git,
    inspect_repo,
    resolve_commit,
)

Mode = Literal["overlay", "full_copy"]
DEFAULT_GUEST_PATH = "/root/repo"


class PrepareOptions(BaseModel):
    include_untracked: bool = False
    readonly: bool = False
    mode: Mode = "overlay"
    branch: str | None = None
    from_ref: str | None = None
    guest_path: str = DEFAULT_GUEST_PATH
    # Ship only the snapshot of HEAD (a one-commit shallow repository), not its ancestry.
    shallow: bool = False


class WorkspacePlan(BaseModel):
    repo_root: str
    repo_name: str
    mode: Mode
    guest_path: str
    head_commit: str | None  # the host's HEAD
    base_commit: str | None  # what the guest checkout starts from (HEAD, or --from)
    host_branch: str | None
    guest_branch: str | None
    include_untracked: bool
    readonly: bool
    shallow: bool = False
    # Every file the workspace will hold (relative, posix), and how many bytes they are.
    files: list[str]
    total_bytes: int
    # overlay mode: what goes over the base checkout, and what is removed from it.
    changed: list[str]
    deleted: list[str]
    submodules: list[str]
    user_name: str | None
    user_email: str | None


# PATH_MAX of Linux, counting the terminating NUL.
GUEST_PATH_MAX = 4095


def check_guest_path_syntax(path: str) -> str:
    """A normalised absolute path below / without NUL or newline (export needs no more)."""
    if not path.startswith("/") or "\0" in path or "\n" in path:
        raise InvalidInput(f"guest path {path[:200]!r} must be an absolute path")
    try:
        size = len(path.encode())
    except UnicodeEncodeError:  # a lone surrogate (JSON allows "\udc80")
        raise InvalidInput(f"guest path {path[:200]!r} is not valid UTF-8") from None
    if size > GUEST_PATH_MAX:
        raise InvalidInput(f"guest path {path[:64]!r}… is longer than {GUEST_PATH_MAX} bytes")
    norm = posixpath.normpath(path)
    if norm != path.rstrip("/") or ".." in norm.split("/") or norm in ("/", "//"):
        raise InvalidInput(f"guest path {path!r} must be a normalised absolute path below /")
    return norm


def validate_guest_path(path: str) -> str:
    norm = check_guest_path_syntax(path)
    if norm in ("/root", "/etc", "/usr", "/bin", "/sbin", "/lib", "/var", "/tmp", "/home"):
        raise InvalidInput(
            f"guest path {path!r} would replace a system directory; use a subdirectory"
        )
    # banger's read-only seed mount and the kernel filesystems fail late with an obscure `mv`
    # error (busy or read-only mount); /run and /dev are tmpfs, so a checkout there vanished at
    # the next boot while its record stayed.
    top = "/" + norm.split("/")[1]
    if top in ("/.banger", "/proc", "/sys", "/dev", "/run", "/boot", "/lib64"):
        raise InvalidInput(
            f"guest path {path!r} is inside {top}, which banger or the guest system owns; "
            "use a path like /root/repo or /srv/NAME"
        )
    return norm


def _split(data: bytes) -> list[str]:
    return [p.decode(errors="surrogateescape") for p in data.split(b"\0") if p]


def _size(root: Path, rel: str) -> int:
    try:
        return os.lstat(root / rel).st_size
    except OSError:
        return 0


def _walk_all(root: Path) -> list[str]:
    """Every file and symlink under root except git's own directory (full_copy ships that too)."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}")
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
    return sorted(out)


def make_plan(path: Path, opts: PrepareOptions) -> tuple[WorkspacePlan, RepoInfo]:
    guest_path = validate_guest_path(opts.guest_path)
    info = inspect_repo(path, include_untracked=opts.include_untracked)
    if info.head is None and opts.mode == "overlay" and opts.from_ref:
        raise InvalidInput(f"{info.root} has no commit yet, so --from has nothing to start from")
    if opts.from_ref and not opts.branch:
        raise InvalidInput("--from needs --branch (it names where the new guest branch starts)")
    if opts.from_ref and opts.mode == "full_copy":
        raise InvalidInput("--from works in overlay mode only; full_copy ships the tree as it is")
    if opts.branch:
        check_branch_name(info.root, opts.branch)
    base = info.head
    changed, deleted = list(info.changed), list(info.deleted)
    if opts.from_ref:
        # A branch from another commit starts clean: the host's uncommitted changes are
        # relative to HEAD, not to that commit.
        base = resolve_commit(info.root, opts.from_ref)
        changed, deleted = [], []
    if opts.mode == "overlay":
        if info.submodules:
            raise InvalidInput(
                f"{info.root} has submodules ({', '.join(info.submodules[:3])}); overlay mode "
                "cannot ship them: use --mode full_copy"
            )
        if opts.from_ref and base is not None:
            from_files = _split(git(info.root, "ls-tree", "-r", "-z", "--name-only", base))
            files = sorted(set(from_files) | set(info.untracked))
        else:
            files = sorted(set(info.tracked) | set(info.untracked))
        changed = sorted(set(changed) | set(info.untracked))
    else:
        if (info.root / ".git").is_file():
            raise InvalidInput(
                f"{info.root} is a linked worktree (.git is a file); full_copy needs the main "
                "checkout, or use overlay mode"
            )
        files = _walk_all(info.root)
    plan = WorkspacePlan(
        repo_root=str(info.root),
        repo_name=info.name,
        mode=opts.mode,
        guest_path=guest_path,
        head_commit=info.head,
        base_commit=base,
        host_branch=info.branch,
        guest_branch=opts.branch or info.branch,
        include_untracked=opts.include_untracked,
        readonly=opts.readonly,
        shallow=opts.shallow and opts.mode == "overlay",
        files=files,
        total_bytes=sum(_size(info.root, f) for f in files),
        changed=changed,
        deleted=deleted,
        submodules=info.submodules,
        user_name=info.user_name,
        user_email=info.user_email,
    )
    return plan, info

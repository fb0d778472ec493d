"""Version, commit and build time of this banger, for `banger version`, `--version` and `ping`.

The build hook (hatch_build.py) stamps banger/_build.py at install time. In a source checkout the
commit is read live from .git (plain file reads, no git subprocess: `--version` stays fast), so an
editable install does not report the commit it was installed at after new commits.
"""

from __future__ import annotations

import functools
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

from banger import __version__

_SHA = re.compile(r"[0-9a-f]{40}")


@dataclass(frozen=True)
class BuildInfo:
    version: str
    commit: str  # full sha, or "" when unknown
    built: str  # ISO 8601 UTC, or "" when unknown

    def line(self, prog: str) -> str:
        """`banger 0.1.0 (commit 0dd3760a, built 2026-12-04T15:20:00Z)`."""
        commit = self.commit[:8] or "unknown"
        return f"{prog} {self.version} (commit {commit}, built {self.built or 'unknown'})"

    def as_dict(self) -> dict[str, str]:
        return {"version": self.version, "commit": self.commit, "built": self.built}


def _git_dir(source_root: Path) -> Path | None:
    dot_git = source_root / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree: "gitdir: <path>"
        text = dot_git.read_text(errors="replace").strip()
        if text.startswith("gitdir: "):
            return (source_root / text.removeprefix("gitdir: ")).resolve()
    return None


def _read_ref(git_dir: Path, ref: str) -> str:
    common = git_dir
    commondir = git_dir / "commondir"
    if commondir.is_file():
        common = (git_dir / commondir.read_text().strip()).resolve()
    for base in (git_dir, common):
        loose = base / ref
        if loose.is_file():
            sha = loose.read_text().strip()
            return sha if _SHA.fullmatch(sha) else ""
    packed = common / "packed-refs"
    if packed.is_file():
        for line in packed.read_text(errors="replace").splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and _SHA.fullmatch(sha):
                return sha
    return ""


def live_commit(source_root: Path) -> str:
    """HEAD of the checkout at `source_root`, or "" when it is not one (or unreadable)."""
    try:
        git_dir = _git_dir(source_root)
        if git_dir is None:
            return ""
        head = (git_dir / "HEAD").read_text().strip()
        if head.startswith("ref: "):
            return _read_ref(git_dir, head.removeprefix("ref: "))
        return head if _SHA.fullmatch(head) else ""
    except OSError:
        return ""


@functools.cache
def build_info() -> BuildInfo:
    """Read once per process: a running daemon reports the commit it started from (not one
    checked out since), and `ping` does no file reads."""
    commit = built = ""
    try:
        stamped = importlib.import_module("banger._build")
        commit = str(getattr(stamped, "COMMIT", ""))
        built = str(getattr(stamped, "BUILT", ""))
    except ImportError:
        pass
    # src/banger/buildinfo.py -> the checkout root, when running from one.
    live = live_commit(Path(__file__).resolve().parents[2])
    return BuildInfo(__version__, live or commit, built)

"""Prepare: ship history and the work tree overlay into the guest, staged then swapped in.

Overlay mode streams a git pack of HEAD's history (`git pack-objects`, the same data a bundle
carries) into `git index-pack --stdin` in the guest, checks HEAD out there, then streams a tar
of only the files that differ from HEAD (plus untracked ones on request) and removes the files
the host deleted. full_copy streams a tar of the whole tree, `.git` and submodules included.
Everything lands in a staging directory next to the guest path and is renamed into place last,
so a failed prepare never leaves a half-written workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import posixpath
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel

from banger.errors import OperationFailed
from banger.proc import kill_tree, run_sync, spawn
from banger.workspace.plan import WorkspacePlan
from banger.workspace.transport import ExecResult, GuestExec

Progress = Callable[[str], None]

# Guest-side scripts: POSIX sh, paths passed as positional arguments (never interpolated).
# stdin: a tar of a pack and its index, built on the host (the guest's CPU, emulated under TCG,
# would take many seconds to index a pack itself).
RECEIVE_PACK = r"""set -eu
s=$1 shallow=$2
rm -rf -- "$s"
mkdir -p -- "$s"
cd -- "$s"
git init -q
tar -x -f - -C .git/objects/pack
for c in $shallow; do echo "$c" >>.git/shallow; done
"""

INIT_EMPTY = r"""set -eu
s=$1
rm -rf -- "$s"
mkdir -p -- "$s"
cd -- "$s"
git init -q
"""

# $2 commit to check out ("" = unborn), $3 ref HEAD points to ("" = detached), $4 extra ref to
# set to the commit (the host's branch when the guest gets its own), stdin: NUL-separated paths
# to delete after the checkout.
CHECKOUT = r"""set -eu
s=$1 commit=$2 ref=$3 extra=$4
cd -- "$s"
if [ -n "$commit" ]; then
  if [ -n "$extra" ]; then git update-ref "$extra" "$commit"; fi
  if [ -n "$ref" ]; then
    git update-ref "$ref" "$commit"
    git symbolic-ref HEAD "$ref"
  else
    git update-ref --no-deref HEAD "$commit"
  fi
  git reset -q --hard
elif [ -n "$ref" ]; then
  git symbolic-ref HEAD "$ref"
fi
xargs -0 -r rm -f --
"""

EXTRACT = r"""set -eu
tar -x -f - -C "$1"
"""

EXTRACT_FRESH = r"""set -eu
s=$1
rm -rf -- "$s"
mkdir -p -- "$s"
tar -x -f - -C "$s"
"""

# $1 staging, $2 final path, $3 user.name, $4 user.email, $5 readonly (1/0), $6 origin url,
# $7 branch to create and check out in full_copy mode ("" = none).
FINALIZE = r"""set -eu
s=$1 dst=$2 name=$3 email=$4 ro=$5 origin=$6 newbranch=$7
cd -- "$s"
if [ -n "$name" ]; then git config user.name "$name"; fi
if [ -n "$email" ]; then git config user.email "$email"; fi
if [ -n "$origin" ] && ! git remote get-url origin >/dev/null 2>&1; then
  git remote add origin "$origin"
fi
if [ -n "$newbranch" ]; then git checkout -q -b "$newbranch"; fi
git update-index -q --refresh >/dev/null 2>&1 || true
if [ "$ro" = 1 ]; then find . -path ./.git -prune -o -exec chmod a-w {} +; fi
cd /
old="$dst.banger-old"
rm -rf -- "$old"
if [ -e "$dst" ] || [ -L "$dst" ]; then mv -- "$dst" "$old"; fi
mv -- "$s" "$dst"
rm -rf -- "$old"
"""

CLEANUP = r"""rm -rf -- "$1"
"""


class PrepareResult(BaseModel):
    repo_root: str
    repo_name: str
    guest_path: str
    mode: str
    head_commit: str | None
    base_commit: str | None
    guest_branch: str | None
    files: int
    total_bytes: int
    shipped_files: int
    seconds: float


def staging_path(guest_path: str) -> str:
    parent, name = posixpath.split(guest_path)
    return posixpath.join(parent, f".{name}.banger-staging")


def _nul_list(paths: Sequence[str]) -> bytes:
    return b"".join(p.encode(errors="surrogateescape") + b"\0" for p in paths)


def _check(result: ExecResult, what: str, guest: GuestExec) -> None:
    if result.returncode != 0:
        hint = ""
        if b"git: not found" in result.stderr or b"git: command not found" in result.stderr:
            hint = " (the guest image has no git; install git in the image)"
        raise OperationFailed(
            f"{what} failed in {guest.description} (exit {result.returncode}): "
            f"{result.err_tail}{hint}"
        )


async def _stream(
    guest: GuestExec,
    guest_argv: Sequence[str],
    producer_argv: Sequence[str],
    *,
    producer_input: bytes,
    cwd: Path,
    what: str,
) -> ExecResult:
    """Pipe a host producer's stdout straight into a guest command's stdin."""
    read_fd, write_fd = os.pipe()
    try:
        producer = await spawn(producer_argv, stdin=subprocess.PIPE, stdout=write_fd, cwd=str(cwd))
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    os.close(write_fd)

    async def feed() -> bytes:
        assert producer.stdin is not None and producer.stderr is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            producer.stdin.write(producer_input)
            await producer.stdin.drain()
        producer.stdin.close()
        err = await producer.stderr.read()
        await producer.wait()
        return err

    try:
        feeder = asyncio.ensure_future(feed())
        try:
            result = await guest.run(guest_argv, stdin=read_fd)
        finally:
            os.close(read_fd)
        producer_err = await asyncio.wait_for(feeder, 60)
    except BaseException:
        kill_tree(producer)
        await producer.wait()
        raise
    if producer.returncode != 0:
        tail = " | ".join(producer_err.decode(errors="replace").strip().splitlines()[-3:])
        raise OperationFailed(
            f"{what}: host {producer_argv[0]} exited {producer.returncode}: {tail}"
        )
    _check(result, what, guest)
    return result


def _write_pack(root: Path, revs: Sequence[str], out: Path, *, shallow: bool) -> list[str]:
    """Pack `revs` with their history (or, shallow, just their snapshots) into `out` as a pack
    and its index; returns the two file names."""
    if shallow:
        # Each commit plus its tree's objects, no ancestors: the guest marks them shallow.
        objects: list[bytes] = []
        for rev in revs:
            listing = run_sync(
                ["git", "rev-list", "--objects", "--no-object-names", "--max-count=1", rev],
                cwd=str(root),
                what="git rev-list",
            )
            objects.extend(listing.stdout.split())
        data = b"".join(o + b"\n" for o in dict.fromkeys(objects))
        mode: list[str] = []
    else:
        data = "".join(f"{r}\n" for r in revs).encode()
        mode = ["--revs"]
    res = run_sync(
        # No new delta search: packed history reuses its deltas anyway, and for loose objects
        # the search costs more time than it saves on the wire.
        [
            "git", "-c", "pack.window=0", "pack-objects", *mode, "--delta-base-offset", "-q",
            str(out / "pack"),
        ],
        input=data,
        cwd=str(root),
        what="git pack-objects",
    )  # fmt: skip
    name = f"pack-{res.out.strip()}"
    return [f"{name}.pack", f"{name}.idx"]


def _tar_argv(directory: Path | str | None = None) -> list[str]:
    """tar writing to stdout the NUL-separated paths read from stdin (relative to `directory`)."""
    where = ["-C", str(directory)] if directory is not None else []
    return [
        "tar",
        *where,
        "-c",
        "-f",
        "-",
        "--null",
        "--verbatim-files-from",
        "--no-recursion",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-T",
        "-",
    ]


async def prepare(
    guest: GuestExec, plan: WorkspacePlan, *, progress: Progress | None = None
) -> PrepareResult:
    say = progress or (lambda _s: None)
    started = time.monotonic()
    root = Path(plan.repo_root)
    staging = staging_path(plan.guest_path)
    shipped = 0
    try:
        if plan.mode == "overlay":
            if plan.base_commit is not None:
                say("history")
                revs = [plan.base_commit]
                if plan.head_commit and plan.head_commit != plan.base_commit:
                    revs.append(plan.head_commit)
                with tempfile.TemporaryDirectory(prefix="banger-pack-") as tmp:
                    names = await asyncio.to_thread(
                        _write_pack, root, revs, Path(tmp), shallow=plan.shallow
                    )
                    shallow = " ".join(revs) if plan.shallow else ""
                    await _stream(
                        guest,
                        ["sh", "-c", RECEIVE_PACK, "sh", staging, shallow],
                        _tar_argv(tmp),
                        producer_input=_nul_list(names),
                        cwd=root,
                        what="shipping history",
                    )
            else:
                _check(await guest.run(["sh", "-c", INIT_EMPTY, "sh", staging]), "git init", guest)
            say("checkout")
            guest_ref = f"refs/heads/{plan.guest_branch}" if plan.guest_branch else ""
            extra = ""
            if plan.host_branch and plan.guest_branch and plan.host_branch != plan.guest_branch:
                extra = f"refs/heads/{plan.host_branch}"
                if plan.base_commit != plan.head_commit:
                    extra = ""  # --from: the host branch is elsewhere; do not fake it
            res = await guest.run(
                ["sh", "-c", CHECKOUT, "sh", staging, plan.base_commit or "", guest_ref, extra],
                stdin=_nul_list(plan.deleted),
            )
            _check(res, "checkout", guest)
            to_ship = [f for f in plan.changed if os.path.lexists(root / f)]
            if to_ship:
                say("overlay")
                await _stream(
                    guest,
                    ["sh", "-c", EXTRACT, "sh", staging],
                    _tar_argv(),
                    producer_input=_nul_list(to_ship),
                    cwd=root,
                    what="shipping the work tree",
                )
            shipped = len(to_ship)
            new_branch = ""
        else:
            say("copy")
            entries = sorted(os.listdir(root))
            await _stream(
                guest,
                ["sh", "-c", EXTRACT_FRESH, "sh", staging],
                [a for a in _tar_argv() if a != "--no-recursion"],
                producer_input=_nul_list(entries),
                cwd=root,
                what="copying the tree",
            )
            shipped = len(plan.files)
            new_branch = plan.guest_branch or ""
            if plan.guest_branch == plan.host_branch:
                new_branch = ""
        say("finalize")
        res = await guest.run(
            [
                "sh",
                "-c",
                FINALIZE,
                "sh",
                staging,
                plan.guest_path,
                plan.user_name or "",
                plan.user_email or "",
                "1" if plan.readonly else "0",
                "",
                new_branch or "",
            ]
        )
        _check(res, "finalizing the workspace", guest)
    except BaseException:
        # Leave nothing half-written behind (best effort: the guest may be unreachable).
        with contextlib.suppress(Exception):
            await asyncio.shield(guest.run(["sh", "-c", CLEANUP, "sh", staging], timeout=30))
        raise
    return PrepareResult(
        repo_root=plan.repo_root,
        repo_name=plan.repo_name,
        guest_path=plan.guest_path,
        mode=plan.mode,
        head_commit=plan.head_commit,
        base_commit=plan.base_commit,
        guest_branch=plan.guest_branch,
        files=len(plan.files),
        total_bytes=plan.total_bytes,
        shipped_files=shipped,
        seconds=round(time.monotonic() - started, 3),
    )

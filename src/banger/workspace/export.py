"""Export: a binary git patch of the guest checkout against a base commit, read-only.

The guest's own index is never touched: a temporary index (seeded from a copy of the real one so
unchanged files keep their stat cache) is loaded with the base tree, `git add -A` stages the
work tree into it, and `git diff --cached --binary` against the base is the patch. Only new blob
objects are written to the guest's object store, as `git status` would.
"""

from __future__ import annotations

import re

from pydantic import BaseModel

from banger.rpc.errors import BadRequest, NotFound, OperationFailed
from banger.workspace.transport import GuestExec

# $1 work tree, $2 base commit ("" = the checkout's HEAD). Output: "<n>\n", n bytes of
# NUL-separated `--name-status` records, then the patch.
EXPORT = r"""set -eu
cd -- "$1" 2>/dev/null || { echo "no workspace at $1" >&2; exit 3; }
if ! git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  echo "$1 is not a git work tree" >&2; exit 3
fi
base=$2
if [ -z "$base" ]; then
  base=$(git rev-parse -q --verify 'HEAD^{commit}' || true)
elif ! git cat-file -e "$base^{commit}" 2>/dev/null; then
  echo "commit $base is not in the guest repository" >&2; exit 4
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/banger-export.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT
real=$(git rev-parse --git-path index)
export GIT_INDEX_FILE="$tmp/index"
if [ -z "$base" ]; then
  git read-tree --empty
  base=$(git hash-object -t tree /dev/null)
else
  # -m keeps the stat data of entries that match, so add -A does not re-hash unchanged files.
  if [ -f "$real" ]; then cp -- "$real" "$GIT_INDEX_FILE"; fi
  git read-tree -m "$base" 2>/dev/null || { rm -f -- "$GIT_INDEX_FILE"; git read-tree "$base"; }
fi
git add -A
git diff --cached -z --name-status -M --no-ext-diff "$base" >"$tmp/names"
printf '%s %s\n' "$(wc -c <"$tmp/names")" "$base"
cat -- "$tmp/names"
git diff --cached --binary -M --no-ext-diff --no-textconv --no-color "$base"
"""


class ChangedFile(BaseModel):
    status: str  # A, M, D, T, R (with similarity in `score`), C
    path: str
    old_path: str | None = None
    score: int | None = None


class ExportResult(BaseModel):
    guest_path: str
    base_commit: str
    files: list[ChangedFile]
    patch: bytes


def parse_name_status(data: bytes) -> list[ChangedFile]:
    fields = [f.decode(errors="surrogateescape") for f in data.split(b"\0")]
    if fields and fields[-1] == "":
        fields.pop()
    out: list[ChangedFile] = []
    i = 0
    while i < len(fields):
        status = fields[i]
        kind = status[:1]
        if kind in ("R", "C"):
            score = int(status[1:]) if status[1:].isdigit() else None
            out.append(
                ChangedFile(status=kind, old_path=fields[i + 1], path=fields[i + 2], score=score)
            )
            i += 3
        else:
            out.append(ChangedFile(status=kind, path=fields[i + 1]))
            i += 2
    return out


_SHA = re.compile(r"^[0-9a-f]{4,64}$")


async def export(guest: GuestExec, guest_path: str, base_commit: str | None) -> ExportResult:
    if base_commit is not None and not _SHA.match(base_commit):
        raise BadRequest(f"base commit {base_commit!r} must be a hexadecimal commit id")
    res = await guest.run(["sh", "-c", EXPORT, "sh", guest_path, base_commit or ""])
    if res.returncode == 3:
        raise NotFound(f"{res.err_tail}; run `banger vm workspace prepare VM PATH` first")
    if res.returncode == 4:
        raise BadRequest(f"{res.err_tail}; pass a commit the guest checkout has")
    if res.returncode != 0:
        raise OperationFailed(f"export failed in {guest.description}: {res.err_tail}")
    header, sep, rest = res.stdout.partition(b"\n")
    parts = header.split()
    if not sep or len(parts) != 2 or not parts[0].isdigit():
        raise OperationFailed(f"export from {guest.description} returned malformed output")
    n = int(parts[0])
    return ExportResult(
        guest_path=guest_path,
        base_commit=parts[1].decode(),
        files=parse_name_status(rest[:n]),
        patch=rest[n:],
    )

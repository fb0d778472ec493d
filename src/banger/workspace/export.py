"""Export: a binary git patch of the guest checkout against a base commit, read-only.

The guest's own index is never touched: a temporary index (seeded from a copy of the real one so
unchanged files keep their stat cache) is loaded with the base tree, `git add -A` stages the
work tree into it, and `git diff --cached --binary` against the base is the patch. Only new blob
objects are written to the guest's object store, as `git status` would.

The guest's output is untrusted and may be huge: it is read in bounded chunks (`stream_export`),
split by `ExportReader`, and refused past a byte limit (config `workspace_export_max_bytes`)
without ever being held whole: the CLI writes the chunks to a staged file, the daemon's inline
RPC answer collects them up to a smaller cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable

from pydantic import BaseModel

from banger.errors import BangerError, InvalidInput, NotFound, OperationFailed
from banger.units import format_bytes
from banger.workspace.transport import DEFAULT_TIMEOUT, GuestExec, kill_group

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


class ExportMeta(BaseModel):
    """Everything about an export but the patch bytes (those went to the caller's sink)."""

    guest_path: str
    base_commit: str
    files: list[ChangedFile]
    patch_bytes: int


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
    try:
        while i < len(fields):
            status = fields[i]
            kind = status[:1]
            if kind in ("R", "C"):
                score = int(status[1:]) if status[1:].isdigit() else None
                out.append(
                    ChangedFile(
                        status=kind, old_path=fields[i + 1], path=fields[i + 2], score=score
                    )
                )
                i += 3
            else:
                out.append(ChangedFile(status=kind, path=fields[i + 1]))
                i += 2
    except IndexError:
        raise OperationFailed("export returned a truncated list of changed files") from None
    return out


_SHA = re.compile(r"^[0-9a-f]{4,64}$")
_FULL_SHA = re.compile(rb"^[0-9a-f]{40}([0-9a-f]{24})?$")
# The header is "<names length> <base commit>\n": a guest that sends more without a newline is
# not running our script.
HEADER_MAX = 128
CHUNK = 64 * 1024
# Config key that bounds an export (named in the error a too-large patch gets).
LIMIT_KEY = "workspace_export_max_bytes"


def check_base_commit(base_commit: str | None) -> None:
    if base_commit is not None and not _SHA.match(base_commit):
        raise InvalidInput(f"base commit {base_commit!r} must be a hexadecimal commit id")


class ExportTooLarge(OperationFailed):
    """The guest's changes exceed the byte limit; nothing was written."""


class ExportReader:
    """Splits the export script's stdout as it arrives: header, name-status records, patch.

    `feed` returns the patch bytes of each chunk; names and patch together may be at most
    `max_bytes` (`limit` names that bound in the error), so a hostile guest cannot make the
    reader hold more than that.
    """

    def __init__(self, max_bytes: int, limit: str) -> None:
        self.max_bytes = max_bytes
        self.limit = limit
        self._head = bytearray()
        self._names = bytearray()
        self._names_len: int | None = None
        self.base_commit = ""
        self.total = 0  # names + patch bytes seen
        self.patch_bytes = 0

    def _count(self, n: int) -> None:
        self.total += n
        if self.total > self.max_bytes:
            raise ExportTooLarge(
                f"the guest's changes are larger than {self.limit}; nothing was written"
            )

    def feed(self, data: bytes) -> bytes:
        if self._names_len is None:
            self._head += data
            nl = self._head.find(b"\n")
            if nl < 0:
                if len(self._head) > HEADER_MAX:
                    raise OperationFailed("export returned malformed output (no header line)")
                return b""
            parts = bytes(self._head[:nl]).split()
            if len(parts) != 2 or not parts[0].isdigit() or not _FULL_SHA.match(parts[1]):
                raise OperationFailed("export returned malformed output (bad header line)")
            self._names_len = int(parts[0])
            self.base_commit = parts[1].decode()
            data = bytes(self._head[nl + 1 :])
            self._head.clear()
            # Refuse a names list over the limit before reading any of it.
            if self._names_len > self.max_bytes:
                self._count(self._names_len)
        need = self._names_len - len(self._names)
        if need > 0:
            take = data[:need]
            self._count(len(take))
            self._names += take
            data = data[need:]
        if data:
            self._count(len(data))
            self.patch_bytes += len(data)
        return data

    def files(self) -> list[ChangedFile]:
        if self._names_len is None or len(self._names) != self._names_len:
            raise OperationFailed("export returned malformed output (truncated)")
        return parse_name_status(bytes(self._names))


def _status_error(returncode: int, err_tail: str, description: str) -> BangerError:
    if returncode == 3:
        return NotFound(f"{err_tail}; prepare the workspace first")
    if returncode == 4:
        return InvalidInput(f"{err_tail}; pass a commit the guest checkout has")
    return OperationFailed(f"export failed in {description}: {err_tail}")


# How much of a failing guest command's stderr an error quotes.
TAIL_CHARS = 400


class _Tail:
    """The last few KiB of a stream (a guest's stderr may be endless)."""

    def __init__(self, keep: int = 8192) -> None:
        self.keep = keep
        self.data = bytearray()

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        if len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]

    def text(self) -> str:
        lines = self.data.decode(errors="replace").strip().splitlines()[-3:]
        text = " | ".join(lines) or "(no output)"
        return text if len(text) <= TAIL_CHARS else "…" + text[-TAIL_CHARS:]


def export_argv(guest_path: str, base_commit: str | None) -> list[str]:
    return ["sh", "-c", EXPORT, "sh", guest_path, base_commit or ""]


async def _discard(stream: asyncio.StreamReader) -> None:
    while await stream.read(CHUNK):
        pass


async def stream_export(
    guest: GuestExec,
    guest_path: str,
    base_commit: str | None,
    sink: Callable[[bytes], None],
    *,
    max_bytes: int,
    limit: str,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> ExportMeta:
    """Run the export in the guest and hand the patch to `sink` in chunks of at most CHUNK bytes.

    Past `max_bytes` (names + patch) the guest command is killed and ExportTooLarge raised; the
    caller discards what the sink got. Memory stays at a chunk plus the names list.
    """
    check_base_commit(base_commit)
    proc = await guest.spawn(export_argv(guest_path, base_commit))
    assert proc.stdout is not None and proc.stderr is not None
    reader = ExportReader(max_bytes, limit)
    err = _Tail()

    async def drain_stderr(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(CHUNK):
            err.add(chunk)

    async def pump(stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(CHUNK):
            patch = reader.feed(chunk)
            if patch:
                sink(patch)
        await proc.wait()

    errs = asyncio.create_task(drain_stderr(proc.stderr))
    try:
        await asyncio.wait_for(pump(proc.stdout), timeout)
        await errs
    except TimeoutError:
        raise OperationFailed(
            f"export in {guest.description} timed out after {timeout:.0f}s"
        ) from None
    finally:
        # A pump stopped mid-stream (the size limit) leaves stdout paused with data in it, and
        # asyncio's wait() returns only once the pipes are closed: read it to its end meanwhile.
        rest = asyncio.create_task(_discard(proc.stdout))
        await kill_group(proc)  # a no-op kill when it finished; always reaped
        rest.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await rest
        errs.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await errs
    failed = guest.transport_failure(proc.returncode or 0, err.text())
    if failed is not None:
        raise failed
    if proc.returncode != 0:
        raise _status_error(proc.returncode or 0, err.text(), guest.description)
    return ExportMeta(
        guest_path=guest_path,
        base_commit=reader.base_commit,
        files=reader.files(),
        patch_bytes=reader.patch_bytes,
    )


def limit_text(max_bytes: int, key: str = LIMIT_KEY) -> str:
    """How an export limit is named in errors: the config key and its value."""
    return (
        f"{key} = {max_bytes} ({format_bytes(max_bytes)}); raise it in the daemon's config.toml "
        "(docs/config.md) to export more"
    )


async def export(
    guest: GuestExec,
    guest_path: str,
    base_commit: str | None,
    *,
    max_bytes: int = 1 << 30,
    limit: str | None = None,
) -> ExportResult:
    """The whole patch in memory (the daemon's inline answer and tests): at most `max_bytes`."""
    chunks: list[bytes] = []
    meta = await stream_export(
        guest,
        guest_path,
        base_commit,
        chunks.append,
        max_bytes=max_bytes,
        limit=limit or limit_text(max_bytes),
    )
    return ExportResult(
        guest_path=meta.guest_path,
        base_commit=meta.base_commit,
        files=meta.files,
        patch=b"".join(chunks),
    )

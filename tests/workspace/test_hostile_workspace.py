"""Hostile workspace input: RPC params, host checkouts, and guest output.

Three tables, one pytest case per row:
- RPC params sent to a real daemon (`vm.workspace.prepare|export`): each is refused with the
  exact code before the VM is even looked up, the daemon still answers `ping`, and a sentinel
  directory outside the state dir is untouched.
- Host checkouts built to leak (symlinks out of the repo, a `.git` file leading to another
  repository, huge names) shipped with real git and tar into a local guest directory: nothing
  from outside the checkout reaches the guest.
- Guest output a hostile guest could send back to an export (endless header, huge name list,
  endless patch, endless stderr): real processes stand in for the guest's shell, the real
  reader refuses each with a bounded error and kills the guest command.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from banger.errors import BangerError, InvalidInput, OperationFailed
from banger.rpc.errmap import to_rpc
from banger.rpc.errors import RPCError
from banger.workspace.export import ExportTooLarge, export
from banger.workspace.plan import PrepareOptions, make_plan
from banger.workspace.ship import prepare
from banger.workspace.transport import LocalGuestExec
from tests.conftest import BangerEnv, _stop_daemon, make_env
from tests.workspace.conftest import git, tree_of

SECRET = b"host secret: must never reach a guest\n"


@pytest.fixture
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A directory outside every state dir, with a secret file; checked after each case."""
    d = tmp_path_factory.mktemp("outside")
    (d / "secret.txt").write_bytes(SECRET)
    os.chmod(d / "secret.txt", 0o600)
    os.chmod(d, 0o700)
    yield d


def _snapshot(root: Path) -> list[tuple[str, int, bytes]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = p.read_bytes() if stat.S_ISREG(st.st_mode) else b""
            out.append((str(p), stat.S_IMODE(st.st_mode), data))
    return sorted(out)


# --- RPC params, against a real daemon ----------------------------------------------------------


@dataclass(frozen=True)
class RPCCase:
    id: str
    method: str
    params: dict[str, Any]
    code: str
    says: str


LONG = "/root/" + "a" * 5000
RPC_CASES = [
    RPCCase(
        "export-guest-path-traversal",
        "vm.workspace.export",
        {"vm": "ghost", "guest_path": "/root/../../etc"},
        "bad_request",
        "guest path '/root/../../etc' must be a normalised absolute path below /",
    ),
    RPCCase(
        "export-guest-path-nul",
        "vm.workspace.export",
        {"vm": "ghost", "guest_path": "/root/re\0po"},
        "bad_request",
        "parameter 'guest_path': must not contain a NUL byte",
    ),
    RPCCase(
        "export-guest-path-overlong",
        "vm.workspace.export",
        {"vm": "ghost", "guest_path": LONG},
        "bad_request",
        "parameter 'guest_path': String should have at most 4096 characters",
    ),
    RPCCase(
        "export-guest-path-lone-surrogate",
        "vm.workspace.export",
        {"vm": "ghost", "guest_path": "/root/\udc80"},
        "bad_request",
        "parameter 'guest_path': Input should be a valid string",
    ),
    RPCCase(
        "export-base-commit-nul",
        "vm.workspace.export",
        {"vm": "ghost", "base_commit": "abcd\0ef"},
        "bad_request",
        "parameter 'base_commit': must not contain a NUL byte",
    ),
    RPCCase(
        "export-unknown-transfer",
        "vm.workspace.export",
        {"vm": "ghost", "transfer": "scp"},
        "bad_request",
        "transfer",
    ),
    RPCCase(
        "prepare-host-path-nul",
        "vm.workspace.prepare",
        {"vm": "ghost", "path": "/tmp/re\0po"},
        "bad_request",
        "parameter 'path': must not contain a NUL byte",
    ),
    RPCCase(
        "prepare-host-path-relative",
        "vm.workspace.prepare",
        {"vm": "ghost", "path": "../../etc"},
        "bad_request",
        "parameter 'path': must be an absolute path, got '../../etc'",
    ),
    RPCCase(
        "prepare-guest-path-system-dir",
        "vm.workspace.prepare",
        {"vm": "ghost", "path": "/tmp", "guest_path": "/etc"},
        "bad_request",
        "would replace a system directory",
    ),
    RPCCase(
        "prepare-guest-path-proc",
        "vm.workspace.prepare",
        {"vm": "ghost", "path": "/tmp", "guest_path": "/proc/self/root"},
        "bad_request",
        "which banger or the guest system owns",
    ),
]


@pytest.fixture(scope="module")
def daemon_env() -> Iterator[BangerEnv]:
    be = make_env("bghw-")
    be.banger("daemon", "start", check=True, timeout=30)
    yield be
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.mark.parametrize("case", RPC_CASES, ids=[c.id for c in RPC_CASES])
def test_hostile_rpc_params(case: RPCCase, daemon_env: BangerEnv, sentinel: Path) -> None:
    before = _snapshot(sentinel)
    with daemon_env.client() as c:
        with pytest.raises(RPCError) as e:
            c.call(case.method, case.params)
        assert e.value.code == case.code
        assert case.says in e.value.message
        # Refused on its params: the (missing) VM was never looked up.
        assert "ghost" not in e.value.message
    with daemon_env.client() as c:
        assert c.call("ping")["pid"] > 0
    assert _snapshot(sentinel) == before


# --- host checkouts, shipped into a local guest -------------------------------------------------


def _repo(root: Path) -> Path:
    r = root / "host" / "proj"
    r.mkdir(parents=True)
    git(r, "init", "-q", "-b", "main")
    (r / "README.md").write_text("hello\n")
    (r / "conf").mkdir()
    (r / "conf" / "app.ini").write_text("x=1\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "base")
    return r


def _symlink_file_out(r: Path, outside: Path) -> None:
    (r / "leak").symlink_to(outside / "secret.txt")
    git(r, "add", "leak")
    git(r, "commit", "-qm", "a symlink out of the tree")


def _symlink_dir_out(r: Path, outside: Path) -> None:
    # `conf/app.ini` is tracked; `conf` becomes a symlink to the outside directory, where a file
    # of the same name holds the secret: tar must not read through it.
    (outside / "app.ini").write_bytes(SECRET)
    shutil.rmtree(r / "conf")
    (r / "conf").symlink_to(outside)


def _dotgit_elsewhere(r: Path, outside: Path) -> None:
    other = outside / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    (other / "private.txt").write_bytes(SECRET)
    git(other, "add", "-A")
    git(other, "commit", "-qm", "private history")
    shutil.rmtree(r / ".git")
    (r / ".git").write_text(f"gitdir: {other / '.git'}\n")


def _dotgit_symlink_elsewhere(r: Path, outside: Path) -> None:
    _dotgit_elsewhere(r, outside)
    (r / ".git").unlink()
    (r / ".git").symlink_to(outside / "other" / ".git")


def _huge_names(r: Path, outside: Path) -> None:
    deep = r
    for i in range(14):  # 14 levels of 250-byte names: a ~3.5 KB path
        deep = deep / (f"{i:02d}" + "d" * 248)
    deep.mkdir(parents=True)
    (deep / ("f" * 255)).write_text("deep\n")
    (r / ("n" * 255)).write_text("long name\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "huge names")
    (r / ("u" * 255)).write_text("uncommitted, with a long name\n")
    git(r, "add", "-A")


@dataclass(frozen=True)
class RepoCase:
    id: str
    build: Callable[[Path, Path], None]
    mode: str = "overlay"
    refused: str | None = None  # the BadRequest message fragment, when refused
    symlinks: dict[str, str] = field(default_factory=dict)  # guest path -> link target


REPO_CASES = [
    RepoCase("tracked-symlink-out-of-tree", _symlink_file_out, symlinks={"leak": "secret.txt"}),
    RepoCase(
        "tracked-symlink-out-of-tree-full-copy",
        _symlink_file_out,
        mode="full_copy",
        symlinks={"leak": "secret.txt"},
    ),
    RepoCase("tracked-dir-replaced-by-symlink-out", _symlink_dir_out),
    RepoCase(
        "tracked-dir-replaced-by-symlink-out-full-copy",
        _symlink_dir_out,
        mode="full_copy",
        symlinks={"conf": ""},
    ),
    RepoCase(
        "dotgit-file-to-another-repo",
        _dotgit_elsewhere,
        refused="is a file leading to",
    ),
    RepoCase(
        "dotgit-symlink-to-another-repo",
        _dotgit_symlink_elsewhere,
        refused="is a symlink leading to",
    ),
    RepoCase("huge-file-names", _huge_names),
]


def _guest_bytes(root: Path) -> bytes:
    """Every regular file's bytes under `root` (symlinks not followed)."""
    out = bytearray()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            p = Path(dirpath) / name
            if p.is_file() and not p.is_symlink():
                out += p.read_bytes()
    return bytes(out)


@pytest.mark.parametrize("case", REPO_CASES, ids=[c.id for c in REPO_CASES])
async def test_hostile_checkout(case: RepoCase, tmp_path: Path, sentinel: Path) -> None:
    repo = _repo(tmp_path)
    case.build(repo, sentinel)
    before = _snapshot(sentinel)
    guest = LocalGuestExec(tmp_path / "guest")
    gp = guest.root / "root" / "repo"
    opts = PrepareOptions(guest_path=str(gp), mode=case.mode)  # type: ignore[arg-type]
    if case.refused is not None:
        with pytest.raises(InvalidInput, match=case.refused) as e:
            plan, _ = await asyncio.to_thread(make_plan, repo, opts)
        assert to_rpc(e.value).code == "bad_request"
        assert not gp.exists()
    else:
        plan, _ = await asyncio.to_thread(make_plan, repo, opts)
        await prepare(guest, plan)
        for rel, target in case.symlinks.items():
            assert (gp / rel).is_symlink()
            assert os.readlink(gp / rel).endswith(target)
        if case.id.startswith("huge"):
            assert tree_of(gp) == tree_of(repo)
            # The guest changes something deep down; the export carries it back exactly.
            deep = next(p for p in gp.rglob("f" * 255))
            deep.write_text("changed in the guest\n")
            result = await export(guest, str(gp), None)
            got = sorted((f.status, f.path) for f in result.files)
            assert got == [("A", "u" * 255), ("M", str(deep.relative_to(gp)))]
    assert SECRET not in _guest_bytes(guest.root)
    assert _snapshot(sentinel) == before


# --- guest output a hostile guest could send -----------------------------------------------------


class HostileGuest(LocalGuestExec):
    """A guest whose shell answers the export with `script` instead of running it."""

    def __init__(self, root: Path, script: str) -> None:
        super().__init__(root)
        self.script = script

    async def spawn(self, argv: Sequence[str]) -> asyncio.subprocess.Process:
        return await super().spawn(["sh", "-c", self.script])


SHA = "a" * 40


@dataclass(frozen=True)
class OutputCase:
    id: str
    script: str
    error: type[BangerError]
    says: str


OUTPUT_CASES = [
    OutputCase(
        "endless-header-without-newline",
        "yes x | tr -d '\\n'",
        OperationFailed,
        "export returned malformed output (no header line)",
    ),
    OutputCase(
        "header-not-a-commit",
        "printf '0 $(touch /tmp/pwned)\\n'",
        OperationFailed,
        "export returned malformed output (bad header line)",
    ),
    OutputCase(
        "name-list-longer-than-the-limit",
        f"printf '99999999999999 {SHA}\\n'; yes",
        ExportTooLarge,
        "the guest's changes are larger than workspace_export_max_bytes = 1048576",
    ),
    OutputCase(
        "endless-patch",
        f"printf '0 {SHA}\\n'; yes 'diff --git a/x b/x'",
        ExportTooLarge,
        "nothing was written",
    ),
    OutputCase(
        "truncated-name-list",
        f"printf '100 {SHA}\\nM\\0a'",
        OperationFailed,
        "export returned malformed output (truncated)",
    ),
    OutputCase(
        "endless-stderr-then-failure",
        "head -c 20000000 /dev/zero | tr '\\0' 'e' >&2; echo last words >&2; exit 1",
        OperationFailed,
        "…eeee",
    ),
]


@pytest.mark.parametrize("case", OUTPUT_CASES, ids=[c.id for c in OUTPUT_CASES])
async def test_hostile_guest_output(case: OutputCase, tmp_path: Path, sentinel: Path) -> None:
    before = _snapshot(sentinel)
    guest = HostileGuest(tmp_path / "guest", case.script)
    got: list[int] = []
    run: Awaitable[object] = _export_to(guest, got)
    with pytest.raises(case.error) as e:
        await asyncio.wait_for(run, 60)
    assert to_rpc(e.value).code == "operation_failed"
    assert case.says in e.value.message
    assert len(e.value.message) < 1000  # the guest cannot flood the error either
    assert "last words" in e.value.message or case.id != "endless-stderr-then-failure"
    assert sum(got) <= 1 << 20  # never more than the limit handed on
    assert not Path("/tmp/pwned").exists()
    assert _snapshot(sentinel) == before


async def _export_to(guest: HostileGuest, got: list[int]) -> object:
    from banger.workspace.export import limit_text, stream_export

    return await stream_export(
        guest,
        str(guest.root / "repo"),
        None,
        lambda chunk: got.append(len(chunk)),
        max_bytes=1 << 20,
        limit=limit_text(1 << 20),
    )

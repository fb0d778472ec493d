"""`vm workspace export` streaming: the CLI's side against a real sshd standing in for the guest.

The CLI asks the daemon where the workspace is (`transfer: "ssh"`) and streams the patch from the
guest itself in 64 KiB chunks into a staged file; these tests drive that layer (`fetch_patch`)
with real OpenSSH and real git, and measure the memory of a real process doing it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from banger.errors import OperationFailed
from banger.guest.ssh import SSHTarget
from banger.rpc.errmap import to_rpc
from banger.workspace.export import ExportTooLarge, export
from banger.workspace.transport import LocalGuestExec, SSHGuestExec
from tests.workspace.conftest import git

FETCH = """
import json, sys
from pathlib import Path
from banger.cli.workspace import StagedOutput, fetch_patch
info = json.loads(sys.argv[1])
with StagedOutput(Path(sys.argv[2])) as stage:
    result = fetch_patch(info, stage)
    stage.commit()
print(json.dumps(result))
"""


def _guest_repo(root: Path, big_mib: int) -> Path:
    """A committed repository with `big_mib` MiB of new, uncommitted text in it."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("base\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    if big_mib:
        line = (b"0123456789abcdef" * 6) + b"\n"  # 97 bytes
        with open(repo / "big.txt", "wb") as f:
            for i in range((big_mib << 20) // len(line)):
                f.write(b"%08d" % i + line)
    return repo


def _info(target: SSHTarget, repo: Path, max_bytes: int) -> dict[str, object]:
    return {
        "vm": target.vm_name,
        "guest_path": str(repo),
        "base_commit": None,
        "max_bytes": max_bytes,
        "ssh": target.to_json(),
    }


def _fetch_in_child(info: dict[str, object], out: Path) -> tuple[int, int, str]:
    """(exit status, peak RSS in KiB, stdout) of a real process fetching the patch."""
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", FETCH, json.dumps(info), str(out)], stdout=stdout, stderr=stderr
        )
        _pid, status, usage = os.wait4(proc.pid, 0)
        stdout.seek(0)
        stderr.seek(0)
        code = os.waitstatus_to_exitcode(status)
        assert code == 0, stderr.read().decode()
        return code, int(usage.ru_maxrss), stdout.read().decode()


def test_a_large_patch_streams_through_bounded_memory(
    sshd_target: SSHTarget, tmp_path: Path
) -> None:
    small_repo = _guest_repo(tmp_path / "small", 0)
    big_repo = _guest_repo(tmp_path / "big", 64)
    _code, small_rss, _out = _fetch_in_child(
        _info(sshd_target, small_repo, 1 << 30), tmp_path / "small.patch"
    )
    _code, big_rss, out = _fetch_in_child(
        _info(sshd_target, big_repo, 1 << 30), tmp_path / "big.patch"
    )
    patch = (tmp_path / "big.patch").read_bytes()
    assert len(patch) > 64 << 20
    result = json.loads(out)
    assert result["patch_bytes"] == len(patch)
    assert result["files"] == [{"status": "A", "path": "big.txt", "old_path": None, "score": None}]
    # The same bytes the whole-in-memory export gives (run here, on the same repository).
    import asyncio

    whole = asyncio.run(export(LocalGuestExec(tmp_path / "big"), str(big_repo), None))
    assert whole.patch == patch
    # Peak memory of the fetching process grows by far less than the 64 MiB patch: it holds a
    # 64 KiB chunk at a time (16 MiB of slack covers allocator and pipe-buffer noise).
    assert big_rss - small_rss < 16 * 1024, (small_rss, big_rss)


async def test_over_the_limit_fails_clearly_and_writes_nothing(
    sshd_target: SSHTarget, tmp_path: Path
) -> None:
    from banger.cli.workspace import StagedOutput, fetch_patch

    repo = _guest_repo(tmp_path / "g", 2)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    old = out_dir / "old.patch"
    old.write_bytes(b"previous patch\n")
    for target in (out_dir / "new.patch", old):
        with StagedOutput(target) as stage, pytest.raises(ExportTooLarge) as e:
            await asyncio_to_thread(fetch_patch, _info(sshd_target, repo, 1 << 20), stage)
        assert to_rpc(e.value).code == "operation_failed"
        assert e.value.message == (
            "the guest's changes are larger than workspace_export_max_bytes = 1048576 "
            "(1.0 MiB); raise it in the daemon's config.toml (docs/config.md) to export more; "
            "nothing was written"
        )
        assert sorted(p.name for p in out_dir.iterdir()) == ["old.patch"]
    assert old.read_bytes() == b"previous patch\n"


async def asyncio_to_thread(fn: object, *args: object) -> object:
    # fetch_patch runs its own event loop (asyncio.run), as the CLI does: keep it off this one.
    import asyncio

    return await asyncio.to_thread(fn, *args)  # type: ignore[arg-type]


async def test_the_daemons_inline_export_stops_reading_at_its_cap(
    sshd_target: SSHTarget, tmp_path: Path
) -> None:
    repo = _guest_repo(tmp_path / "g", 4)
    with pytest.raises(ExportTooLarge, match="larger than the 1 MiB cap"):
        await export(
            SSHGuestExec(sshd_target), str(repo), None, max_bytes=1 << 20, limit="the 1 MiB cap"
        )
    # A guest that is not there is the transport's failure, not a patch.
    gone = SSHTarget(
        "127.0.0.1", 1, "root", sshd_target.key_path, sshd_target.known_hosts_path, "x"
    )
    with pytest.raises(OperationFailed, match="ssh to vm x failed"):
        await export(SSHGuestExec(gone), str(repo), None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, 1 << 30), ('"2G"', 2 << 30), ("1048576", 1 << 20), ('"512M"', 512 << 20)],
)
def test_the_export_limit_is_a_config_key(tmp_path: Path, value: str | None, expected: int) -> None:
    from banger.config import load_config

    cfg = tmp_path / "config.toml"
    cfg.write_text("" if value is None else f"workspace_export_max_bytes = {value}\n")
    assert load_config(cfg).workspace_export_max_bytes == expected


@pytest.mark.parametrize("value", ["0", '"lots"', "-1", '"1e99"'])
def test_a_bad_export_limit_names_the_key(tmp_path: Path, value: str) -> None:
    from banger.config import ConfigError, load_config

    cfg = tmp_path / "config.toml"
    cfg.write_text(f"workspace_export_max_bytes = {value}\n")
    with pytest.raises(ConfigError, match="workspace_export_max_bytes"):
        load_config(cfg)

"""The SSH GuestExec against a real OpenSSH server on 127.0.0.1 (no VM needed).

Runs the same prepare → edit → export round trip as the local tests, but every guest command
and every byte of history and overlay goes through banger's ssh argv and a real sshd.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from banger.guest.ssh import SSHTarget
from banger.workspace.export import export
from banger.workspace.plan import PrepareOptions, make_plan
from banger.workspace.ship import prepare
from banger.workspace.transport import SSHGuestExec
from tests.workspace.conftest import git, tree_of


@pytest.mark.parametrize("multiplex", [False, True])
async def test_round_trip_over_real_ssh(
    repo: Path, tmp_path: Path, sshd_target: SSHTarget, multiplex: bool
) -> None:
    guest = SSHGuestExec(sshd_target)
    if multiplex:
        async with guest:
            assert guest._control_dir is not None
            control = Path(guest._control_dir)
            assert (control / "m").is_socket()
            await _round_trip(guest, repo, tmp_path)
        assert not control.exists()  # master stopped, socket dir gone
    else:
        await _round_trip(guest, repo, tmp_path)


async def _round_trip(guest: SSHGuestExec, repo: Path, tmp_path: Path) -> None:
    gp = tmp_path / "over ssh" / "repo"  # a space: the remote line must be quoted right
    plan, _ = make_plan(repo, PrepareOptions(guest_path=str(gp), include_untracked=True))
    result = await prepare(guest, plan)
    assert result.base_commit == git(repo, "rev-parse", "HEAD").strip()
    assert tree_of(gp) == tree_of(repo)
    (gp / "src" / "app.py").write_text("print('over ssh')\n")
    (gp / "notes.txt").unlink()
    (gp / "new.bin").write_bytes(b"\0\1\2" * 500)
    exported = await export(guest, str(gp), result.base_commit)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    git(clone, "checkout", "-q", str(result.base_commit))
    git(clone, "apply", "--index", input=exported.patch)
    assert tree_of(clone) == tree_of(gp)


async def test_ssh_failure_is_reported_not_mistaken_for_exit_status(
    sshd_target: SSHTarget, tmp_path: Path
) -> None:
    from banger.errors import OperationFailed

    wrong = SSHTarget(
        sshd_target.host, sshd_target.port, "root", sshd_target.key_path,
        tmp_path / "empty_known_hosts", "wsfake",
    )  # fmt: skip
    with pytest.raises(OperationFailed, match="ssh to vm wsfake failed"):
        await SSHGuestExec(wrong).run(["true"])
    res = await SSHGuestExec(sshd_target).run(["sh", "-c", "exit 7"])
    assert res.returncode == 7

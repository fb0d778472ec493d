"""banger.proc: a timed-out or cancelled child is killed and reaped, never left running."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from banger import proc
from banger.errors import OperationFailed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _live_children() -> set[int]:
    return {
        p.pid
        for p in psutil.Process().children(recursive=True)
        if p.status() != psutil.STATUS_ZOMBIE
    }


def test_timeout_kills_the_child() -> None:
    before = _live_children()
    with pytest.raises(OperationFailed, match="sleep timed out"):
        asyncio.run(proc.run(["sleep", "30"], timeout=0.3))
    # Killed and reaped, with its guard: nothing new of ours is left running.
    assert _live_children() - before == set()


def test_cancellation_kills_and_reaps_the_child() -> None:
    async def scenario() -> int:
        child = await asyncio.create_subprocess_exec("sleep", "30")
        task = asyncio.create_task(proc.communicate(child, None, 60))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert child.returncode is not None  # reaped, not a zombie
        return child.pid

    assert not _alive(asyncio.run(scenario()))


def test_output_and_failure() -> None:
    r = asyncio.run(proc.run(["sh", "-c", "echo out; echo err >&2"]))
    assert (r.out, r.err) == ("out\n", "err\n")
    with pytest.raises(OperationFailed, match="sh exited 3: boom"):
        asyncio.run(proc.run(["sh", "-c", "echo boom >&2; exit 3"]))


# --- tool children die with banger (procguard) -------------------------------------------------

_PARENT = r"""
import asyncio, sys
from banger import proc
async def main():
    child = await proc.spawn(sys.argv[1:], stdout=None, stderr=None)
    print(child.pid, flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def _tree(root: int) -> list[int]:
    """Live (non-zombie) processes in `root`'s process group or descending from it."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            continue
        if int(fields[2]) == root or int(entry) == root:
            out.append(int(entry))
    return out


def _wait_for(cond: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def _faked_children(guard: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")]
        fields = stat.rsplit(b")", 1)[1].split()
        if comm.startswith(b"faked") and int(fields[1]) == guard and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return found


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["sh", "-c", "sleep 600 & sleep 600"], id="shell-with-background-child"),
        pytest.param(
            [
                "fakeroot",
                "--",
                sys.executable,
                "-c",
                "import subprocess; subprocess.Popen(['sleep', '600']).wait()",
            ],
            id="fakeroot-grandchild-and-faked",
        ),  # fmt: skip
    ],
)
def test_kill_9_of_banger_kills_the_whole_tool_tree(argv: list[str]) -> None:
    """The daemon's `kill -9` reaches grandchildren (fakeroot's shell -> builder -> tool) and a
    faked that daemonized into its own session: nothing of the tool outlives banger."""
    _kill_parent_and_check(argv)


def test_kill_9_kills_the_image_builder_waiting_under_fakeroot(tmp_path: Path) -> None:
    """The issue's case: `fakeroot -- python -m banger.images.build` waiting for a layer that
    will never arrive (it watched its parent pid, fakeroot's shell, for up to an hour)."""
    spec = tmp_path / "spec.json"
    spec.write_text(
        json.dumps(
            {
                "layers": [{"path": str(tmp_path / "never"), "name": "sha256:never"}],
                "tree": str(tmp_path / "tree"),
                "out": str(tmp_path / "rootfs.ext4"),
            }
        )
    )
    _kill_parent_and_check(
        ["fakeroot", "--", sys.executable, "-m", "banger.images.build", str(spec)]
    )


def _kill_parent_and_check(argv: list[str]) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, *argv], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        guard = int(parent.stdout.readline())
        _wait_for(lambda: len(_tree(guard)) >= 3, f"the tool tree never started: {_tree(guard)}")
        if argv[0] == "fakeroot":
            _wait_for(lambda: _faked_children(guard), "faked was not re-parented to the guard")
        faked = _faked_children(guard)
        victims = _tree(guard) + faked
    finally:
        parent.kill()
        parent.wait()
    _wait_for(
        lambda: not [p for p in victims if _alive_not_zombie(p)],
        f"tool processes outlived banger: {[p for p in victims if _alive_not_zombie(p)]}",
    )


def _alive_not_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat.rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")


def test_timeout_kills_grandchildren_too() -> None:
    marker = "7183"
    with pytest.raises(OperationFailed, match="timed out"):
        asyncio.run(proc.run(["sh", "-c", f"sleep {marker}0 & sleep {marker}1"], timeout=0.5))
    ps = subprocess.run(["ps", "-eo", "stat,args"], capture_output=True, text=True).stdout
    assert not [ln for ln in ps.splitlines() if f"sleep {marker}" in ln and not ln.startswith("Z")]


def test_missing_tool_is_file_not_found_and_exit_status_is_kept() -> None:
    with pytest.raises(FileNotFoundError):
        proc.run_sync(["banger-no-such-tool"])
    assert proc.run_sync(["sh", "-c", "exit 5"], check=False).returncode == 5
    assert proc.run_sync(["sh", "-c", "kill -TERM $$"], check=False).returncode == -15

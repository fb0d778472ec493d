"""banger.proc: a timed-out or cancelled child is killed and reaped, never left running."""

from __future__ import annotations

import ast
import asyncio
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from banger import proc
from banger.errors import OperationFailed
from tests.waiting import async_wait_until, wait_until


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
        await async_wait_until(
            lambda: inspect.getcoroutinestate(task.get_coro()) == inspect.CORO_SUSPENDED,  # type: ignore[arg-type]
            10,
            "communicate waiting on the child",
        )
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
    await asyncio.sleep(600)  # "banger" hangs on purpose until the test kills it
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
        wait_until(lambda: len(_tree(guard)) >= 3, 20, "the tool tree starting")
        if argv[0] == "fakeroot":
            wait_until(lambda: _faked_children(guard), 20, "faked re-parented to the guard")
        faked = _faked_children(guard)
        victims = _tree(guard) + faked
    finally:
        parent.kill()
        parent.wait()
    wait_until(
        lambda: not [p for p in victims if _alive_not_zombie(p)],
        20,
        f"every tool process of {victims} ending with banger",
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


# --- long-lived children that outlive banger (VMMs) -------------------------------------------

_UNGUARDED_PARENT = r"""
import asyncio, subprocess, sys
from banger import proc
async def main():
    if sys.argv[1] == "spawn":
        child = await proc.spawn(["sleep", "600"], guarded=False, stdout=None, stderr=None)
        pid = child.pid
    else:
        pid = proc.popen(["sleep", "600"], guarded=False, stdin=subprocess.DEVNULL).pid
    print(pid, flush=True)
    await asyncio.sleep(600)  # "banger" hangs on purpose until the test kills it
asyncio.run(main())
"""


@pytest.mark.parametrize("how", ["spawn", "popen"])
def test_unguarded_child_outlives_banger_in_a_session_of_its_own(how: str) -> None:
    """A VMM is spawned with guarded=False: the daemon's `kill -9` must not take it along (the
    next daemon re-adopts it), and it is out of reach of the daemon's process group signals."""
    parent = subprocess.Popen(
        [sys.executable, "-c", _UNGUARDED_PARENT, how], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert os.getsid(child) == child  # its own session: no lifeline, no shared signals
    finally:
        parent.kill()
        parent.wait()
    try:
        # The parent is gone and reaped; the VMM-like child is still running (not a zombie:
        # it was re-parented and keeps going).
        assert _alive_not_zombie(child)
        assert Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"600"]
    finally:
        os.kill(child, 9)
    wait_until(lambda: not _alive_not_zombie(child), 10, f"the test's sleep {child} ending")


def test_guarded_spawn_is_the_default_and_a_shell_is_refused() -> None:
    async def scenario() -> None:
        child = await proc.spawn(["sleep", "30"], stdout=None, stderr=None)
        try:
            # The handle is the guard's: procguard sits between banger and the tool.
            cmdline = Path(f"/proc/{child.pid}/cmdline").read_bytes()
            assert b"procguard.py" in cmdline
        finally:
            proc.kill_tree(child)
            await child.wait()

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="never runs a shell"):
        proc.popen(["true"], shell=True)


# --- nothing else starts processes ---------------------------------------------------------------

SRC = Path(__file__).resolve().parents[1] / "src" / "banger"
# Modules that may start processes themselves, and why.
ALLOWED = {
    "proc.py": "the one place processes are started",
    "procguard.py": "the guard forks and execs the tool it guards",
    # Client side, where proc does not fit:
    "client/local.py": "auto-starts bangerd, which must outlive the CLI and whose pid it matches",
    "cli/vm_run.py": "runs an interactive ssh on the user's terminal (a guard's session has none)",
    "cli/vm.py": "`vm ssh` execs ssh in place of the CLI: nothing is left to guard",
    "sdk/remote.py": "the SDK's asyncio ssh pipes in the user's program, in its process group",
}
_SUBPROCESS_CALLS = {"Popen", "run", "call", "check_call", "check_output", "getoutput",
                     "getstatusoutput"}  # fmt: skip
_OS_CALLS = {"system", "popen", "fork", "forkpty", "posix_spawn", "posix_spawnp"}


def _process_starts(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "subprocess":
            names = {a.name for a in node.names} & _SUBPROCESS_CALLS
            found += [f"line {node.lineno}: from subprocess import {n}" for n in sorted(names)]
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        attr, owner = node.func.attr, node.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else ""
        if (
            attr.startswith("create_subprocess_")
            or (owner_name == "subprocess" and attr in _SUBPROCESS_CALLS)
            or (owner_name == "os" and (attr in _OS_CALLS or attr.startswith(("exec", "spawn"))))
        ):
            found.append(f"line {node.lineno}: {owner_name or '...'}.{attr}()")
    return found


def test_only_proc_starts_processes() -> None:
    """Every daemon-side child goes through `banger.proc` (guarded, or spawned to outlive the
    daemon on purpose); a direct subprocess call anywhere else fails here."""
    offenders = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in ALLOWED:
            continue
        starts = _process_starts(ast.parse(path.read_text(), str(path)))
        if starts:
            offenders[rel] = starts
    assert offenders == {}, "start processes through banger.proc: " + repr(offenders)


def test_the_process_check_sees_every_way_to_start_one() -> None:
    """The walk itself catches what it is meant to (a check that cannot fail proves nothing)."""
    code = """
import asyncio, os, subprocess
from subprocess import Popen
subprocess.run(["x"])
subprocess.Popen(["x"])
asyncio.create_subprocess_exec("x")
os.system("x")
os.execvp("x", ["x"])
"""
    assert len(_process_starts(ast.parse(code))) == 6
    # An exemption nobody needs any more is removed, not kept as a hole.
    unused = [p for p in ALLOWED if not _process_starts(ast.parse((SRC / p).read_text()))]
    assert unused == []

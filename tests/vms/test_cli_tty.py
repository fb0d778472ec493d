"""The CLI at a real terminal (a pty) with real guests: Ctrl-C mid-boot, `vm run`'s interactive
shell, `vm logs -f` and `vm stats --watch` ended by Ctrl-C, `vm list` in 80 columns."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.conftest import BangerEnv
from tests.tty import finish, spawn, wait_for
from tests.vms.conftest import list_vms

pytestmark = pytest.mark.slow

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _qemus(be: BangerEnv) -> set[int]:
    """QEMU processes of this environment (their command lines name its state dir)."""
    root = str(be.root)
    found = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        argv = p.info["cmdline"] or []
        if argv and "qemu-system" in argv[0] and root in " ".join(argv):
            found.add(p.info["pid"])
    return found


def _guest_runs(be: BangerEnv, vm: str, comm: str) -> bool:
    p = be.banger("vm", "ssh", vm, "--", f"grep -qx {comm} /proc/[0-9]*/comm", timeout=60)
    return p.returncode == 0


def test_ctrl_c_mid_boot_leaves_nothing_and_the_name_is_free(vmenv: BangerEnv) -> None:
    be = vmenv
    vm_dirs = {p.name for p in be.paths.vms_dir.iterdir()}
    qemus = _qemus(be)
    child = spawn(be, "vm", "create", "--name", "intr", timeout=300)
    child.expect("waiting for the guest")  # the stage spinner: QEMU runs, the guest boots
    assert _qemus(be) - qemus  # its QEMU is up
    child.sendintr()
    status, out = finish(child)
    assert status == 130, out
    assert "interrupted: vm intr was not created" in out
    assert "Traceback" not in out and "aborted" not in out
    # At once, no polling: the CLI returned after the daemon's cleanup.
    assert "intr" not in {v["name"] for v in list_vms(be)}
    assert {p.name for p in be.paths.vms_dir.iterdir()} == vm_dirs
    assert _qemus(be) == qemus
    # The same name again, straight away.
    p = be.banger("vm", "create", "--name", "intr", timeout=600)
    assert p.returncode == 0, p.stderr
    assert "intr ready in" in p.stdout
    be.banger("vm", "delete", "intr", check=True, timeout=120)


def test_vm_run_shell_exit_status_export_logs_stats_and_list(
    vmenv: BangerEnv, tmp_path: Path
) -> None:
    be = vmenv
    repo = tmp_path / "proj"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    (repo / "a.txt").write_text("hello\n")
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "init"], check=True)

    child = spawn(be, "vm", "run", str(repo), "--name", "tty-run", timeout=300)
    child.expect(r"tty-run ready in \d+\.\ds")
    child.expect(r"root@tty-run:~/repo# ")  # the interactive shell, in the workspace
    child.sendline("echo changed >> a.txt; echo new > b.txt")
    child.expect(r"root@tty-run:~/repo# ")
    child.sendline("exit 3")
    status, out = finish(child)
    assert status == 3, out
    assert "vm tty-run is still running (stop it with `banger vm stop tty-run`)" in out

    patch = be.banger("vm", "workspace", "export", "tty-run", check=True, timeout=120).stdout
    subprocess.run(["git", "-C", str(repo), "apply"], input=patch, text=True, check=True)
    assert (repo / "a.txt").read_text() == "hello\nchanged\n"
    assert (repo / "b.txt").read_text() == "new\n"

    # Ctrl-C stops a command at the terminal: its status is 130 (ssh used to report the
    # signalled session as 255, and banger then claimed the ssh connection had failed).
    child = spawn(be, "vm", "exec", "tty-run", "--", "sh", "-c", "echo started; sleep 60")
    child.expect("started")
    # Type Ctrl-C once `sleep` runs: a SIGINT between the echo and the exec of sleep is caught by
    # the guest's sh and lost at the exec (the command then sleeps its whole 60 s).
    wait_for(child, lambda: _guest_runs(be, "tty-run", "sleep"), timeout=60)
    child.sendintr()
    status, out = finish(child)
    assert status == 130 and "failed" not in out, out
    p = be.banger("vm", "exec", "tty-run", "--", "sh", "-c", "kill -TERM $$", timeout=120)
    assert p.returncode == 143 and "failed" not in p.stderr, p.stderr

    # `vm logs -f` and `vm stats --watch` end on Ctrl-C: status 0, no traceback, no "aborted".
    child = spawn(be, "vm", "logs", "-f", "tty-run")
    child.expect("banger-guest: READY")
    child.sendintr()
    status, out = finish(child)
    assert status == 0 and "Traceback" not in out and "aborted" not in out, out
    child = spawn(be, "vm", "stats", "tty-run", "--watch", "--interval", "0.5")
    child.expect(r"guest  cpu")
    child.sendintr()
    status, out = finish(child)
    assert status == 0 and "Traceback" not in out and "aborted" not in out, out

    # `vm list` in an 80-column terminal: one line per VM, the workspace shortened.
    child = spawn(be, "vm", "list", cols=80)
    status, out = finish(child)
    lines = [ANSI.sub("", x) for x in out.split("\r\n") if x.strip()]
    assert status == 0 and all(len(x) <= 80 for x in lines), lines
    row = next(x for x in lines if x.startswith("tty-run "))
    assert "running" in row
    full = json.loads(be.banger("vm", "list", "--json", check=True).stdout)
    assert any(v["name"] == "tty-run" and v["workspaces"] for v in full)

    # Following the log of a VM that gets deleted ends, saying why (it used to wait forever).
    child = spawn(be, "vm", "logs", "-f", "tty-run")
    child.expect("banger-guest: READY")
    be.banger("vm", "delete", "tty-run", check=True, timeout=120)
    status, out = finish(child, timeout=30)
    assert status == 0 and "vm tty-run was deleted; stopped following its console log" in out


def test_vm_run_with_a_taken_name_does_not_point_at_the_other_vm(vmenv: BangerEnv) -> None:
    be = vmenv
    be.banger("vm", "create", "--name", "mine", "--no-start", check=True, timeout=300)
    p = be.banger("vm", "run", "--name", "mine", "--", "true", timeout=300)
    assert p.returncode == 1
    # The service names the conflict; the CLI may add which flag picks another name.
    assert "vm 'mine' already exists; choose another" in p.stderr
    # It used to add "(vm mine is kept for inspection; … then `banger vm delete mine`)": advice
    # to delete the user's existing VM, which this run never touched.
    assert "kept for inspection" not in p.stderr and "vm delete" not in p.stderr, p.stderr
    assert [v["state"] for v in list_vms(be) if v["name"] == "mine"] == ["created"]
    be.banger("vm", "delete", "mine", check=True, timeout=120)

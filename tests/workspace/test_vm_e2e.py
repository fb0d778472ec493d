"""Workspaces through real guests: the CLI, the daemon, OpenSSH and QEMU, two boots in all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, BuiltImage, _stop_daemon, make_env
from tests.workspace.conftest import BINARY, git, tree_of

pytestmark = pytest.mark.slow

GUEST_EDITS = r"""set -e
echo "guest edit" >> README.md
printf 'new\n' > added.txt
mkdir -p assets && printf '\000\001\002\377' > assets/logo.bin
rm gone_in_guest.txt
mv old_name.txt new_name.txt
chmod +x run.sh
head -c 3000 blob.bin > blob.tmp && mv blob.tmp blob.bin
echo "ignored" > trace.log
"""

EXPORT_LIMIT_MIB = 80

GUEST_TREE = (
    "set -e; i=$(mktemp -d); GIT_INDEX_FILE=$i/index git add -A; "
    "GIT_INDEX_FILE=$i/index git write-tree; rm -rf $i"
)


@pytest.fixture(scope="module")
def env(debian_image: BuiltImage) -> Iterator[BangerEnv]:
    be = make_env("bgw-", cache_home=debian_image.cache_home)
    # Big enough for the large-export test's ~54 MiB patch, small enough to exceed on purpose.
    be.write_config(f'workspace_export_max_bytes = "{EXPORT_LIMIT_MIB}M"\n')
    be.banger("image", "pull", "debian-bookworm", check=True, timeout=600)
    yield be
    be.banger("vm", "delete", "wsrt", timeout=120)
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.fixture(scope="module")
def vm(env: BangerEnv) -> str:
    env.banger("vm", "create", "--name", "wsrt", check=True, timeout=300)
    return "wsrt"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    r = tmp_path / "sample"
    r.mkdir()
    git(r, "init", "-q", "-b", "main")
    git(r, "config", "user.name", "Grace Hopper")
    git(r, "config", "user.email", "grace@example.test")
    (r / "README.md").write_text("sample\n")
    (r / "old_name.txt").write_text("rename me\n" * 30)
    (r / "gone_in_guest.txt").write_text("x\n")
    (r / "run.sh").write_text("#!/bin/sh\necho run\n")
    (r / "blob.bin").write_bytes(BINARY)
    (r / ".gitignore").write_text("*.log\n")
    git(r, "add", "-A")
    git(r, "commit", "-qm", "sample")
    (r / "README.md").write_text("sample, edited on the host\n")
    (r / "untracked.txt").write_text("untracked\n")
    (r / "host.log").write_text("ignored\n")
    return r


def test_round_trip_through_a_real_guest(
    env: BangerEnv, vm: str, sample: Path, tmp_path: Path
) -> None:
    p = env.banger("vm", "workspace", "prepare", vm, str(sample), "--include-untracked", "--json")
    assert p.returncode == 0, p.stderr
    prepared = json.loads(p.stdout)
    base = git(sample, "rev-parse", "HEAD").strip()
    assert prepared["base_commit"] == base and prepared["guest_path"] == "/root/repo"
    # `vm list` and `vm show` name the prepared checkout: host path → guest path.
    listed = env.banger("vm", "list", check=True).stdout
    assert f"{sample.resolve()} → /root/repo" in listed
    shown = json.loads(env.banger("vm", "show", vm, "--json", check=True).stdout)
    assert shown["workspaces"] == [{"host_path": str(sample.resolve()), "guest_path": "/root/repo"}]

    p = env.banger(
        "vm", "exec", vm, "--", "sh", "-c", "git status --porcelain; git log --format=%H"
    )
    assert p.returncode == 0, p.stderr
    assert " M README.md" in p.stdout and "?? untracked.txt" in p.stdout
    assert "host.log" not in p.stdout
    assert p.stdout.strip().endswith(base)

    p = env.banger("vm", "exec", vm, "--", "sh", "-c", GUEST_EDITS)
    assert p.returncode == 0, p.stderr
    status_before = env.banger("vm", "exec", vm, "--", "git", "status", "--porcelain").stdout

    patch_file = tmp_path / "guest.patch"
    p = env.banger("vm", "workspace", "export", vm, "--output", str(patch_file), "--json")
    assert p.returncode == 0, p.stderr
    files = {(f["status"], f["path"]) for f in json.loads(p.stdout)["files"]}
    assert {("M", "README.md"), ("A", "added.txt"), ("A", "assets/logo.bin"),
            ("D", "gone_in_guest.txt"), ("R", "new_name.txt"), ("M", "run.sh"),
            ("M", "blob.bin"), ("A", "untracked.txt")} <= files  # fmt: skip
    assert not any(path == "trace.log" for _s, path in files)
    # Export changed nothing in the guest.
    assert env.banger("vm", "exec", vm, "--", "git", "status", "--porcelain").stdout == (
        status_before
    )
    # stdout mode gives the same patch, ready for `| git apply`.
    raw = subprocess.run(
        [*_cli(env), "vm", "workspace", "export", vm], env=env.env, capture_output=True, timeout=120
    )
    assert raw.returncode == 0 and raw.stdout == patch_file.read_bytes()

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(sample), str(clone)], check=True)
    git(clone, "apply", "--index", input=patch_file.read_bytes())
    guest_tree = env.banger("vm", "exec", vm, "--", "sh", "-c", GUEST_TREE).stdout.strip()
    assert tree_of(clone) == guest_tree
    assert os.access(clone / "run.sh", os.X_OK)

    # Exit status verbatim; a moved host HEAD warns, and --auto-prepare re-syncs.
    assert env.banger("vm", "exec", vm, "--", "sh", "-c", "exit 3").returncode == 3
    git(sample, "commit", "-qam", "host moves on")
    p = env.banger("vm", "exec", vm, "--", "git", "rev-parse", "HEAD")
    assert "host HEAD moved since prepare" in p.stderr and p.stdout.strip() == base
    p = env.banger("vm", "exec", vm, "--auto-prepare", "--", "git", "rev-parse", "HEAD")
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == git(sample, "rev-parse", "HEAD").strip()


def _cli(env: BangerEnv) -> list[str]:
    import sys

    return [sys.executable, "-m", "banger.cli.main"]


def test_vm_run_exits_with_the_command_status_and_rm_leaves_nothing(
    env: BangerEnv, sample: Path
) -> None:
    vms_before = sorted(os.listdir(env.paths.vms_dir)) if env.paths.vms_dir.exists() else []
    p = env.banger(
        "vm", "run", str(sample), "--rm", "--name", "wsrun", "--",
        "sh", "-c", "test -f README.md && test ! -e untracked.txt && exit 7",
    )  # fmt: skip
    assert p.returncode == 7, p.stderr
    assert "prepared sample in vm wsrun at /root/repo" in p.stderr
    listed = json.loads(env.banger("vm", "list", "--json", check=True).stdout)
    assert "wsrun" not in [v["name"] for v in listed]
    assert sorted(os.listdir(env.paths.vms_dir)) == vms_before
    # Its workspace record went with it.
    import sqlite3

    with sqlite3.connect(env.paths.db_file) as db:
        orphans = db.execute(
            "SELECT count(*) FROM vm_workspaces WHERE vm_id NOT IN (SELECT id FROM vms)"
        ).fetchone()[0]
    assert orphans == 0


def _vm_hwm_reset(pid: int) -> int:
    """Reset the process's peak RSS (VmHWM) and return its current RSS, in KiB."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _proc_status_kib(pid, "VmRSS")


def _proc_status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def _run_measured(env: BangerEnv, *args: str) -> tuple[int, int, bytes, bytes]:
    """(exit status, peak RSS in KiB, stdout, stderr) of one CLI run, via wait4."""
    import tempfile

    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([*_cli(env), *args], env=env.env, stdout=out, stderr=err)
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return proc.returncode, int(usage.ru_maxrss), out.read(), err.read()


def test_large_export_streams_with_bounded_memory_and_the_limit_holds(
    env: BangerEnv, vm: str, sample: Path, tmp_path: Path
) -> None:
    gp = "/root/big"
    env.banger("vm", "workspace", "prepare", vm, str(sample), "--guest-path", gp, check=True)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    small = out_dir / "small.patch"
    code, small_rss, _o, err = _run_measured(
        env, "vm", "workspace", "export", vm, "--guest-path", gp, "-o", str(small)
    )
    assert code == 0, err

    # ~54 MiB of new text in the guest: base64 lines of random bytes.
    make_big = f"cd {gp} && head -c 40M /dev/urandom | base64 -w 100 > big.txt"
    env.banger("vm", "exec", vm, "--", "sh", "-c", make_big, check=True, timeout=600)
    pid = _daemon_pid(env)
    rss_before = _vm_hwm_reset(pid)
    big = out_dir / "big.patch"
    code, big_rss, _o, err = _run_measured(
        env, "vm", "workspace", "export", vm, "--guest-path", gp, "-o", str(big)
    )
    assert code == 0, err
    patch_size = big.stat().st_size
    assert patch_size > 50 * 2**20
    # The daemon never sees the patch (the CLI streams it over SSH): its peak RSS during the
    # export stays within a few MiB of where it was (16 MiB: allocator noise, one SSH target).
    daemon_peak = _proc_status_kib(pid, "VmHWM")
    assert daemon_peak - rss_before < 16 * 1024, (rss_before, daemon_peak)
    # The CLI writes 64 KiB chunks to the staged file: its peak grows by far less than the patch.
    assert big_rss - small_rss < 16 * 1024, (small_rss, big_rss, patch_size)
    # The patch is whole: it applies at the base and recreates the guest's file.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(sample), str(clone)], check=True)
    git(clone, "apply", "--index", str(big))
    guest_sum = env.banger("vm", "exec", vm, "--", "sha256sum", f"{gp}/big.txt", check=True)
    import hashlib

    assert (
        hashlib.sha256((clone / "big.txt").read_bytes()).hexdigest()
        == (guest_sum.stdout.split()[0])
    )

    # The inline RPC answer is capped lower (16 MiB), and the daemon stops reading there.
    from banger.rpc.errors import OperationFailed

    rss_before = _vm_hwm_reset(pid)
    with env.client() as c, pytest.raises(OperationFailed) as inline:
        c.call("vm.workspace.export", {"vm": vm, "guest_path": gp})
    assert "16 MiB an inline vm.workspace.export answer carries" in inline.value.message
    assert _proc_status_kib(pid, "VmHWM") - rss_before < 48 * 1024

    # Over the configured limit: a clear error naming the key, and nothing at --output.
    more = f"cd {gp} && head -c 24M /dev/urandom | base64 -w 100 > more.txt"
    env.banger("vm", "exec", vm, "--", "sh", "-c", more, check=True, timeout=600)
    before = sorted(os.listdir(out_dir))
    big_before = big.read_bytes()
    for target in (out_dir / "over.patch", big):
        p = env.banger("vm", "workspace", "export", vm, "--guest-path", gp, "-o", str(target))
        assert p.returncode == 1, p.stderr
        limit = EXPORT_LIMIT_MIB * 2**20
        assert (
            f"the guest's changes are larger than workspace_export_max_bytes = {limit} "
            f"({EXPORT_LIMIT_MIB}.0 MiB)" in p.stderr
        ), p.stderr
        assert "nothing was written" in p.stderr
        assert sorted(os.listdir(out_dir)) == before  # no staging file, no over.patch
    assert big.read_bytes() == big_before  # the old patch is untouched
    # stdout gets nothing either (the patch is staged before it is printed).
    p = subprocess.run(
        [*_cli(env), "vm", "workspace", "export", vm, "--guest-path", gp],
        env=env.env, capture_output=True, timeout=900,
    )  # fmt: skip
    assert p.returncode == 1 and p.stdout == b""
    with env.client() as c:
        assert c.call("ping")["pid"] == pid


def _daemon_pid(env: BangerEnv) -> int:
    with env.client() as c:
        return int(c.call("ping")["pid"])


CONSOLE_ESCAPES = "\\033]0;pwned\\007\\033[2J\\033[31mred-{tag}\\033[0m\\r\\n"


def test_vm_logs_escapes_guest_control_sequences_at_a_terminal_only(
    env: BangerEnv, vm: str
) -> None:
    from tests.tty import finish, spawn, wait_for

    def say(tag: str) -> None:
        line = f"printf '{CONSOLE_ESCAPES.format(tag=tag)}' > /dev/console"
        env.banger("vm", "exec", vm, "--", "sh", "-c", line, check=True)

    say("one")
    raw = b"\x1b]0;pwned\x07\x1b[2J\x1b[31mred-one\x1b[0m"
    deadline = time.monotonic() + 60
    while True:
        piped = subprocess.run(
            [*_cli(env), "vm", "logs", vm], env=env.env, capture_output=True, timeout=60
        )
        if raw in piped.stdout or time.monotonic() > deadline:
            break
    # Piped: the raw bytes, exactly as the console log has them.
    assert piped.returncode == 0 and raw in piped.stdout
    console_log = json.loads(env.banger("vm", "show", vm, "--json", check=True).stdout)[
        "console_log"
    ]
    assert piped.stdout == Path(console_log).read_bytes()[-len(piped.stdout) :]

    # At a terminal: every control character shown as \xNN, none reaches the terminal.
    child = spawn(env, "vm", "logs", vm)
    status, out = finish(child)
    assert status == 0
    assert "\\x1b]0;pwned\\x07\\x1b[2J\\x1b[31mred-one\\x1b[0m" in out
    assert "\x1b" not in out and "\x07" not in out

    child = spawn(env, "vm", "logs", "-f", "-n", "0", vm)
    say("two")
    wait_for(child, lambda: "red-two" in str(child.before), timeout=60)
    child.sendintr()
    status, rest = finish(child)
    seen = str(child.before) + rest
    assert status == 0
    assert "\\x1b[31mred-two\\x1b[0m" in seen and "\x1b" not in seen

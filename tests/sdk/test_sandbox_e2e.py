"""The SDK against a real guest under QEMU: one sandbox for the module (plus one restart)."""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import re
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from banger.sdk import (
    AlreadyExists,
    AsyncSandbox,
    BadRequest,
    CommandFailed,
    CommandTimeout,
    GuestConnectionError,
    LocalDaemon,
    NotFound,
    NotRunning,
    Sandbox,
)
from banger.sdk.daemon import connect_guest_ssh
from tests import waiting
from tests.workspace.conftest import git

pytestmark = pytest.mark.slow

OP_ID = re.compile(r"^op-[0-9a-f]{12}$")


def wait_until(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    waiting.wait_until(check, timeout, what)


def test_create_lists_the_running_sandbox(sbx: Sandbox, daemon_conn: LocalDaemon) -> None:
    assert sbx.name == "sdk1"
    infos = {i.name: i for i in Sandbox.list(daemon=daemon_conn)}
    assert infos["sdk1"].state == "running"
    assert infos["sdk1"].memory_mib == 512
    assert sbx.info().image == "debian-bookworm"


def test_exit_code_stdout_and_stderr(sbx: Sandbox) -> None:
    r = sbx.run("echo out; echo err >&2; exit 7")
    assert (r.exit_code, r.stdout, r.stderr) == (7, "out\n", "err\n")
    assert not r.ok
    assert sbx.run("true").ok
    with pytest.raises(CommandFailed) as e:
        sbx.run("echo boom >&2; exit 3", check=True)
    assert e.value.result.exit_code == 3 and "boom" in e.value.message


def test_a_killed_command_reports_128_plus_the_signal(sbx: Sandbox) -> None:
    assert sbx.run("kill -TERM $$").exit_code == 128 + 15


def test_a_list_keeps_its_argument_boundaries(sbx: Sandbox) -> None:
    r = sbx.run(["printf", "%s\\n", "a b", "c;d", "$HOME", "'q'"])
    assert r.stdout == "a b\nc;d\n$HOME\n'q'\n"
    # a one-word list is still one argument, never a shell line
    assert sbx.run(["echo hi; echo no"]).exit_code == 127
    # a string is a shell line
    assert sbx.run("echo a; echo b").stdout == "a\nb\n"


def test_env_cwd_and_stdin(sbx: Sandbox) -> None:
    r = sbx.run(
        'printf "%s|%s|" "$GREETING" "$OTHER"; pwd',
        env={"GREETING": "hello world; $(id)", "OTHER": "it's"},
        cwd="/tmp",
    )
    assert r.stdout == "hello world; $(id)|it's|/tmp\n"
    assert sbx.run(["pwd"], cwd="/root").stdout == "/root\n"
    binary = bytes(range(256)) * 4
    r = sbx.run("cat", stdin=binary)
    assert r.stdout_bytes == binary
    assert sbx.run("wc -c", stdin="héllo").stdout.strip() == "6"
    assert sbx.run("ls /nonexistent-dir", cwd="/nonexistent-dir").exit_code != 0


def test_bad_arguments_are_refused_before_anything_runs(sbx: Sandbox) -> None:
    with pytest.raises(BadRequest, match="not a valid shell name"):
        sbx.run("true", env={"A B": "x"})
    with pytest.raises(BadRequest, match="empty"):
        sbx.run([])
    with pytest.raises(BadRequest, match="timeout"):
        sbx.run("true", timeout=0)


def test_timeout_kills_the_whole_process_group(sbx: Sandbox) -> None:
    marker = "banger-sdk-timeout-marker"
    with pytest.raises(CommandTimeout) as e:
        sbx.run(f"echo started; sleep 300 & exec -a {marker} sleep 301", timeout=2)
    assert e.value.code == "timeout" and e.value.timeout == 2
    assert e.value.stdout == "started\n"
    wait_until(
        # [x]: the pattern must not match the shell that runs pgrep
        lambda: sbx.run("pgrep -f '[b]anger-sdk-timeout-marker|[s]leep 300' || true").stdout == "",
        "the timed-out command and its child to be gone",
    )


def test_output_is_streamed_while_the_command_runs(sbx: Sandbox) -> None:
    seen: list[str] = []
    first = threading.Event()

    def on_stdout(chunk: str) -> None:
        seen.append(chunk)
        if "first" in "".join(seen):
            first.set()

    flag = "/tmp/sdk-stream-go"
    sbx.run(["rm", "-f", flag])
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(
            sbx.run,
            f"echo first; while [ ! -e {flag} ]; do sleep 0.1; done; echo second >&2; echo third",
            on_stdout=on_stdout,
            timeout=120,
        )
        # The command only goes on once we saw its first line: that is streaming.
        assert first.wait(60), "no output arrived while the command ran"
        assert not fut.done()
        sbx.run(["touch", flag])
        r = fut.result(timeout=60)
    assert "".join(seen) == r.stdout == "first\nthird\n"
    assert r.stderr == "second\n"


def test_concurrent_runs_share_the_connection(sbx: Sandbox) -> None:
    # More than sshd's per-connection session limit, to show they queue rather than fail.
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda i: sbx.run(f"echo {i}; echo e{i} >&2"), range(12)))
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(12)]
    assert [r.stderr for r in results] == [f"e{i}\n" for i in range(12)]


def test_output_limit_keeps_the_head_and_says_so(sbx: Sandbox) -> None:
    r = sbx.run("head -c 100000 /dev/zero | tr '\\0' x", output_limit=1000)
    assert r.stdout == "x" * 1000 and r.stdout_truncated and not r.stderr_truncated


def test_files_round_trip_text_and_binary(sbx: Sandbox) -> None:
    blob = bytes(range(256)) * 1000 + b"\r\n\x00"
    assert sbx.files.write("/root/f/deep/blob.bin", blob, mode=0o600) == len(blob)
    assert sbx.files.read("/root/f/deep/blob.bin") == blob
    assert sbx.files.read("/root/f/deep/blob.bin", limit=10) == blob[:10]
    assert sbx.run("stat -c %a /root/f/deep/blob.bin").stdout == "600\n"
    sbx.files.write("/root/f/note.txt", "héllo\n")
    assert sbx.files.read_text("/root/f/note.txt") == "héllo\n"
    entries = {e.name: e for e in sbx.files.list("/root/f")}
    assert entries["deep"].type == "directory"
    assert entries["note.txt"].type == "file" and entries["note.txt"].size == 7
    assert sbx.files.exists("/root/f/note.txt")
    sbx.files.remove("/root/f/note.txt")
    assert not sbx.files.exists("/root/f/note.txt")
    with pytest.raises(NotFound, match="no such file"):
        sbx.files.read("/root/f/note.txt")
    with pytest.raises(BadRequest):
        sbx.files.remove("/")
    # no staging file is left next to the targets
    assert sbx.run("find /root/f -name '.*.banger-*'").stdout == ""
    sbx.files.remove("/root/f", recursive=True)
    assert not sbx.files.exists("/root/f")


def test_a_large_file_streams_both_ways(sbx: Sandbox, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    with src.open("wb") as f:
        for i in range(24):  # 24 MiB of varied bytes
            f.write(hashlib.sha256(str(i).encode()).digest() * 32768)
    with src.open("rb") as f:
        assert sbx.files.write("/root/big.bin", f) == src.stat().st_size
    assert (
        sbx.run("sha256sum /root/big.bin").stdout.split()[0]
        == hashlib.sha256(src.read_bytes()).hexdigest()
    )
    sink = io.BytesIO()
    assert sbx.files.download("/root/big.bin", sink) == src.stat().st_size
    assert sink.getvalue() == src.read_bytes()
    back = tmp_path / "back.bin"
    sbx.files.download("/root/big.bin", back)
    assert back.read_bytes() == src.read_bytes()
    sbx.files.remove("/root/big.bin")


def test_directory_upload_and_download(sbx: Sandbox, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_text("top\n")
    (tree / "a" / "b" / "bin.dat").write_bytes(bytes(range(256)))
    (tree / "a" / "run.sh").write_text("#!/bin/sh\necho ran\n")
    os.chmod(tree / "a" / "run.sh", 0o755)
    sbx.files.upload(tree, "/root/up/tree")
    assert sbx.run("/root/up/tree/a/run.sh").stdout == "ran\n"
    assert sbx.run("cd /root/up/tree && find . -type f | sort").stdout == (
        "./a/b/bin.dat\n./a/run.sh\n./top.txt\n"
    )
    with pytest.raises(AlreadyExists):
        sbx.files.upload(tree, "/root/up/tree")
    sbx.run("echo guest > /root/up/tree/a/new.txt")
    out = tmp_path / "down"
    sbx.files.download("/root/up/tree", out)
    assert (out / "a" / "b" / "bin.dat").read_bytes() == bytes(range(256))
    assert (out / "a" / "new.txt").read_text() == "guest\n"
    assert (out / "top.txt").read_text() == "top\n"
    assert os.access(out / "a" / "run.sh", os.X_OK)  # modes travel both ways
    with pytest.raises(AlreadyExists):
        sbx.files.download("/root/up/tree", out)
    sbx.files.remove("/root/up", recursive=True)


def test_workspace_prepare_then_export_applies_with_git(sbx: Sandbox, tmp_path: Path) -> None:
    repo = tmp_path / "proj"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.name", "Ada")
    git(repo, "config", "user.email", "ada@example.test")
    (repo / "app.py").write_text("print('v1')\n")
    (repo / "gone.txt").write_text("bye\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "first")
    ws = sbx.workspace.prepare(repo)
    assert ws.guest_path == "/root/repo"
    assert ws.base_commit == git(repo, "rev-parse", "HEAD").strip()
    sbx.run(
        "sed -i s/v1/v2/ app.py && rm gone.txt && printf '\\000\\377' > new.bin",
        cwd=ws.guest_path,
        check=True,
    )
    patch = sbx.workspace.export()
    assert {f["path"] for f in patch.files} >= {"app.py", "gone.txt", "new.bin"}
    subprocess.run(["git", "apply"], input=patch.patch, cwd=repo, check=True)
    assert (repo / "app.py").read_text() == "print('v2')\n"
    assert not (repo / "gone.txt").exists()
    assert (repo / "new.bin").read_bytes() == b"\x00\xff"


def test_ports_and_stats(sbx: Sandbox) -> None:
    assert any(p.port == 22 and p.process == "sshd" for p in sbx.ports())
    stats = sbx.stats()
    assert stats.guest is not None and stats.guest["mem_total_bytes"] > 0
    assert stats.host["pid"] > 0


def test_daemon_errors_carry_their_code_and_op_id(sbx: Sandbox, daemon_conn: LocalDaemon) -> None:
    with pytest.raises(NotFound) as nf:
        Sandbox.connect("no-such-sandbox", daemon=daemon_conn)
    assert nf.value.code == "not_found" and OP_ID.match(nf.value.op_id)
    assert "no-such-sandbox" in nf.value.message and nf.value.op_id in str(nf.value)
    with pytest.raises(AlreadyExists) as ae:
        Sandbox.create(name="sdk1", daemon=daemon_conn)
    assert ae.value.code == "already_exists" and OP_ID.match(ae.value.op_id)
    with pytest.raises(BadRequest) as br:
        Sandbox.create(name="x", vcpu=0, daemon=daemon_conn)
    assert br.value.code == "bad_request" and OP_ID.match(br.value.op_id)


async def test_only_the_pinned_host_key_is_accepted(
    sbx: Sandbox, daemon_conn: LocalDaemon, tmp_path: Path
) -> None:
    daemon = LocalDaemon(socket_path=daemon_conn.socket_path)
    target = await daemon.call("vm.ssh", {"ref": "sdk1"})
    conn = await connect_guest_ssh(target)  # banger's own known_hosts: accepted
    conn.close()
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True
    )
    other_key = " ".join((tmp_path / "k.pub").read_text().split()[:2])
    (tmp_path / "wrong").write_text(f"sdk1.vm {other_key}\n")
    (tmp_path / "empty").write_text("")
    for known in ("wrong", "empty"):  # a changed key, and no key at all (never accept-new)
        with pytest.raises(GuestConnectionError, match="not the one banger pinned"):
            await connect_guest_ssh({**target, "known_hosts_path": str(tmp_path / known)})
    assert (tmp_path / "empty").read_text() == ""  # nothing was learned


def test_context_manager_of_a_connected_sandbox_keeps_it(
    sbx: Sandbox, daemon_conn: LocalDaemon
) -> None:
    with Sandbox.connect("sdk1", daemon=daemon_conn) as again:
        assert again.run("hostname").stdout == "sdk1\n"
    assert sbx.info().state == "running"


async def test_async_sandbox_runs_concurrently(sbx: Sandbox, daemon_conn: LocalDaemon) -> None:
    import asyncio

    # A daemon connection of this test's own event loop (the sync API has its own loop).
    daemon = LocalDaemon(socket_path=daemon_conn.socket_path)
    async with await AsyncSandbox.connect("sdk1", daemon=daemon) as a:
        results = await asyncio.gather(*(a.run(["sh", "-c", f"echo {i}"]) for i in range(6)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(6)]
        await a.files.write("/root/async.txt", b"async")
        assert await a.files.read("/root/async.txt") == b"async"
        with pytest.raises(CommandTimeout):
            await a.run("sleep 60", timeout=1)
        assert [s.name for s in await AsyncSandbox.list(daemon=daemon)] == ["sdk1"]
    assert sbx.run("cat /root/async.txt").stdout == "async"


def test_stop_then_start_reconnects(sbx: Sandbox) -> None:
    sbx.stop()
    with pytest.raises(NotRunning) as e:
        sbx.run("true")
    assert e.value.code == "not_running" and OP_ID.match(e.value.op_id)
    sbx.start()
    assert sbx.run("cat /root/async.txt").stdout == "async"  # /root survived the restart


def test_leaving_the_block_deletes_the_sandbox(daemon_conn: LocalDaemon, sbx: Sandbox) -> None:
    # Last: this deletes the module's sandbox.
    with Sandbox.connect("sdk1", keep=False, daemon=daemon_conn) as box:
        assert box.run("true").ok
    assert "sdk1" not in [s.name for s in Sandbox.list(daemon=daemon_conn)]
    with pytest.raises(NotFound):
        sbx.run("true")

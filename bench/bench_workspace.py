"""Workspace prepare throughput vs a plain `tar | ssh` of the same files, in one run.

    .venv/bin/python bench/bench_workspace.py [--size-mb 50] [--runs 3] [--vm NAME]

Builds a ~50 MB git repository (source-like text plus incompressible binaries, one commit, some
uncommitted edits) and ships it to a guest two ways:
- banger: `vm.workspace`'s prepare (git pack of HEAD's history + checkout in the guest + tar of
  the files that differ from HEAD), the same code the daemon runs;
- raw:    `git ls-files -z | tar -c --null -T - | ssh … 'tar -x'` of the same tracked files.
Target: `--vm NAME` uses a running banger VM (its SSH connection info from the daemon); without
it, a throwaway OpenSSH server on 127.0.0.1 (host-side cost only; needs root). Reports the median
seconds, MB/s and the banger/raw ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from banger.guest.ssh import SSHTarget, generate_host_key, pin_host_key, ssh_argv
from banger.workspace.plan import PrepareOptions, make_plan
from banger.workspace.ship import prepare
from banger.workspace.transport import SSHGuestExec

ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench",
    "GIT_AUTHOR_EMAIL": "bench@example.test",
    "GIT_COMMITTER_NAME": "bench",
    "GIT_COMMITTER_EMAIL": "bench@example.test",
}


def make_repo(root: Path, size_mb: int) -> int:
    """~size_mb of files: 60% text in many small files, 40% random binaries. Returns bytes."""
    rng = random.Random(7)
    subprocess.run(["git", "init", "-q", "-b", "main", str(root)], check=True)
    words = [f"ident{i}" for i in range(500)] + ["def", "return", "if", "for", "(", ")", ":"]
    total, target = 0, size_mb * 1024 * 1024
    i = 0
    while total < target * 0.6:
        text = "\n".join(" ".join(rng.choices(words, k=12)) for _ in range(200)) + "\n"
        d = root / "src" / f"pkg{i % 40}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i}.py").write_text(text)
        total += len(text)
        i += 1
    j = 0
    while total < target:
        blob = rng.randbytes(2 * 1024 * 1024)
        (root / "assets").mkdir(exist_ok=True)
        (root / "assets" / f"blob{j}.bin").write_bytes(blob)
        total += len(blob)
        j += 1
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=ENV)
    subprocess.run(["git", "commit", "-q", "-m", "bench"], cwd=root, check=True, env=ENV)
    for k in range(0, i, 50):  # some uncommitted work, as a real checkout has
        p = root / "src" / f"pkg{k % 40}" / f"mod{k}.py"
        p.write_text(p.read_text() + "# edited\n")
    return total


@contextmanager
def local_sshd() -> Iterator[SSHTarget]:
    d = Path(tempfile.mkdtemp(prefix="bg-bench-sshd-"))
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "c")], check=True)
    _k, host_pub = generate_host_key(d / "host")
    (d / "ak").write_text((d / "c.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    (d / "cfg").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host' / 'ssh_host_ed25519_key'}\n"
        f"AuthorizedKeysFile {d / 'ak'}\nUsePAM no\nPidFile none\nStrictModes no\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "cfg")], stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as c:
                    if c.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                time.sleep(0.05)
        pin_host_key(d / "kh", "bench.vm", host_pub)
        yield SSHTarget("127.0.0.1", port, "root", d / "c", d / "kh", "bench")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(d, ignore_errors=True)


def vm_target(name: str) -> SSHTarget:
    from banger.cli.connect import client

    with client() as c:
        info = c.call("vm.ssh", {"ref": name})
    return SSHTarget.from_json(info.get("target", info))


def ssh(target: SSHTarget, script: str) -> None:
    subprocess.run(ssh_argv(target, [script], tty=False), check=True)


def raw_ship(repo: Path, target: SSHTarget, dest: str) -> float:
    q = shlex.quote(dest)
    ssh(target, f"rm -rf {q} && mkdir -p {q}")
    t0 = time.monotonic()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=repo, check=True, capture_output=True)
    tar = subprocess.Popen(
        ["tar", "-c", "-f", "-", "--null", "-T", "-"],
        cwd=repo,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert tar.stdin is not None
    sshp = subprocess.Popen(ssh_argv(target, [f"tar -x -f - -C {q}"], tty=False), stdin=tar.stdout)
    tar.stdin.write(files.stdout)
    tar.stdin.close()
    assert tar.stdout is not None
    tar.stdout.close()
    if tar.wait() != 0 or sshp.wait() != 0:
        raise SystemExit("raw tar | ssh failed")
    return time.monotonic() - t0


def banger_ship(repo: Path, target: SSHTarget, dest: str) -> float:
    t0 = time.monotonic()
    plan, _ = make_plan(repo, PrepareOptions(guest_path=dest))

    async def go() -> None:
        async with SSHGuestExec(target) as guest:  # as the daemon does: one multiplexed connection
            await prepare(guest, plan)

    asyncio.run(go())
    return time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--vm", help="a running banger VM to ship into (default: local sshd)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bg-bench-ws-"))
    try:
        repo = work / "repo"
        size = make_repo(repo, args.size_mb)
        mb = size / 1e6
        print(f"repository: {mb:.1f} MB in {len(os.listdir(repo / 'src'))} packages + binaries")
        stack = ExitStack()
        if args.vm:
            target = vm_target(args.vm)
            base = "/root/bench-ws"
            where = f"vm {args.vm}"
        else:
            if os.geteuid() != 0:
                print("the local-sshd mode needs root; pass --vm NAME", file=sys.stderr)
                return 2
            target = stack.enter_context(local_sshd())
            base = str(work / "guest")
            where = "local sshd on 127.0.0.1 (host-side cost only)"
        print(f"target: {where}; {args.runs} run(s) each, medians")
        try:
            for label in ("fresh commit (loose objects)", "after git gc (packed history)"):
                if label.startswith("after"):
                    subprocess.run(["git", "gc", "-q"], cwd=repo, check=True, env=ENV)
                raw, ours = [], []
                for n in range(args.runs):
                    raw.append(raw_ship(repo, target, f"{base}/raw{n}"))
                    ours.append(banger_ship(repo, target, f"{base}/ws{n}"))
                ssh(target, f"rm -rf {shlex.quote(base)}")
                r, o = statistics.median(raw), statistics.median(ours)
                print(f"{label}:")
                print(f"  raw tar | ssh   {r:7.2f} s  {mb / r:7.1f} MB/s")
                print(
                    f"  banger prepare  {o:7.2f} s  {mb / o:7.1f} MB/s  (history+checkout+overlay)"
                )
                print(f"  ratio banger/raw: {o / r:.2f}x")
        finally:
            stack.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

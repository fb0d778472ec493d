"""The SDK against raw OpenSSH, side by side in one run, on one real guest.

    .venv/bin/python bench/bench_sdk.py [--vm NAME] [--runs 30] [--size-mb 100] [--file-runs 3]

- command latency: `Sandbox.run("true")` on its shared asyncssh connection vs `ssh … true` over a
  reused OpenSSH connection (ControlMaster), both with banger's key and pinned host key; p50 and
  p90 of `--runs` alternating calls. Goal: SDK p50 <= 1.2x raw.
- file throughput: `files.write` / `files.download` of a `--size-mb` file of random bytes vs
  `scp` up / down over the same reused OpenSSH connection; median of `--file-runs`. Goal: SDK
  >= 0.8x scp's MB/s.
Uses the daemon of the current environment (XDG_*): `--vm NAME` must be running; without it a
sandbox `bench-sdk` is created and deleted afterwards.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from banger.guest.ssh import SSHTarget, ssh_argv
from banger.sdk import Sandbox
from banger.sdk.sync import _portal


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def ssh_options(target: SSHTarget, control: str) -> list[str]:
    """banger's OpenSSH `-i`/`-o` options (guest/ssh.py) plus the shared master connection;
    the port and user are added per tool (ssh -p/-l, scp -P/user@)."""
    argv = ssh_argv(target, None, tty=False)
    words = argv[1 : argv.index("--")]
    opts: list[str] = []
    for flag, value in zip(words[::2], words[1::2], strict=False):
        if flag in ("-i", "-o"):
            opts += [flag, value]
    return [*opts, "-o", f"ControlPath={control}", "-o", "ControlMaster=no"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--vm", help="a running banger VM (default: create bench-sdk)")
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--size-mb", type=int, default=100)
    ap.add_argument("--file-runs", type=int, default=3)
    args = ap.parse_args()

    created = args.vm is None
    sbx = Sandbox.create(name="bench-sdk", keep=True) if created else Sandbox.connect(args.vm)
    work = Path(tempfile.mkdtemp(prefix="bg-bench-sdk-"))
    control = str(work / "m")
    try:
        target = SSHTarget.from_json(_portal.call(sbx.aio.daemon.call("vm.ssh", {"ref": sbx.name})))
        base = ssh_argv(target, None, tty=False)
        master = [base[0], "-o", "ControlMaster=yes", "-o", f"ControlPath={control}",
                  "-o", "ControlPersist=300", "-f", "-N", *base[1:]]  # fmt: skip
        subprocess.run(master, check=True)
        raw_ssh = ["ssh", *ssh_options(target, control), "-p", str(target.port), "-l",
                   target.user, "-T", "--", target.host, "true"]  # fmt: skip
        # warm both paths (first SDK call opens its connection)
        sbx.run("true")
        subprocess.run(raw_ssh, check=True)

        sdk_t: list[float] = []
        raw_t: list[float] = []
        for _ in range(args.runs):
            t = time.perf_counter()
            sbx.run("true")
            sdk_t.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(raw_ssh, check=True)
            raw_t.append(time.perf_counter() - t)
        sdk50, raw50 = statistics.median(sdk_t), statistics.median(raw_t)
        print(
            f"run('true')     sdk p50 {sdk50 * 1000:7.1f} ms  p90 {pct(sdk_t, 0.9) * 1000:7.1f} ms"
        )
        print(
            f"ssh … true (CM) raw p50 {raw50 * 1000:7.1f} ms  p90 {pct(raw_t, 0.9) * 1000:7.1f} ms"
        )
        print(f"  ratio sdk/raw p50: {sdk50 / raw50:.2f}x (goal <= 1.2x)")

        size = args.size_mb * 1024 * 1024
        src = work / "src.bin"
        with src.open("wb") as f:
            left = size
            while left:
                n = min(left, 8 << 20)
                f.write(os.urandom(n))
                left -= n
        digest = hashlib.sha256(src.read_bytes()).hexdigest()
        scp = ["scp", "-q", *ssh_options(target, control), "-P", str(target.port)]
        remote = f"{target.user}@[{target.host}]"

        up_sdk: list[float] = []
        up_raw: list[float] = []
        down_sdk: list[float] = []
        down_raw: list[float] = []
        for _ in range(args.file_runs):
            t = time.perf_counter()
            with src.open("rb") as f:
                sbx.files.write("/root/bench-sdk.bin", f)
            up_sdk.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([*scp, str(src), f"{remote}:/root/bench-scp.bin"], check=True)
            up_raw.append(time.perf_counter() - t)
            for p in (work / "down-sdk.bin", work / "down-scp.bin"):
                p.unlink(missing_ok=True)
            t = time.perf_counter()
            sbx.files.download("/root/bench-sdk.bin", work / "down-sdk.bin")
            down_sdk.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run(
                [*scp, f"{remote}:/root/bench-scp.bin", str(work / "down-scp.bin")], check=True
            )
            down_raw.append(time.perf_counter() - t)
        for p in (work / "down-sdk.bin", work / "down-scp.bin"):
            assert hashlib.sha256(p.read_bytes()).hexdigest() == digest, f"{p} differs"
        mb = size / (1024 * 1024)
        for what, s, r in (("write", up_sdk, up_raw), ("read ", down_sdk, down_raw)):
            s50, r50 = statistics.median(s), statistics.median(r)
            print(
                f"{what} {mb:.0f} MiB  sdk {mb / s50:6.1f} MiB/s ({s50:5.2f} s)  "
                f"scp {mb / r50:6.1f} MiB/s ({r50:5.2f} s)  ratio {r50 / s50:.2f}x (goal >= 0.8x)"
            )
        sbx.run("rm -f /root/bench-sdk.bin /root/bench-scp.bin")
    finally:
        subprocess.run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "x"],
                       capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
        if created:
            sbx.delete()
        else:
            sbx.close()


if __name__ == "__main__":
    main()

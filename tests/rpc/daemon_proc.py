"""A real `bangerd` process for the RPC limit tests, started with chosen limits and environment."""

from __future__ import annotations

import json
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import BangerEnv, make_env


@dataclass
class Bangerd:
    env: BangerEnv
    proc: subprocess.Popen[bytes]

    @property
    def socket(self) -> Path:
        return self.env.paths.socket

    @property
    def pid(self) -> int:
        return self.proc.pid

    def status_kib(self, field: str) -> int:
        """A `VmRSS`/`VmHWM`-style field of /proc/<pid>/status, in KiB."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"{field} not in /proc/{self.pid}/status")

    def nofile_limits(self) -> tuple[int, int]:
        for line in Path(f"/proc/{self.pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
        raise AssertionError("no 'Max open files' line")

    def request(self, obj: object, *, timeout: float = 10) -> dict[str, object]:
        """One request on a fresh connection; its answer (progress lines skipped)."""
        return self.raw(json.dumps(obj).encode() + b"\n", timeout=timeout)[-1]

    def raw(self, payload: bytes, *, timeout: float = 10) -> list[dict[str, object]]:
        """Send raw bytes on a fresh connection; every line until one answers per request line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(str(self.socket))
            s.sendall(payload)
            f = s.makefile("rb")
            out: list[dict[str, object]] = []
            while len([a for a in out if "ok" in a]) < max(1, payload.count(b"\n")):
                line = f.readline()
                if not line:
                    break
                out.append(json.loads(line))
            return out

    def ping(self, *, timeout: float = 10) -> dict[str, object]:
        answer = self.request({"version": 1, "method": "ping"}, timeout=timeout)
        assert answer["ok"] is True, answer
        return answer


@contextmanager
def bangerd(prefix: str, *, nofile_soft: int | None = None, **env: str) -> Iterator[Bangerd]:
    """bangerd in a fresh isolated environment; stopped (SIGTERM, then SIGKILL) afterwards."""
    be = make_env(prefix)
    be.env.update(env)

    def limits() -> None:
        if nofile_soft is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, hard))

    proc = subprocess.Popen(
        [sys.executable, "-m", "banger.daemon.main"],
        env=be.env,
        preexec_fn=limits,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    daemon = Bangerd(be, proc)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"bangerd exited {proc.returncode}"
            if be.paths.socket.exists():
                try:
                    daemon.ping(timeout=5)
                    break
                except OSError:
                    pass
            time.sleep(0.05)
        else:
            raise AssertionError("bangerd did not come up within 30 s")
        yield daemon
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(be.root, ignore_errors=True)

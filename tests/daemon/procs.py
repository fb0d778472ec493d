"""Real `bangerd` processes for the daemon tests: start one directly, wait for it to answer or to
exit, stop it, and find every bangerd serving a given state dir."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

START_DEADLINE_SECONDS = 30.0


@dataclass
class Outcome:
    proc: subprocess.Popen[str]
    returncode: int | None  # None: it runs and answers ping
    stderr: str


def ping_pid(socket_path: Path, timeout: float = 5.0) -> int | None:
    """The pid the daemon on `socket_path` reports, or None when nothing answers (no socket,
    a stale one, or something that is not a daemon and stays silent). Raw wire, no client."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(socket_path))
        s.sendall(b'{"version":1,"method":"ping"}\n')
        line = s.makefile("rb").readline()
    except OSError:  # refused, missing, timed out, reset
        return None
    finally:
        s.close()
    if not line:
        return None
    answer = json.loads(line)
    assert answer.get("ok") is True, answer
    return int(answer["result"]["pid"])


def start_bangerd(env: dict[str, str], socket: Path) -> Outcome:
    """Run `bangerd` in `env` until it exits or a daemon with its pid answers on `socket`."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "banger.daemon.main"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + START_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            assert proc.stderr is not None
            return Outcome(proc, proc.returncode, proc.stderr.read())
        if ping_pid(socket) == proc.pid:
            return Outcome(proc, None, "")
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    raise AssertionError(f"bangerd neither answered on {socket} nor exited within the deadline")


def stop(proc: subprocess.Popen[str]) -> int:
    """SIGTERM (a graceful stop), then SIGKILL if it lingers; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if proc.stderr is not None:
        proc.stderr.close()
    return proc.returncode


def bangerd_pids_for(state_home: str) -> list[int]:
    """Every live bangerd process whose XDG_STATE_HOME is `state_home`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            if b"banger.daemon.main" not in cmdline:
                continue
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            if f"XDG_STATE_HOME={state_home}".encode() in environ:
                stat_fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                if stat_fields[0] != "Z":
                    found.append(int(entry))
    return sorted(found)

"""Shell completion of live names, through click's bash protocol against a real daemon."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import BangerEnv


def _complete(env: BangerEnv, line: str) -> list[tuple[str, str]]:
    """What bash would offer for `line` (the word under the cursor is its last, maybe empty)."""
    words = line.split(" ")
    proc = subprocess.run(
        [sys.executable, "-m", "banger.cli.main"],
        env={
            **env.env,
            "_BANGER_COMPLETE": "bash_complete",
            "COMP_WORDS": line,
            "COMP_CWORD": str(len(words) - 1),
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return [(kind, value) for kind, _, value in (x.partition(",") for x in proc.stdout.split())]


def _ext4(path: Path) -> Path:
    with path.open("wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-F", "-q", str(path)], check=True)
    return path


def test_names_complete_from_the_daemon(daemon: BangerEnv, tmp_path: Path) -> None:
    rootfs = _ext4(tmp_path / "mini.ext4")
    daemon.banger("image", "register", "--name", "mini", "--rootfs", str(rootfs), check=True)
    daemon.banger("image", "register", "--name", "other", "--rootfs", str(rootfs), check=True)
    daemon.banger("vm", "create", "--no-start", "--name", "alpha", "--image", "mini", check=True)
    daemon.banger("vm", "create", "--no-start", "--name", "beta", "--image", "mini", check=True)

    assert _complete(daemon, "banger image show ") == [("plain", "mini"), ("plain", "other")]
    assert _complete(daemon, "banger image delete m") == [("plain", "mini")]
    assert _complete(daemon, "banger vm create --image o") == [("plain", "other")]
    assert _complete(daemon, "banger vm show ") == [("plain", "alpha"), ("plain", "beta")]
    assert _complete(daemon, "banger vm ssh b") == [("plain", "beta")]
    # A VM already on the line is not offered again.
    assert _complete(daemon, "banger vm delete alpha ") == [("plain", "beta")]
    # the default kernel was imported for the VMs
    assert ("plain", "debian-6.1") in _complete(daemon, "banger kernel show ")
    # Checkpoints: the VM, then its tags (none here: they never ran).
    assert _complete(daemon, "banger vm snapshot list a") == [("plain", "alpha")]
    assert _complete(daemon, "banger vm snapshot restore beta ") == []
    # Non-name arguments keep click's own completion.
    assert ("plain", "list") in _complete(daemon, "banger vm l")


def test_no_daemon_completes_nothing_and_starts_none(banger_env: BangerEnv) -> None:
    assert _complete(banger_env, "banger vm show ") == []
    assert _complete(banger_env, "banger image show ") == []
    assert not banger_env.paths.socket.exists()
    assert banger_env.banger("daemon", "status").returncode == 3

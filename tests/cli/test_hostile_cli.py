"""Hostile command-line arguments against the real CLI and a real daemon.

Each case is one run of `banger …` with an argument a script or a pasted name could carry:
control characters and escape sequences (echoed in errors, so they must come out escaped and
never reach the terminal raw), option-like names (`-oProxyCommand=…` must never become an ssh
option), overlong names, bad sizes and paths. Every case asserts the exit status and the shape
of the message, that the daemon still answers `ping`, and that a sentinel directory outside the
state dir is untouched (no file appeared, none changed).
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BangerEnv, _stop_daemon, make_env

SENTINEL = Path("/tmp/bg-hostile-cli-sentinel")
PWNED = SENTINEL / "pwned"


@dataclass(frozen=True)
class Case:
    id: str
    argv: list[str]
    status: int
    # Substrings the error output must contain (escaped forms spelled out as they print).
    says: list[str]


CASES = [
    Case(
        "name-with-osc-title-and-clear-screen",
        ["vm", "show", "\x1b]0;pwned\x07\x1b[2J"],
        1,
        ["banger: parameter 'ref': must not contain control characters (found '\\x1b')"],
    ),
    Case(
        "name-with-c1-csi-and-lone-cr",
        ["vm", "show", "ok\x9b31m\rfake"],
        1,
        ["banger: parameter 'ref': must not contain control characters (found '\\x9b')"],
    ),
    Case(
        "unknown-command-with-escape",
        ["x\x1b[2J"],
        2,
        ["Error: No such command 'x\\x1b[2J'."],
    ),
    Case(
        "option-like-name-export",
        ["vm", "workspace", "export", "--", f"-oProxyCommand=touch {PWNED}"],
        1,
        [f"banger: parameter 'vm': must not contain whitespace: '-oProxyCommand=touch {PWNED}'"],
    ),
    Case(
        "option-like-name-ssh",
        ["vm", "ssh", "--", f"-oProxyCommand=touch {PWNED}"],
        1,
        [f"banger: parameter 'ref': must not contain whitespace: '-oProxyCommand=touch {PWNED}'"],
    ),
    Case(
        "option-like-remote-command-on-missing-vm",
        ["vm", "ssh", "ghost", "--", f"-oProxyCommand=touch {PWNED}"],
        1,
        ["banger: vm 'ghost' not found"],
    ),
    Case(
        "overlong-name",
        ["vm", "show", "a" * 5000],
        1,
        ["banger: parameter 'ref': String should have at most 128 characters"],
    ),
    Case(
        "memory-size-with-escape",
        ["vm", "set", "ghost", "--memory", "8G\x1b[2J"],
        2,
        ["Error: Invalid value for '--memory': size '8G\\x1b[2J' is not understood"],
    ),
    Case(
        "memory-size-overflowing-float",
        ["vm", "set", "ghost", "--memory", "1e99"],
        2,
        ["Error: Invalid value for '--memory': size '1e99' is not understood"],
    ),
    Case(
        "log-bytes-negative",
        ["vm", "logs", "ghost", "-n", "-1"],
        2,
        ["Error: Invalid value for '-n' / '--bytes': -1 is not in the range x>=0."],
    ),
    Case(
        "log-bytes-huge",
        ["vm", "logs", "ghost", "-n", "99999999999"],
        1,
        ["banger: parameter 'max_bytes': Input should be less than or equal to 67108864"],
    ),
    Case(
        "export-base-commit-shell-injection",
        ["vm", "workspace", "export", "ghost", "--base-commit", f"HEAD;touch {PWNED}"],
        1,
        [f"banger: parameter 'base_commit': must not contain whitespace: 'HEAD;touch {PWNED}'"],
    ),
    Case(
        "export-base-commit-option-like",
        ["vm", "workspace", "export", "ghost", "--base-commit", f"--output={PWNED}"],
        1,
        [f"banger: parameter 'base_commit': '--output={PWNED}' cannot start with '-'"],
    ),
    Case(
        "export-guest-path-traversal",
        ["vm", "workspace", "export", "ghost", "--guest-path", "/root/../etc"],
        1,
        [
            "banger: parameter 'guest_path': guest path '/root/../etc' must be a normalised "
            "absolute path below /"
        ],
    ),
    Case(
        "export-guest-path-with-escape",
        ["vm", "workspace", "export", "ghost", "--guest-path", "rel\x1b[2J"],
        1,
        ["banger: parameter 'guest_path': must not contain control characters (found '\\x1b')"],
    ),
    Case(
        "export-output-in-missing-dir",
        ["vm", "workspace", "export", "ghost", "-o", str(SENTINEL / "no" / "x.patch")],
        1,
        [f"banger: cannot write the patch next to {SENTINEL}/no/x.patch: No such file"],
    ),
    Case(
        "stats-interval-zero",
        ["vm", "stats", "ghost", "--interval", "0"],
        2,
        ["Error: Invalid value for '--interval': 0.0 is not in the range 0.5<=x<=3600."],
    ),
]


@pytest.fixture(scope="module")
def env() -> Iterator[BangerEnv]:
    be = make_env("bgh-")
    be.banger("daemon", "start", check=True, timeout=30)
    yield be
    _stop_daemon(be)
    shutil.rmtree(be.root, ignore_errors=True)


@pytest.fixture
def sentinel() -> Iterator[Path]:
    shutil.rmtree(SENTINEL, ignore_errors=True)
    SENTINEL.mkdir(mode=0o700)
    (SENTINEL / "keep").write_text("untouched\n")
    os.chmod(SENTINEL / "keep", 0o600)
    yield SENTINEL
    shutil.rmtree(SENTINEL, ignore_errors=True)


def _snapshot(root: Path) -> list[tuple[str, int, bytes]]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            st = p.lstat()
            out.append((str(p), stat.S_IMODE(st.st_mode), p.read_bytes() if p.is_file() else b""))
    return sorted(out)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_argument(case: Case, env: BangerEnv, sentinel: Path) -> None:
    before = _snapshot(sentinel.parent / sentinel.name)
    p = env.banger(*case.argv, timeout=60)
    assert p.returncode == case.status, (p.stdout, p.stderr)
    for text in case.says:
        assert text in p.stderr, p.stderr
    # Nothing the arguments carried reaches the terminal as a control character.
    for ch in ("\x1b", "\x07", "\x9b", "\r"):
        assert ch not in p.stderr and ch not in p.stdout
    with env.client() as c:
        assert c.call("ping")["pid"] > 0
    assert not PWNED.exists()
    assert _snapshot(sentinel) == before

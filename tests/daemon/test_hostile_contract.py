"""Hostile `banger rpc schema --method NAME` arguments against the real CLI.

The command reads no daemon and writes nothing, so each case asserts the exact refusal (exit 2,
the name printed escaped and cut), that nothing went to stdout, that a daemon started beforehand
still answers `ping`, and that a sentinel directory outside the state dir is unchanged.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import BangerEnv

# What a shell-expanded name would create: it must never appear (no shell ever sees the name).
PWNED = Path("/tmp/bg-hostile-contract-pwned")


@dataclass(frozen=True)
class Case:
    id: str
    name: str
    says: str


CASES = [
    Case("osc-title-and-clear-screen", "\x1b]0;pwned\x07\x1b[2J", "'\\x1b]0;pwned\\x07\\x1b[2J'"),
    Case("c1-csi-and-lone-cr", "vm.show\x9b31m\rfake", "'vm.show\\x9b31m\\rfake'"),
    Case("newline-forged-line", "ping\nbanger: all good", "'ping\\nbanger: all good'"),
    Case("rtl-override", "vm.\u202ewohs", "'vm.\\u202ewohs'"),
    Case("path-traversal", "../../etc/passwd", "'../../etc/passwd'"),
    Case("empty", "", "no RPC method ''."),
    Case("overlong-100k", "v" * 100_000, "'" + "v" * 120 + "…'"),
    Case("shell-metachars", f"$(touch {PWNED});`id`", f"'$(touch {PWNED});`id`'"),
    Case("method-with-trailing-space", "ping ", "'ping '"),
    Case("case-changed", "PING", "'PING'"),
]


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("outside")
    (root / "keep").write_text("untouched\n")
    os.chmod(root, 0o755)
    return root


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    out = {str(root): (stat.S_IMODE(root.stat().st_mode), b"")}
    for p in root.rglob("*"):
        out[str(p)] = (stat.S_IMODE(p.stat().st_mode), p.read_bytes() if p.is_file() else b"")
    return out


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_method_name(case: Case, daemon: BangerEnv, sentinel: Path) -> None:
    before = _snapshot(sentinel)
    r = daemon.banger("rpc", "schema", "--method", case.name)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Error: Invalid value for '--method': no RPC method " in r.stderr
    assert case.says in r.stderr
    assert "\x1b" not in r.stderr and "\x9b" not in r.stderr and "\u202e" not in r.stderr
    assert len(r.stderr) < 1000  # a 100k name is cut, not echoed
    with daemon.client() as c:
        assert c.call("ping")["pid"] > 0
    assert _snapshot(sentinel) == before
    assert not PWNED.exists()

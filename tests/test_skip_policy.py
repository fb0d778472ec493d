"""The skip policy turns any skip but the listed ones into a failure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

DEMO = """
import pytest

def test_missing_tool():
    pytest.skip("needs some tool")

REASON = "real Firecracker suite needs firecracker and a KVM that runs guests: x"

@pytest.mark.skipif(True, reason=REASON)
def test_real_firecracker():
    pass
"""


def test_only_listed_skips_pass(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(
        "from tests.skip_policy import pytest_runtest_makereport  # noqa: F401\n"
    )
    (tmp_path / "test_demo.py").write_text(DEMO)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 1, r.stdout
    assert "1 failed, 1 skipped" in r.stdout, r.stdout
    assert "skip not allowed: 'needs some tool'" in r.stdout

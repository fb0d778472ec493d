"""Hatch build hook: stamps the commit and build time into banger/_build.py (see buildinfo.py).

Runs for wheels and editable installs (`pip install -e`, as scripts/setup-host.sh does).
SOURCE_DATE_EPOCH, when set, fixes the build time for reproducible builds.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

TARGET = "src/banger/_build.py"


def _commit(root: str) -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return r.stdout.strip() if r.returncode == 0 else ""


def _built() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch else datetime.now(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


class CustomBuildHook(BuildHookInterface):  # type: ignore[type-arg]
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        text = (
            '"""Written by hatch_build.py at install time; not in git."""\n\n'
            f'COMMIT = "{_commit(self.root)}"\n'
            f'BUILT = "{_built()}"\n'
        )
        Path(self.root, TARGET).write_text(text)
        build_data["artifacts"].append(TARGET)

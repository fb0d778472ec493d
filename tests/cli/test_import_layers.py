"""The client-side layers import downwards only (docs/CONTRIBUTING.md): cli -> sdk / remote /
mcpserver -> client -> rpc. A module of a lower layer that imports a higher one (even inside a
function) brings the package cycles of issue 13 back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import banger

SRC = Path(banger.__file__).parent

# package -> packages none of its modules may import (at any depth, lazily or not).
FORBIDDEN = {
    "client": {"cli", "sdk", "remote", "mcpserver"},
    "sdk": {"cli", "remote", "mcpserver"},
    "remote": {"cli", "mcpserver"},
    "mcpserver": {"cli"},
    "privhelper": {"doctor"},
}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def _package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "banger" and len(parts) > 1 else None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_higher_layer(package: str) -> None:
    files = sorted((SRC / package).rglob("*.py"))
    assert files, f"no modules under banger/{package}"
    wrong = [
        f"{path.relative_to(SRC)} imports {module}"
        for path in files
        for module in sorted(_imports(path))
        if _package_of(module) in FORBIDDEN[package]
    ]
    assert not wrong, "\n".join(wrong)

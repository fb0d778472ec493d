"""The layers, checked on the source: which package may import which (docs/CONTRIBUTING.md).

Every `import` counts, wherever it is (module level, inside a function, under TYPE_CHECKING): a
deferred import is still a dependency. `python tests/test_layers.py` prints the import cycles.

KNOWN_* list what other work in flight still has to fix; each entry must still be an offence
(the test fails when one is fixed, so the list only shrinks) and the lists end empty.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

# BANGER_LAYERS_SRC: walk another checkout's src/ (to print its cycles for comparison).
SRC = Path(os.environ.get("BANGER_LAYERS_SRC") or Path(__file__).resolve().parent.parent / "src")
ROOT = SRC / "banger"

# Services and what they stand on: they never reach up into the daemon, the CLI or the wire.
SERVICE_PACKAGES = ("images", "kernels", "network", "vms", "workspace", "guest", "store", "vmm")
ABOVE_SERVICES = ("banger.daemon", "banger.cli", "banger.rpc")
# Only vmm/ knows the concrete drivers; everyone else asks the registry for a Driver.
CONCRETE_DRIVERS = ("banger.vmm.qemu", "banger.vmm.firecracker", "banger.vmm.select")

# (importing module, imported module) pairs still to fix. All fixed by issue 13; a new entry needs
# a reason and a plan to remove it.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CONCRETE: set[tuple[str, str]] = set()
# Runtime import cycles outside the services (CLI commands, SDK), named by one member each.
KNOWN_RUNTIME_CYCLES: set[str] = {"banger.cli.vm", "banger.sdk.daemon"}
# Service modules in an import cycle with the daemon.
KNOWN_IN_CYCLE: set[str] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under `if TYPE_CHECKING:` (never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def imports_of(name: str, path: Path, known: set[str], *, runtime: bool) -> Iterator[str]:
    """Every banger module `name` imports (`from pkg import sub` names the submodule); with
    `runtime`, not the ones under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_only(tree) if runtime else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("banger"):
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("banger"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield sub if sub in known else target


def import_graph(*, runtime: bool = False) -> dict[str, set[str]]:
    """Module -> the banger modules it imports. Layering counts every import (a TYPE_CHECKING
    one is a dependency too); cycles count what runs (`runtime`)."""
    modules = all_modules()
    known = set(modules)
    return {
        name: {t for t in imports_of(name, path, known, runtime=runtime) if t in known} - {name}
        for name, path in modules.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between top-level packages (banger.vms.service -> banger.vms)."""

    def top(m: str) -> str:
        return ".".join(m.split(".")[:2])

    out: dict[str, set[str]] = {}
    for src, targets in graph.items():
        out.setdefault(top(src), set()).update(top(t) for t in targets if top(t) != top(src))
    return out


def _is_service(module: str) -> bool:
    return any(
        module == f"banger.{p}" or module.startswith(f"banger.{p}.") for p in SERVICE_PACKAGES
    )


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_walk_sees_the_imports() -> None:
    graph = import_graph()
    # Guards the walk itself: known edges of each kind (module level, from-import of a module).
    assert "banger.store.db" in graph["banger.daemon.app"]
    assert "banger.daemon.dispatch" in graph["banger.daemon.app"]
    assert "banger.vmm.base" in graph["banger.vmm.registry"]


def test_services_never_import_the_daemon_cli_or_rpc() -> None:
    graph = import_graph()
    upward = {
        (src, dst)
        for src, targets in graph.items()
        if _is_service(src)
        for dst in targets
        if _under(dst, ABOVE_SERVICES)
    }
    assert upward - KNOWN_UPWARD == set(), "a service imports above its layer"
    assert KNOWN_UPWARD - upward == set(), "fixed: remove these from KNOWN_UPWARD"


def test_only_vmm_knows_the_concrete_drivers() -> None:
    graph = import_graph()
    concrete = {
        (src, dst)
        for src, targets in graph.items()
        if not src.startswith("banger.vmm")
        for dst in targets
        if dst in CONCRETE_DRIVERS
    }
    assert concrete - KNOWN_CONCRETE == set(), "a concrete driver imported outside vmm/"
    assert KNOWN_CONCRETE - concrete == set(), "fixed: remove these from KNOWN_CONCRETE"


def test_no_new_runtime_import_cycles() -> None:
    found = cycles(import_graph(runtime=True))
    named = {m for c in found for m in c if m in KNOWN_RUNTIME_CYCLES}
    assert [c for c in found if not KNOWN_RUNTIME_CYCLES & set(c)] == [], "a new import cycle"
    assert KNOWN_RUNTIME_CYCLES - named == set(), "gone: remove it from KNOWN_RUNTIME_CYCLES"


def test_no_service_module_is_in_an_import_cycle() -> None:
    in_cycle = {m for c in cycles(import_graph()) for m in c if _is_service(m)}
    assert in_cycle - KNOWN_IN_CYCLE == set(), "a service module is in an import cycle"
    assert KNOWN_IN_CYCLE - in_cycle == set(), "fixed: remove these from KNOWN_IN_CYCLE"


if __name__ == "__main__":
    print("module cycles (every import):")
    for c in cycles(import_graph()):
        print("  " + " <-> ".join(c))
    g = import_graph(runtime=True)
    print("module cycles (runtime imports):")
    for c in cycles(g):
        print("  " + " <-> ".join(c))
    print("package cycles:")
    for c in cycles(package_graph(g)):
        print("  " + " <-> ".join(c))

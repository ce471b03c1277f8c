"""
The shape of the code: dependencies between fws's modules point one way (no
import cycle, counting imports made only for type checking).
"""

from __future__ import annotations

import ast
from pathlib import Path

FWS = Path(__file__).resolve().parent.parent / "fws"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(FWS.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The fws modules ``path`` imports, anywhere in it (TYPE_CHECKING blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # "from fws import framing" imports the submodule; "from fws.x import y" imports fws.x
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def test_no_import_cycle_in_fws() -> None:
    paths = {module_name(p): p for p in FWS.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports(path, modules) - {name} for name, path in paths.items()}
    assert graph["fws.factory"] >= {"fws.protocol"}  # the walk sees what it should
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles

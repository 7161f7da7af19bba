"""The product's import graph has no cycle, and the runtime imports nothing from the export side or above.

Every ``import`` statement of every module counts, wherever it stands (module level, inside a function,
under ``TYPE_CHECKING``): a cycle hidden in a function-level import is still two modules that cannot be
read, tested or moved apart. The graph is read from the source (``ast``), the package layout from
pyproject.toml's ``package-dir``.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    dirs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    out = {}
    for package, folder in dirs.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *rel))
            if name.removesuffix(".__init__") in out and not name.endswith("__init__"):
                continue
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as the list of its modules), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_product_has_no_import_cycle() -> None:
    graph = _graph()
    assert len(graph) > 100  # the whole product was read, not an empty folder
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = _graph()
    graph["vitmsn.runtime.backends.base"] = graph["vitmsn.runtime.backends.base"] | {"vitmsn.runtime.selection"}
    assert _cycle(graph) is not None  # selection -> ... -> base -> selection


def test_the_runtime_imports_only_the_runtime_and_the_base() -> None:
    graph = _graph()
    for name, targets in graph.items():
        if name.startswith("vitmsn.runtime"):
            outside = {t for t in targets if not t.startswith(("vitmsn.runtime", "vitmsn.core"))}
            assert not outside, f"{name} imports {sorted(outside)}"

"""No import cycle among the modules of ``worker/`` (issue 17, guard 8).

A cycle makes a module's names depend on which side of the circle was imported first: the
other side sees it half-initialised.  The graph is read from the source with :mod:`ast`:
an edge for every module-level import of a ``worker`` module, including imports nested in
``if``/``try``/``with`` at module level.  Imports inside functions run after every module is
loaded, and imports under ``if TYPE_CHECKING:`` never run, so neither makes an edge.
``from package import name`` makes an edge to ``package.name`` when that is a module, and
to ``package`` itself either way (its ``__init__`` runs first).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker"


def module_files() -> dict[str, Path]:
    """Every module of the worker package, by dotted name."""
    modules: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(source: str, module: str, *, is_package: bool) -> set[str]:
    """Dotted names ``module`` imports at module level (outside ``if TYPE_CHECKING:``)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([node.module] if node.module else [])])
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With | ast.AsyncWith):
                visit(node.body)

    visit(ast.parse(source).body)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each module -> the worker modules it imports at module level."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        names = imported_names(
            path.read_text(), name, is_package=path.name == "__init__.py"
        )
        graph[name] = {target for target in names if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, str] = {}  # "open" while on the path, "done" once fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return [*path[path.index(target):], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_every_worker_module_imports() -> None:
    """The graph covers real modules: each one imports on its own."""
    modules = module_files()
    assert "worker.app" in modules and "worker.health" in modules
    for name in modules:
        importlib.import_module(name)


def test_no_import_cycle_among_worker_modules() -> None:
    cycle = find_cycle(import_graph(module_files()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or ())


def test_the_graph_has_the_edges_it_should() -> None:
    """Guard against a graph that could never hold a cycle: known edges are there, and a
    TYPE_CHECKING import is not."""
    graph = import_graph(module_files())
    assert "worker.health" in graph["worker.app"]
    assert "worker.delivery_engine" in graph["worker.agents.deliver"]
    assert "worker.config" not in graph["worker.app"]  # imported under TYPE_CHECKING only


@pytest.mark.parametrize(
    ("sources", "cycle"),
    [
        (
            {"worker.a": "from worker.b import f", "worker.b": "import worker.a"},
            ["worker.a", "worker.b", "worker.a"],
        ),
        (
            {
                "worker.a": "try:\n    from worker.b import f\nexcept ImportError:\n    pass",
                "worker.b": "if True:\n    from worker import a",
            },
            ["worker.a", "worker.b", "worker.a"],
        ),
        (
            {
                "worker.a": "from worker.b import f",
                "worker.b": "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    import worker.a",
            },
            None,
        ),
        (
            {"worker.a": "from worker.b import f", "worker.b": "def g():\n    import worker.a"},
            None,
        ),
    ],
)
def test_the_check_finds_a_cycle_and_only_a_real_one(
    sources: dict[str, str], cycle: list[str] | None
) -> None:
    names = set(sources) | {"worker"}
    graph = {
        name: {
            target
            for target in imported_names(source, name, is_package=False)
            if target in names and target != name
        }
        for name, source in sources.items()
    }
    assert find_cycle(graph) == cycle

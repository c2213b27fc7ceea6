"""Size guards: no module of ``worker`` over 600 lines, no function over 80.

Why: a module or function past these sizes has stopped having one clear job (the runtime
review of issue 17 found ``build_app`` at 348 lines and the delivery engine at 1,100), and
size creeps back one reasonable-looking addition at a time unless a test stops it.

The modules and functions already over the limit are listed in :data:`MODULE_DEBTS` and
:data:`FUNCTION_DEBTS` with the size they had when the guard was written.  They may shrink,
never grow, and an entry must go once its code is within the limit, so the lists only get
shorter.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80

#: module (relative path) -> lines it may have at most, until it is split.
MODULE_DEBTS: dict[str, int] = {}

#: "module:qualified.name" -> lines it may have at most, until it is split.
FUNCTION_DEBTS: dict[str, int] = {}


def _modules() -> list[Path]:
    return sorted((ROOT / "worker").rglob("*.py"))


def _functions(path: Path) -> dict[str, int]:
    """Qualified name -> lines, for every function and method in ``path`` (nested ones too)."""
    sizes: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    sizes[name] = (child.end_lineno or child.lineno) - child.lineno + 1
                visit(child, f"{name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text()), "")
    return sizes


def test_no_module_grows_past_its_limit() -> None:
    over = {}
    for path in _modules():
        name = str(path.relative_to(ROOT))
        lines = len(path.read_text().splitlines())
        if lines > MODULE_DEBTS.get(name, MAX_MODULE_LINES):
            over[name] = lines
    assert not over, f"modules over {MAX_MODULE_LINES} lines (or over their recorded debt): {over}"


def test_no_function_grows_past_its_limit() -> None:
    over = {}
    for path in _modules():
        for qualname, lines in _functions(path).items():
            name = f"{path.relative_to(ROOT)}:{qualname}"
            if lines > FUNCTION_DEBTS.get(name, MAX_FUNCTION_LINES):
                over[name] = lines
    assert not over, f"functions over {MAX_FUNCTION_LINES} lines (or their recorded debt): {over}"


def test_debts_that_are_paid_leave_the_list() -> None:
    """A listed module or function that is gone or within the limit must be removed, so the
    lists record only real debts."""
    paid = [name for name in MODULE_DEBTS
            if not (ROOT / name).exists()
            or len((ROOT / name).read_text().splitlines()) <= MAX_MODULE_LINES]
    for name in FUNCTION_DEBTS:
        module, qualname = name.split(":")
        lines = _functions(ROOT / module).get(qualname, 0) if (ROOT / module).exists() else 0
        if lines <= MAX_FUNCTION_LINES:
            paid.append(name)
    assert not paid, f"within the limit now, remove from the debts: {paid}"


def test_the_guard_sees_nested_functions_and_methods(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    body = "\n".join(f"        x{i} = {i}" for i in range(3))
    source.write_text(f"class A:\n    def f(self):\n        def g():\n            pass\n{body}\n")
    assert _functions(source) == {"A.f": 6, "A.f.g": 2}

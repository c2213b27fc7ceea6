"""``worker/commands/`` imports no adapter (DESIGN 3, issue 17): commands use public entry points.

A command that reaches into the Faust wiring, an agent or the collector's aiohttp/Kafka
modules couples the CLI to how the runtime is put together; the public entry points
(``worker.collector.start_in_process``, ``worker.kafka``, ``worker.config``...) are what
commands may use.  Every import counts, also inside functions and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ROOT / "worker" / "commands"

#: Modules (and their submodules) that are adapters or runtime wiring.
ADAPTERS = (
    "worker.agents",
    "worker.app",
    "worker.faust_compat",
    "worker.collector.app",
    "worker.collector.producer",
    "worker.collector.server",
)


def _is_adapter(module: str) -> bool:
    return any(module == a or module.startswith(f"{a}.") for a in ADAPTERS)


def imported_modules(source: str, package: str) -> set[str]:
    """Every module ``source`` imports, anywhere in it; ``from p import m`` counts ``p`` and
    ``p.m`` (``m`` may be a module); relative imports are resolved against ``package``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def test_commands_import_no_adapter() -> None:
    offenders = {}
    for path in sorted(COMMANDS.rglob("*.py")):
        imported = imported_modules(path.read_text(), "worker.commands")
        bad = sorted(m for m in imported if _is_adapter(m))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"commands import adapters (use a public entry point): {offenders}"


def test_the_guard_sees_every_form_of_import() -> None:
    source = """
import worker.agents.deliver
from worker.collector import server
from worker.app import build_app
def f():
    from ..collector.app import build_app
if TYPE_CHECKING:
    from worker.faust_compat import bypass
"""
    found = {m for m in imported_modules(source, "worker.commands") if _is_adapter(m)}
    assert found == {
        "worker.agents.deliver",
        "worker.collector.server",
        "worker.app",
        "worker.app.build_app",
        "worker.collector.app",
        "worker.collector.app.build_app",
        "worker.faust_compat",
        "worker.faust_compat.bypass",
    }
    assert not {m for m in imported_modules("from worker.collector import start_in_process\n"
                                            "import worker.kafka\n", "worker.commands")
                if _is_adapter(m)}

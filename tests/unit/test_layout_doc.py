"""The layout in ``docs/development.md`` names every module of ``worker/`` and ``bench/``, and
nothing that is not there.

Why: the layout is where a new contributor starts, and it drifts silently: a module added or
renamed without a line there leaves a tree that no longer matches the files.  The layout is a
code block indented two spaces per folder level; a line's first word is a path relative to
its folder, a folder ending in ``/``.  Package ``__init__.py`` files are not listed.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "development.md"
LISTED_TREES = ("worker", "bench")


def _layout_block() -> list[str]:
    text = DOC.read_text()
    section = text.split("## Layout\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```\n(.*?)```", section, re.S)
    assert match, "docs/development.md's Layout section has no code block"
    return match.group(1).splitlines()


def layout_paths(lines: list[str]) -> set[str]:
    """The paths the layout names: each line's first word under the folders it is indented in.

    Continuation lines (more indented, or blank before the description column) name nothing.
    """
    paths: set[str] = set()
    folders: list[str] = []
    for line in lines:
        stripped = line.lstrip(" ")
        indent = len(line) - len(stripped)
        if not stripped or indent % 2 or indent // 2 > len(folders):
            continue
        name = stripped.split()[0]
        if not (name.endswith("/") or name.endswith(".py")):
            continue
        del folders[indent // 2:]
        path = "".join(folders) + name
        paths.add(path)
        if name.endswith("/"):
            folders.append(name)
    return paths


def _modules() -> set[str]:
    found: set[str] = set()
    for tree in LISTED_TREES:
        for path in (ROOT / tree).rglob("*.py"):
            relative = path.relative_to(ROOT)
            if path.name != "__init__.py":
                found.add(relative.as_posix())
            for parent in relative.parents:
                if parent != Path("."):
                    found.add(parent.as_posix() + "/")
    return found


def test_layout_parser_reads_nesting() -> None:
    lines = [
        "worker/",
        "  a.py                 one",
        "  sub/                 a folder",
        "    b.py               two",
        "                       a continuation line",
        "  c.py                 back at the first level",
        "docs/                  a folder with a description",
        "                       that runs on",
    ]
    assert layout_paths(lines) == {
        "worker/", "worker/a.py", "worker/sub/", "worker/sub/b.py", "worker/c.py", "docs/",
    }


def test_layout_names_every_module_and_nothing_else() -> None:
    listed = layout_paths(_layout_block())
    in_trees = {p for p in listed if p.split("/", 1)[0] in LISTED_TREES}
    modules = _modules()
    assert sorted(modules - in_trees) == [], "modules missing from docs/development.md's Layout"
    assert sorted(in_trees - modules) == [], "Layout lines naming no module"
    others = listed - in_trees
    missing = sorted(p for p in others if not (ROOT / p).exists())
    assert missing == [], "Layout lines naming no folder"

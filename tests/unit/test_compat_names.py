"""worker.faust_compat.names: the private names and upstream functions the worker depends on
are all listed, all present in the installed releases, and unchanged since they were read.

A failure here after an upgrade of faust-streaming, aiokafka or mode-streaming is the
signal to re-read the upstream code named in the message before trusting the patches in
worker/faust_compat/ (see that package's docstring).
"""

from __future__ import annotations

import ast
import importlib.metadata
import inspect
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from worker.faust_compat.names import (
    DISTRIBUTIONS,
    NAMES,
    UPSTREAM,
    PrivateName,
    Upstream,
    allowed_range,
    installed_versions,
    resolve,
    source_hash,
)

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "worker"
COMPAT = PACKAGE / "faust_compat"
NAMES_FILE = "worker/faust_compat/names.py"
#: Libraries whose internals count (mode comes with faust-streaming, which pins it).
LIBRARIES = ("faust", "aiokafka", "mode")


def pyproject_ranges() -> dict[str, SpecifierSet]:
    """Distribution -> the version range pyproject.toml allows (direct dependencies only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    ranges = {}
    for line in project["dependencies"]:
        requirement = Requirement(line)
        ranges[requirement.name] = requirement.specifier
    return ranges


def allowed(distribution: str) -> SpecifierSet | None:
    return pyproject_ranges().get(distribution)


@pytest.mark.parametrize("name", NAMES, ids=lambda n: f"{n.owner.rsplit(':')[-1]}.{n.name}")
def test_each_listed_name_exists_in_the_installed_release(name: PrivateName) -> None:
    owner = resolve(name.owner)
    if name.kind == "member":
        found = hasattr(owner, name.name)
    else:  # assigned to self in the owner's (or a base class's) source
        pattern = re.compile(rf"self\.{re.escape(name.name)}\s*(:[^=\n]*)?=")
        found = any(
            pattern.search(inspect.getsource(cls))
            for cls in owner.__mro__
            if cls.__module__.split(".")[0] in LIBRARIES
        )
    installed = importlib.metadata.version(name.library)
    assert found, (
        f"{name.owner} has no {name.name!r} in {name.library} {installed} (read from "
        f"{name.read_from}); worker.faust_compat.{name.used_by.split(',')[0]} uses it: "
        "re-read the upstream code and adapt the module"
    )


@pytest.mark.parametrize("name", NAMES, ids=lambda n: f"{n.owner.rsplit(':')[-1]}.{n.name}")
def test_each_name_was_read_from_a_release_pyproject_allows(name: PrivateName) -> None:
    spec = allowed(name.library)
    if spec is None:  # mode-streaming: whatever faust-streaming requires
        assert name.read_from == installed_versions()[name.library]
        return
    assert Version(name.read_from) in spec, f"{name.read_from} outside {name.library}{spec}"


@pytest.mark.parametrize("upstream", UPSTREAM, ids=lambda u: u.target.rsplit(":")[-1])
def test_copied_and_patched_upstream_functions_are_the_ones_read(upstream: Upstream) -> None:
    installed = importlib.metadata.version(upstream.library)
    actual = source_hash(upstream.target)
    recorded = upstream.hashes.get(installed)
    where = (
        f"{upstream.target} ({upstream.relation} by worker.faust_compat.{upstream.used_by})"
    )
    if recorded is None:
        pytest.fail(
            f"{where}: its hash was recorded for {upstream.library} "
            f"{', '.join(sorted(upstream.hashes))} only, and {installed} is installed "
            f"(pyproject allows {allowed(upstream.library) or 'it'}). Re-read the function "
            f"in {upstream.library} {installed}; if worker.faust_compat.{upstream.used_by} still "
            f"holds against it, add {installed!r}: {actual!r} to its entry in {NAMES_FILE}."
        )
    assert actual == recorded, (
        f"{where} changed in {upstream.library} {installed} since its hash was recorded "
        f"({recorded}, now {actual}). Re-read it and adapt "
        f"worker.faust_compat.{upstream.used_by} before updating the hash in {NAMES_FILE}."
    )


def test_recorded_releases_lie_in_the_range_pyproject_allows() -> None:
    for upstream in UPSTREAM:
        spec = allowed(upstream.library)
        assert spec is not None
        for release in upstream.hashes:
            assert Version(release) in spec, f"{upstream.target}: {release} outside {spec}"


def test_the_installed_releases_are_the_ones_pyproject_allows() -> None:
    versions = installed_versions()
    assert set(versions) == set(DISTRIBUTIONS)
    for distribution, spec in pyproject_ranges().items():
        if distribution in DISTRIBUTIONS:
            assert Version(versions[distribution]) in spec
            # what the error message at start-up quotes is pyproject's range
            assert SpecifierSet(allowed_range(distribution)) == spec


def test_a_changed_function_is_noticed() -> None:
    """The hash covers the whole source: it differs between two of the listed functions."""
    hashes = {source_hash(upstream.target) for upstream in UPSTREAM}
    assert len(hashes) == len(UPSTREAM)
    assert all(re.fullmatch(r"[0-9a-f]{16}", h) for h in hashes)


def _private_uses(path: Path) -> set[str]:
    """Private attribute names ``path`` reads off objects other than ``self``/``cls``, and
    the private names it passes to getattr/hasattr/setattr as strings."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.add(node.attr)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and node.args[1].value.startswith("_")
            and not node.args[1].value.startswith("__")
        ):
            found.add(node.args[1].value)
    return found


def test_every_private_name_used_in_the_package_is_listed() -> None:
    listed = {name.name for name in NAMES}
    for path in sorted(COMPAT.glob("*.py")):
        unlisted = _private_uses(path) - listed
        assert not unlisted, f"{path.name} uses private names not in NAMES: {sorted(unlisted)}"


#: Internal names without an underscore that only Faust's internals have (NAMES lists them).
INTERNAL = ("consumer_generation_id", "set_persisted_offset", "offset_key", "perform_seek",
            "suspend_flow", "active_highwaters", "standby_highwaters", "on_recovery_completed")


def library_private_names() -> set[str]:
    """Every private name faust, aiokafka and mode define (as methods or on ``self``)."""
    import aiokafka
    import faust
    import mode

    names: set[str] = set()
    pattern = re.compile(r"(?:self\.|def )(_[a-z]\w*)")
    for package in (faust, aiokafka, mode):
        for path in Path(package.__file__ or "").parent.rglob("*.py"):
            names.update(pattern.findall(path.read_text(errors="replace")))
    return names


def test_no_module_outside_the_package_uses_a_private_library_name() -> None:
    """Outside worker/faust_compat/, no private name that Faust, aiokafka or mode define is
    read off an object, and none of the internal names of :data:`NAMES`.
    (devtools/reference.py reads prometheus_client's metric internals: not in scope.)"""
    private = library_private_names() | {name.name for name in NAMES}
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if COMPAT in path.parents or path == PACKAGE / "devtools" / "reference.py":
            continue
        source = path.read_text()
        used = (_private_uses(path) & private) | {
            name for name in INTERNAL if re.search(rf"\.{name}\b", source)
        }
        if used:
            offenders[str(path.relative_to(ROOT))] = sorted(used)
    assert not offenders, f"private library names outside worker/faust_compat: {offenders}"


def test_the_guard_sees_private_uses() -> None:
    """The scan finds what it should (against a module of the package that has them)."""
    used = _private_uses(COMPAT / "bypass.py")
    assert {"_drain_messages", "_read_offset", "_add_gap"} <= used
    assert {"_drain_messages", "_read_offset", "_getmany"} <= library_private_names()

"""Rules declare what the window engine does with them beyond their own windows (issue 17):
the engine reads these capabilities and never branches on a rule's name."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from worker.rules import RULES, RuleSpec
from worker.rules import explicit as explicit_rule
from worker.rules import scores as scores_rule

PACKAGE = Path(__file__).resolve().parents[3] / "worker" / "windows"


def test_which_rules_declare_which_capability() -> None:
    assert {n for n, s in RULES.items() if s.overrides_ratings} == {"explicit"}
    assert {n for n, s in RULES.items() if s.attaches_to_open_windows} == {"scores"}


@pytest.mark.parametrize(
    ("spec", "change"),
    [
        (scores_rule.RULE, {"overrides_ratings": True}),  # carried, not instant
        (explicit_rule.RULE, {"attaches_to_open_windows": True}),  # instant, not carried
    ],
)
def test_a_capability_the_engine_cannot_honour_is_refused(
    spec: RuleSpec[object], change: dict[str, bool]
) -> None:
    with pytest.raises(ValueError, match="only"):
        dataclasses.replace(spec, **change)  # type: ignore[arg-type]


def test_the_engine_names_no_rule() -> None:
    for path in PACKAGE.glob("*.py"):
        source = path.read_text()
        for name in RULES:
            assert f'"{name}"' not in source, f"{path.name} branches on the rule {name!r}"

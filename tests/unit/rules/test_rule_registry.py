"""The registry: every event type is handled or ignored on purpose; the facade is exact."""

from __future__ import annotations

import types
import typing
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import worker.rules as rules
from worker.events import EVENT_TYPES, RuleName
from worker.rules import (
    IGNORED_TYPES,
    RULE_FOR_TYPE,
    RULES,
    RuleConfig,
    code_retention,
    code_suggestion,
    engagement,
    explicit,
    rule_for,
    scores,
    search_clicks,
    session_feedback,
    ticket_resolution,
    utc,
)


def test_every_event_type_is_handled_or_ignored() -> None:
    handled = set(RULE_FOR_TYPE)
    assert handled | IGNORED_TYPES == set(EVENT_TYPES)
    assert not handled & IGNORED_TYPES
    for event_type in EVENT_TYPES:
        assert (rule_for(event_type) is None) == (event_type in IGNORED_TYPES)


def test_rules_match_the_decision_contract() -> None:
    assert set(RULES) == set(typing.get_args(RuleName))
    for module in (
        engagement,
        code_suggestion,
        code_retention,
        search_clicks,
        ticket_resolution,
        explicit,
        session_feedback,
        scores,
    ):
        spec = module.RULE
        assert spec.name == module.NAME
        assert spec.version == module.RULE_VERSION >= 1
        assert spec.opener == module.OPENER
        assert RULES[spec.name] is spec


def test_window_lengths_come_from_the_config() -> None:
    config = RuleConfig(
        engagement_window_ms=1, code_window_ms=2, clicks_window_ms=3, ticket_window_ms=4
    )
    lengths = {name: spec.window_ms(config) for name, spec in RULES.items()}
    assert lengths == {
        "engagement": 1,
        "code_suggestion": 2,
        "code_retention": 0,
        "search_clicks": 3,
        "ticket_resolution": 4,
        "explicit": 0,
        "session_feedback": 0,
        "scores": 0,
    }
    defaults = RuleConfig()
    assert RULES["ticket_resolution"].window_ms(defaults) == 86_400_000


def test_facade_all_matches_namespace() -> None:
    def ours(value: object) -> bool:
        if isinstance(value, types.ModuleType):
            return False
        module = getattr(value, "__module__", None)
        return module is None or module.startswith("worker.")  # constants have no module

    public = {
        name
        for name, value in vars(rules).items()
        if not name.startswith("_") and name != "annotations" and ours(value)
    }
    assert public <= set(rules.__all__), "public names missing from __all__"
    assert all(hasattr(rules, name) for name in rules.__all__)
    for module in (
        engagement,
        code_suggestion,
        code_retention,
        search_clicks,
        ticket_resolution,
        explicit,
        session_feedback,
        scores,
    ):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


@pytest.mark.parametrize(
    "changes",
    [
        {"engagement_window_ms": 0},
        {"long_read_ms": -1},
        {"short_read_ms": 40_000},
        {"repeat_similarity": 0.0},
        {"repeat_similarity": 1.5},
        {"correction_phrases": ()},
        {"correction_phrases": ("  ",)},
        {"correction_phrases": "actually"},
    ],
)
def test_config_refuses_bad_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid RuleConfig"):
        RuleConfig(**changes)  # type: ignore[arg-type]


def test_config_accepts_a_list_of_phrases_and_stays_hashable() -> None:
    config = RuleConfig(correction_phrases=["nope"])  # type: ignore[arg-type]
    assert config.correction_phrases == ("nope",)
    assert hash(config) == hash(RuleConfig(correction_phrases=("nope",)))


@given(st.integers(-(2**40), 2**45))
def test_utc_is_exact_to_the_millisecond(ms: int) -> None:
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert utc(ms) == expected

"""Code retention (issue 16 part 5): retained_pct, and false below CODE_RETAINED_MIN_PCT."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.unit.rules.eventkit import REQUEST, drain, engine, ev, feed
from worker.delivery_state import merge
from worker.rules import RuleConfig
from worker.rules.code_retention import SCORE, retained_pct


@pytest.mark.parametrize(
    ("retained", "suggested", "pct"),
    [
        (0, 1, 0),
        (1, 2, 50),
        (1, 3, 33),
        (2, 3, 67),
        (1, 200, 1),
        (1, 201, 0),
        (5, 3, 100),
        (420, 420, 100),
        (311, 420, 74),
    ],
)
def test_retained_pct_rounds_half_up_and_caps_at_100(
    retained: int, suggested: int, pct: int
) -> None:
    assert retained_pct(retained, suggested) == pct


@given(st.integers(0, 10_000_000), st.integers(1, 10_000_000))
def test_retained_pct_is_round_of_the_exact_ratio(retained: int, suggested: int) -> None:
    exact = 100 * retained / suggested
    pct = retained_pct(retained, suggested)
    assert 0 <= pct <= 100
    if exact < 100:
        assert abs(pct - exact) <= 0.5 + 1e-9


def test_retained_pct_refuses_what_the_schema_refuses() -> None:
    with pytest.raises(ValueError):
        retained_pct(1, 0)
    with pytest.raises(ValueError):
        retained_pct(-1, 3)


def _retention(
    config: RuleConfig, retained: int, suggested: int
) -> tuple[bool | None, dict[str, int]]:
    eng = engine(config=config)
    run = feed(
        eng, [ev("suggestion_retained", 40_000, retained_chars=retained, suggested_chars=suggested)]
    )
    decision = run.one("code_retention")
    assert decision.window_start == decision.window_end  # an instant decision
    return decision.rating, decision.scores


def test_off_by_default_retention_is_only_a_score() -> None:
    assert _retention(RuleConfig(), 0, 400) == (None, {SCORE: 0})


def test_below_the_threshold_rates_false_at_or_above_no_rating() -> None:
    config = RuleConfig(code_retained_min_pct=30)
    assert _retention(config, 118, 400) == (None, {SCORE: 30})  # 29.5 rounds up to 30: kept
    assert _retention(config, 117, 400) == (False, {SCORE: 29})
    assert _retention(config, 400, 400) == (None, {SCORE: 100})


def test_the_threshold_is_validated() -> None:
    with pytest.raises(ValueError, match="code_retained_min_pct"):
        RuleConfig(code_retained_min_pct=101)


def test_mostly_deleted_outranks_the_accept_in_either_order() -> None:
    """The retention event comes after the accept in event time, so its false wins in
    delivery whatever order the two decisions are merged in; the accept's window closed at
    the accept, so the retention event is never late for it."""
    config = RuleConfig(code_retained_min_pct=50)
    events = [
        ev("suggestion_shown", 0),
        ev("suggestion_accepted", 2_000),
        # within grace of the accept, so even the reversed order is on time
        ev("suggestion_retained", 6_000, retained_chars=10, suggested_chars=100),
    ]
    for order in (events, events[::-1]):
        eng = engine(config=config)
        run = drain(eng, feed(eng, list(order)))
        assert run.late == []
        code, retention = run.one("code_suggestion"), run.one("code_retention")
        assert code.rating is True and retention.rating is False
        for first, second in ((code, retention), (retention, code)):
            state, _ = merge(None, first, now_ms=0)
            state, _ = merge(state, second, now_ms=0)
            assert state.rating is False
            assert state.score_values() == {SCORE: 10}
            assert state.target_id == REQUEST


def test_an_explicit_rating_still_wins_over_retention() -> None:
    config = RuleConfig(code_retained_min_pct=50)
    eng = engine(config=config)
    run = feed(
        eng,
        [
            ev("feedback_given", 1_000, rating=True),
            ev("suggestion_retained", 32_000, retained_chars=0, suggested_chars=100),
        ],
    )
    state = None
    for decision in run.decisions:
        state, _ = merge(state, decision, now_ms=0)
    assert state is not None and state.rating is True
    assert state.score_values() == {SCORE: 0}

"""Pairing implicit with explicit ratings in the delivery state (issue 16 part 1).

Both orders must meet: an explicit rating before the window closed (the window's decision
carries a shadow_rating, never posted) and after (the window's decision carries its posted
rating).  Each (request, rule) is counted once, whatever the order and however often the
decisions are replayed.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from worker.delivery_state import (
    FeedbackState,
    RatingPair,
    calls_for,
    implicit_rating,
    merge,
    new_pairs,
)
from worker.events import Decision, decision_id_for
from worker.metrics import Metrics

REQUEST = str(uuid.UUID(int=9, version=4))
BASE = datetime(2026, 12, 1, tzinfo=UTC)


def decision(
    rule: str,
    minute: int,
    rating: bool | None,
    *,
    shadow: bool | None = None,
    scores: dict[str, int] | None = None,
) -> Decision:
    start = BASE + timedelta(minutes=minute)
    instant = rule == "explicit"
    return Decision(
        decision_id=decision_id_for(REQUEST, rule, int(start.timestamp() * 1000)),
        target="request",
        request_id=REQUEST,
        session_id=None,
        rule=rule,
        rating=rating,
        shadow_rating=shadow,
        scores=scores or {},
        window_start=start,
        window_end=start if instant else start + timedelta(seconds=60),
        decided_at=start + timedelta(seconds=65),
        rule_version=1,
    )


def fold(decisions: list[Decision]) -> tuple[FeedbackState, list[RatingPair]]:
    state: FeedbackState | None = None
    pairs: list[RatingPair] = []
    for d in decisions:
        after, _ = merge(state, d, now_ms=0)
        pairs += new_pairs(state, after)
        state = after
    assert state is not None
    return state, pairs


def test_explicit_after_the_implicit_rating_pairs_with_the_posted_rating() -> None:
    state, pairs = fold([decision("engagement", 0, True), decision("explicit", 5, False)])
    assert pairs == [RatingPair("engagement", True, False)]
    assert not pairs[0].agrees
    assert state.rating is False  # the explicit one is what is posted


def test_explicit_before_the_window_closed_pairs_with_the_shadow_in_either_order() -> None:
    shadow = decision("code_suggestion", 0, None, shadow=True)
    explicit = decision("explicit", 0, True)
    for order in ([shadow, explicit], [explicit, shadow]):
        state, pairs = fold(order)
        assert pairs == [RatingPair("code_suggestion", True, True)]
        assert pairs[0].agrees
        assert state.rating is True


def test_a_shadow_is_never_posted_and_costs_no_call() -> None:
    state, changed = merge(None, decision("engagement", 0, None, shadow=False), now_ms=0)
    assert not changed and state.version == 0
    assert state.rating is None and calls_for(state) == ()
    state, _ = merge(state, decision("explicit", 0, True), now_ms=0)
    assert calls_for(state)[0].body == {"scores": {"helicone-score-feedback": 1}}


def test_without_an_explicit_rating_nothing_is_paired() -> None:
    _, pairs = fold([decision("engagement", 0, True), decision("search_clicks", 1, False)])
    assert pairs == []


def test_replays_and_duplicates_count_nothing_again() -> None:
    items = [decision("engagement", 0, True), decision("explicit", 5, True)]
    _, pairs = fold(items + items + items[::-1])
    assert pairs == [RatingPair("engagement", True, True)]


def test_rules_pair_independently_and_explicit_decisions_are_not_implicit() -> None:
    _, pairs = fold(
        [
            decision("explicit", 3, False),
            decision("engagement", 0, False),
            decision("code_retention", 4, None, scores={"retained_pct": 80}),  # no rating
            decision("search_clicks", 1, True),
        ]
    )
    assert sorted((p.rule, p.implicit, p.explicit) for p in pairs) == [
        ("engagement", False, False),
        ("search_clicks", True, False),
    ]
    assert implicit_rating(decision("explicit", 0, True)) is None


def test_the_encoding_keeps_pairs_and_reads_states_written_before_them() -> None:
    state, _ = fold([decision("engagement", 0, True), decision("explicit", 5, True)])
    assert FeedbackState.from_json(state.to_json()) == state
    plain, _ = merge(None, decision("explicit", 5, True), now_ms=0)
    assert b"implicit" not in plain.to_json() and b"paired" not in plain.to_json()


_ITEMS = st.lists(
    st.builds(
        lambda rule, minute, rating, shadow_instead: decision(
            rule,
            minute,
            None if shadow_instead and rule != "explicit" else rating,
            shadow=rating if shadow_instead and rule != "explicit" else None,
        ),
        st.sampled_from(["engagement", "search_clicks", "explicit"]),
        st.integers(0, 20),
        st.booleans(),
        st.booleans(),
    ),
    min_size=1,
    max_size=8,
    unique_by=lambda d: d.decision_id,
)


@given(_ITEMS, st.randoms(use_true_random=False))
def test_each_rule_is_paired_at_most_once_in_any_order(items: list[Decision], rnd: object) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    state_a, pairs_a = fold(items + items)
    state_b, pairs_b = fold(shuffled)
    rules_a = sorted(p.rule for p in pairs_a)
    assert rules_a == sorted(set(rules_a)) == sorted(p.rule for p in pairs_b)
    has_explicit = any(d.rule == "explicit" for d in items)
    implicit_rules = {d.rule for d in items if implicit_rating(d) is not None}
    assert set(rules_a) == (implicit_rules if has_explicit else set())
    assert state_a.rating == state_b.rating and state_a.implicit == state_b.implicit


def test_the_metric_counts_pairs_by_rule_and_ratings() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.observe_agreement(RatingPair("engagement", True, False))
    text = metrics.exposition().decode()
    assert (
        'feedback_rule_agreement_total{explicit="false",implicit="true",rule="engagement"} 1.0'
        in text
    )
    assert (
        'feedback_rule_agreement_total{explicit="true",implicit="true",rule="code_suggestion"} '
        "0.0" in text
    )


def test_the_outbox_record_leaves_out_an_absent_shadow() -> None:
    """Decisions without a shadow are written as before the field existed (rolling upgrades:
    an older worker forbids unknown fields); both forms parse."""
    plain = decision("engagement", 0, True)
    assert b"shadow_rating" not in plain.outbox_json()
    assert Decision.model_validate_json(plain.outbox_json()) == plain
    shadowed = decision("engagement", 0, None, shadow=False)
    assert b'"shadow_rating":false' in shadowed.outbox_json()
    assert Decision.model_validate_json(shadowed.outbox_json()) == shadowed

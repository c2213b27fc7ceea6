"""The pure half of whole-state delivery: merging decisions, the calls a state needs, the rate.

Merging must not depend on the order decisions arrive in or on how often each arrives
(replays, duplicates, redrives), because the outbox is at-least-once and partitions are
replayed after a crash; hypothesis checks that over arbitrary sequences.
"""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.clock import FakeClock
from worker.delivery import AdaptiveRate
from worker.delivery_state import (
    FEEDBACK_SCORE_KEY,
    FeedbackState,
    calls_for,
    merge,
)
from worker.events import Decision, decision_id_for

REQUEST = str(uuid.UUID(int=7, version=4))
BASE = datetime(2026, 12, 1, tzinfo=UTC)
RULES = ["engagement", "search_clicks", "explicit", "scores", "ticket_resolution"]


def decision(rule: str, minute: int, rating: bool | None, scores: dict[str, int]) -> Decision:
    start = BASE + timedelta(minutes=minute)
    return Decision(
        decision_id=decision_id_for(REQUEST, rule, int(start.timestamp() * 1000)),
        target="request",
        request_id=REQUEST,
        session_id=None,
        rule=rule,
        rating=rating,
        scores=scores,
        window_start=start,
        window_end=start + timedelta(seconds=60),
        decided_at=start + timedelta(seconds=65),
        rule_version=1,
    )


decisions = st.builds(
    decision,
    st.sampled_from(RULES),
    st.integers(0, 30),
    st.none() | st.booleans(),
    st.dictionaries(st.sampled_from(["a", "b", "time_spent_s"]), st.integers(0, 100), max_size=2),
)


#: A decision id stands for one content (it is derived from target, rule and window start, and
#: a window is decided once), so generated lists hold each id once.
def unique(min_size: int = 0) -> st.SearchStrategy[list[Decision]]:
    return st.lists(decisions, min_size=min_size, max_size=8, unique_by=lambda d: d.decision_id)


def fold(items: list[Decision]) -> FeedbackState | None:
    state = None
    for item in items:
        state, _ = merge(state, item, now_ms=0)
    return state


def posted(state: FeedbackState | None) -> tuple[bool | None, dict[str, int]]:
    return (None, {}) if state is None else (state.rating, state.score_values())


@settings(max_examples=300)
@given(unique(), st.randoms())
def test_merging_ignores_order_and_repetition(items: list[Decision], rnd: object) -> None:
    shuffled = list(items) + list(items[: len(items) // 2])  # some arrive twice
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert posted(fold(items)) == posted(fold(shuffled))


@settings(max_examples=300)
@given(unique(1))
def test_explicit_wins_else_the_latest_implicit_rating(items: list[Decision]) -> None:
    state = fold(items)
    rated = [d for d in items if d.rating is not None]
    explicit = [d for d in rated if d.rule == "explicit"]
    pool = explicit or rated
    expected = (
        max(pool, key=lambda d: (d.window_end, d.window_start, d.decision_id)).rating
        if pool
        else None
    )
    assert state is not None and state.rating == expected


@given(unique())
def test_a_duplicate_makes_no_new_version(items: list[Decision]) -> None:
    state = fold(items)
    for item in items:
        again, changed = merge(state, item, now_ms=1)
        assert not changed and again.version == (state.version if state else 0)


@given(unique(1))
def test_the_state_survives_its_encoding(items: list[Decision]) -> None:
    state = fold(items)
    assert state is not None
    assert FeedbackState.from_json(state.to_json()) == state


def test_one_call_carries_the_rating_as_an_integer_score() -> None:
    state, _ = merge(None, decision("engagement", 0, True, {"time_spent_s": 40}), now_ms=0)
    (call,) = calls_for(state)
    assert call.endpoint == "request_score"
    assert call.body == {"scores": {"time_spent_s": 40, FEEDBACK_SCORE_KEY: 1}}
    assert type(call.body["scores"][FEEDBACK_SCORE_KEY]) is int
    two = calls_for(state, via="feedback")
    assert [c.endpoint for c in two] == ["request_feedback", "request_score"]


def test_a_reported_score_cannot_override_the_rating() -> None:
    state, _ = merge(None, decision("explicit", 0, False, {}), now_ms=0)
    state, _ = merge(state, decision("scores", 1, None, {FEEDBACK_SCORE_KEY: 1}), now_ms=0)
    (call,) = calls_for(state)
    assert call.body == {"scores": {FEEDBACK_SCORE_KEY: 0}}


def test_versions_settle_in_order_and_a_change_in_flight_stays_due() -> None:
    state, _ = merge(None, decision("engagement", 0, True, {}), now_ms=10)
    assert state.due and state.oldest_unsent_ms == 10
    state, _ = merge(state, decision("scores", 1, None, {"a": 1}), now_ms=20)
    assert state.version == 2
    settled = state.delivered(1, now_ms=30)  # the call carried version 1 only
    assert settled.due and settled.oldest_unsent_ms == 20
    assert [d["rule"] for d in settled.settled_decisions(2)] == ["scores"]
    assert not settled.delivered(2, now_ms=40).due
    dead = state.given_up(2, now_ms=40)
    assert not dead.due and dead.unsent == ()


def test_a_redrive_forces_a_new_version() -> None:
    item = decision("engagement", 0, True, {})
    state, _ = merge(None, item, now_ms=0)
    state = state.given_up(1, now_ms=1)
    again, changed = merge(state, item, now_ms=2, force=True)
    assert changed and again.due and again.settled_decisions(2)[0]["rule"] == "engagement"


# --------------------------------------------------------------------------- AdaptiveRate


def test_the_rate_never_exceeds_the_ceiling_and_spaces_calls() -> None:
    clock = FakeClock(t_ms=0)
    rate = AdaptiveRate(ceiling_per_s=5.0, clock=clock)
    granted = []
    for _ in range(3_000):  # 30 s in 10 ms steps
        if rate.try_acquire() == 0:
            granted.append(clock.now_ms())
        clock.advance(0.01)
    assert 145 <= len(granted) <= 151
    assert min(b - a for a, b in itertools.pairwise(granted)) >= 190


def test_a_429_halves_the_rate_holds_calls_and_the_rate_recovers() -> None:
    clock = FakeClock(t_ms=0)
    rate = AdaptiveRate(ceiling_per_s=10.0, clock=clock, recovery_s=10.0)
    rate.throttled(4.0)
    assert rate.per_s == 5.0
    assert rate.try_acquire() == 4_000
    clock.advance(4.0)
    assert rate.try_acquire() in (0, 200)
    clock.advance(10.0)
    assert rate.per_s == 10.0


def test_ratelimit_headers_cap_the_rate_until_the_window_resets() -> None:
    clock = FakeClock(t_ms=0)
    rate = AdaptiveRate(ceiling_per_s=100.0, clock=clock)
    rate.answered(remaining=30, reset_s=60.0)
    assert rate.per_s == 0.5
    rate.answered(remaining=0, reset_s=20.0)
    assert rate.paused_ms() == 20_000
    clock.advance(61.0)
    assert rate.per_s == 100.0


def test_a_short_window_in_whole_seconds_does_not_pace_the_rate() -> None:
    """``RateLimit-Reset: 1`` may mean 0.01 s: pacing by it would halve the rate for nothing."""
    clock = FakeClock(t_ms=0)
    rate = AdaptiveRate(ceiling_per_s=5.0, clock=clock)
    rate.answered(remaining=2, reset_s=1.0)
    assert rate.per_s == 5.0


# --------------------------------------------------------------------------- abstentions


def abstention(rule: str, minute: int) -> Decision:
    """What a window whose rule decided nothing writes (OUTBOX_ABSTENTIONS)."""
    return decision(rule, minute, None, {})


def test_an_abstention_is_recognised_by_its_empty_verdict() -> None:
    assert abstention("engagement", 0).is_abstention
    assert not decision("engagement", 0, None, {"time_spent_s": 3}).is_abstention
    assert not decision("engagement", 0, False, {}).is_abstention
    shadow = abstention("code_suggestion", 0).model_copy(update={"shadow_rating": True})
    assert not shadow.is_abstention


def test_an_abstention_with_no_state_creates_nothing_to_send() -> None:
    state, changed = merge(None, abstention("code_suggestion", 0), now_ms=5)
    assert not changed
    empty = FeedbackState(target="request", target_id=REQUEST)
    assert state == empty  # no version, no evidence, no id remembered, not even the time
    assert not state.due and calls_for(state) == () and state.oldest_unsent_ms is None


@settings(max_examples=200, deadline=None)
@given(unique(), st.sampled_from(RULES), st.integers(0, 30), st.booleans())
def test_an_abstention_changes_no_state(
    items: list[Decision], rule: str, minute: int, force: bool
) -> None:
    state = fold(items) or FeedbackState(target="request", target_id=REQUEST)
    again, changed = merge(state, abstention(rule, minute), now_ms=99, force=force)
    assert again is state and not changed


@settings(max_examples=200, deadline=None)
@given(unique(), st.lists(st.tuples(st.sampled_from(RULES), st.integers(0, 30)), max_size=4))
def test_abstentions_anywhere_in_the_stream_change_nothing_posted(
    items: list[Decision], spots: list[tuple[str, int]]
) -> None:
    decided = [d for d in items if not d.is_abstention]
    mixed = list(decided)
    for i, (rule, minute) in enumerate(spots):
        mixed.insert(i % (len(mixed) + 1), abstention(rule, minute))
    with_them, without = fold(mixed), fold(decided)
    if without is None:
        assert with_them is None or with_them == FeedbackState(target="request", target_id=REQUEST)
        return
    assert with_them is not None
    assert (with_them.rating, with_them.score_values(), with_them.version) == (
        without.rating,
        without.score_values(),
        without.version,
    )
    assert calls_for(with_them) == calls_for(without)
    assert with_them.unsent == without.unsent and with_them.recent_ids == without.recent_ids

"""The receiver's model of what Helicone stores (:class:`HeliconeStore`), without HTTP or a loop.

Time is passed in as ``now_ms``; nothing here sleeps.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.devtools.receiver import (
    FEEDBACK_KEY,
    FixedWindowLimiter,
    HeliconeStore,
    ScoresMessage,
    StoreCounters,
    StoredRequest,
    feedback_message,
    score_message,
)

A = str(uuid.UUID(int=1, version=4))
B = str(uuid.UUID(int=2, version=4))


# --------------------------------------------------------------------------- key mapping


def test_feedback_is_the_number_score_helicone_score_feedback() -> None:
    assert feedback_message(A, True, 5) == ScoresMessage(A, {FEEDBACK_KEY: 1}, 5)
    assert feedback_message(A, False, 5).scores == {FEEDBACK_KEY: 0}


def test_score_maps_booleans_to_hcone_bool_and_keeps_integers() -> None:
    message = score_message(A, {"k": 3, "b": True, "n": False, "f": 2.0, "half": 0.5}, 7)
    assert message.scores == {"k": 3, "b-hcone-bool": 1, "n-hcone-bool": 0, "f": 2}
    assert message.created_at_ms == 7


def test_a_boolean_feedback_key_via_score_is_not_feedback() -> None:
    store = HeliconeStore()
    store.enqueue(score_message(A, {FEEDBACK_KEY: True}, 1))
    store.consume(None)
    assert store.stored() == {A: StoredRequest({FEEDBACK_KEY + "-hcone-bool": 1}, None)}


# --------------------------------------------------------------------------- batches


def test_feedback_then_score_in_one_batch_loses_the_rating() -> None:
    store = HeliconeStore()
    store.enqueue(feedback_message(A, True, 1_000))
    store.enqueue(score_message(A, {"time_spent_s": 31}, 1_001))
    result = store.consume(None)
    assert (result.consumed, result.kept, result.superseded) == (2, 1, 1)
    assert store.stored() == {A: StoredRequest({"time_spent_s": 31}, None)}


def test_feedback_then_score_in_separate_batches_keeps_both() -> None:
    store = HeliconeStore()
    store.enqueue(feedback_message(A, True, 1_000))
    store.consume(None)
    store.enqueue(score_message(A, {"time_spent_s": 31}, 1_001))
    store.consume(None)
    assert store.stored() == {A: StoredRequest({FEEDBACK_KEY: 1, "time_spent_s": 31}, True)}


def test_one_score_call_with_the_feedback_key_stores_scores_and_rating() -> None:
    store = HeliconeStore()
    store.enqueue(score_message(A, {"time_spent_s": 31, FEEDBACK_KEY: 0}, 1))
    store.consume(None)
    assert store.stored() == {A: StoredRequest({"time_spent_s": 31, FEEDBACK_KEY: 0}, False)}


def test_a_later_message_without_the_feedback_key_keeps_the_stored_rating() -> None:
    store = HeliconeStore()
    store.enqueue(feedback_message(A, False, 1))
    store.consume(None)
    store.enqueue(score_message(A, {"x": 2}, 2))
    store.consume(None)
    assert store.stored()[A].feedback is False


def test_dedupe_is_per_request_and_by_created_at_not_arrival() -> None:
    store = HeliconeStore()
    store.enqueue(score_message(A, {"late": 1}, 20))
    store.enqueue(score_message(A, {"early": 1}, 10))  # arrives later, created earlier
    store.enqueue(score_message(B, {"b": 1}, 15))
    store.consume(None)
    assert store.stored() == {A: StoredRequest({"late": 1}), B: StoredRequest({"b": 1})}


def test_on_a_created_at_tie_the_earlier_message_in_the_batch_stays() -> None:
    # Helicone compares createdAt with a strict "<": same millisecond, the first one wins.
    store = HeliconeStore()
    store.enqueue(feedback_message(A, True, 10))
    store.enqueue(score_message(A, {"x": 1}, 10))
    store.consume(None)
    assert store.stored() == {A: StoredRequest({FEEDBACK_KEY: 1}, True)}


def test_messages_become_visible_after_the_ingestion_delay() -> None:
    store = HeliconeStore(ingestion_delay_ms=600_000)
    store.enqueue(feedback_message(A, True, 1_000))
    store.enqueue(feedback_message(B, True, 2_000))
    assert store.consume(600_999).consumed == 0
    assert store.consume(601_000).consumed == 1
    assert set(store.stored()) == {A} and store.pending() == 1
    assert store.consume(None).consumed == 1  # settle: regardless of the delay
    assert set(store.stored()) == {A, B} and store.pending() == 0


def test_unknown_requests_are_dropped_at_consumption() -> None:
    store = HeliconeStore(known_requests={A})
    store.enqueue(feedback_message(A, True, 1))
    store.enqueue(feedback_message(B, True, 1))
    store.enqueue(feedback_message(B, False, 2))
    result = store.consume(None)
    assert (result.kept, result.superseded, result.dropped_unknown) == (1, 1, 1)
    assert set(store.stored()) == {A}
    assert store.counters == StoreCounters(
        queued=3, kept=1, superseded=1, dropped_unknown=1, batches=1, pending=0
    )


def test_known_requests_may_be_a_predicate_and_none_means_any_valid_uuid() -> None:
    assert HeliconeStore(known_requests=lambda rid: rid == B).is_known(B)
    assert not HeliconeStore(known_requests=lambda rid: rid == B).is_known(A)
    assert HeliconeStore().is_known(A)
    assert not HeliconeStore().is_known("not-a-uuid")


def test_session_feedback_is_stored_at_once_last_rating_wins() -> None:
    store = HeliconeStore(ingestion_delay_ms=600_000)
    store.set_session_feedback("s-1", True)
    store.set_session_feedback("s-1", False)
    assert store.sessions() == {"s-1": False}


def test_read_state_is_a_copy() -> None:
    store = HeliconeStore()
    store.enqueue(score_message(A, {"x": 1}, 1))
    store.consume(None)
    store.stored()[A].scores["x"] = 99
    assert store.request(A) == StoredRequest({"x": 1})
    assert store.request(B) is None


def test_an_empty_batch_is_not_counted() -> None:
    store = HeliconeStore()
    store.consume(None)
    assert store.counters.batches == 0


def test_clear_forgets_everything() -> None:
    store = HeliconeStore()
    store.enqueue(feedback_message(A, True, 1))
    store.consume(None)
    store.enqueue(feedback_message(B, True, 1))
    store.set_session_feedback("s", True)
    store.clear()
    assert (store.stored(), store.sessions(), store.pending()) == ({}, {}, 0)
    assert store.counters == StoreCounters()


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="ingestion_delay_ms"):
        HeliconeStore(ingestion_delay_ms=-1)


# --------------------------------------------------------------------------- properties

_request_ids = st.sampled_from([A, B, str(uuid.UUID(int=3, version=4))])
_keys = st.sampled_from(["a", "b", FEEDBACK_KEY])
_scores = st.dictionaries(_keys, st.one_of(st.integers(-5, 5), st.booleans()), max_size=3)
_calls = st.lists(
    st.tuples(_request_ids, st.one_of(st.booleans(), _scores)), min_size=1, max_size=30
)


Call = tuple[str, bool | dict[str, int | bool]]


def _messages(calls: list[Call]) -> list[ScoresMessage]:
    """One message per call, created 1 ms apart in call order."""
    return [
        feedback_message(rid, body, t) if isinstance(body, bool) else score_message(rid, body, t)
        for t, (rid, body) in enumerate(calls)
    ]


def _expected(messages: list[ScoresMessage]) -> dict[str, StoredRequest]:
    """Merging every message of a request in order: what one-message batches must store."""
    merged: dict[str, dict[str, int]] = {}
    for m in messages:
        merged.setdefault(m.request_id, {}).update(m.scores)
    return {
        rid: StoredRequest(scores, bool(scores[FEEDBACK_KEY]) if FEEDBACK_KEY in scores else None)
        for rid, scores in merged.items()
    }


@given(_calls)
def test_one_message_per_batch_stores_the_merge_of_all(calls: list[Call]) -> None:
    store = HeliconeStore()
    messages = _messages(calls)
    for message in messages:
        store.enqueue(message)
        assert store.consume(None).kept == 1
    assert store.stored() == _expected(messages)


@given(_calls)
def test_in_one_batch_only_the_last_message_per_request_counts(
    calls: list[Call],
) -> None:
    store = HeliconeStore()
    messages = _messages(calls)
    for message in messages:
        store.enqueue(message)
    result = store.consume(None)
    last = {m.request_id: m for m in messages}
    assert store.stored() == _expected(list(last.values()))
    assert (result.kept, result.superseded) == (len(last), len(messages) - len(last))
    c = store.counters
    assert c.queued == c.kept + c.superseded + c.dropped_unknown + c.pending


@given(_calls, st.lists(st.integers(0, 40), max_size=5))
def test_counters_always_add_up(calls: list[Call], cuts: list[int]) -> None:
    store = HeliconeStore(ingestion_delay_ms=10, known_requests={A})
    for message in _messages(calls):
        store.enqueue(message)
    for now_ms in sorted(cuts):
        store.consume(now_ms)
        c = store.counters
        assert c.queued == c.kept + c.superseded + c.dropped_unknown + c.pending
        assert c.pending == store.pending()
    assert set(store.stored()) <= {A}


# --------------------------------------------------------------------------- rate limit


def test_fixed_window_headers_follow_express_rate_limit_draft_6() -> None:
    limiter = FixedWindowLimiter(2, 30_000)
    first = limiter.hit(1_000)
    assert first.headers() == {
        "RateLimit-Policy": "2;w=30",
        "RateLimit-Limit": "2",
        "RateLimit-Remaining": "1",
        "RateLimit-Reset": "30",
    }
    assert limiter.hit(10_500).remaining == 0
    refused = limiter.hit(11_000)
    assert not refused.allowed
    assert refused.headers()["Retry-After"] == "20"
    assert refused.headers()["RateLimit-Remaining"] == "0"
    assert limiter.hit(31_000).allowed  # a new window

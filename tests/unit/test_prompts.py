"""Feedback prompts' pure core: candidate detection (worker.prompts.detect) and the cooldown
(worker.prompts.cooldown), with hypothesis for order, replay and spacing."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.events import UI_EVENT_ADAPTER
from worker.prompts import (
    INITIAL_WATCH,
    CooldownState,
    PromptRecord,
    Watch,
    decide,
    decode_state,
    encode_state,
    observe,
    prompt_id_for,
)
from worker.rules import RuleConfig
from worker.validation import Accepted

T0 = 1_795_348_800_000
CFG = RuleConfig()
TTL_MS = 600_000
DAY_MS = 86_400_000
_ids = iter(range(1, 10**9))


def request_id(n: int) -> str:
    return str(uuid.UUID(int=n, version=4))


def ev(
    type_: str,
    at_ms: int,
    *,
    request: str | None = None,
    user: str | None = "u-1",
    session: str | None = "s-1",
    **properties: Any,
) -> Accepted:
    t = T0 + at_ms
    document: dict[str, Any] = {
        "event_id": str(uuid.UUID(int=next(_ids), version=4)),
        "type": type_,
        "request_id": request or request_id(7),
        "occurred_at": datetime.fromtimestamp(t / 1000, UTC).isoformat(),
    }
    if user is not None:
        document["user_id"] = user
    if session is not None:
        document["session_id"] = session
    if properties:
        document["properties"] = properties
    return Accepted(UI_EVENT_ADAPTER.validate_json(orjson.dumps(document)), t)


def fold(events: list[Accepted]) -> list[PromptRecord]:
    watch, out = INITIAL_WATCH, []
    for accepted in events:
        watch, candidate = observe(
            watch, accepted.event, accepted.event_time_ms, cfg=CFG, ttl_ms=TTL_MS
        )
        if candidate is not None:
            out.append(candidate)
    return out


# ---------------------------------------------------------------- detection


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([ev("response_shown", 0), ev("message_sent", 3_000, text="Actually, no.")], "correction"),
        ([ev("response_shown", 0), ev("response_regenerated", 2_000)], "regenerated"),
        ([ev("human_requested", 2_000)], "human_requested"),
        ([ev("response_shown", 0), ev("page_left", 4_000)], "quick_exit"),
        ([ev("page_left", 4_000), ev("response_shown", 0)], "quick_exit"),  # disorder
        ([ev("response_shown", 0), ev("page_left", 10_000)], "quick_exit"),  # the bound itself
    ],
)
def test_each_sign_of_dissatisfaction_makes_one_candidate(
    events: list[Accepted], reason: str
) -> None:
    [candidate] = fold(events)
    assert candidate.reason == reason
    assert candidate.request_id == request_id(7)
    assert candidate.prompt_id == prompt_id_for(request_id(7))
    assert candidate.audience_key == "user:u-1"
    assert candidate.signal_ms == max(e.event_time_ms for e in events)
    assert candidate.expires_ms == candidate.signal_ms + TTL_MS


@pytest.mark.parametrize(
    "events",
    [
        [ev("response_shown", 0), ev("message_sent", 3_000, text="thanks, and what about X?")],
        [ev("response_shown", 0), ev("message_sent", 3_000)],  # no text: no phrase
        [ev("response_shown", 0), ev("page_left", 10_001)],  # past the quick-exit bound
        [ev("page_left", 0), ev("response_shown", 5_000)],  # left before it was shown
        [ev("response_shown", 0), ev("response_copied", 1_000), ev("link_clicked", 2_000)],
        [ev("page_left", 1_000)],  # nothing was shown
    ],
)
def test_no_candidate_without_a_sign(events: list[Accepted]) -> None:
    assert fold(events) == []


def test_a_request_makes_at_most_one_candidate_the_first_sign_wins() -> None:
    events = [
        ev("response_shown", 0),
        ev("response_regenerated", 1_000),
        ev("human_requested", 2_000),
        ev("message_sent", 3_000, text="that's wrong"),
        ev("page_left", 4_000),
    ]
    [candidate] = fold(events)
    assert candidate.reason == "regenerated"


def test_audience_is_the_user_else_the_session_from_any_event_of_the_request() -> None:
    [by_user] = fold([ev("response_shown", 0, user="u-9"), ev("human_requested", 1, user=None)])
    assert by_user.audience_key == "user:u-9"
    [by_session] = fold([ev("human_requested", 1, user=None, session="s-3")])
    assert by_session.audience_key == "session:s-3"
    [nobody] = fold([ev("human_requested", 1, user=None, session=None)])
    assert nobody.audience_key is None


def test_session_events_have_no_answer_to_ask_about() -> None:
    document = {
        "event_id": str(uuid.uuid4()),
        "type": "session_feedback_given",
        "session_id": "s-1",
        "occurred_at": "2026-11-22T12:00:00+00:00",
        "properties": {"rating": False},
    }
    event = UI_EVENT_ADAPTER.validate_json(orjson.dumps(document))
    assert observe(Watch(), event, T0, cfg=CFG, ttl_ms=TTL_MS) == (Watch(), None)


_DIRECT = st.sampled_from(["response_copied", "response_regenerated", "human_requested"])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_DIRECT, st.integers(0, 30_000)), max_size=5),
    st.none() | st.integers(0, 30_000),
    st.none() | st.integers(0, 30_000),
    st.randoms(use_true_random=False),
)
def test_whether_a_request_is_a_candidate_does_not_depend_on_arrival_order(
    spec: list[tuple[str, int]], shown: int | None, left: int | None, rnd: Any
) -> None:
    """Which sign is named may depend on order (the first wins), but whether the request
    gets a candidate does not, for one answer shown and one page left."""
    events = [ev(t, at) for t, at in spec]
    events += [ev("response_shown", shown)] if shown is not None else []
    events += [ev("page_left", left)] if left is not None else []
    shuffled = list(events)
    rnd.shuffle(shuffled)
    assert bool(fold(events)) == bool(fold(shuffled))
    expected = any(t != "response_copied" for t, _ in spec) or (
        shown is not None and left is not None and 0 <= left - shown <= CFG.quick_exit_ms
    )
    assert bool(fold(events)) == expected


# ---------------------------------------------------------------- cooldown


def candidate(n: int, signal_ms: int, *, user: str = "u-1") -> PromptRecord:
    return PromptRecord.build(
        request_id=request_id(n),
        reason="regenerated",
        user_id=user,
        session_id=None,
        signal_ms=T0 + signal_ms,
        ttl_ms=TTL_MS,
    )


def now_for(c: PromptRecord) -> int:
    return c.signal_ms  # decided at once: never stale


def test_first_candidate_goes_out_and_becomes_the_state() -> None:
    c = candidate(1, 0)
    verdict = decide(None, c, now_ms=now_for(c), cooldown_ms=DAY_MS)
    assert verdict.outcome == "send"
    assert verdict.state == CooldownState(c.signal_ms, c.prompt_id)


def test_a_second_candidate_within_the_cooldown_is_suppressed_after_it_is_not() -> None:
    first = candidate(1, 0)
    state = decide(None, first, now_ms=now_for(first), cooldown_ms=DAY_MS).state
    soon, later = candidate(2, DAY_MS - 1), candidate(3, DAY_MS)
    assert decide(state, soon, now_ms=now_for(soon), cooldown_ms=DAY_MS).outcome == "cooldown"
    assert decide(state, later, now_ms=now_for(later), cooldown_ms=DAY_MS).outcome == "send"


def test_the_same_prompt_again_is_resent_never_a_different_one() -> None:
    c = candidate(1, 0)
    state = decide(None, c, now_ms=now_for(c), cooldown_ms=DAY_MS).state
    verdict = decide(state, c, now_ms=now_for(c), cooldown_ms=DAY_MS)
    assert (verdict.outcome, verdict.sends, verdict.state) == ("resend", True, state)


def test_an_expired_candidate_is_stale_and_leaves_the_state_alone() -> None:
    c = candidate(1, 0)
    verdict = decide(None, c, now_ms=c.expires_ms, cooldown_ms=DAY_MS)
    assert (verdict.outcome, verdict.state, verdict.sends) == ("stale", None, False)
    assert decide(None, c, now_ms=c.expires_ms - 1, cooldown_ms=DAY_MS).outcome == "send"


def test_state_round_trips_and_unreadable_state_means_never_asked() -> None:
    state = CooldownState(T0, prompt_id_for(request_id(1)))
    assert decode_state(encode_state(state)) == state
    for raw in (None, b"", b"not json", b"{}", b'{"last_signal_ms": "x", "id": 1}', b"[]"):
        assert decode_state(raw) is None


def run(
    candidates: list[PromptRecord], state: CooldownState | None = None
) -> tuple[list[str], list[str], CooldownState | None]:
    """Decide every candidate in order: (first sends, every send, final state)."""
    first, every = [], []
    for c in candidates:
        verdict = decide(state, c, now_ms=now_for(c), cooldown_ms=DAY_MS)
        if verdict.outcome == "send":
            first.append(c.prompt_id)
        if verdict.sends:
            every.append(c.prompt_id)
        state = verdict.state
    return first, every, state


_CANDIDATES = st.lists(
    st.tuples(st.integers(1, 40), st.integers(0, 5 * DAY_MS)),
    min_size=1,
    max_size=30,
    unique_by=lambda t: t[0],
).map(lambda spec: [candidate(n, at) for n, at in spec])


@settings(max_examples=300, deadline=None)
@given(_CANDIDATES)
def test_prompts_sent_are_a_cooldown_apart_in_any_arrival_order(
    candidates: list[PromptRecord],
) -> None:
    first, _, _ = run(candidates)
    by_id = {c.prompt_id: c.signal_ms for c in candidates}
    times = [by_id[p] for p in first]
    assert times == sorted(times)
    assert all(b - a >= DAY_MS for a, b in itertools.pairwise(times))
    assert first, "the first candidate of an audience always goes out"


@settings(max_examples=300, deadline=None)
@given(_CANDIDATES, st.data())
def test_a_replay_after_a_crash_sends_nothing_new(
    candidates: list[PromptRecord], data: st.DataObject
) -> None:
    """Process a prefix, "crash" with the state as the changelog kept it, replay from an
    earlier offset to the end: every prompt sent in either run is one the uninterrupted run
    sent, and the uninterrupted run's prompts are all sent."""
    crash_at = data.draw(st.integers(0, len(candidates)))
    replay_from = data.draw(st.integers(0, crash_at))
    straight, _, _ = run(candidates)
    _, before, state = run(candidates[:crash_at])
    _, after, _ = run(candidates[replay_from:], state)
    assert set(before) | set(after) == set(straight)


@settings(max_examples=200, deadline=None)
@given(_CANDIDATES)
def test_a_replay_from_the_start_with_the_final_state_only_resends_the_last(
    candidates: list[PromptRecord],
) -> None:
    first, _, state = run(candidates)
    again_first, again_every, _ = run(candidates, state)
    assert again_first == []
    assert again_every == [first[-1]]

"""The window engine (DESIGN 4) with an injected clock and a dict store."""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.rules.eventkit import (
    GRACE_MS,
    OTHER_REQUEST,
    REQUEST,
    SESSION,
    T0,
    Run,
    comparable,
    drain,
    engine,
    ev,
    feed,
)
from worker.clock import FakeClock
from worker.events import Decision, decision_id_for
from worker.rules import RULE_FOR_TYPE, RULES, RuleConfig
from worker.validation import Accepted
from worker.windows import META_KEY, SESSION_KEY_PREFIX, DictStore, StateFormatError, WindowEngine

MIN = 60_000
HOUR = 3_600_000
#: The rules with OUTBOX_ABSTENTIONS off: a window that decides nothing writes nothing.
NO_ABSTENTIONS = RuleConfig(outbox_abstentions=False)


def run_all(events: list[Accepted], **engine_kwargs: Any) -> Run:
    eng = engine(**engine_kwargs)
    run = feed(eng, events)
    return drain(eng, run)


def valid(decision: Decision) -> None:
    """Every decision satisfies the outbox contract (validated again from its JSON)."""
    again = Decision.model_validate_json(decision.model_dump_json())
    assert again == decision


# --------------------------------------------------------------------------- each rule


def test_engagement_end_to_end() -> None:
    run = run_all(
        [
            ev("response_shown", 0, prompt_text="How do I rotate my API key?"),
            ev("response_copied", 2_000),
            ev("message_sent", 9_000, text="Thanks! And for the EU?"),
            ev("page_left", 45_000),
        ]
    )
    decision = run.one("engagement")
    valid(decision)
    assert decision.rating is True
    assert decision.scores == {"time_spent_s": 45}
    assert decision.target == "request"
    assert decision.request_id == REQUEST and decision.session_id == SESSION
    assert decision.window_start.timestamp() * 1000 == T0
    assert decision.window_end.timestamp() * 1000 == T0 + MIN
    assert decision.decision_id == decision_id_for(REQUEST, "engagement", T0)
    assert [s.type for s in decision.signals] == [
        "response_shown",
        "response_copied",
        "message_sent",
        "page_left",
    ]
    assert decision.rule_version == 1
    assert run.late == []


def abstained(decision: Decision, *cited: str) -> bool:
    """``decision`` is an abstention citing exactly the events ``cited``, in order."""
    valid(decision)
    return (
        decision.is_abstention
        and (decision.rating, decision.shadow_rating, decision.scores) == (None, None, {})
        and [s.event_id for s in decision.signals] == list(cited)
    )


def test_engagement_tie_writes_an_abstention() -> None:
    events = [ev("response_shown", 0), ev("response_copied", 1_000), ev("page_left", 7_000)]
    decision = run_all(events).one("engagement")  # copied vs quick exit: a tie
    assert abstained(decision, *(a.event.event_id for a in events))
    assert decision.decision_id == decision_id_for(REQUEST, "engagement", T0)
    assert decision.window_end.timestamp() * 1000 == T0 + MIN
    assert decision.rule_version == 1 and decision.session_id == SESSION
    assert run_all(events, config=NO_ABSTENTIONS).by_rule("engagement") == []


def test_correction_ends_the_window_at_the_message() -> None:
    eng = engine()
    run = feed(
        eng,
        [
            ev("response_shown", 0),
            ev("response_copied", 1_000),
            ev("message_sent", 10_000, text="That's wrong, I asked about Go"),
            ev("page_left", 12_000),  # after the end: does not count
        ],
    )
    assert run.decisions == []  # ended at 10 s, decided after grace (stream time 12 s)
    feed(eng, [ev("response_copied", 15_001, request_id=OTHER_REQUEST)], run)
    decision = run.one("engagement")
    assert decision.rating is False
    assert decision.scores == {"time_spent_s": 10}
    assert decision.window_end.timestamp() * 1000 == T0 + 10_000
    assert [late.reason for late in run.late] == ["after_close"]
    assert run.late[0].accepted is not None and run.late[0].type == "page_left"


def test_code_suggestion_first_action_closes_the_window() -> None:
    eng = engine()
    run = feed(eng, [ev("suggestion_shown", 0), ev("suggestion_modified", 2_000)])
    assert run.decisions == []
    feed(eng, [ev("suggestion_rejected", 3_000)], run)  # after the first action
    assert [late.reason for late in run.late] == ["after_close"]
    feed(eng, [ev("page_left", 7_001, request_id=OTHER_REQUEST)], run)  # 2 s + grace passed
    decision = run.one("code_suggestion")
    assert decision.rating is True
    assert decision.window_end.timestamp() * 1000 == T0 + 2_000
    valid(decision)


def test_code_suggestion_without_action_decides_nothing() -> None:
    shown = ev("suggestion_shown", 0)
    run = run_all([shown])
    assert abstained(run.one("code_suggestion"), shown.event.event_id) and run.late == []
    run = run_all([shown], config=NO_ABSTENTIONS)
    assert run.decisions == [] and run.late == []


def test_search_clicks_end_to_end() -> None:
    run = run_all(
        [
            ev("results_shown", 0, result_count=4, result_ids=["a", "b", "c", "d"]),
            ev("result_clicked", 10_000, result_id="a"),
            ev("result_clicked", 20_000, result_id="a"),
            ev("result_clicked", 4 * MIN, position=3),
            ev("result_clicked", 6 * MIN, result_id="c"),  # after 5 min: in no window
        ]
    )
    decision = run.one("search_clicks")
    assert decision.rating is True
    assert decision.scores == {"click_through_rate": 50}
    assert [late.reason for late in run.late] == ["no_window"]


def test_ticket_resolution_end_to_end() -> None:
    run = run_all(
        [
            ev("ticket_opened", 0, ticket_id="T-1"),
            ev("ticket_resolved", HOUR, ticket_id="T-1"),
            ev("ticket_reopened", 2 * HOUR, ticket_id="T-1"),
            ev("ticket_resolved", 3 * HOUR, ticket_id="T-1"),
            ev("ticket_opened", 0, ticket_id="T-9", request_id=OTHER_REQUEST),
            ev("ticket_resolved", HOUR, ticket_id="T-8", request_id=OTHER_REQUEST),
        ]
    )
    ratings = {d.request_id: d.rating for d in run.by_rule("ticket_resolution")}
    assert ratings == {REQUEST: True, OTHER_REQUEST: False}
    for d in run.by_rule("ticket_resolution"):
        assert d.window_end.timestamp() * 1000 == d.window_start.timestamp() * 1000 + 24 * HOUR


def test_explicit_and_session_feedback_are_decided_at_once() -> None:
    eng = engine()
    out = eng.process(ev("feedback_given", 1_000, rating=False))
    assert [d.rule for d in out.decisions] == ["explicit"]
    decision = out.decisions[0]
    assert decision.rating is False
    assert decision.window_start == decision.window_end
    assert decision.decision_id == decision_id_for(REQUEST, "explicit", T0 + 1_000)
    out = eng.process(ev("session_feedback_given", 2_000, request_id=None, rating=True))
    session = out.decisions[0]
    assert (session.rule, session.target, session.session_id, session.request_id) == (
        "session_feedback",
        "session",
        SESSION,
        None,
    )
    assert session.decision_id == decision_id_for(SESSION, "session_feedback", T0 + 2_000)
    valid(decision)
    valid(session)


def test_session_keys_cannot_collide_with_requests_or_meta() -> None:
    store = DictStore()
    eng = engine(store)
    # Validation refuses the control character in META_KEY (invalid_session_id); the engine's
    # prefix is the defence that holds without it, so the event skips validation here.
    rating = ev("session_feedback_given", 0, request_id=None, session_id="s", rating=True)
    eng.process(replace(rating, event=rating.event.model_copy(update={"session_id": META_KEY})))
    eng.process(ev("session_feedback_given", 0, request_id=None, session_id=REQUEST, rating=True))
    assert SESSION_KEY_PREFIX + META_KEY in store.data
    assert SESSION_KEY_PREFIX + REQUEST in store.data
    assert REQUEST not in store.data


def test_scores_alone_are_decided_after_grace() -> None:
    eng = engine()
    run = feed(eng, [ev("score_reported", 0, scores={"helpful": True, "quality": 4})])
    assert run.decisions == []  # parked: an opener could still arrive within grace
    feed(eng, [ev("page_left", GRACE_MS + 1, request_id=OTHER_REQUEST)], run)
    decision = run.one("scores")
    assert decision.rating is None
    assert decision.scores == {"helpful": 1, "quality": 4}
    assert decision.window_start == decision.window_end
    valid(decision)


def test_scores_merge_into_the_covering_window() -> None:
    run = run_all(
        [
            ev("results_shown", 0, result_count=2),
            ev("result_clicked", 1_000, result_id="x"),
            ev("score_reported", 2_000, scores={"relevance": 3, "click_through_rate": 1}),
            ev("score_reported", 3_000, scores={"relevance": 5}),
        ]
    )
    decision = run.one("search_clicks")
    # later report wins per name; the rule's own score wins over a carried one
    assert decision.scores == {"relevance": 5, "click_through_rate": 50}
    assert run.by_rule("scores") == []
    assert [s.type for s in decision.signals].count("score_reported") == 2


def test_scores_reach_a_window_even_when_its_rule_decides_nothing() -> None:
    run = run_all([ev("suggestion_shown", 0), ev("score_reported", 1_000, scores={"q": 2})])
    decision = run.one("code_suggestion")
    assert decision.rating is None and decision.scores == {"q": 2}


def test_late_score_report_is_decided_at_once() -> None:
    eng = engine()
    feed(eng, [ev("page_left", 10 * MIN, request_id=OTHER_REQUEST)])
    out = eng.process(ev("score_reported", 0, scores={"q": 1}))
    assert [d.rule for d in out.decisions] == ["scores"]


# --------------------------------------------------------------------------- explicit wins


def test_explicit_rating_wins_over_open_windows_but_scores_stay() -> None:
    run = run_all(
        [
            ev("response_shown", 0),
            ev("response_copied", 1_000),
            ev("feedback_given", 20_000, rating=False),
            ev("suggestion_shown", 30_000),
            ev("suggestion_accepted", 31_000),
        ]
    )
    assert run.one("explicit").rating is False
    engagement = run.one("engagement")
    assert engagement.rating is None and engagement.scores == {"time_spent_s": 60}
    assert engagement.shadow_rating is True  # copied: what the rule would have posted
    code = run.one("code_suggestion")  # kept for calibration: a shadow, nothing to send
    assert (code.rating, code.shadow_rating, code.scores) == (None, True, {})


def test_a_window_the_rule_leaves_undecided_has_no_shadow() -> None:
    run = run_all(
        [
            ev("suggestion_shown", 0),
            ev("feedback_given", 1_000, rating=True),
        ]
    )
    # no action: nothing to shadow either, so an abstention (or, without them, nothing)
    code = run.one("code_suggestion")
    assert abstained(code, code.signals[0].event_id)
    assert code.signals[0].type == "suggestion_shown"
    assert run_all(
        [ev("suggestion_shown", 0), ev("feedback_given", 1_000, rating=True)],
        config=NO_ABSTENTIONS,
    ).by_rule("code_suggestion") == []


def test_the_shadow_does_not_depend_on_arrival_order() -> None:
    events = [
        ev("response_shown", 0),
        ev("response_regenerated", 1_000),
        ev("human_requested", 2_000),
        ev("feedback_given", 3_000, rating=True),
    ]
    for order in (events, events[::-1], [events[3], events[0], events[2], events[1]]):
        engagement = run_all(list(order)).one("engagement")
        assert (engagement.rating, engagement.shadow_rating) == (None, False)


def test_explicit_after_a_window_ended_does_not_override_it() -> None:
    run = run_all(
        [
            ev("suggestion_shown", 0),
            ev("suggestion_rejected", 1_000),
            ev("feedback_given", 3_000, rating=True),
        ]
    )
    code = run.one("code_suggestion")
    assert (code.rating, code.shadow_rating) == (False, None)  # decided first: it stands


def test_explicit_wins_when_it_arrives_before_the_opener() -> None:
    run = run_all([ev("feedback_given", 2_000, rating=True), ev("response_shown", 0)])
    engagement = run.one("engagement")
    assert engagement.rating is None
    assert engagement.shadow_rating is True  # 60 s on the answer: long_read


# --------------------------------------------------------------------------- ordering


def test_signals_before_their_opener_are_parked_and_claimed() -> None:
    run = run_all(
        [
            ev("result_clicked", 1_000, result_id="a"),
            ev("suggestion_accepted", 1_500),
            ev("results_shown", 0, result_count=1),
            ev("suggestion_shown", 500),
        ]
    )
    assert run.one("search_clicks").rating is True
    assert run.one("code_suggestion").rating is True
    assert run.late == []


def test_unclaimed_signals_are_reported_when_grace_runs_out() -> None:
    eng = engine()
    run = feed(eng, [ev("response_copied", 0)])
    assert run.late == []
    feed(eng, [ev("response_copied", GRACE_MS, request_id=OTHER_REQUEST)], run)
    assert run.late == []  # stream time = t + grace: still parked
    feed(eng, [ev("response_copied", GRACE_MS + 1, request_id=OTHER_REQUEST)], run)
    assert [(late.reason, late.key) for late in run.late] == [("no_window", REQUEST)]
    assert run.late[0].accepted is not None
    assert run.late[0].accepted.event.type == "response_copied"
    # an opener now is too late for that signal
    feed(eng, [ev("response_shown", 0)], run)
    drain(eng, run)
    assert run.one("engagement").signals[1:] == []


def test_opener_beyond_its_whole_window_is_late() -> None:
    eng = engine()
    feed(eng, [ev("page_left", 2 * MIN, request_id=OTHER_REQUEST)])
    out = eng.process(ev("suggestion_shown", 0))  # 30 s window + 5 s grace long gone
    assert [late.reason for late in out.late] == ["window_closed"]


def test_closed_windows_never_reopen() -> None:
    eng = engine()
    run = feed(eng, [ev("suggestion_shown", 0), ev("suggestion_accepted", 1_000)])
    feed(eng, [ev("page_left", 10_000, request_id=OTHER_REQUEST)], run)
    assert len(run.by_rule("code_suggestion")) == 1
    # a new opener inside the closed window's range, and a signal for it
    feed(eng, [ev("suggestion_shown", 20_000), ev("suggestion_rejected", 21_000)], run)
    mine = [late.reason for late in run.late if late.key == REQUEST]
    assert mine == ["window_closed", "window_closed"]
    drain(eng, run)
    assert len(run.by_rule("code_suggestion")) == 1


def test_second_opener_is_absorbed_and_an_earlier_one_reanchors() -> None:
    run = run_all(
        [
            ev("response_shown", 10_000, prompt_text="q"),
            ev("response_shown", 12_000, prompt_text="q"),  # absorbed
            ev("response_shown", 8_000, prompt_text="q"),  # earlier: re-anchors
            ev("response_copied", 9_000),  # inside only the re-anchored window
        ]
    )
    decision = run.one("engagement")
    assert decision.window_start.timestamp() * 1000 == T0 + 8_000
    assert decision.decision_id == decision_id_for(REQUEST, "engagement", T0 + 8_000)
    assert [s.type for s in decision.signals].count("response_shown") == 3
    assert run.late == []


def test_an_opener_after_a_window_opens_a_new_one() -> None:
    events = [
        ev("suggestion_shown", 0),
        ev("suggestion_shown", 40_000),
        ev("suggestion_accepted", 41_000),
    ]
    decisions = run_all(events, config=NO_ABSTENTIONS).by_rule("code_suggestion")
    assert len(decisions) == 1 and decisions[0].window_start.timestamp() * 1000 == T0 + 40_000
    first, second = sorted(run_all(events).by_rule("code_suggestion"), key=lambda d: d.window_start)
    assert abstained(first, events[0].event.event_id)  # the first one nobody acted on
    assert second.rating is True and second.window_start.timestamp() * 1000 == T0 + 40_000


# a scenario: a few requests, every event type, distinct times per request
_TYPES: list[tuple[str, dict[str, Any]]] = [
    ("response_shown", {"prompt_text": "How do I rotate my API key?"}),
    ("message_sent", {"text": "how do i rotate my api key"}),
    ("message_sent", {"text": "Thanks, that works"}),
    ("message_sent", {"text": "actually no"}),
    ("response_copied", {}),
    ("response_shared", {}),
    ("link_clicked", {}),
    ("response_regenerated", {}),
    ("human_requested", {}),
    ("page_left", {}),
    ("suggestion_shown", {}),
    ("suggestion_accepted", {}),
    ("suggestion_modified", {}),
    ("suggestion_rejected", {}),
    ("results_shown", {"result_count": 3}),
    ("result_clicked", {"result_id": "a"}),
    ("result_clicked", {"position": 1}),
    ("ticket_opened", {"ticket_id": "T"}),
    ("ticket_resolved", {"ticket_id": "T"}),
    ("ticket_reopened", {"ticket_id": "T"}),
    ("feedback_given", {"rating": True}),
    ("feedback_given", {"rating": False}),
    ("score_reported", {"scores": {"q": 1}}),
    ("score_reported", {"scores": {"q": 2, "ok": True}}),
    ("session_feedback_given", {"rating": True}),
]
_OPENERS = [
    t
    for t in _TYPES
    if t[0] in {"response_shown", "suggestion_shown", "results_shown", "ticket_opened"}
]
_REQUESTS = [REQUEST, OTHER_REQUEST, "3b2a1c0d-9e8f-4a7b-8c6d-5e4f3a2b1c0d"]


@st.composite
def scenarios(draw: st.DrawFn) -> list[tuple[int, Accepted]]:
    """(arrival order key, event): sorted by the key gives an arrival order in which every
    event arrives within grace (stream time <= its time + grace)."""
    count = draw(st.integers(1, 40))
    times = draw(st.lists(st.integers(0, 150_000), min_size=count, max_size=count, unique=True))
    out = []
    for i, t in enumerate(times):
        type_, props = draw(st.sampled_from(_TYPES + _OPENERS * 3))  # windows are the point
        request = draw(st.sampled_from(_REQUESTS))
        delay = draw(st.integers(0, GRACE_MS))
        kwargs: dict[str, Any] = {"request_id": request, **props}
        if type_ == "session_feedback_given":
            kwargs["request_id"] = None
            kwargs["session_id"] = f"session-{request[:4]}"
        accepted = ev(type_, t, event_id=str(uuid.UUID(int=i + 1, version=4)), **kwargs)
        out.append((t + delay, accepted))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.randoms(use_true_random=False))
def test_shuffled_within_grace_gives_the_decisions_of_sorted_input(
    scenario: list[tuple[int, Accepted]], rnd: random.Random
) -> None:
    in_time_order = [a for a in sorted((a for _, a in scenario), key=lambda a: a.event_time_ms)]
    jitter = [(key, rnd.random(), a) for key, a in scenario]
    shuffled = [a for _, _, a in sorted(jitter, key=lambda x: (x[0], x[1]))]
    sorted_run = run_all(in_time_order)
    shuffled_run = run_all(shuffled)
    assert comparable(shuffled_run.decisions) == comparable(sorted_run.decisions)
    assert {late.event_id for late in shuffled_run.late} == {
        late.event_id for late in sorted_run.late
    }
    for decision in sorted_run.decisions:
        valid(decision)
        start_ms = int(decision.window_start.timestamp() * 1000)
        assert decision.decision_id == decision_id_for(decision.target_id, decision.rule, start_ms)


@settings(max_examples=100, deadline=None)
@given(scenarios(), st.integers(1, 40))
def test_restarting_anywhere_gives_the_same_decisions(
    scenario: list[tuple[int, Accepted]], cut: int
) -> None:
    events = [a for _, a in sorted(scenario, key=lambda x: x[0])]
    straight = run_all(events)
    store = DictStore()
    run = feed(engine(store), events[:cut])
    restarted = engine(store)
    restarted.rebuild()
    feed(restarted, events[cut:], run)
    drain(restarted, run)
    assert comparable(run.decisions) == comparable(straight.decisions)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_every_closed_window_writes_exactly_one_decision_with_abstentions(
    scenario: list[tuple[int, Accepted]],
) -> None:
    """With abstentions, each event of a window rule that no window pushed out (late) is
    cited by exactly one decision of its rule: its window's, whatever that decided.  Without
    them the decisions are those with abstentions, less the abstentions."""
    events = [a for _, a in sorted(scenario, key=lambda x: x[0])]
    run = run_all(events)
    late = {le.event_id for le in run.late}
    for accepted in events:
        event = accepted.event
        spec = RULE_FOR_TYPE[event.type]
        if spec.kind != "window" or event.event_id in late:
            continue
        citing = [
            d for d in run.by_rule(spec.name) if event.event_id in {s.event_id for s in d.signals}
        ]
        assert len(citing) == 1, (event.type, event.event_id, citing)
    windows = [d for d in run.decisions if RULES[d.rule].kind == "window"]
    assert len({d.decision_id for d in windows}) == len(windows)
    without = run_all(events, config=NO_ABSTENTIONS)
    assert comparable(without.decisions) == comparable(
        d for d in run.decisions if not d.is_abstention
    )
    assert all(RULES[d.rule].kind == "window" for d in run.decisions if d.is_abstention)


@settings(max_examples=50, deadline=None)
@given(scenarios())
def test_a_tiny_cache_changes_nothing(scenario: list[tuple[int, Accepted]]) -> None:
    events = [a for _, a in sorted(scenario, key=lambda x: x[0])]
    assert comparable(run_all(events, cache_size=1).decisions) == comparable(
        run_all(events).decisions
    )


# --------------------------------------------------------------------------- closing


def test_idle_partition_closes_by_the_wall_clock() -> None:
    clock = FakeClock(T0)
    eng = engine(clock=clock, idle_close_ms=30_000)
    eng.process(ev("suggestion_shown", 0))
    eng.process(ev("suggestion_accepted", 1_000))
    clock.advance(20)  # not idle long enough, though past the end + grace
    assert eng.tick().decisions == []
    clock.advance(15)  # idle 35 s, wall clock 35 s after T0 > 1 s + grace
    out = eng.tick()
    assert [d.rule for d in out.decisions] == ["code_suggestion"]
    assert out.decisions[0].decided_at.timestamp() * 1000 == T0 + 35_000
    assert eng.tick().decisions == []  # exactly once


def test_no_idle_close_while_the_input_has_a_backlog() -> None:
    """A restart with unread events: ticks must not close restored windows by the wall clock
    before the backlog (sent on time) is processed; that lost decisions in the soak."""
    store = DictStore()
    clock = FakeClock(T0 + 1_000)
    engine(store, clock=clock, idle_close_ms=30_000).process(ev("suggestion_shown", 0))
    clock.advance(41)  # the worker is down; the user accepts at +5 s (published, unread)
    restarted = engine(store, clock=clock, idle_close_ms=30_000)
    restarted.rebuild()
    clock.advance(31)  # silent for longer than idle close, but only because of the backlog
    assert restarted.tick(caught_up=False).decisions == []
    out = restarted.process(ev("suggestion_accepted", 5_000))
    assert out.late == []
    clock.advance(31)
    decisions = restarted.tick(caught_up=True).decisions
    assert [(d.rule, d.rating) for d in decisions] == [("code_suggestion", True)]


def test_idle_close_waits_for_the_window_end_by_the_wall_clock() -> None:
    clock = FakeClock(T0)
    eng = engine(clock=clock, idle_close_ms=1_000)
    eng.process(ev("response_shown", 0))
    clock.advance(50)
    assert eng.tick().decisions == []  # idle, but 60 s + grace not reached
    clock.advance(15.001)
    assert [d.rule for d in eng.tick().decisions] == ["engagement"]


def test_an_event_resets_the_idle_timer() -> None:
    clock = FakeClock(T0)
    eng = engine(clock=clock, idle_close_ms=30_000)
    eng.process(ev("suggestion_shown", 0))
    eng.process(ev("suggestion_accepted", 1_000))
    clock.advance(29)
    eng.process(ev("response_copied", 1_000, request_id=OTHER_REQUEST))
    clock.advance(29)
    assert eng.tick().decisions == []
    clock.advance(2)
    assert len(eng.tick().decisions) == 1


def test_decisive_signal_beyond_grace_closes_its_window_at_once() -> None:
    eng = engine()
    eng.process(ev("ticket_opened", 0, ticket_id="T"))
    eng.process(ev("suggestion_shown", 10 * MIN))
    out = eng.process(ev("suggestion_rejected", 10 * MIN + 25_000))
    assert out.decisions == []
    eng.process(ev("page_left", 10 * MIN + 29_000, request_id=OTHER_REQUEST))
    # an accept 20 s before the reject, 9 s late: the window still covers it, and it ends
    # the window far behind stream time, so it is decided in the same step
    out = eng.process(ev("suggestion_accepted", 10 * MIN + 5_000))
    assert [(d.rule, d.rating) for d in out.decisions] == [("code_suggestion", True)]
    assert [late.reason for late in out.late] == ["after_close"]
    assert out.late[0].accepted is None  # it had been stored; the compact form remains


# --------------------------------------------------------------------------- restart


def test_restart_closes_restored_windows_exactly_once() -> None:
    store = DictStore()
    first = engine(store)
    feed(
        first,
        [
            ev("response_shown", 0),
            ev("response_copied", 1_000),
            ev("suggestion_shown", 2_000),
            ev("suggestion_accepted", 3_000),
        ],
    )
    assert first.windows_open == {
        "engagement": 1,
        "code_suggestion": 1,
        "search_clicks": 0,
        "ticket_resolution": 0,
    }
    # a new engine on the same store: the due index is rebuilt, not scanned per event
    clock = FakeClock(T0 + 5 * MIN)
    second = engine(store, clock=clock)
    second.rebuild()
    assert second.stream_time_ms == T0 + 3_000
    assert second.windows_open == first.windows_open
    clock.advance(31)  # idle: the wall clock closes both restored windows
    out = second.tick()
    assert sorted(d.rule for d in out.decisions) == ["code_suggestion", "engagement"]
    assert second.tick().decisions == []
    run = drain(second, Run())
    assert run.decisions == []
    # and a third engine after that finds nothing left to decide
    third = engine(store)
    third.rebuild()
    assert drain(third, Run()).decisions == []


def test_stream_time_survives_a_restart_even_when_all_state_was_deleted() -> None:
    store = DictStore()
    eng = engine(store)
    feed(eng, [ev("suggestion_shown", 0), ev("suggestion_accepted", 1_000)])
    drain(eng, Run(), after_ms=HOUR)
    eng.process(ev("page_left", HOUR + 30 * MIN, request_id=OTHER_REQUEST))
    restarted = engine(store)
    restarted.rebuild()
    assert restarted.stream_time_ms == T0 + HOUR + 30 * MIN
    # so an opener whose whole window is behind that time is late after the restart too
    out = restarted.process(ev("suggestion_shown", 10_000))
    assert [late.reason for late in out.late] == ["window_closed"]


def test_engine_rebuilds_by_itself_before_its_first_event() -> None:
    store = DictStore()
    feed(engine(store), [ev("suggestion_shown", 0), ev("suggestion_accepted", 1_000)])
    restarted = engine(store)  # no explicit rebuild()
    run = drain(restarted, Run())
    assert len(run.by_rule("code_suggestion")) == 1


def test_unreadable_state_is_refused_with_the_key() -> None:
    store = DictStore({REQUEST: orjson.dumps([99, 0, [], [], [], []])})
    with pytest.raises(StateFormatError, match=REQUEST):
        engine(store).rebuild()
    store = DictStore({REQUEST: b"not json"})
    with pytest.raises(StateFormatError):
        engine(store).rebuild()


# --------------------------------------------------------------------------- dedupe, caps


def test_duplicates_are_ignored_durably() -> None:
    store = DictStore()
    eng = engine(store)
    copy = ev("response_copied", 1_000)
    shown = ev("response_shown", 0)
    run = feed(eng, [shown, copy, copy, shown])
    assert run.duplicates == 2
    restarted = engine(store)
    restarted.rebuild()
    feed(restarted, [copy], run)
    assert run.duplicates == 3
    drain(restarted, run, after_ms=2 * MIN)  # closed; its tombstone keeps the ids
    assert [s.event_id for s in run.one("engagement").signals] == [
        shown.event.event_id,
        copy.event.event_id,
    ]
    # after the close, a duplicate of a counted signal is still ignored, not late
    feed(restarted, [copy], run)
    assert run.duplicates == 4 and run.late == []


def test_duplicate_explicit_feedback_is_decided_once() -> None:
    thumbs = ev("feedback_given", 0, rating=True)
    run = feed(engine(), [thumbs, thumbs])
    assert len(run.by_rule("explicit")) == 1 and run.duplicates == 1


def test_late_events_are_not_reported_twice() -> None:
    eng = engine()
    run = feed(eng, [ev("suggestion_shown", 0), ev("suggestion_accepted", 1_000)])
    reject = ev("suggestion_rejected", 2_000)
    feed(eng, [reject, reject], run)
    assert [late.reason for late in run.late] == ["after_close"] and run.duplicates == 1


def test_window_signals_are_capped_keeping_the_earliest() -> None:
    eng = engine(max_signals=3)
    clicks = [ev("result_clicked", 1_000 * (5 - i), result_id=f"r{i}") for i in range(5)]
    run = feed(eng, [ev("results_shown", 0, result_count=10), *clicks])
    drain(eng, run)
    decision = run.one("search_clicks")
    kept = [s for s in decision.signals if s.type == "result_clicked"]
    assert [int(s.event_time.timestamp() * 1000) - T0 for s in kept] == [1_000, 2_000, 3_000]
    assert decision.scores == {"click_through_rate": 30}
    assert decision.signals[-1].type == "signals_dropped"
    assert decision.signals[-1].detail is not None and "2 signals" in decision.signals[-1].detail


def test_the_decisive_signal_is_never_dropped_by_the_cap() -> None:
    eng = engine(max_signals=2)
    run = feed(
        eng,
        [
            ev("response_shown", 0),
            ev("response_copied", 1_000),
            ev("response_shared", 2_000),
            ev("message_sent", 3_000, text="actually, no"),
        ],
    )
    drain(eng, run)
    decision = run.one("engagement")
    assert decision.rating is False
    assert "message_sent" in [s.type for s in decision.signals]


def test_parked_signals_are_capped() -> None:
    eng = engine(max_signals=2)
    out = [eng.process(ev("response_copied", i)) for i in range(3)]
    late = [le for o in out for le in o.late]
    assert [(le.reason, le.event_time_ms - T0) for le in late] == [("capped", 2)]
    assert late[0].accepted is not None


# --------------------------------------------------------------------------- housekeeping


def test_state_is_deleted_once_tombstones_expire() -> None:
    store = DictStore()
    eng = engine(store, retention_ms=60_000)
    feed(eng, [ev("suggestion_shown", 0), ev("suggestion_accepted", 1_000)])
    feed(eng, [ev("page_left", 7_000, request_id=OTHER_REQUEST)])
    assert REQUEST in store.data  # closed, tombstone kept
    # purge at nominal end (30 s) + grace + max(30 s, retention 60 s) = 95 s
    feed(eng, [ev("page_left", 95_000, request_id=OTHER_REQUEST)])
    assert REQUEST in store.data
    feed(eng, [ev("page_left", 95_001, request_id=OTHER_REQUEST)])
    assert REQUEST not in store.data


def test_processing_does_not_scan_the_store() -> None:
    class CountingStore(DictStore):
        gets = 0

        def get(self, key: str) -> bytes | None:
            CountingStore.gets += 1
            return super().get(key)

    store = CountingStore()
    eng = engine(store, cache_size=1)
    for i in range(300):
        rid = str(uuid.UUID(int=i + 1, version=4))
        eng.process(ev("response_shown", i, request_id=rid))
    CountingStore.gets = 0
    eng.process(ev("response_copied", 400, request_id=REQUEST))  # closes nothing
    assert CountingStore.gets <= 1


def test_engine_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        engine(grace_ms=-1)
    with pytest.raises(ValueError):
        engine(max_signals=0)
    with pytest.raises(ValueError):
        WindowEngine(
            DictStore(),
            config=RuleConfig(),
            grace_ms=0,
            idle_close_ms=1,
            max_signals=1,
            clock=FakeClock(),
            cache_size=0,
        )


def test_window_lengths_are_configurable() -> None:
    config = RuleConfig(code_window_ms=10_000)
    run = run_all([ev("suggestion_shown", 0), ev("suggestion_accepted", 11_000)], config=config)
    assert abstained(run.one("code_suggestion"), run.decisions[0].signals[0].event_id)
    assert run.one("code_suggestion").window_end.timestamp() * 1000 == T0 + 10_000
    assert [late.reason for late in run.late] == ["no_window"]


def test_two_explicit_ratings_at_the_same_instant_share_one_decision() -> None:
    eng = engine()
    first = eng.process(ev("feedback_given", 1_000, rating=True))
    second = eng.process(ev("feedback_given", 1_000, rating=False))
    assert len(first.decisions) == 1 and second.decisions == []
    assert [late.reason for late in second.late] == ["window_closed"]


def test_idle_close_also_settles_parked_events() -> None:
    clock = FakeClock(T0)
    eng = engine(clock=clock, idle_close_ms=10_000)
    eng.process(ev("response_copied", 0))
    eng.process(ev("score_reported", 0, scores={"q": 1}, request_id=OTHER_REQUEST))
    clock.advance(11)
    out = eng.tick()
    assert [late.reason for late in out.late] == ["no_window"]
    assert [d.rule for d in out.decisions] == ["scores"]

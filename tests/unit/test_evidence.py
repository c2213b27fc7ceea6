"""The evidence lane's pure half (:mod:`worker.evidence`): names, properties, the lane."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.fixtures.delivery import make_decision
from worker.delivery import RetryPolicy
from worker.delivery_state import rating_rank
from worker.events import Decision, Evidence
from worker.evidence import (
    RULE_PROPERTY,
    SIGNALS_PROPERTY,
    DropReason,
    PropertyCall,
    PropertyLane,
    evidence_properties,
    not_found_wait_ms,
    signal_names,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ev(type_: str, detail: str | None = None) -> Evidence:
    return Evidence(event_id=str(uuid.uuid4()), type=type_, event_time=T0, detail=detail)


def with_signals(decision: Decision, signals: list[Evidence], **changes: object) -> Decision:
    return decision.model_copy(update={"signals": signals, **changes})


# --------------------------------------------------------------------------- names


def test_engagement_names_come_from_the_rules_own_summary() -> None:
    signals = [
        ev("response_shown", "time spent 95000 ms; positive: copied, long_read; negative: -"),
        ev("response_copied", "copied"),
        ev("page_left", "left after 95000 ms"),
    ]
    assert signal_names(signals) == "copied,long_read"


def test_a_correction_is_named_although_the_summary_leaves_it_out() -> None:
    signals = [
        ev("response_shown", "time spent 3000 ms; positive: -; negative: short_read"),
        ev("message_sent", "correction"),
    ]
    assert signal_names(signals) == "correction,short_read"


def test_without_a_summary_event_types_give_short_names_and_openers_none() -> None:
    signals = [ev("suggestion_shown"), ev("suggestion_accepted", "first action")]
    assert signal_names(signals) == "accepted"
    assert signal_names([ev("feedback_given", "thumbs down")]) == "thumbs_down"
    assert signal_names([ev("results_shown", "1 of 5 results clicked"),
                         ev("result_clicked")]) == "clicked"
    assert signal_names([]) == "none"
    assert signal_names([ev("response_shown")]) == "none"


def test_hostile_types_are_cut_to_safe_names() -> None:
    assert signal_names([ev("Évil Type!\n<script>" + "x" * 100)]) == "vil_type_script_" + "x" * 16


def test_equal_evidence_gives_an_equal_value_whatever_the_order() -> None:
    signals = [ev("response_shared"), ev("link_clicked"), ev("human_requested")]
    assert signal_names(signals) == signal_names(list(reversed(signals))) == "human,link,shared"


@given(st.lists(st.text(min_size=1, max_size=60), max_size=40), st.integers(16, 200))
def test_the_value_never_exceeds_the_cap_and_counts_what_it_leaves_out(
    types: list[str], max_chars: int
) -> None:
    value = signal_names([ev(t) for t in types], max_chars=max_chars)
    assert 1 <= len(value) <= max_chars
    assert all(c.isascii() and (c.isalnum() or c in "_,+") for c in value)
    *shown, last = value.split(",")
    assert all(name and not name.startswith("+") for name in shown)
    assert shown == sorted(set(shown))  # sorted, no duplicates
    if last.startswith("+"):
        assert int(last[1:]) >= 1  # what did not fit is counted, never silently lost


def test_a_tiny_cap_is_refused() -> None:
    with pytest.raises(ValueError):
        signal_names([], max_chars=10)


# --------------------------------------------------------------------------- properties


def test_a_rated_request_decision_sets_rule_then_signals() -> None:
    decision = with_signals(make_decision(rule="code_suggestion"), [ev("suggestion_accepted")])
    assert evidence_properties(decision) == (
        (RULE_PROPERTY, "code_suggestion"), (SIGNALS_PROPERTY, "accepted"),
    )


@pytest.mark.parametrize(
    "decision",
    [
        make_decision(target="session", rule="session_feedback"),
        make_decision(rating=None, scores={"ctr": 3}, rule="scores"),
    ],
)
def test_sessions_and_scores_alone_set_nothing(decision: Decision) -> None:
    assert evidence_properties(decision) is None


def test_a_request_id_helicone_would_refuse_sets_nothing() -> None:
    decision = make_decision().model_copy(update={"request_id": "not-a-uuid"})
    assert evidence_properties(decision) is None


# --------------------------------------------------------------------------- not found


def test_not_found_waits_are_helicones_by_default_and_stay_inside_the_horizon() -> None:
    assert [not_found_wait_ms(n, 300.0) for n in (1, 2, 3, 4)] == [30_000, 75_000, 187_500, None]
    waits = [not_found_wait_ms(n, 7.0) for n in (1, 2, 3)]
    assert sum(w for w in waits if w is not None) <= 7_000


# --------------------------------------------------------------------------- the lane


def lane(drops: list[DropReason] | None = None, **options: object) -> PropertyLane:
    policy = RetryPolicy(base_s=1.0, cap_s=10.0, jitter=0.0, max_attempts=3, max_age_s=3600.0)
    sink = drops if drops is not None else []
    return PropertyLane(policy=policy, not_found_horizon_s=300.0, on_drop=sink.append,
                        **options)  # type: ignore[arg-type]


def rated(request_id: str, rule: str = "engagement", minutes: int = 0, **kw: object) -> Decision:
    at = T0 + timedelta(minutes=minutes)
    base = make_decision(request_id=request_id, rule=rule, decided_at=at)
    return with_signals(base, [ev("response_copied")], **kw)


def take_all(lane_: PropertyLane, now_ms: int) -> list[PropertyCall]:
    calls = []
    while (call := lane_.take(now_ms)) is not None:
        calls.append(call)
    return calls


def test_two_properties_go_one_after_the_other_then_the_request_is_settled() -> None:
    rid = str(uuid.uuid4())
    subject = lane()
    assert subject.offer_decision(rated(rid), now_ms=0) == "new"
    (first,) = take_all(subject, 0)  # one call per request at a time
    assert (first.key, first.value) == (RULE_PROPERTY, "engagement")
    subject.done(first, "ok", now_ms=5)
    (second,) = take_all(subject, 5)
    assert (second.key, second.value) == (SIGNALS_PROPERTY, "copied")
    subject.done(second, "ok", now_ms=6)
    assert len(subject) == 0 and subject.next_due_ms() is None
    assert subject.offer_decision(rated(rid), now_ms=7) == "stale"  # a replay costs nothing


def test_a_newer_decision_replaces_what_waits_and_an_older_one_is_ignored() -> None:
    rid = str(uuid.uuid4())
    subject = lane()
    subject.offer_decision(rated(rid, minutes=1), now_ms=0)
    assert subject.offer_decision(rated(rid, rule="search_clicks", minutes=0), now_ms=1) == "stale"
    assert subject.offer_decision(rated(rid, rule="explicit", minutes=0), now_ms=1) == "replaced"
    assert len(subject) == 1
    (call,) = take_all(subject, 1)
    assert call.value == "explicit"  # an explicit rating outranks a later implicit one


def test_a_replacement_during_a_call_sends_the_new_set_from_its_start() -> None:
    rid = str(uuid.uuid4())
    subject = lane()
    subject.offer_decision(rated(rid), now_ms=0)
    (old,) = take_all(subject, 0)
    subject.offer_decision(rated(rid, rule="explicit", minutes=1), now_ms=1)
    assert take_all(subject, 1) == []  # still one call per request
    subject.done(old, "ok", now_ms=2)
    calls = take_all(subject, 2)
    assert [(c.key, c.value) for c in calls] == [(RULE_PROPERTY, "explicit")]


def test_not_found_is_retried_at_helicones_waits_then_dropped_not_kept() -> None:
    rid, drops = str(uuid.uuid4()), list[DropReason]()
    subject = lane(drops)
    subject.offer_decision(rated(rid), now_ms=0)
    now, times = 0, []
    while (call := subject.take(now)) is not None or subject.next_due_ms() is not None:
        if call is None:
            now = subject.next_due_ms() or now
            continue
        times.append(now)
        subject.done(call, "not_found", now_ms=now)
    assert times == [0, 30_000, 105_000, 292_500]
    assert drops == ["not_found"] and len(subject) == 0


def test_other_failures_follow_the_retry_policy_and_a_4xx_drops_at_once() -> None:
    rid, drops = str(uuid.uuid4()), list[DropReason]()
    subject = lane(drops)
    subject.offer_decision(rated(rid), now_ms=0)
    (call,) = take_all(subject, 0)
    subject.done(call, "retryable", now_ms=0, retry_after_s=5.0)
    assert subject.next_due_ms() == 5_000  # Retry-After honoured
    (call,) = take_all(subject, 5_000)
    subject.done(call, "retryable", now_ms=5_000)
    (call,) = take_all(subject, 7_000)
    subject.done(call, "retryable", now_ms=7_000)
    assert drops == ["max_attempts"]
    other = str(uuid.uuid4())
    subject.offer_decision(rated(other), now_ms=8_000)
    (call,) = take_all(subject, 8_000)
    subject.done(call, "rejected", now_ms=8_000)
    assert drops == ["max_attempts", "rejected"]


def test_an_auth_pause_waits_without_using_an_attempt() -> None:
    rid, drops = str(uuid.uuid4()), list[DropReason]()
    subject = lane(drops)
    subject.offer_decision(rated(rid), now_ms=0)
    for now in range(0, 10 * 30_000, 30_000):
        (call,) = take_all(subject, now)
        subject.done(call, "auth", now_ms=now, wait_ms=30_000)
    assert drops == [] and len(subject) == 1


def test_the_lane_is_bounded_and_drops_the_oldest_waiting_entry() -> None:
    drops: list[DropReason] = []
    subject = lane(drops, max_pending=2)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    for rid in ids:
        subject.offer_decision(rated(rid), now_ms=0)
    assert drops == ["overflow"] and len(subject) == 2
    assert {c.request_id for c in take_all(subject, 0)} == set(ids[1:])


def test_rank_order_matches_the_delivery_state() -> None:
    rid = str(uuid.uuid4())
    implicit, explicit = rated(rid, minutes=5), rated(rid, rule="explicit")
    assert rating_rank(explicit) > rating_rank(implicit)


def test_the_lane_and_its_sender_import_no_io_library() -> None:
    """Pure core and a thin adapter that gets its HTTP client handed in (STYLE 4.1)."""
    from tests.unit.test_core_imports import IO_LIBRARIES, run_probe

    probe = (
        "import sys, worker.evidence, worker.evidence_sender, worker.evidence_store; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        f"set({sorted(IO_LIBRARIES)!r})))"
    )
    assert run_probe(probe) == "[]"


# --------------------------------------------------------------------------- outliving the process


def test_a_restored_entry_resumes_the_not_found_schedule_where_it_stood() -> None:
    """Two "Request not found" answers, then the process ends: a new lane restored from the
    snapshot waits until the saved due time and drops the entry after two more answers, at
    the same times as a lane that never stopped (30 s, 75 s, 187.5 s of 300 s)."""
    rid, drops = str(uuid.uuid4()), list[DropReason]()
    before = lane()
    before.offer_decision(rated(rid), now_ms=0)
    for now in (0, 30_000):
        (call,) = take_all(before, now)
        before.done(call, "not_found", now_ms=now)
    saved = before.snapshot(rid)
    assert saved is not None and (saved.due_ms, saved.not_found) == (105_000, 2)

    after = lane(drops)
    assert after.restore(rid, saved)
    assert after.next_due_ms() == 105_000 and take_all(after, 104_999) == []
    times = []
    now = 105_000
    while (due := after.next_due_ms()) is not None:
        now = max(now, due)
        (call,) = take_all(after, now)
        times.append(now)
        after.done(call, "not_found", now_ms=now)
    assert times == [105_000, 292_500]
    assert drops == ["not_found"]


def test_a_restored_entry_keeps_its_retry_counters_and_what_is_left_to_send() -> None:
    rid, drops = str(uuid.uuid4()), list[DropReason]()
    before = lane()
    before.offer_decision(rated(rid), now_ms=0)
    (call,) = take_all(before, 0)
    before.done(call, "ok", now_ms=1)  # Feedback-Rule is set; Feedback-Signals is left
    (call,) = take_all(before, 1)
    before.done(call, "retryable", now_ms=1)
    (call,) = take_all(before, 2_001)
    before.done(call, "retryable", now_ms=2_001)
    saved = before.snapshot(rid)
    assert saved is not None and saved.attempts == 2 and saved.first_failed_ms == 1

    after = lane(drops)
    after.restore(rid, saved)
    (call,) = take_all(after, saved.due_ms)
    assert (call.key, call.value) == (SIGNALS_PROPERTY, "copied")
    after.done(call, "retryable", now_ms=saved.due_ms)
    assert drops == ["max_attempts"]  # the third failure, not the first


def test_a_newer_decision_replaces_a_restored_entry_and_an_older_one_does_not() -> None:
    rid = str(uuid.uuid4())
    before = lane()
    before.offer_decision(rated(rid, minutes=1), now_ms=0)
    saved = before.snapshot(rid)
    assert saved is not None
    after = lane()
    after.restore(rid, saved)
    assert after.offer_decision(rated(rid, minutes=0), now_ms=5) == "stale"
    assert after.offer_decision(rated(rid, rule="explicit"), now_ms=5) == "replaced"
    (call,) = take_all(after, 5)
    assert call.value == "explicit"


def test_restore_keeps_what_the_lane_holds_and_skips_what_it_settled() -> None:
    rid = str(uuid.uuid4())
    old = lane()
    old.offer_decision(rated(rid), now_ms=0)
    stale = old.snapshot(rid)
    assert stale is not None
    subject = lane()
    subject.offer_decision(rated(rid, rule="explicit"), now_ms=0)
    assert not subject.restore(rid, stale)  # the lane's own entry is at least as recent
    (call,) = take_all(subject, 0)
    assert call.value == "explicit"
    subject.done(call, "ok", now_ms=1)
    (call,) = take_all(subject, 1)
    subject.done(call, "ok", now_ms=2)
    assert len(subject) == 0
    again = old.snapshot(rid)
    assert again is not None and not subject.restore(rid, again)  # settled at a higher rank
    assert len(subject) == 0


def test_changes_are_tracked_only_when_asked_and_name_ended_entries_too() -> None:
    rid, other = str(uuid.uuid4()), str(uuid.uuid4())
    untracked = lane()
    untracked.offer_decision(rated(rid), now_ms=0)
    assert untracked.take_changed() == set()

    subject = lane(track_changes=True, max_pending=1)
    subject.offer_decision(rated(rid), now_ms=0)
    assert subject.take_changed() == {rid}
    (call,) = take_all(subject, 0)
    assert subject.take_changed() == set()  # being in flight is not persisted
    subject.done(call, "not_found", now_ms=0)
    assert subject.take_changed() == {rid}
    subject.offer_decision(rated(other), now_ms=1)  # evicts rid (max_pending=1)
    assert subject.take_changed() == {rid, other}
    assert subject.snapshot(rid) is None

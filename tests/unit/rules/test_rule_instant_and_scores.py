"""Explicit and session feedback (at once) and reported scores (merge)."""

from __future__ import annotations

from tests.unit.rules.ruleskit import sig, signal_of, verdict
from worker.rules import RULES
from worker.rules.scores import merge


def test_explicit_and_session_ratings() -> None:
    for rule, type_ in (
        ("explicit", "feedback_given"),
        ("session_feedback", "session_feedback_given"),
    ):
        for rating in (True, False):
            kwargs = {"request_id": None} if rule == "session_feedback" else {}
            signal = signal_of(type_, 0, rating=rating, **kwargs)
            result = verdict(rule, signal, end_ms=0)
            assert result is not None and result.rating is rating and result.scores == {}
    assert RULES["explicit"].kind == "instant" and RULES["explicit"].target == "request"
    assert RULES["session_feedback"].target == "session"


def test_scores_become_integers() -> None:
    report = signal_of("score_reported", 0, scores={"helpful": True, "bad": False, "q": 7})
    assert report.data == {"helpful": 1, "bad": 0, "q": 7}
    result = verdict("scores", report, end_ms=0)
    assert result is not None and result.rating is None
    assert result.scores == {"helpful": 1, "bad": 0, "q": 7}


def test_merge_later_report_wins_then_own_scores_win() -> None:
    early = sig("score_reported", 1_000, {"q": 1, "time_spent_s": 99}, event_id="b")
    late = sig("score_reported", 2_000, {"q": 2, "x": 5}, event_id="a")
    scores, evidence = merge({"time_spent_s": 12}, [late, early])
    assert scores == {"q": 2, "x": 5, "time_spent_s": 12}
    assert [e.event_id for e in evidence] == ["b", "a"]
    assert merge({"a": 1}, []) == ({"a": 1}, ())
    # same instant: the event id orders them, so the result never depends on arrival
    one = sig("score_reported", 0, {"q": 1}, event_id="1")
    two = sig("score_reported", 0, {"q": 2}, event_id="2")
    assert merge({}, [one, two])[0] == merge({}, [two, one])[0] == {"q": 2}

"""The pure half of ``feedback-worker dataset``: fold, selection, batches (worker.datasets)."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.datasets import (
    MAX_BATCH_SIZE,
    Criteria,
    check_dataset_name,
    fold_decisions,
    parse_duration_s,
    parse_min_score,
    plan_batches,
    select,
    selection_line,
)
from worker.events import Decision, decision_id_for

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
NOW_MS = int((T0 + timedelta(days=1)).timestamp() * 1000)


def decision(
    request_id: str,
    *,
    rule: str = "engagement",
    rating: bool | None = True,
    scores: dict[str, int] | None = None,
    end_s: float = 0.0,
    target: str = "request",
) -> Decision:
    end = T0 + timedelta(seconds=end_s)
    start = end - timedelta(seconds=30)
    return Decision(
        decision_id=decision_id_for(request_id, rule, int(start.timestamp() * 1000)),
        target=target,
        request_id=request_id if target == "request" else None,
        session_id=request_id if target == "session" else None,
        rule=rule,
        rating=rating,
        scores=scores or {},
        window_start=start,
        window_end=end,
        decided_at=end + timedelta(seconds=5),
        rule_version=1,
    )


def rid() -> str:
    return str(uuid.uuid4())


# --------------------------------------------------------------------------- arguments


def test_min_score_parses_name_and_integer_bound() -> None:
    assert parse_min_score("time_spent_s=30") == ("time_spent_s", 30)
    assert parse_min_score(" clicks = -2 ") == ("clicks", -2)


@pytest.mark.parametrize("text", ["x", "=3", "x=", "x=0.5", "x=abc", "x=1=2"])
def test_min_score_refuses_what_is_not_name_equals_integer(text: str) -> None:
    with pytest.raises(ValueError, match="NAME=INTEGER"):
        parse_min_score(text)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800),
                          ("1w", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0d", "-1d", "7 days", "d", "1e400"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(text)


def test_dataset_names_are_stripped_and_bounded() -> None:
    assert check_dataset_name("  good answers ") == "good answers"
    for bad in ["", "   ", "x" * 201, "tab\there"]:
        with pytest.raises(ValueError):
            check_dataset_name(bad)


# --------------------------------------------------------------------------- the fold


def test_explicit_rating_wins_over_a_later_implicit_one() -> None:
    r = rid()
    folded = fold_decisions([
        decision(r, rule="explicit", rating=False, end_s=0),
        decision(r, rule="engagement", rating=True, end_s=600),
    ])
    outcome = folded.outcomes[r]
    assert (outcome.rating, outcome.rating_rule) == (False, "explicit")
    assert outcome.rules == {"explicit"}
    assert outcome.last_window_end_ms == int((T0 + timedelta(seconds=600)).timestamp() * 1000)


def test_among_implicit_ratings_the_later_window_wins() -> None:
    r = rid()
    folded = fold_decisions([
        decision(r, rule="engagement", rating=True, end_s=600),
        decision(r, rule="search_clicks", rating=False, end_s=0),
    ])
    assert (folded.outcomes[r].rating, folded.outcomes[r].rating_rule) == (True, "engagement")


def test_scores_merge_key_by_key_and_a_score_only_rule_counts_for_rule() -> None:
    r = rid()
    folded = fold_decisions([
        decision(r, rule="scores", rating=None, scores={"a": 1, "b": 2}, end_s=0),
        decision(r, rule="engagement", rating=None, scores={"a": 5}, end_s=60),
    ])
    outcome = folded.outcomes[r]
    assert outcome.rating is None and outcome.rating_rule is None
    assert dict(outcome.scores) == {"a": 5, "b": 2}
    assert outcome.rules == {"scores", "engagement"}


def test_sessions_and_ids_helicone_refuses_are_skipped_and_counted() -> None:
    v7 = "0190a5f2-7c1e-7abc-8def-0123456789ab"
    folded = fold_decisions([
        decision("session-1", target="session"),
        decision(v7),
        decision(rid()),
    ])
    assert len(folded.outcomes) == 1
    assert folded.skipped == {"session": 1, "invalid_request_id": 1}


def test_an_id_in_upper_case_is_the_same_request() -> None:
    r = rid()
    folded = fold_decisions([decision(r.upper(), rule="explicit"), decision(r, end_s=60)])
    assert list(folded.outcomes) == [r]
    assert len(folded.outcomes[r].decision_ids) == 2


decision_lists = st.lists(
    st.builds(
        decision,
        st.sampled_from([str(uuid.UUID(int=i, version=4)) for i in range(1, 5)]),
        rule=st.sampled_from(["explicit", "engagement", "search_clicks", "scores"]),
        rating=st.none() | st.booleans(),
        scores=st.dictionaries(st.sampled_from(["a", "b"]), st.integers(-5, 5), max_size=2),
        end_s=st.integers(0, 5).map(lambda n: n * 60.0),
    ),
    max_size=20,
)


@settings(max_examples=200, deadline=None)
@given(decision_lists, st.randoms(use_true_random=False))
def test_the_fold_ignores_order_and_duplicates(
    decisions: list[Decision], rng: random.Random
) -> None:
    """The outbox is at-least-once and partitions interleave: neither may change a dataset.

    A decision id stands for one content (it is derived from target, rule and window), so
    generated decisions that share an id but not a content are kept once.
    """
    decisions = list({d.decision_id: d for d in decisions}.values())
    shuffled = decisions + rng.sample(decisions, k=len(decisions) // 2)
    rng.shuffle(shuffled)
    assert fold_decisions(shuffled) == fold_decisions(decisions)


# --------------------------------------------------------------------------- selecting


def _outcomes() -> dict[str, str]:
    return {
        "good": rid(), "bad": rid(), "scored": rid(), "old": rid(), "nothing": rid(),
    }


def test_each_criterion_narrows_and_says_why() -> None:
    ids = _outcomes()
    folded = fold_decisions([
        decision(ids["good"], rule="explicit", rating=True, end_s=3600,
                 scores={"time_spent_s": 40}),
        decision(ids["bad"], rule="engagement", rating=False, end_s=3600),
        decision(ids["scored"], rule="scores", rating=None, scores={"time_spent_s": 10},
                 end_s=3600),
        decision(ids["old"], rule="engagement", rating=True, end_s=-10 * 86400),
        decision(ids["nothing"], rule="engagement", rating=None, end_s=3600),
    ])
    outcomes = folded.outcomes.values()

    everything = select(outcomes, Criteria(), now_ms=NOW_MS)
    assert set(everything.request_ids) == {ids[k] for k in ("good", "bad", "scored", "old")}
    assert everything.excluded == {"empty": 1}

    rated = select(outcomes, Criteria(rating=True, since_s=7 * 86400), now_ms=NOW_MS)
    assert rated.request_ids == [ids["good"]]
    assert rated.excluded == {"empty": 1, "rating": 2, "since": 1}

    by_rule = select(outcomes, Criteria(rule="engagement"), now_ms=NOW_MS)
    assert set(by_rule.request_ids) == {ids["bad"], ids["old"]}

    scored = select(outcomes, Criteria(min_scores=(("time_spent_s", 30),)), now_ms=NOW_MS)
    assert scored.request_ids == [ids["good"]]
    assert scored.excluded["score"] == 3  # missing counts as not meeting the bound

    both = select(outcomes, Criteria(min_scores=(("time_spent_s", 10), ("x", 0))), now_ms=NOW_MS)
    assert both.request_ids == []


def test_since_keeps_a_request_whose_latest_window_is_recent() -> None:
    """An old explicit rating stays in force when a newer implicit decision is recent."""
    r = rid()
    folded = fold_decisions([
        decision(r, rule="explicit", rating=False, end_s=-30 * 86400),
        decision(r, rule="engagement", rating=True, end_s=3600),
    ])
    chosen = select(folded.outcomes.values(), Criteria(since_s=86400 * 2), now_ms=NOW_MS).chosen
    assert [(o.request_id, o.rating) for o in chosen] == [(r, False)]


def test_abstentions_set_nothing_not_even_the_latest_window() -> None:
    """A window that decided nothing (OUTBOX_ABSTENTIONS) sets nothing and does not make an
    old request recent; a request with nothing else is empty."""
    old, only = rid(), rid()
    folded = fold_decisions([
        decision(old, rating=True, end_s=-30 * 86400),
        decision(old, rule="code_suggestion", rating=None, end_s=3600),
        decision(only, rule="code_suggestion", rating=None),
    ])
    assert folded.outcomes[only].rating is None and folded.outcomes[only].scores == {}
    assert folded.outcomes[old].last_window_end_ms == int(T0.timestamp() * 1000) - 30 * 86400_000
    recent = select(folded.outcomes.values(), Criteria(since_s=86400 * 2), now_ms=NOW_MS)
    assert recent.request_ids == [] and recent.excluded == {"since": 1, "empty": 1}


def test_selection_order_is_latest_window_then_id() -> None:
    a, b, c = sorted(rid() for _ in range(3))
    folded = fold_decisions([decision(c, end_s=0), decision(b, end_s=60), decision(a, end_s=60)])
    assert select(folded.outcomes.values(), Criteria(), now_ms=NOW_MS).request_ids == [c, a, b]


def test_the_jsonl_line_has_the_documented_fields() -> None:
    r = rid()
    outcome = fold_decisions([decision(r, rule="explicit", scores={"k": 3})]).outcomes[r]
    line = selection_line(outcome)
    assert line == {
        "request_id": r,
        "rating": True,
        "rating_rule": "explicit",
        "scores": {"k": 3},
        "rules": ["explicit"],
        "last_window_end": "2026-12-01T12:00:00Z",
        "decision_ids": list(outcome.decision_ids),
    }


def test_criteria_refuse_a_span_that_is_not_positive() -> None:
    with pytest.raises(ValueError):
        Criteria(since_s=0)


# --------------------------------------------------------------------------- batches


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.sampled_from([f"r{i}" for i in range(30)]), max_size=60),
    st.sets(st.sampled_from([f"r{i}" for i in range(30)])),
    st.integers(1, 7),
)
def test_batches_send_each_missing_request_once_in_order(
    wanted: list[str], present: set[str], size: int
) -> None:
    batches = plan_batches(wanted, present, batch_size=size)
    flat = [rid for batch in batches for rid in batch]
    expected = list(dict.fromkeys(r for r in wanted if r not in present))
    assert flat == expected
    assert all(1 <= len(batch) <= size for batch in batches)
    assert len(batches) == -(-len(expected) // size)


def test_batches_compare_ids_without_case() -> None:
    assert plan_batches(["ABC", "def"], {"abc"}, batch_size=10) == [["def"]]


@pytest.mark.parametrize("size", [0, MAX_BATCH_SIZE + 1])
def test_batch_size_is_bounded(size: int) -> None:
    with pytest.raises(ValueError):
        plan_batches(["a"], (), batch_size=size)


def test_the_selection_core_imports_no_io_library() -> None:
    """worker.datasets is pure: no Kafka, HTTP, Faust or metrics library comes with it."""
    from tests.unit.test_core_imports import run_probe

    probe = (
        "import sys, worker.datasets; print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'faust', 'aiokafka', 'httpx', 'prometheus_client', 'aiohttp', 'click', 'rich'}))"
    )
    assert run_probe(probe) == "[]"

"""The reference (pure engine over the input) agrees with what the journeys are meant to earn.

No broker: this checks the yardstick the chaos scenarios are measured with.
"""

from __future__ import annotations

import pytest

from tests.chaos.reference import (
    InputRecord,
    expected_decisions,
    expected_stored,
    settings_from_env,
)
from tests.chaos.scenarios import CHAOS_WINDOWS, SHAPE
from tests.chaos.workload import records_for, workload
from worker.devtools.traffic import generate
from worker.partitioner import partition_for

pytestmark = pytest.mark.chaos

START_MS = 1_800_000_000_000


def as_input(records: list[tuple[bytes, bytes]], partitions: int = 4) -> list[InputRecord]:
    offsets: dict[int, int] = {}
    out = []
    for key, value in records:
        p = partition_for(key, partitions)
        offsets[p] = offsets.get(p, -1) + 1
        out.append(InputRecord(p, offsets[p], START_MS + 3_600_000, key, value))
    return out


def test_reference_agrees_with_the_intended_ratings_of_known_journeys() -> None:
    journeys = []
    for n, kind in enumerate(["chat", "code", "search", "support", "explicit"]):
        journeys += generate(12, start_ms=START_MS, spread_ms=20_000, windows=SHAPE,
                             seed=40 + n, kinds={kind: 1.0})
    settings = settings_from_env({**CHAOS_WINDOWS, "TOPIC_PARTITIONS": "4"})
    reference = expected_decisions(as_input(records_for(journeys)), settings)
    assert reference.late == 0 and reference.invalid == 0 and reference.misplaced == 0

    by_key: dict[tuple[str, str], list[bool | None]] = {}
    for decision in reference.decisions.values():
        by_key.setdefault((decision.target_id, decision.rule), []).append(decision.rating)
    checked = 0
    for journey in journeys:
        for rule, rating in journey.expected.items():
            got = by_key.get((journey.request_id, rule), [])
            assert len(got) <= 1, (journey.kind, rule, got)
            if rating is None:
                assert got in ([], [None]), (journey.kind, journey.intent, rule, got)
            else:
                assert got == [rating], (journey.kind, journey.intent, rule, got)
                checked += 1
    assert checked >= 40
    assert {d.rule for d in reference.decisions.values()} >= {
        "engagement", "code_suggestion", "search_clicks", "ticket_resolution", "explicit"}


def test_reference_stores_scores_and_sessions_and_ignores_arrival_partition() -> None:
    journeys = workload(300, start_ms=START_MS, spread_ms=60_000, windows=SHAPE, seed=7)
    settings = settings_from_env({**CHAOS_WINDOWS, "TOPIC_PARTITIONS": "4"})
    reference = expected_decisions(as_input(records_for(journeys)), settings)
    stored = expected_stored(reference.decisions.values())
    assert stored.sessions
    assert any("groundedness" in scores for _, scores in stored.requests.values())
    # A request with a rating and scores stores both: the rating as helicone-score-feedback.
    both = [d for d in reference.decisions.values() if d.rating is not None and d.scores
            and d.target == "request"]
    assert both
    for d in both:
        rating, scores = stored.requests[d.target_id]
        assert rating is not None and scores["helicone-score-feedback"] == int(rating)
        assert scores.keys() >= d.scores.keys()
    # The same input read back in another partition layout (a worker of 8 partitions) decides
    # the same: the reference depends on the events, not on where they sat.
    eight = settings_from_env({**CHAOS_WINDOWS, "TOPIC_PARTITIONS": "8"})
    again = expected_decisions(as_input(records_for(journeys), 8), eight)
    assert set(again.decisions) == set(reference.decisions)

"""The simulated users' code journeys (retained code, thumbs) and the demo's intent check.

The journeys are run through the pure window engine with the rules the demo configures, so
what each journey says it means is checked against what the rules decide, without a broker.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

import orjson

from tests.unit.rules.eventkit import T0, drain, engine, feed
from worker.commands.demo_check import check_table
from worker.devtools.traffic import Journey, Windows, generate
from worker.events import UI_EVENT_ADAPTER, Decision
from worker.rules import RuleConfig
from worker.validation import Accepted

SHAPE = Windows(engagement_ms=6_000, code_ms=4_000, clicks_ms=8_000, ticket_ms=10_000)
CONFIG = RuleConfig(
    engagement_window_ms=6_000, code_window_ms=4_000, clicks_window_ms=8_000,
    ticket_window_ms=10_000, long_read_ms=4_000, short_read_ms=600, quick_exit_ms=1_200,
    code_retained_min_pct=50,
)
START_MS = T0  # drain() then closes every window


def accepted(event: dict[str, Any]) -> Accepted:
    t = int(datetime.fromisoformat(event["occurred_at"]).timestamp() * 1000)
    return Accepted(UI_EVENT_ADAPTER.validate_json(orjson.dumps(event)), t)


def decide(journeys: list[Journey]) -> list[Decision]:
    events = sorted((e for j in journeys for e in j.events), key=lambda e: e["occurred_at"])
    eng = engine(config=CONFIG)
    return drain(eng, feed(eng, [accepted(e) for e in events])).decisions


def code_journeys(n: int = 200, seed: int = 3) -> list[Journey]:
    return generate(n, start_ms=START_MS, spread_ms=60_000, windows=SHAPE, seed=seed,
                    kinds={"code": 1.0}, retained_min_pct=50)


def test_code_journeys_cover_retained_code_and_thumbs() -> None:
    shapes = Counter(
        (rule, rating) for j in code_journeys() for rule, rating in j.expected.items()
    )
    for case in [("code_retention", False), ("code_retention", None), ("explicit", True),
                 ("explicit", False), ("code_suggestion", None)]:
        assert shapes[case] >= 3, (case, shapes)
    retained = [e for j in code_journeys() for e in j.events
                if e["type"] == "suggestion_retained"]
    assert all(0 <= e["properties"]["retained_chars"] <= e["properties"]["suggested_chars"]
               for e in retained)


def test_the_rules_decide_what_each_code_journey_means() -> None:
    journeys = code_journeys()
    found = [d.model_dump(mode="json") for d in decide(journeys)]
    table, ok = check_table(journeys, found)
    assert ok, table.rows
    by_key: dict[tuple[str, str], list[bool | None]] = {}
    for d in found:
        by_key.setdefault((d["request_id"], d["rule"]), []).append(d["rating"])
    for journey in journeys:
        for rule, meant in journey.expected.items():
            got = by_key.get((journey.request_id, rule), [])
            assert got == [meant], (journey.intent, rule, got, journey.events)


def test_without_the_threshold_a_mostly_deleted_suggestion_is_only_scored() -> None:
    journeys = generate(200, start_ms=START_MS, spread_ms=60_000, windows=SHAPE, seed=3,
                        kinds={"code": 1.0})
    assert all(j.expected.get("code_retention") is None for j in journeys)
    assert ("code_retention", None) in {
        (rule, rating) for j in journeys for rule, rating in j.expected.items()
    }


def test_the_intent_check_counts_abstentions_as_meant_and_ratings_as_extra() -> None:
    journeys = code_journeys(40)
    silent = next(j for j in journeys if j.expected == {"code_suggestion": None})
    found = [d.model_dump(mode="json") for d in decide(journeys)]
    abstention = next(d for d in found if d["request_id"] == silent.request_id)
    assert abstention["rating"] is None and abstention["scores"] == {}
    assert check_table(journeys, found)[1]
    wrong = [dict(d, rating=True) if d is abstention else d for d in found]
    assert not check_table(journeys, wrong)[1]

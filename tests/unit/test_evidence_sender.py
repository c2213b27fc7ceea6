"""The evidence lane inside the delivery engine: priority, budget, not-found, replacement.

The engine runs without Faust (:class:`~tests.fixtures.delivery.EngineHarness`: a dict
table, a FakeClock) over a scripted ``httpx.MockTransport``; nothing sleeps.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.delivery import EngineHarness, make_decision
from worker.delivery import BreakerState
from worker.events import Decision, Evidence
from worker.evidence import RULE_PROPERTY, SIGNALS_PROPERTY
from worker.evidence_sender import EvidenceConfig, PropertySender, property_concurrency
from worker.helicone import HeliconeClient

OK = {"data": None, "error": None}
NOT_FOUND = {"data": None, "error": "Request not found"}


class Wire:
    """What reached 'Helicone', in order; property calls answered by ``property_answer``."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, object]]] = []
        self.property_answer: Callable[[], httpx.Response] = lambda: httpx.Response(200, json=OK)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.method, request.url.path, orjson.loads(request.content)))
        if request.url.path.endswith("/property"):
            return self.property_answer()
        return httpx.Response(201, json=OK)

    def kinds(self) -> list[str]:
        return [path.rsplit("/", 1)[1] for _, path, _ in self.calls]


@pytest.fixture
def wire() -> Wire:
    return Wire()


async def make_harness(wire: Wire, **config: Any) -> EngineHarness:
    harness = EngineHarness(
        transport=httpx.MockTransport(wire.handler),
        max_attempts=5, max_age_s=3600.0, backoff_base_s=1.0, backoff_cap_s=60.0,
        **{"rate_per_s": 1000.0, **config},
    )
    poster = harness.delivery.poster
    assert isinstance(poster, HeliconeClient)
    harness.delivery.properties = PropertySender(
        harness.delivery, poster,
        EvidenceConfig(enabled=True, not_found_horizon_s=3.0, concurrency=2),
    )
    return harness


@pytest.fixture
async def harness(wire: Wire) -> AsyncIterator[EngineHarness]:
    h = await make_harness(wire)
    yield h
    await h.aclose()


def rated(rule: str = "engagement", request_id: str | None = None, minutes: int = 0) -> Decision:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minutes)
    decision = make_decision(rule=rule, request_id=request_id, decided_at=at)
    copied = Evidence(event_id="e1", type="response_copied", event_time=at)
    return decision.model_copy(update={"signals": [copied]})


async def test_a_rated_request_gets_its_rating_and_both_properties(
    harness: EngineHarness, wire: Wire
) -> None:
    decision = rated()
    await harness.publish(decision)
    await harness.advance(1.0)
    assert wire.kinds() == ["score", "property", "property"]
    assert [(m, body) for m, _, body in wire.calls[1:]] == [
        ("PUT", {"key": RULE_PROPERTY, "value": "engagement"}),
        ("PUT", {"key": SIGNALS_PROPERTY, "value": "copied"}),
    ]
    assert harness.metric(
        "feedback_delivery_attempts_total", endpoint="request_property", outcome="success"
    ) == 2
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1


async def test_under_a_strict_budget_every_waiting_rating_goes_before_any_property(
    wire: Wire,
) -> None:
    """Two calls a second for ratings and properties together: the four ratings take the
    first four tokens, the eight properties the ones after; the total stays in budget."""
    harness = await make_harness(wire, rate_per_s=2.0)
    try:
        for _ in range(4):
            await harness.publish(rated())
        await harness.advance(8.0)
        kinds = wire.kinds()
        assert kinds == ["score"] * 4 + ["property"] * 8
        # Later ratings still overtake properties that wait: one more decision arrives
        # while properties are due, and its call comes before the remaining ones.
        wire.calls.clear()
        for _ in range(2):
            await harness.publish(rated())
        await harness.advance(0.1)
        await harness.publish(rated())
        await harness.advance(8.0)
        assert wire.kinds()[:3] == ["score", "score", "score"]
    finally:
        await harness.aclose()


async def test_not_found_is_retried_for_a_bounded_time_then_dropped_not_dead_lettered(
    harness: EngineHarness, wire: Wire
) -> None:
    """Twelve requests Helicone never logs: each gets its rating; each property call is tried
    four times within the 3 s horizon, then counted and dropped.  Forty-eight 500s do not open
    the breaker (it would stop ratings) and nothing reaches the dead-letter topic."""
    wire.property_answer = lambda: httpx.Response(500, json=NOT_FOUND)
    for _ in range(12):
        await harness.publish(rated())
    await harness.advance(10.0)
    assert wire.kinds().count("score") == 12
    assert wire.kinds().count("property") == 12 * 4  # the first property, four times each
    assert harness.metric("feedback_property_dropped_total", reason="not_found") == 12
    assert harness.metric("feedback_property_not_found_total") == 48
    assert harness.delivery.breaker.state is BreakerState.CLOSED
    assert harness.records("dlq") == []
    late = rated()
    await harness.publish(late)
    await harness.advance(0.5)
    assert wire.kinds().count("score") == 13  # ratings still flow at once


async def test_a_newer_decision_replaces_the_properties_waiting_to_be_sent(
    harness: EngineHarness, wire: Wire
) -> None:
    rid = str(uuid.uuid4())
    await harness.publish(rated("engagement", rid, minutes=1))
    await harness.publish(rated("explicit", rid))  # explicit outranks the later implicit one
    await harness.advance(1.0)
    values = [body["value"] for _, path, body in wire.calls if path.endswith("/property")]
    assert values == ["explicit", "copied"]
    assert harness.metric("feedback_property_superseded_total") == 1
    await harness.publish(rated("engagement", rid, minutes=1))  # a replay: no call at all
    await harness.advance(1.0)
    assert len(wire.calls) == 3


async def test_a_401_on_a_property_pauses_all_delivery(
    harness: EngineHarness, wire: Wire
) -> None:
    wire.property_answer = lambda: httpx.Response(401, json={"error": "bad key"})
    await harness.publish(rated())
    await harness.advance(1.0)
    assert harness.delivery.auth.paused


def test_property_slots_are_an_eighth_of_the_ratings_and_at_least_one() -> None:
    assert [property_concurrency(n) for n in (1, 8, 32, 100)] == [1, 1, 4, 12]

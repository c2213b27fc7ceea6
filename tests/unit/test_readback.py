"""Read-back verification against the receiver, which stores what Helicone stores.

A delivered state is read back after the delay, within its own budget, and counted by what
Helicone really stored: a request Helicone does not know was answered 2xx and then dropped,
which only the read-back shows.
"""

from __future__ import annotations

import uuid

from tests.fixtures.delivery import EngineHarness, make_decision
from worker.clock import FakeClock
from worker.devtools.receiver import Receiver
from worker.readback import compare


def test_compare_names_what_helicone_kept() -> None:
    sent = {"time_spent_s": 40, "helicone-score-feedback": 1}
    assert compare(sent, {"scores": {"time_spent_s": 40, "helicone-score-feedback": 1}}) == "stored"
    assert compare(sent, {"scores": {"time_spent_s": 40.0, "helicone-score-feedback": 1,
                                     "other": 3}}) == "stored"
    assert compare(sent, None) == "missing"
    assert compare(sent, {"scores": {}}) == "missing"
    assert compare(sent, {"scores": {"time_spent_s": 40}}) == "different"
    assert compare(sent, {"scores": {"time_spent_s": 41, "helicone-score-feedback": 1}}) == (
        "different"
    )
    assert compare(sent, {"scores": None}) == "missing"


async def test_a_sample_is_read_back_and_a_dropped_request_shows_as_missing() -> None:
    clock = FakeClock(t_ms=1_800_000_000_000)
    known = str(uuid.uuid4())
    unknown = str(uuid.uuid4())
    async with Receiver(clock=clock, known_requests={known}) as receiver:
        harness = EngineHarness(
            base_url=receiver.url, clock=clock, rate_per_s=1000.0,
            verify_sample=1.0, verify_delay_s=5.0,
        )
        await harness.publish(make_decision(request_id=known, scores={"a": 1}))
        await harness.publish(make_decision(request_id=unknown, scores={"a": 2}))
        await harness.settle()
        assert receiver.count("/v1/request/") == 2  # both answered 201
        await receiver.settle()
        await harness.delivery.tick(lambda: [])
        assert harness.metric("feedback_delivery_verified_total", result="stored") == 0
        clock.advance(5.0)
        await harness.delivery.tick(lambda: [])  # one read: the budget's burst is one
        clock.advance(1.0)
        await harness.delivery.tick(lambda: [])
        assert harness.metric("feedback_delivery_verified_total", result="stored") == 1
        assert harness.metric("feedback_delivery_verified_total", result="missing") == 1
        await harness.aclose()


async def test_nothing_is_read_back_without_a_sample() -> None:
    clock = FakeClock(t_ms=1_800_000_000_000)
    async with Receiver(clock=clock) as receiver:
        harness = EngineHarness(base_url=receiver.url, clock=clock, rate_per_s=1000.0)
        await harness.publish(make_decision())
        await harness.settle()
        clock.advance(3600)
        await harness.delivery.tick(lambda: [])
        assert sum(
            harness.metric("feedback_delivery_verified_total", result=r)
            for r in ("stored", "missing", "different", "error")
        ) == 0
        await harness.aclose()

"""The delivery engine without Faust: dict tables, a scripted HTTP transport, a FakeClock.

Each test drives :class:`~worker.agents.deliver.Delivery` the way the deliver agent and its
timer do (``publish`` = an outbox record, ``pump`` = the retry-topic records it produced,
``advance`` = time passing with the timer ticking), so the retry, dedupe, auth-pause and
breaker rules are checked exactly and fast.  The same engine against the real receiver and
broker is in ``tests/integration/test_delivery*.py``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.delivery import EngineHarness, make_decision
from worker.agents.deliver import KIND_HEADER, REDRIVE_HEADER
from worker.delivery import BreakerState, RetryState, plan_calls

OK = {"data": None, "error": None}


class Script:
    """A MockTransport handler: answers by path suffix from queued responses, else 201."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.times_ms: list[int] = []
        self.clock: Any = None
        self._queues: list[tuple[str, list[httpx.Response | Callable[[], httpx.Response]]]] = []
        self.default: Callable[[httpx.Request], httpx.Response] = lambda request: httpx.Response(
            201, json=OK
        )

    def answer(self, suffix: str, *responses: httpx.Response) -> None:
        self._queues.append((suffix, list(responses)))

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((request.url.path, orjson.loads(request.content)))
        if self.clock is not None:
            self.times_ms.append(self.clock.now_ms())
        for suffix, queue in self._queues:
            if request.url.path.endswith(suffix) and queue:
                response = queue.pop(0)
                return response() if callable(response) else response
        return self.default(request)

    def paths(self, suffix: str = "") -> list[str]:
        return [path for path, _ in self.calls if path.endswith(suffix)]


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
async def harness(script: Script) -> AsyncIterator[EngineHarness]:
    h = EngineHarness(
        transport=httpx.MockTransport(script.handler),
        rate_per_s=1000.0,
        max_attempts=5,
        max_age_s=3600.0,
        backoff_base_s=1.0,
        backoff_cap_s=60.0,
        breaker_cool_down_s=30.0,
        auth_probe_interval_s=30.0,
        dedupe_ttl_s=3600.0,
    )
    script.clock = h.clock
    yield h
    await h.aclose()


def status(code: int, body: Any = None, **headers: str) -> httpx.Response:
    return httpx.Response(code, json=body if body is not None else {"error": "x"}, headers=headers)


# --------------------------------------------------------------------------- planning


def test_plan_calls_orders_rating_then_scores_and_refuses_session_scores() -> None:
    assert plan_calls(target="request", rating=True, has_scores=True) == (
        "request_feedback",
        "request_score",
    )
    assert plan_calls(target="request", rating=None, has_scores=True) == ("request_score",)
    assert plan_calls(target="request", rating=None, has_scores=False) == ()
    assert plan_calls(target="session", rating=False, has_scores=False) == ("session_feedback",)
    with pytest.raises(ValueError, match="session"):
        plan_calls(target="session", rating=True, has_scores=True)


def test_retry_state_counts_only_failed_attempts() -> None:
    from worker.delivery import RetryPolicy

    policy = RetryPolicy(base_s=1, cap_s=10, jitter=0, max_attempts=2, max_age_s=100)
    state = RetryState().started(1_000).succeeded("request_feedback")
    waited = state.waiting(until_ms=5_000, waiting_for="auth")
    assert (waited.attempts, waited.seq, waited.done) == (0, 1, ("request_feedback",))
    failed, give_up = waited.failed(
        policy, now_ms=2_000, endpoint="request_score", status=503, error="x"
    )
    assert give_up is None and failed.attempts == 1 and failed.next_at_ms == 3_000
    assert failed.seq == 2 and failed.remaining(("request_feedback", "request_score")) == (
        "request_score",
    )
    final, give_up = failed.failed(
        policy, now_ms=3_000, endpoint="request_score", status=503, error="x"
    )
    assert give_up == "max_attempts" and final.attempts == 2


# --------------------------------------------------------------------------- success, dedupe


async def test_rating_and_scores_are_posted_once_each(
    harness: EngineHarness, script: Script
) -> None:
    decision = make_decision(rating=True, scores={"a": 1, "b": 0})
    await harness.publish(decision)
    assert script.calls == [
        (f"/v1/request/{decision.request_id}/feedback", {"rating": True}),
        (f"/v1/request/{decision.request_id}/score", {"scores": {"a": 1, "b": 0}}),
    ]
    assert harness.pending == {}
    assert len(harness.done) == 1
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1


async def test_a_decision_written_twice_is_posted_once(
    harness: EngineHarness, script: Script
) -> None:
    decision = make_decision(rating=False)
    await harness.publish(decision)
    await harness.publish(decision)
    assert len(script.calls) == 1
    assert harness.metric("feedback_delivery_duplicates_total", state="delivered") == 1


async def test_two_copies_in_flight_at_once_make_one_call(script: Script) -> None:
    """Concurrent actors may hold two copies of one decision: the second waits, then skips."""
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        script.calls.append((request.url.path, orjson.loads(request.content)))
        await gate.wait()
        return httpx.Response(201, json=OK)

    harness = EngineHarness(transport=httpx.MockTransport(slow), rate_per_s=1000.0)
    decision = make_decision()
    first = asyncio.create_task(harness.publish(decision))
    second = asyncio.create_task(harness.publish(decision))
    while not script.calls:
        await asyncio.sleep(0)
    gate.set()
    await asyncio.gather(first, second)
    assert len(script.calls) == 1
    await harness.aclose()


async def test_a_decision_on_the_wrong_partition_is_forwarded_to_its_owner(
    harness: EngineHarness, script: Script
) -> None:
    decision = make_decision()
    owner = harness.owner(decision)
    await harness.publish(decision, partition=(owner + 1) % harness.partitions)
    assert script.calls == []
    (topic, key, _value, partition, headers) = harness.sent[0]
    assert (topic, key, partition) == ("retry", decision.request_id.encode(), owner)  # type: ignore[union-attr]
    assert (KIND_HEADER, b"forward") in headers
    assert await harness.pump() == 1
    assert len(script.calls) == 1


async def test_dry_run_posts_nothing_and_settles(script: Script) -> None:
    harness = EngineHarness(
        transport=httpx.MockTransport(script.handler), dry_run=True, rate_per_s=1000.0
    )
    await harness.publish(make_decision(scores={"x": 1}))
    assert script.calls == []
    assert [orjson.loads(v)["dry_run"] for v in harness.done.values()] == [True]
    assert harness.metric(
        "feedback_delivery_attempts_total", endpoint="request_score", outcome="dry_run"
    ) == 1
    await harness.aclose()


# --------------------------------------------------------------------------- retries


async def test_a_retry_makes_only_the_calls_left(harness: EngineHarness, script: Script) -> None:
    """Feedback went through, scores got a 500: the retry posts the scores only."""
    decision = make_decision(rating=True, scores={"s": 3})
    script.answer("/score", status(500))
    await harness.publish(decision)
    assert len(harness.pending) == 1
    (state,) = [orjson.loads(v)["state"] for v in harness.pending.values()]
    assert state["done"] == ["request_feedback"] and state["attempts"] == 1
    await harness.advance(2.0)
    assert script.paths("/feedback") == [f"/v1/request/{decision.request_id}/feedback"]
    assert len(script.paths("/score")) == 2
    assert harness.pending == {}
    assert harness.metric("feedback_delivery_retry_queue") == 0


async def test_retry_after_is_honoured(harness: EngineHarness, script: Script) -> None:
    script.answer("/feedback", status(429, **{"Retry-After": "7"}))
    await harness.publish(make_decision())
    published_ms = harness.clock.now_ms()
    await harness.advance(6.9)
    assert len(script.calls) == 1, "woken before Retry-After passed"
    await harness.advance(0.2)
    assert len(script.calls) == 2
    assert script.times_ms[1] - published_ms >= 7_000
    assert len(harness.done) == 1


async def test_backoff_grows_and_ends_in_the_dlq_after_max_attempts(
    harness: EngineHarness, script: Script
) -> None:
    script.default = lambda request: httpx.Response(503, text="x" * 5000)
    decision = make_decision(scores={"a": 1})
    await harness.publish(decision)
    for _ in range(200):
        await harness.advance(1.0)
        if not harness.pending:
            break
    assert len(script.calls) == 5
    gaps = [b - a for a, b in zip(script.times_ms, script.times_ms[1:], strict=False)]
    # 1 s, 2 s, 4 s, 8 s, each +-20 % and at most one 0.1 s tick late.
    for gap, base in zip(gaps, (1_000, 2_000, 4_000, 8_000), strict=True):
        assert base * 0.8 <= gap <= base * 1.2 + 100, gaps
    (dead,) = harness.records("dlq")
    assert dead["reason"] == "max_attempts"
    assert dead["attempts"] == 5 and dead["last_status"] == 503
    assert dead["last_endpoint"] == "request_feedback"
    assert len(dead["last_body"].encode()) <= 2048
    assert dead["decision"]["decision_id"] == decision.decision_id
    assert harness.metric("feedback_delivery_dlq_total", reason="max_attempts") == 1


async def test_the_age_horizon_ends_in_the_dlq(script: Script) -> None:
    harness = EngineHarness(
        transport=httpx.MockTransport(script.handler),
        rate_per_s=1000.0,
        max_attempts=100,
        max_age_s=10.0,
        backoff_base_s=2.0,
    )
    script.default = lambda request: httpx.Response(500, json={"error": "boom"})
    await harness.publish(make_decision())
    await harness.advance(30.0)
    (dead,) = harness.records("dlq")
    assert dead["reason"] == "max_age"
    assert 1 < dead["attempts"] < 10
    await harness.aclose()


async def test_a_rejected_call_goes_straight_to_the_dlq(
    harness: EngineHarness, script: Script
) -> None:
    script.answer("/score", status(422, {"message": "Validation Failed", "details": {}}))
    decision = make_decision(rating=True, scores={"a": 1})
    await harness.publish(decision)
    (dead,) = harness.records("dlq")
    assert dead["reason"] == "rejected" and dead["last_status"] == 422
    assert dead["attempts"] == 0 and dead["calls_done"] == ["request_feedback"]
    assert "Validation Failed" in dead["last_body"]
    # A second copy of the same decision is not tried again ...
    await harness.publish(decision)
    assert len(script.calls) == 2
    assert harness.metric("feedback_delivery_duplicates_total", state="dead_lettered") == 1
    # ... unless `dlq redrive` put it back.
    await harness.publish(decision, headers=[(REDRIVE_HEADER, b"1")])
    assert len(script.calls) == 4
    assert [d["reason"] for d in harness.records("dlq")] == ["rejected"]


async def test_invalid_decisions_are_dead_lettered_without_a_call(
    harness: EngineHarness, script: Script
) -> None:
    bad_id = make_decision(request_id="not-a-uuid")
    session_scores = make_decision(target="session", rating=True, scores={"a": 1})
    await harness.publish(bad_id)
    await harness.publish(session_scores)
    await harness.publish(b"\xff not json", partition=2)
    assert script.calls == []
    reasons = [(d["reason"], d["decision_id"]) for d in harness.records("dlq")]
    assert reasons == [
        ("invalid", bad_id.decision_id),
        ("invalid", session_scores.decision_id),
        ("invalid", None),
    ]
    junk = harness.records("dlq")[2]
    assert base64.b64decode(junk["value_b64"]) == b"\xff not json"
    assert junk["source"]["partition"] == 2


# --------------------------------------------------------------------------- waiting state


async def test_wake_ups_survive_a_new_engine_and_stale_or_doubled_ones_are_ignored(
    script: Script,
) -> None:
    """A restart: a new engine over the same tables rebuilds its due index and delivers once;
    the old engine's wake-up records, replayed, change nothing."""
    first = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=1000.0)
    script.answer("/feedback", status(503), status(503))
    decision = make_decision()
    await first.publish(decision)
    await first.advance(1.5)  # one wake-up, one more failure
    assert len(script.calls) == 2 and len(first.pending) == 1
    old_wakeups = [s for s in first.sent if s[0] == "retry"]
    assert old_wakeups

    second = EngineHarness(
        transport=httpx.MockTransport(script.handler), clock=first.clock, rate_per_s=1000.0
    )
    second.pending.update(first.pending)
    second.done.update(first.done)
    assert second.delivery.rebuild(list(second.pending.items()), set(range(4))) == 1
    second.sent.extend(old_wakeups)  # stale wake-ups still on the topic
    second.sent.extend(old_wakeups)
    await second.pump()
    assert len(script.calls) == 2, "a stale wake-up was acted on"
    await second.advance(10.0)
    assert len(script.calls) == 3 and second.pending == {}
    (due,) = [s for s in second.sent if s[0] == "retry" and s not in old_wakeups]
    second.sent.append(due)  # the same wake-up delivered twice
    await second.pump()
    assert len(script.calls) == 3
    await first.aclose()
    await second.aclose()


async def test_revoked_partitions_are_not_woken(harness: EngineHarness, script: Script) -> None:
    script.answer("/feedback", status(503))
    decision = make_decision()
    await harness.publish(decision)
    harness.delivery.rebuild(list(harness.pending.items()), set(range(4)))
    harness.delivery.on_revoked({harness.owner(decision)})
    assert harness.metric("feedback_delivery_retry_queue") == 0
    await harness.advance(5.0)
    assert len(script.calls) == 1


async def test_settled_ids_are_forgotten_after_the_ttl(
    harness: EngineHarness, script: Script
) -> None:
    old, new = make_decision(), make_decision()
    await harness.publish(old)
    harness.clock.advance(3000)
    await harness.publish(new)
    assert len(harness.done) == 2
    assert await harness.delivery.sweep(list(harness.done.items())) == 0
    harness.clock.advance(700)  # old is 3700 s old (ttl 3600), new 700 s
    assert await harness.delivery.sweep(list(harness.done.items())) == 1
    await harness.pump()
    assert len(harness.done) == 1
    await harness.publish(new)
    assert len(script.calls) == 2  # new is still remembered


# --------------------------------------------------------------------------- auth and breaker


async def test_401_pauses_everything_without_dead_letters_then_a_probe_resumes(
    harness: EngineHarness, script: Script
) -> None:
    script.answer("/feedback", status(401), status(401))
    decisions = [make_decision() for _ in range(5)]
    await harness.publish(decisions[0])
    assert harness.delivery.auth.paused
    assert harness.metric("feedback_delivery_auth_paused") == 1
    for decision in decisions[1:]:
        await harness.publish(decision)
    assert len(script.calls) == 1, "calls went out while paused"
    await harness.advance(29.0)
    assert len(script.calls) == 1
    await harness.advance(2.0)  # one probe: 401 again
    assert len(script.calls) == 2
    await harness.advance(31.0)  # next probe accepted: delivery resumes
    await harness.advance(5.0)
    assert len(script.calls) == 7
    assert not harness.delivery.auth.paused
    assert harness.records("dlq") == []
    assert all(
        orjson.loads(v)["attempts"] == 1 for v in harness.done.values()
    ), "waiting for auth used up retry attempts"


async def test_the_breaker_opens_parks_new_decisions_and_probes(
    harness: EngineHarness, script: Script
) -> None:
    script.default = lambda request: httpx.Response(503, json={"error": "down"})
    for _ in range(12):
        await harness.publish(make_decision())
    assert harness.delivery.breaker.state is BreakerState.OPEN
    assert harness.metric("feedback_delivery_breaker_state") == 2
    calls_at_open = len(script.calls)
    assert calls_at_open == 10  # min_calls of the rolling window, all failed
    for _ in range(20):
        await harness.publish(make_decision())
    await harness.advance(29.0)
    assert len(script.calls) == calls_at_open, "calls went out while the breaker was open"
    script.default = lambda request: httpx.Response(201, json=OK)
    await harness.advance(3.0)
    assert harness.metric("feedback_delivery_breaker_state") == BreakerState.CLOSED
    # What waited for the breaker is woken at once, not at the end of its parking time.
    await harness.advance(1.0)
    assert harness.pending == {}
    assert len(harness.done) == 32
    assert harness.records("dlq") == []
    assert harness.metric("feedback_delivery_breaker_opened_total") == 1


async def test_the_token_bucket_paces_calls(script: Script) -> None:
    harness = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=5.0)
    start_ms = harness.clock.now_ms()
    for _ in range(15):
        await harness.publish(make_decision())
    assert len(script.calls) == 15
    # A full bucket of 5, then 10 more at 5 per second.
    assert harness.clock.now_ms() - start_ms >= 1_990
    await harness.aclose()

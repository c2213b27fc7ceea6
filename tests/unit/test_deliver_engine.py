"""The delivery engine without Faust: dict tables, a scripted HTTP transport, a FakeClock.

Each test drives :class:`~worker.delivery_engine.Delivery` the way the deliver agent and its
sender do (``publish`` = an outbox record, ``settle`` = the sender starts what it may and the
agent applies the results, ``advance`` = time passing), so whole-state sending, replacement,
retries, dedupe, the auth pause, the breaker and the rate are checked exactly and fast.
The same engine against the real receiver and
broker is in ``tests/integration/test_delivery*.py``.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.delivery import EngineHarness, make_decision
from worker.delivery import BreakerState
from worker.delivery_state import FeedbackState
from worker.envelopes import KIND_HEADER, REDRIVE_HEADER

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


def gated_transport(script: Script) -> tuple[asyncio.Event, httpx.MockTransport]:
    """A transport that records each call and answers 201 only once ``gate`` is set."""
    gate = asyncio.Event()

    async def slow(request: httpx.Request) -> httpx.Response:
        script.calls.append((request.url.path, orjson.loads(request.content)))
        await gate.wait()
        return httpx.Response(201, json=OK)

    return gate, httpx.MockTransport(slow)


def score_path(decision: Any) -> str:
    return f"/v1/request/{decision.request_id}/score"


async def publish_and_settle(harness: EngineHarness, *decisions: Any, **kwargs: Any) -> None:
    for decision in decisions:
        await harness.publish(decision, **kwargs)
    await harness.settle()


# --------------------------------------------------------------------------- whole state


async def test_a_rating_and_its_scores_go_in_one_call(
    harness: EngineHarness, script: Script
) -> None:
    decision = make_decision(rule="engagement", rating=True, scores={"time_spent_s": 42})
    await publish_and_settle(harness, decision)
    assert script.calls == [
        (score_path(decision),
         {"scores": {"time_spent_s": 42, "helicone-score-feedback": 1}}),
    ]
    state = harness.state(decision.request_id or "")
    assert state is not None and state["sent"] == state["version"] == 1
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1
    assert harness.metric("feedback_delivery_backlog") == 0


async def test_in_the_worker_a_state_is_sent_only_once_it_is_durable(script: Script) -> None:
    """The worker's table is buffered: a merged state waits until the adapter reports its
    changelog record confirmed, so a partition's next owner knows every state that was sent."""
    harness = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=1000.0,
                            send_when_durable=True)
    script.clock = harness.clock
    first = make_decision(rule="engagement", rating=True)
    second = make_decision(rule="search_clicks", rating=False)
    await publish_and_settle(harness, first, second)
    assert script.calls == []  # merged, not yet durable
    assert harness.metric("feedback_delivery_backlog") == 0

    def made_durable(request_id: str | None) -> None:
        key = next(key for key in harness.states if key.endswith(f"r:{request_id}".encode()))
        harness.delivery.durable(int(key.split(b"/")[0]), [key])

    made_durable(first.request_id)
    await harness.settle()
    assert [path for path, _ in script.calls] == [score_path(first)]
    made_durable(second.request_id)
    await harness.settle()
    assert [path for path, _ in script.calls] == [score_path(first), score_path(second)]
    await harness.aclose()


async def test_rating_via_feedback_makes_the_two_older_calls(script: Script) -> None:
    harness = EngineHarness(
        transport=httpx.MockTransport(script.handler), rate_per_s=1000.0, rating_via="feedback"
    )
    decision = make_decision(rule="engagement", rating=False, scores={"time_spent_s": 3})
    await publish_and_settle(harness, decision)
    assert script.calls == [
        (f"/v1/request/{decision.request_id}/feedback", {"rating": False}),
        (score_path(decision), {"scores": {"time_spent_s": 3}}),
    ]
    await harness.aclose()


async def test_every_later_call_carries_everything_decided_so_far(
    harness: EngineHarness, script: Script
) -> None:
    request_id = str(uuid.uuid4())
    engagement = make_decision(
        request_id=request_id, rule="engagement", rating=True, scores={"time_spent_s": 40}
    )
    search = make_decision(
        request_id=request_id, rule="search_clicks", rating=True,
        scores={"click_through_rate": 50},
    )
    thumbs = make_decision(request_id=request_id, rule="explicit", rating=False)
    for decision in (engagement, search, thumbs):
        await publish_and_settle(harness, decision)
    bodies = [body for _, body in script.calls]
    assert bodies[-1] == {
        "scores": {"click_through_rate": 50, "time_spent_s": 40, "helicone-score-feedback": 0}
    }
    assert all("time_spent_s" in body["scores"] for body in bodies)


async def test_a_state_changed_while_it_waits_is_sent_once_as_it_is_then(
    harness: EngineHarness, script: Script
) -> None:
    request_id = str(uuid.uuid4())
    implicit = make_decision(
        request_id=request_id, rule="engagement", rating=True, scores={"time_spent_s": 8}
    )
    explicit = make_decision(request_id=request_id, rule="explicit", rating=False)
    await harness.publish(implicit)
    await harness.publish(explicit)  # before the sender ran: replaces, does not queue
    await harness.settle()
    assert script.calls == [
        (score_path(implicit), {"scores": {"time_spent_s": 8, "helicone-score-feedback": 0}})
    ]
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 2


async def test_an_explicit_rating_beats_any_later_implicit_one(
    harness: EngineHarness, script: Script
) -> None:
    request_id = str(uuid.uuid4())
    explicit = make_decision(request_id=request_id, rule="explicit", rating=True)
    implicit = make_decision(
        request_id=request_id, rule="ticket_resolution", rating=False,
        decided_at=datetime.now(UTC) + timedelta(hours=1),
    )
    await publish_and_settle(harness, explicit)
    await publish_and_settle(harness, implicit)
    assert [body for _, body in script.calls] == [{"scores": {"helicone-score-feedback": 1}}]
    # The implicit decision changed nothing Helicone would store: no call, and counted so.
    assert harness.metric("feedback_delivery_unchanged_total") == 1
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1


async def test_an_abstention_is_a_no_op_counted_as_unchanged(
    harness: EngineHarness, script: Script
) -> None:
    """A window that decided nothing (OUTBOX_ABSTENTIONS): no call, no state created or
    changed, nothing in the backlog, and one count in the metrics identity (unchanged)."""
    alone = make_decision(rule="code_suggestion", rating=None)
    await publish_and_settle(harness, alone)
    assert script.calls == [] and harness.state(alone.request_id or "") is None
    assert harness.metric("feedback_delivery_unchanged_total") == 1
    assert harness.metric("feedback_delivery_backlog") == 0
    request_id = str(uuid.uuid4())
    rated = make_decision(request_id=request_id, rule="engagement", rating=True)
    await publish_and_settle(harness, rated)
    before = harness.state(request_id)
    tie = make_decision(
        request_id=request_id, rule="engagement", rating=None,
        decided_at=rated.decided_at + timedelta(minutes=5),
    )
    await publish_and_settle(harness, tie, tie)  # and its duplicate
    assert harness.state(request_id) == before and len(script.calls) == 1
    assert harness.metric("feedback_delivery_unchanged_total") == 3
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1


async def test_a_change_during_a_call_is_sent_after_it(script: Script) -> None:
    """One call per target in flight; what changed meanwhile goes in the next call."""
    gate, slow = gated_transport(script)
    harness = EngineHarness(transport=slow, rate_per_s=1000.0)
    request_id = str(uuid.uuid4())
    first = make_decision(request_id=request_id, rule="engagement", rating=True)
    second = make_decision(request_id=request_id, rule="scores", rating=None, scores={"eval": 7})
    await harness.publish(first)
    harness.delivery.dispatch()
    while not script.calls:
        await asyncio.sleep(0)
    await harness.publish(second)
    harness.delivery.dispatch()
    await asyncio.sleep(0)
    assert len(script.calls) == 1, "a second call of one target went out while one was in flight"
    gate.set()
    await harness.settle()
    assert [body for _, body in script.calls] == [
        {"scores": {"helicone-score-feedback": 1}},
        {"scores": {"eval": 7, "helicone-score-feedback": 1}},
    ]
    state = harness.state(request_id)
    assert state is not None and state["sent"] == state["version"] == 2
    await harness.aclose()


async def test_merging_never_waits_for_helicone(script: Script) -> None:
    """The agent's part returns at once however slow Helicone is: ingestion never waits."""
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()
        return httpx.Response(201, json=OK)

    harness = EngineHarness(transport=httpx.MockTransport(hang), rate_per_s=1.0)
    for _ in range(200):
        await asyncio.wait_for(harness.publish(make_decision()), timeout=1.0)
    harness.delivery.dispatch()
    harness.delivery.update_gauges()
    assert harness.metric("feedback_delivery_backlog") == 200
    assert harness.metric("feedback_delivery_drain_seconds") == pytest.approx(200.0)
    await harness.aclose()


# --------------------------------------------------------------------------- dedupe, routing


async def test_a_decision_written_twice_is_posted_once(
    harness: EngineHarness, script: Script
) -> None:
    decision = make_decision(rating=False)
    await publish_and_settle(harness, decision)
    await publish_and_settle(harness, decision)
    assert len(script.calls) == 1
    assert harness.metric("feedback_delivery_duplicates_total", state="delivered") == 1


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
    await harness.settle()
    assert len(script.calls) == 1


async def test_dry_run_posts_nothing_and_settles(script: Script) -> None:
    harness = EngineHarness(
        transport=httpx.MockTransport(script.handler), dry_run=True, rate_per_s=0.001
    )
    decision = make_decision(scores={"x": 1})
    await publish_and_settle(harness, decision)
    assert script.calls == []
    state = harness.state(decision.request_id or "")
    assert state is not None and state["sent"] == 1
    assert harness.metric(
        "feedback_delivery_attempts_total", endpoint="request_score", outcome="dry_run"
    ) == 1
    await harness.aclose()


# --------------------------------------------------------------------------- retries


async def test_retry_after_is_honoured(harness: EngineHarness, script: Script) -> None:
    script.answer("/score", status(503, **{"Retry-After": "7"}))
    decision = make_decision()
    await harness.publish(decision)
    published_ms = harness.clock.now_ms()
    await harness.advance(6.9)
    assert len(script.calls) == 1, "sent again before Retry-After passed"
    await harness.advance(0.2)
    assert len(script.calls) == 2
    assert script.times_ms[1] - published_ms >= 7_000
    state = harness.state(decision.request_id or "")
    assert state is not None and state["sent"] == 1


async def test_backoff_grows_and_every_decision_of_the_state_ends_in_the_dlq(
    harness: EngineHarness, script: Script
) -> None:
    script.default = lambda request: httpx.Response(503, text="x" * 5000)
    request_id = str(uuid.uuid4())
    first = make_decision(request_id=request_id, rule="engagement", scores={"a": 1})
    second = make_decision(request_id=request_id, rule="scores", rating=None, scores={"b": 2})
    await harness.publish(first)
    await harness.publish(second)
    for _ in range(200):
        await harness.advance(1.0)
        if harness.records("dlq"):
            break
    assert len(script.calls) == 5
    gaps = [b - a for a, b in zip(script.times_ms, script.times_ms[1:], strict=False)]
    # 1 s, 2 s, 4 s, 8 s, each +-20 % and at most one 0.1 s step late.
    for gap, base in zip(gaps, (1_000, 2_000, 4_000, 8_000), strict=True):
        assert base * 0.8 <= gap <= base * 1.2 + 100, gaps
    dead = harness.records("dlq")
    assert sorted(d["decision"]["decision_id"] for d in dead) == sorted(
        [first.decision_id, second.decision_id]
    )
    assert all(d["reason"] == "max_attempts" and d["attempts"] == 5 for d in dead)
    assert all(d["last_status"] == 503 and len(d["last_body"].encode()) <= 2048 for d in dead)
    assert harness.metric("feedback_delivery_dlq_total", reason="max_attempts") == 2
    state = harness.state(request_id)
    assert state is not None and state["dead"] == state["version"] and state["unsent"] == []


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


async def test_a_rejected_state_goes_to_the_dlq_and_only_redrive_sends_it_again(
    harness: EngineHarness, script: Script
) -> None:
    script.answer("/score", status(422, {"message": "Validation Failed", "details": {}}))
    decision = make_decision(rating=True, scores={"a": 1})
    await publish_and_settle(harness, decision)
    (dead,) = harness.records("dlq")
    assert dead["reason"] == "rejected" and dead["last_status"] == 422
    assert dead["attempts"] == 0 and dead["last_endpoint"] == "request_score"
    assert "Validation Failed" in dead["last_body"]
    await publish_and_settle(harness, decision)  # a second copy changes nothing
    assert len(script.calls) == 1
    await publish_and_settle(harness, decision, headers=[(REDRIVE_HEADER, b"1")])
    assert len(script.calls) == 2
    assert [d["reason"] for d in harness.records("dlq")] == ["rejected"]


async def test_invalid_decisions_are_dead_lettered_without_a_call(
    harness: EngineHarness, script: Script
) -> None:
    bad_id = make_decision(request_id="not-a-uuid")
    session_scores = make_decision(target="session", rating=True, scores={"a": 1})
    await harness.publish(bad_id)
    await harness.publish(session_scores)
    await harness.publish(b"\xff not json", partition=2)
    await harness.settle()
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


async def test_session_decisions_post_the_latest_session_rating(
    harness: EngineHarness, script: Script
) -> None:
    decision = make_decision(target="session", rule="session_feedback", rating=False)
    await publish_and_settle(harness, decision)
    assert script.calls == [(f"/v1/session/{decision.session_id}/feedback", {"rating": False})]


# --------------------------------------------------------------------------- restarts


async def test_a_new_engine_over_the_same_table_sends_what_was_due_once(
    script: Script,
) -> None:
    """A restart: the table says what is due; old result records replayed change nothing."""
    first = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=1000.0)
    script.answer("/score", status(503), status(503))
    decision = make_decision()
    await publish_and_settle(first, decision)
    await first.advance(1.5)  # a retry, one more failure
    assert len(script.calls) == 2
    old_results = [s for s in first.sent if s[0] == "retry"]
    assert old_results

    second = EngineHarness(
        transport=httpx.MockTransport(script.handler), clock=first.clock, rate_per_s=1000.0,
        states=dict(first.states),
    )
    assert second.delivery.rebuild(list(second.states.items()), set(range(4))) == 1
    second.sent.extend(old_results)  # stale results still on the topic
    await second.pump()
    await second.advance(10.0)
    assert len(script.calls) == 3
    state = second.state(decision.request_id or "")
    assert state is not None and state["sent"] == state["version"]
    second.sent.extend(old_results)
    await second.advance(10.0)
    assert len(script.calls) == 3
    await first.aclose()
    await second.aclose()


async def test_revoked_partitions_are_not_sent(harness: EngineHarness, script: Script) -> None:
    script.answer("/score", status(503))
    decision = make_decision()
    await publish_and_settle(harness, decision)
    harness.delivery.rebuild(list(harness.states.items()), set(range(4)))
    harness.delivery.on_revoked({harness.owner(decision)})
    await harness.advance(5.0)
    assert len(script.calls) == 1
    assert harness.metric("feedback_delivery_backlog") == 0


async def test_settled_states_are_forgotten_after_the_ttl(
    harness: EngineHarness, script: Script
) -> None:
    old, new = make_decision(), make_decision()
    await publish_and_settle(harness, old)
    harness.clock.advance(3000)
    await publish_and_settle(harness, new)
    assert len(harness.states) == 2
    assert await harness.delivery.sweep(list(harness.states.items())) == 0
    harness.clock.advance(700)  # old is 3700 s old (ttl 3600), new 700 s
    assert await harness.delivery.sweep(list(harness.states.items())) == 1
    await harness.pump()
    assert len(harness.states) == 1
    await publish_and_settle(harness, new)
    assert len(script.calls) == 2  # new is still remembered


# --------------------------------------------------------------------------- auth and breaker


async def test_401_pauses_everything_without_dead_letters_then_a_probe_resumes(
    harness: EngineHarness, script: Script
) -> None:
    script.answer("/score", status(401), status(401))
    decisions = [make_decision() for _ in range(5)]
    await publish_and_settle(harness, decisions[0])
    assert harness.delivery.auth.paused
    assert harness.metric("feedback_delivery_auth_paused") == 1
    for decision in decisions[1:]:
        await publish_and_settle(harness, decision)
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
        FeedbackState.from_json(v).retry.attempts == 0 for v in harness.states.values()
    ), "waiting for auth used up retry attempts"


async def test_the_breaker_opens_stops_new_states_and_probes(
    harness: EngineHarness, script: Script
) -> None:
    script.default = lambda request: httpx.Response(503, json={"error": "down"})
    for _ in range(12):
        await publish_and_settle(harness, make_decision())
    assert harness.delivery.breaker.state is BreakerState.OPEN
    assert harness.metric("feedback_delivery_breaker_state") == 2
    calls_at_open = len(script.calls)
    assert calls_at_open == 10  # min_calls of the rolling window, all failed
    for _ in range(20):
        await publish_and_settle(harness, make_decision())
    await harness.advance(29.0)
    assert len(script.calls) == calls_at_open, "calls went out while the breaker was open"
    script.default = lambda request: httpx.Response(201, json=OK)
    await harness.advance(3.0)
    assert harness.metric("feedback_delivery_breaker_state") == BreakerState.CLOSED
    await harness.advance(1.0)
    assert all(orjson.loads(v)["sent"] == 1 for v in harness.states.values())
    assert len(harness.states) == 32
    assert harness.records("dlq") == []
    assert harness.metric("feedback_delivery_breaker_opened_total") == 1


# --------------------------------------------------------------------------- the rate


async def test_calls_are_paced_at_the_budget(script: Script) -> None:
    harness = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=5.0)
    script.clock = harness.clock
    for _ in range(15):
        await harness.publish(make_decision())
    await harness.advance(2.9, step_s=0.01)
    assert len(script.calls) == 15
    gaps = [b - a for a, b in zip(script.times_ms, script.times_ms[1:], strict=False)]
    assert min(gaps) >= 190, gaps  # 5 per second, no burst
    await harness.aclose()


async def test_a_429_slows_the_rate_and_retry_after_holds_every_call(script: Script) -> None:
    harness = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=10.0)
    script.answer("/score", status(429, **{"Retry-After": "3"}))
    for _ in range(5):
        await harness.publish(make_decision())
    await harness.advance(2.9, step_s=0.01)
    assert len(script.calls) == 1, "calls went out during Retry-After"
    assert harness.delivery.rate.per_s == pytest.approx(5.0, abs=0.5)
    assert harness.metric("feedback_delivery_throttled_total") == 1
    await harness.advance(5.0, step_s=0.01)
    assert len(script.calls) == 6
    await harness.aclose()


async def test_ratelimit_headers_spread_what_is_left_of_the_window(script: Script) -> None:
    harness = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=100.0)
    script.default = lambda request: httpx.Response(
        201, json=OK, headers={"RateLimit-Remaining": "20", "RateLimit-Reset": "10"}
    )
    for _ in range(10):
        await harness.publish(make_decision())
    await harness.advance(2.0, step_s=0.01)
    assert harness.delivery.rate.per_s == pytest.approx(2.0)
    assert 4 <= len(script.calls) <= 6
    await harness.aclose()


async def test_a_state_restored_after_a_handover_waits_for_its_previous_owners_result(
    script: Script,
) -> None:
    """The old owner got its 2xx but its result record was not applied before the partition
    moved: the new owner applies it within the settle time and sends nothing again."""
    first = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=1000.0)
    decision = make_decision()
    await first.publish(decision)
    first.delivery.dispatch()
    await first.delivery.drain()  # the call is made; its result is on the topic, unapplied
    assert len(script.calls) == 1
    second = EngineHarness(
        transport=httpx.MockTransport(script.handler), clock=first.clock, rate_per_s=1000.0,
        states=dict(first.states),
    )
    assert second.delivery.rebuild(list(second.states.items()), set(range(4))) == 1
    second.sent.extend(s for s in first.sent if s[0] == "retry")
    await second.advance(10.0)
    assert len(script.calls) == 1, "the new owner sent a state its old owner had delivered"
    await first.aclose()
    await second.aclose()


async def test_each_decision_counts_as_delivered_once_while_results_are_on_their_way(
    harness: EngineHarness, script: Script
) -> None:
    """A second version is sent before the first one's result is applied: the table still
    lists the first decision as unsent, but it is counted once."""
    request_id = str(uuid.uuid4())
    await harness.publish(make_decision(request_id=request_id, rule="engagement"))
    harness.delivery.dispatch()
    await harness.delivery.drain()  # delivered; the result record is not applied yet
    await harness.publish(
        make_decision(request_id=request_id, rule="scores", rating=None, scores={"x": 1})
    )
    await harness.settle()
    assert len(script.calls) == 2
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 2


async def test_a_decision_changing_nothing_after_an_unapplied_delivery_is_counted_once(
    harness: EngineHarness, script: Script
) -> None:
    request_id = str(uuid.uuid4())
    await harness.publish(make_decision(request_id=request_id, rule="explicit", rating=True))
    harness.delivery.dispatch()
    await harness.delivery.drain()  # delivered; the result record is not applied yet
    await harness.publish(make_decision(request_id=request_id, rule="engagement", rating=False))
    await harness.settle()
    assert len(script.calls) == 1
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1
    assert harness.metric("feedback_delivery_unchanged_total") == 1


async def test_a_decision_changing_nothing_during_a_call_is_counted_once(
    script: Script,
) -> None:
    gate, slow = gated_transport(script)
    harness = EngineHarness(transport=slow, rate_per_s=1000.0)
    request_id = str(uuid.uuid4())
    await harness.publish(make_decision(request_id=request_id, rule="explicit", rating=True))
    harness.delivery.dispatch()
    while not script.calls:
        await asyncio.sleep(0)
    await harness.publish(make_decision(request_id=request_id, rule="engagement", rating=False))
    gate.set()
    await harness.settle()
    assert len(script.calls) == 1
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 1
    assert harness.metric("feedback_delivery_unchanged_total") == 1
    await harness.aclose()


# --------------------------------------------------------------------------- result records


def result_records(harness: EngineHarness) -> list[dict[str, Any]]:
    return [orjson.loads(value) for topic, _, value, _, headers in harness.sent
            if topic == "retry" and (KIND_HEADER, b"result") in headers]


async def test_outcomes_finishing_together_share_one_record_per_partition() -> None:
    harness = EngineHarness(dry_run=True)  # no rate in dry run: the calls start together
    decisions = [make_decision() for _ in range(30)]  # fewer than DELIVERY_CONCURRENCY
    await publish_and_settle(harness, *decisions)
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 30
    records = result_records(harness)
    partitions = {harness.owner(d) for d in decisions}
    assert len(records) == len(partitions)  # one dispatch round: one record per partition
    assert sum(len(r["results"]) for r in records) == 30
    for decision in decisions:
        state = harness.state(decision.request_id or "")
        assert state is not None and state["sent"] == state["version"] == 1
    await harness.advance(5.0)
    assert harness.metric("feedback_delivery_delivered_total", target="request") == 30
    await harness.aclose()


async def test_a_result_record_that_cannot_be_sent_is_sent_again(
    harness: EngineHarness, script: Script, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outcome known in memory but not durable would be lost for the table, which would
    then show the state due forever (and its next owner would send it again)."""
    monkeypatch.setattr("worker.delivery_results._RESULT_RETRY_MS", 10)
    real_send = harness.delivery.results.send
    failures = [1]

    async def flaky(topic: str, key: bytes, value: bytes, partition: int | None,
                    headers: list[tuple[str, bytes]]) -> None:
        if (KIND_HEADER, b"result") in headers and failures:
            failures.pop()
            raise RuntimeError("broker away")
        await real_send(topic, key, value, partition, headers)

    harness.delivery.results.send = flaky
    decision = make_decision()
    await publish_and_settle(harness, decision)
    assert not failures, "the first result record failed"
    state = harness.state(decision.request_id or "")
    assert state is not None and state["sent"] == state["version"] == 1
    assert len(script.calls) == 1  # the outcome was recorded again, not the call made again
    await harness.advance(5.0)
    assert len(script.calls) == 1
    await harness.aclose()


async def test_a_single_outcome_record_of_an_older_worker_still_settles(
    harness: EngineHarness, script: Script
) -> None:
    gate, slow = gated_transport(script)
    gated = EngineHarness(transport=slow, rate_per_s=1000.0)
    decision = make_decision()
    await gated.publish(decision)
    gated.delivery.dispatch()
    while not script.calls:
        await asyncio.sleep(0)
    partition = gated.owner(decision)
    key = f"r:{decision.request_id}"
    await gated.delivery.on_retry(
        key=key.encode(), value=orjson.dumps({"key": key, "version": 1, "outcome": "delivered"}),
        partition=partition, offset=99, headers=[(KIND_HEADER, b"result")],
    )
    state = gated.state(decision.request_id or "")
    assert state is not None and state["sent"] == 1 and state["version"] == 1
    gate.set()
    await gated.settle()
    await gated.aclose()


async def test_a_call_frees_its_slot_before_its_result_record_is_acknowledged(
    script: Script,
) -> None:
    """The slot bounds calls to Helicone, not the broker's round trip: with one slot, a
    second state goes out while the first's result record still waits for the broker, and
    the first is not sent again meanwhile (its outcome is known in memory)."""
    h = EngineHarness(transport=httpx.MockTransport(script.handler), rate_per_s=1000.0,
                      concurrency=1)
    broker = asyncio.Event()
    real_send = h.delivery.results.send

    async def slow_results(topic: str, key: bytes, value: bytes, partition: int | None,
                           headers: list[tuple[str, bytes]]) -> None:
        if (KIND_HEADER, b"result") in headers:
            await broker.wait()
        await real_send(topic, key, value, partition, headers)

    h.delivery.results.send = slow_results
    first, second = make_decision(), make_decision()
    await h.publish(first)
    await h.publish(second)
    for _ in range(50):
        h.delivery.dispatch()
        await asyncio.sleep(0.002)
        h.clock.advance(0.01)  # the rate's next token
    assert sorted(script.paths()) == sorted([score_path(first), score_path(second)])
    assert not any((KIND_HEADER, b"result") in r[4] for r in h.sent)  # none acked yet
    broker.set()
    await h.settle()
    for decision in (first, second):
        state = h.state(decision.request_id or "")
        assert state is not None and state["sent"] == state["version"] == 1
    assert len(script.calls) == 2
    await h.aclose()


@pytest.mark.parametrize("second_status", [201, 404])
async def test_a_result_applied_during_the_next_call_does_not_count_its_decisions_again(
    script: Script, monkeypatch: pytest.MonkeyPatch, second_status: int
) -> None:
    """Each decision counts once, as delivered or dead-lettered, however a version's call and
    the result record of the version before it interleave.

    Version 1 is delivered; version 2 (a decision merged during that call) is read and sent
    before version 1's result record is applied; the record is applied while version 2's
    call is in flight, which clears the in-memory outcome of version 1.  Version 2's call,
    carrying a copy read before the record, must count (or dead-letter) only what version 2
    added.
    """
    monkeypatch.setattr("worker.delivery_results._RESULT_LINGER_S", 0.0)
    gates: list[asyncio.Event] = []

    async def one_gate_per_call(request: httpx.Request) -> httpx.Response:
        script.calls.append((request.url.path, orjson.loads(request.content)))
        gates.append(gate := asyncio.Event())
        await gate.wait()
        return httpx.Response(201 if len(gates) == 1 else second_status, json=OK)

    harness = EngineHarness(transport=httpx.MockTransport(one_gate_per_call), rate_per_s=1000.0)

    async def until(predicate: Callable[[], bool]) -> None:
        for _ in range(1_000):
            if predicate():
                return
            await asyncio.sleep(0)
        raise AssertionError("the engine did not get there")

    request_id = str(uuid.uuid4())
    await harness.publish(make_decision(request_id=request_id, rule="engagement", rating=True))
    harness.delivery.dispatch()
    await until(lambda: len(gates) == 1)
    await harness.publish(make_decision(request_id=request_id, rule="explicit", rating=False))
    gates[0].set()  # version 1 delivered; its result record is produced, not yet applied
    await until(lambda: bool(result_records(harness)))
    harness.clock.advance(0.01)  # the rate's next token
    harness.delivery.dispatch()  # version 2 goes out, read while the table still says sent=0
    await until(lambda: len(gates) == 2)
    assert await harness.pump() == 1  # version 1's result is applied during version 2's call
    gates[1].set()
    await harness.settle()
    assert [body for _, body in script.calls] == [
        {"scores": {"helicone-score-feedback": 1}},
        {"scores": {"helicone-score-feedback": 0}},
    ]
    state = harness.state(request_id)
    assert state is not None and state["version"] == 2 and state["sent"] == 1 + (
        second_status == 201)
    delivered = harness.metric("feedback_delivery_delivered_total", target="request")
    dead = [orjson.loads(v)["decision"]["rule"] for t, _, v, _, _ in harness.sent if t == "dlq"]
    assert (delivered, dead) == ((2, []) if second_status == 201 else (1, ["explicit"]))
    await harness.aclose()

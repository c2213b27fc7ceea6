"""Delivery on the real broker (Tansu) and the real receiver over HTTP.

The worker runs as ``feedback-worker run`` in a subprocess; decisions are published to its
outbox directly (keyed by target id, as the window engine writes them).  Tests wait on signals
(the receiver's accepted-call count, a metric, records on a topic) with timeouts.

Timing-heavy scenarios are compressed through the delivery settings (short backoff, cool-down
and probe interval), as each test's docstring says; the five-minute outage runs in-process on
a FakeClock against the real receiver (last test).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from tests.fixtures.delivery import (
    EngineHarness,
    ReceiverThread,
    api_key,
    list_topics,
    make_decision,
    publish,
    read_all,
    wait_until,
)
from tests.fixtures.worker import TestTopics, WorkerProcess
from worker.clock import FakeClock
from worker.delivery import BreakerState
from worker.devtools.receiver import Receiver

pytestmark = pytest.mark.integration


def delivery_env(receiver: ReceiverThread, key: str, **overrides: str) -> dict[str, str]:
    env = {
        "FEEDBACK_DRY_RUN": "false",
        "HELICONE_API_KEY": key,
        "HELICONE_BASE_URL": receiver.url,
        "DELIVERY_CONCURRENCY": "8",
        "DELIVERY_RATE_PER_S": "1000",
        "DELIVERY_BACKOFF_BASE_S": "0.2",
        "DELIVERY_BACKOFF_CAP_S": "2",
        "DELIVERY_BREAKER_COOL_DOWN_S": "1",
        "DELIVERY_AUTH_PROBE_INTERVAL_S": "1",
    }
    env.update(overrides)
    return env


def test_each_state_is_one_call_and_helicone_stores_rating_and_scores(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """A rating, a rating with scores, scores alone and a session rating: one call each, and
    what the receiver *stores* (Helicone's batch dedupe applied) holds rating and scores; the
    same decisions written to the outbox again cost no call."""
    worker: WorkerProcess = worker_factory(**delivery_env(helicone_receiver, api_key()))
    worker.wait_ready()
    rating_only = make_decision(rating=True)
    both = make_decision(rating=False, scores={"time_spent_s": 42, "copied": 1}, rule="engagement")
    scores_only = make_decision(rating=None, scores={"click_through_rate": 50}, rule="scores")
    session = make_decision(target="session", rating=True, rule="session_feedback")
    publish(kafka_bootstrap, topics.outbox, [rating_only, both, scores_only, session])

    helicone_receiver.wait_for(4)
    worker.wait_metric("feedback_delivery_delivered_total", lambda v: v == 4)
    assert len(helicone_receiver.history()) == 4
    helicone_receiver.call_async(lambda r: r.settle())
    stored = helicone_receiver.call(lambda r: r.stored())
    assert stored[rating_only.request_id].feedback is True  # type: ignore[index]
    assert stored[both.request_id].feedback is False  # type: ignore[index]
    assert stored[both.request_id].scores == {  # type: ignore[index]
        "time_spent_s": 42, "copied": 1, "helicone-score-feedback": 0,
    }
    assert stored[scores_only.request_id].scores == {"click_through_rate": 50}  # type: ignore[index]
    assert helicone_receiver.call(lambda r: r.stored_sessions()) == {session.session_id: True}

    publish(kafka_bootstrap, topics.outbox, [rating_only, both, scores_only, session])
    worker.wait_metric("feedback_delivery_duplicates_total", lambda v: v == 4)
    assert len(helicone_receiver.history()) == 4
    assert read_all(kafka_bootstrap, topics.dlq) == []


def test_retry_after_is_honoured(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """A 429 with ``Retry-After: 2``: the retry comes no sooner than 2 s later (measured at the
    receiver), although the configured backoff is 0.2 s."""
    worker: WorkerProcess = worker_factory(**delivery_env(helicone_receiver, api_key()))
    worker.wait_ready()
    helicone_receiver.call(lambda r: r.fail_next(1, status=429, retry_after=2))
    decision = make_decision()
    publish(kafka_bootstrap, topics.outbox, [decision])

    helicone_receiver.wait_for(1)
    first, second = helicone_receiver.history()
    assert first.status == 429 and second.status == 201
    gap_ms = second.at_ms - first.at_ms
    # Not before 2 s; after it, one timer tick plus a hop through the retry topic (a Tansu
    # fetch can take up to Faust's 1.5 s fetch wait).
    assert 2_000 <= gap_ms < 5_000, gap_ms
    assert worker.metric_sum("feedback_delivery_dlq_total") == 0


def test_a_permanent_422_goes_to_the_dlq_with_attempts_status_and_a_cut_body(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    worker: WorkerProcess = worker_factory(**delivery_env(helicone_receiver, api_key()))
    worker.wait_ready()
    decision = make_decision(rating=True, scores={"groundedness": 3})
    details = {f"requestBody.scores.k{i}": {"message": "bad " * 20} for i in range(60)}
    helicone_receiver.call(
        lambda r: r.fail_next(
            1,
            status=422,
            body={"message": "Validation Failed", "details": details},
            path_prefix=f"/v1/request/{decision.request_id}/score",
        )
    )
    publish(kafka_bootstrap, topics.outbox, [decision])

    (record,) = [r for r in read_until(kafka_bootstrap, topics.dlq, 1)]
    dead = orjson.loads(record.value)
    assert record.key == decision.request_id.encode()  # type: ignore[union-attr]
    assert dead["decision_id"] == decision.decision_id
    assert dead["reason"] == "rejected"
    assert dead["attempts"] == 0 and dead["last_status"] == 422
    assert dead["last_endpoint"] == "request_score"
    assert dead["calls_done"] == []
    assert dead["last_body"].startswith('{"message": "Validation Failed"')
    assert 1_900 < len(dead["last_body"].encode()) <= 2_048  # the 5 KiB answer, cut
    assert dead["decision"] == orjson.loads(decision.model_dump_json())
    worker.wait_metric("feedback_delivery_dlq_total", lambda v: v == 1)
    # Not retried: the one call carrying rating and scores, rejected, nothing more.
    assert [r.status for r in helicone_receiver.history()] == [422]


def test_401_pauses_delivery_without_dead_letters_and_a_probe_resumes_it(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """Helicone answers 401 for 5 s (a key being rotated): delivery pauses (metric, error log,
    /readyz), probes once per DELIVERY_AUTH_PROBE_INTERVAL_S=1, and resumes; nothing is
    dead-lettered and every decision is delivered once."""
    worker: WorkerProcess = worker_factory(**delivery_env(helicone_receiver, api_key()))
    worker.wait_ready()
    helicone_receiver.call(lambda r: r.fail_for(5, status=401, body={"error": "Invalid API key"}))
    decisions = [make_decision() for _ in range(30)]
    publish(kafka_bootstrap, topics.outbox, decisions)

    worker.wait_metric("feedback_delivery_auth_paused", lambda v: v == 1)
    ready = httpx.get(worker.url("/readyz"), timeout=5)
    assert ready.status_code == 503
    assert ready.json()["checks"]["delivery_not_paused"] is False
    assert "delivery paused: Helicone rejected the API key" in worker.logs()

    helicone_receiver.wait_for(30, timeout_s=60)
    worker.wait_metric("feedback_delivery_auth_paused", lambda v: v == 0)
    worker.wait_ready()
    history = helicone_receiver.history()
    rejected = [r for r in history if r.status == 401]
    # At most one call per actor before the first 401 came back, then about one probe a second.
    assert 1 <= len(rejected) <= 8 + 5 + 2, len(rejected)
    accepted = Counter(r.path for r in history if r.accepted)
    assert set(accepted.values()) == {1} and len(accepted) == 30
    assert worker.metric_sum("feedback_delivery_dlq_total") == 0
    assert read_all(kafka_bootstrap, topics.dlq) == []


def test_the_breaker_bounds_calls_during_an_outage_then_all_are_delivered_once(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """Compressed outage on the real broker: 503 for 6 s with a 1 s breaker cool-down and a
    0.2 s backoff base.  Without the breaker each of the 40 decisions would be tried about 7
    times in those 6 s; with it the calls stay near min_calls + actors + one probe a second.
    (The same at full scale, 5 minutes with the default policy, is the FakeClock test below.)"""
    worker: WorkerProcess = worker_factory(**delivery_env(helicone_receiver, api_key()))
    worker.wait_ready()
    helicone_receiver.call(lambda r: r.fail_for(6, status=503))
    decisions = [make_decision(scores={"n": i}) for i in range(40)]
    publish(kafka_bootstrap, topics.outbox, decisions)

    worker.wait_metric("feedback_delivery_breaker_opened_total", lambda v: v >= 1)
    helicone_receiver.wait_for(40, timeout_s=60)
    history = helicone_receiver.history()
    failed = [r for r in history if r.status == 503]
    assert len(failed) <= 10 + 8 + 6 + 4, len(failed)
    accepted = Counter(r.path for r in history if r.accepted)
    assert len(accepted) == 40 and set(accepted.values()) == {1}
    worker.wait_metric("feedback_delivery_breaker_state", lambda v: v == 0)
    worker.wait_metric("feedback_delivery_retry_queue", lambda v: v == 0)
    assert read_all(kafka_bootstrap, topics.dlq) == []


def test_kill_9_while_retries_wait_then_every_decision_is_delivered_exactly_once(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
    tmp_path: Path,
) -> None:
    """Quix's restart shape: run, crash (SIGKILL), wipe the local state, run again.

    The first worker delivers 10 decisions, then Helicone fails and 10 more wait for their
    retry (backoff 3 s).  Once its outbox offsets are committed it is killed; the second
    worker, on an empty state directory, must restore the waiting retries from the changelog,
    deliver them, and skip every copy of an already delivered decision.

    KAFKA_PRODUCER_BATCH_BYTES=1: Tansu's ListOffsets answer is wrong when a partition's last
    batch holds several records, and Faust restores a changelog only up to that answer, so
    the restored tables would miss their tail (DESIGN 2).  One record per batch avoids it.
    """
    env = delivery_env(
        helicone_receiver,
        api_key(),
        KAFKA_PRODUCER_BATCH_BYTES="1",
        DELIVERY_BACKOFF_BASE_S="3",
        DELIVERY_BACKOFF_CAP_S="10",
    )
    first: WorkerProcess = worker_factory(state_dir=tmp_path / "state-a", **env)
    first.wait_ready()
    delivered = [make_decision(scores={"k": 1}) for _ in range(10)]
    publish(kafka_bootstrap, topics.outbox, delivered)
    helicone_receiver.wait_for(10)

    helicone_receiver.call(lambda r: r.fail_for(600, status=503))
    waiting = [make_decision() for _ in range(10)]
    publish(kafka_bootstrap, topics.outbox, waiting + delivered)
    first.wait_metric("feedback_delivery_retry_queue", lambda v: v == 10)
    first.wait_metric("feedback_delivery_duplicates_total", lambda v: v == 10)
    wait_committed(kafka_bootstrap, topics.group, topics.outbox, 30)
    first.kill()

    helicone_receiver.call(lambda r: r.clear_faults())
    second: WorkerProcess = worker_factory(state_dir=tmp_path / "state-b", **env)
    second.wait_ready(timeout_s=120)
    # Restored from the changelog, not re-read from the outbox (its offsets were committed).
    restored = re.findall(r"delivery: (\d+) due state", second.logs())
    assert restored and max(map(int, restored)) > 0, second.logs()[-3000:]
    helicone_receiver.wait_for(20, timeout_s=60)
    publish(kafka_bootstrap, topics.outbox, waiting + delivered)
    second.wait_metric("feedback_delivery_duplicates_total", lambda v: v == 20)
    second.wait_metric("feedback_delivery_retry_queue", lambda v: v == 0)

    accepted = Counter(r.path for r in helicone_receiver.history() if r.accepted)
    assert len(accepted) == 20, accepted
    assert set(accepted.values()) == {1}, {p: n for p, n in accepted.items() if n != 1}
    for decision in waiting:
        assert accepted[f"/v1/request/{decision.request_id}/score"] == 1
    assert read_all(kafka_bootstrap, topics.dlq) == []


def test_the_api_key_appears_in_no_log_metric_or_topic(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    """Every delivery path runs once (success, retry, 401 pause, a 422 whose body echoes the
    key as a misbehaving proxy might), at DEBUG; then the log file, /metrics and every topic
    of this test (changelogs included) are searched for the key."""
    key = api_key()
    worker: WorkerProcess = worker_factory(
        LOG_LEVEL="DEBUG", **delivery_env(helicone_receiver, key)
    )
    worker.wait_ready()
    echoed = make_decision()
    helicone_receiver.call(
        lambda r: r.fail_next(
            1,
            status=422,
            body={"message": "Validation Failed", "echo": f"Authorization: Bearer {key}"},
            path_prefix=f"/v1/request/{echoed.request_id}/",
        )
    )
    helicone_receiver.call(lambda r: r.fail_next(2, status=503))
    helicone_receiver.call(lambda r: r.fail_next(1, status=401))
    decisions = [make_decision(scores={"x": 1}) for _ in range(5)]
    publish(kafka_bootstrap, topics.outbox, [echoed, *decisions])

    helicone_receiver.wait_for(5, timeout_s=60)
    (record,) = read_until(kafka_bootstrap, topics.dlq, 1)
    assert "[redacted]" in orjson.loads(record.value)["last_body"]
    worker.wait_metric("feedback_delivery_delivered_total", lambda v: v == 5)

    secret = key.encode()
    assert secret not in worker.log_path.read_bytes()
    assert secret not in httpx.get(worker.url("/metrics"), timeout=5).content
    ours = [t for t in list_topics(kafka_bootstrap) if topics.suffix in t]
    assert any(t.endswith("-delivery-state-changelog") for t in ours)
    for topic in ours:
        for r in read_all(kafka_bootstrap, topic):
            assert secret not in (r.value or b"") and secret not in (r.key or b""), topic
            assert all(secret not in value for _, value in r.headers or ()), topic


def test_dry_run_posts_nothing_and_needs_no_key(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Any,
    helicone_receiver: ReceiverThread,
) -> None:
    worker: WorkerProcess = worker_factory(
        FEEDBACK_DRY_RUN="true", HELICONE_BASE_URL=helicone_receiver.url
    )
    worker.wait_ready()
    publish(kafka_bootstrap, topics.outbox, [make_decision(scores={"a": 1}) for _ in range(3)])
    worker.wait_metric("feedback_delivery_delivered_total", lambda v: v == 3)
    samples = worker.metrics()
    dry = sum(v for (n, labels), v in samples.items()
              if n == "feedback_delivery_attempts_total" and ("outcome", "dry_run") in labels)
    assert dry == 3
    assert helicone_receiver.history() == []
    assert worker.logs().count("dry run: would POST") == 3


# --------------------------------------------------------------------------- simulated time


async def test_five_minutes_of_500_then_recovery_on_a_fake_clock() -> None:
    """Five minutes of 500s at full scale (default policy: 1 s backoff base, 10 min cap, 30 s
    breaker cool-down, 10 calls/s).  In-process: the delivery engine and the real receiver
    share a FakeClock and talk real HTTP; the tables are dicts and the retry topic a list (the
    broker path is covered above).  All 40 decisions are delivered once, none twice, nothing
    is dead-lettered, and the breaker keeps the outage to a handful of calls instead of ~8
    per decision."""
    clock = FakeClock(t_ms=1_800_000_000_000)
    async with Receiver(clock=clock) as receiver:
        harness = EngineHarness(base_url=receiver.url, clock=clock)
        receiver.fail_for(300, status=500)
        decisions = [make_decision(rating=i % 2 == 0, scores={"i": i}) for i in range(40)]
        for decision in decisions:
            await harness.publish(decision)
        await harness.advance(299.5, step_s=0.5)  # the fault ends at 300 s
        during = receiver.attempts()
        assert harness.metric("feedback_delivery_breaker_opened_total") >= 5
        # 10 to open, then one probe per 30 s cool-down.
        assert 10 <= during <= 10 + 300 / 30 + 2, during
        assert receiver.count() == 0

        await harness.advance(120, step_s=0.5)
        accepted = Counter(r.path for r in receiver.records)
        assert len(accepted) == 40 and set(accepted.values()) == {1}
        await receiver.settle()
        stored = receiver.stored()
        for i, decision in enumerate(decisions):
            assert stored[decision.request_id or ""].scores == {
                "i": i, "helicone-score-feedback": 1 if i % 2 == 0 else 0,
            }
        assert all(not orjson.loads(v)["unsent"] for v in harness.states.values())
        assert harness.records("dlq") == []
        assert harness.delivery.breaker.state is BreakerState.CLOSED
        await harness.aclose()


# --------------------------------------------------------------------------- helpers


def read_until(bootstrap: str, topic: str, n: int, timeout_s: float = 60.0) -> list[Any]:
    """The records of ``topic`` once at least ``n`` are there (a signal with a timeout)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = read_all(bootstrap, topic)
        if len(records) >= n or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def wait_committed(bootstrap: str, group: str, topic: str, total: int) -> None:
    """Until the group's committed offsets on ``topic`` add up to ``total`` records."""

    async def committed() -> int:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            if not partitions:
                await consumer.topics()
                partitions = consumer.partitions_for_topic(topic) or set()
            offsets = [await consumer.committed(TopicPartition(topic, p)) for p in partitions]
            return sum(o or 0 for o in offsets)
        finally:
            await consumer.stop()

    wait_until(lambda: asyncio.run(committed()) >= total, timeout_s=60,
               what=f"{group} to commit {total} records of {topic}")

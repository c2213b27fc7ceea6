"""Ingest on the real broker: hostile records reach the invalid topic with the right reason,
valid ones flow on (in place or through the rekeyed topic), and the worker keeps consuming."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.kafka import produce, read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess
from worker.envelopes import EVENT_TIME_HEADER
from worker.partitioner import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 4


def _now() -> datetime:
    return datetime.now(UTC)


def valid_event(
    *, request_id: str | None = None, type_: str = "response_copied", **extra: Any
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "request_id": request_id or str(uuid.uuid4()),
        "occurred_at": _now().isoformat(),
    }
    event.update(extra)
    return event


def keyed(event: dict[str, Any]) -> tuple[bytes, bytes]:
    return event["request_id"].encode(), orjson.dumps(event)


def hostile_records() -> list[tuple[str, bytes | None, bytes | None, str]]:
    """(name, key, value, expected reason) for every hostile shape the issue lists."""
    rid = str(uuid.uuid4())
    key = rid.encode()

    def event(**changes: Any) -> bytes:
        document = valid_event(request_id=rid)
        for name, value in changes.items():
            if value is _DROP:
                document.pop(name, None)
            else:
                document[name] = value
        return orjson.dumps(document)

    deep = b"[" * 5_000 + b"]" * 5_000
    uuid7 = "018f6f5e-4e8c-7b8a-9a51-8a5d8c1f2e3a"
    return [
        ("empty value", key, b"", "not_json"),
        ("null value", key, None, "not_json"),
        ("not json", key, b"hello, kafka", "not_json"),
        ("json array", key, b"[1, 2, 3]", "schema_violation"),
        ("json string", key, b'"response_copied"', "schema_violation"),
        ("missing type", key, event(type=_DROP), "schema_violation"),
        ("unknown type", key, event(type="response_liked"), "schema_violation"),
        ("missing event_id", key, event(event_id=_DROP), "schema_violation"),
        ("missing occurred_at", key, event(occurred_at=_DROP), "schema_violation"),
        ("wrong type request_id", key, event(request_id=42), "invalid_request_id"),
        ("wrong type occurred_at", key, event(occurred_at=1_700_000_000), "schema_violation"),
        (
            "wrong type rating",
            key,
            event(type="feedback_given", properties={"rating": "yes"}),
            "schema_violation",
        ),
        ("10 MiB value", key, b'{"pad":"' + b"x" * (10 * 1024 * 1024) + b'"}', "too_large"),
        ("deeply nested", key, deep, "not_json"),
        ("invalid uuid", key, event(request_id="not-a-uuid"), "invalid_request_id"),
        ("uuid v7 request id", uuid7.encode(), event(request_id=uuid7), "invalid_request_id"),
        ("invalid event_id", key, event(event_id="123"), "schema_violation"),
        ("no offset", key, event(occurred_at="2026-11-22T10:00:00"), "schema_violation"),
        (
            "far future",
            key,
            event(occurred_at=(_now() + timedelta(days=400)).isoformat()),
            "timestamp_out_of_range",
        ),
        (
            "far past",
            key,
            event(occurred_at=(_now() - timedelta(days=400)).isoformat()),
            "timestamp_out_of_range",
        ),
        ("non utf-8", key, b'{"type": "\xff\xfe"}', "not_json"),
    ]


class _Drop:
    pass


_DROP = _Drop()


def _invalid_by_sha(records: list[Any]) -> dict[str, dict[str, Any]]:
    return {
        (doc := orjson.loads(r.value))["value_sha256"]: doc for r in records
    }


def test_hostile_records_reach_the_invalid_topic_with_their_reason(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    worker: WorkerProcess = worker_factory()
    worker.wait_ready()
    assert httpx.get(worker.url("/healthz")).json() == {"status": "ok"}
    ready = httpx.get(worker.url("/readyz")).json()
    assert ready["ready"] is True and all(ready["checks"].values())
    hostile = hostile_records()
    valid = [keyed(valid_event()) for _ in range(20)]
    records = [(key, value) for _, key, value, _ in hostile] + valid
    asyncio.run(
        produce(kafka_bootstrap, topics.ui_events, records, max_request_size=16 * 1024 * 1024)
    )

    invalid = asyncio.run(read_topic(kafka_bootstrap, topics.invalid, expected=len(hostile)))
    by_sha = _invalid_by_sha(invalid)
    assert len(invalid) == len(hostile)
    for name, _key, value, reason in hostile:
        doc = by_sha.get(hashlib.sha256(value or b"").hexdigest())
        if value in (b"", None):  # both hash the same; one record each
            assert sum(1 for d in by_sha.values() if d["value_size"] == 0) >= 1
            continue
        assert doc is not None, f"{name}: not on the invalid topic"
        assert doc["reason"] == reason, f"{name}: {doc['reason']} ({doc['message']})"
        assert doc["source"]["topic"] == topics.ui_events
        assert doc["source"]["partition"] in range(PARTITIONS)
        assert 0 <= doc["source"]["offset"] < len(records)
        kept = base64.b64decode(doc["value_b64"])
        if reason == "too_large":
            assert doc["value_truncated"] and doc["value_size"] == len(value)
            assert value.startswith(kept)
        else:
            assert kept == value
    schema_docs = [d for d in by_sha.values() if d["reason"] == "schema_violation"]
    assert all(d["errors"] for d in schema_docs), "schema violations name their fields"
    rating = next(
        d for d in schema_docs if any(e["path"] == "properties.rating" for e in d["errors"])
    )
    assert "boolean" in rating["message"]

    worker.wait_metric("feedback_events_total", lambda v: v == len(valid))
    metrics = worker.metrics()
    for reason in {r for *_, r in hostile}:
        expected = sum(1 for *_, r in hostile if r == reason)
        assert metrics[("feedback_events_invalid_total", (("reason", reason),))] == expected


def test_ten_thousand_records_with_a_fifth_hostile(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    worker: WorkerProcess = worker_factory()
    rng = random.Random(7)
    hostile_shapes = [(k, v) for _, k, v, _ in hostile_records() if v and len(v) < 100_000]
    records: list[tuple[bytes | None, bytes | None]] = []
    valid_count = 0
    for _ in range(10_000):
        if rng.random() < 0.2:
            records.append(rng.choice(hostile_shapes))
        else:
            records.append(keyed(valid_event(type_=rng.choice(["response_shown", "page_left"]))))
            valid_count += 1
    hostile_count = len(records) - valid_count
    worker.wait_ready()
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))

    worker.wait_metric("feedback_events_total", lambda v: v == valid_count, timeout_s=120)
    worker.wait_metric("feedback_events_invalid_total", lambda v: v == hostile_count)
    invalid = asyncio.run(read_topic(kafka_bootstrap, topics.invalid, expected=hostile_count))
    assert len(invalid) == hostile_count

    # Caught up: the lag of every partition this worker owns is exported, and is zero.
    lag = worker.wait_metric("feedback_consumer_lag_records", lambda v: v == 0)
    partitions = {
        dict(labels)["partition"]
        for (name, labels) in worker.metrics()
        if name == "feedback_consumer_lag_records" and dict(labels)["topic"] == topics.ui_events
    }
    assert lag == 0 and partitions == {str(p) for p in range(PARTITIONS)}

    # Still consuming after the storm: one more valid event is counted.
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, [keyed(valid_event())]))
    worker.wait_metric("feedback_events_total", lambda v: v == valid_count + 1)


def test_events_keyed_elsewhere_are_forwarded_to_their_owner(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    worker: WorkerProcess = worker_factory()
    worker.wait_ready()
    events = [valid_event() for _ in range(40)]
    # No key at all, and a key that is not the request id: both must be regrouped.
    records = [(None, orjson.dumps(e)) for e in events[:20]] + [
        (b"user-7", orjson.dumps(e)) for e in events[20:]
    ]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))
    worker.wait_metric("feedback_events_total", lambda v: v == len(events))

    expected_moves = [
        e for (key, _), e in zip(records, events, strict=True)
        if key != e["request_id"].encode()
    ]
    rekeyed = asyncio.run(read_topic(kafka_bootstrap, topics.rekeyed, expected=1, timeout_s=20))
    # Only forwarded events carry an event time; ticks and watermarks share the topic.
    forwarded = [r for r in rekeyed if EVENT_TIME_HEADER in dict(r.headers)]
    by_event = {orjson.loads(r.value)["event_id"]: r for r in forwarded}
    moved = 0
    for event in expected_moves:
        record = by_event.get(event["event_id"])
        if record is None:
            continue  # it happened to land on its owner partition already
        moved += 1
        assert record.key == event["request_id"].encode()
        assert record.partition == partition_for(record.key, PARTITIONS)
        assert dict(record.headers)[EVENT_TIME_HEADER]
    assert moved == worker.metric_sum("feedback_events_rekeyed_total") > 0


def test_duplicate_event_ids_are_processed_once(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    worker: WorkerProcess = worker_factory()
    worker.wait_ready()
    event = keyed(valid_event())
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, [event, event, event]))
    worker.wait_metric("feedback_events_duplicate_total", lambda v: v == 2)
    assert worker.metric_sum("feedback_events_total") == 1

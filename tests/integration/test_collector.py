"""The collector on the real broker: what a POST answers is what the topics then hold.

Each test gets its own topic names (``collector_factory``, tests/fixtures/collector.py), so
nothing another test wrote can be read back here.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from tests.fixtures.collector import ALLOWED_ORIGIN as ORIGIN
from tests.fixtures.collector import WRITE_KEY as KEY
from tests.fixtures.collector import CollectorFactory
from tests.fixtures.kafka import read_topic
from worker.collector.server import serve
from worker.config import load_settings
from worker.errors import TopicMismatchError
from worker.kafka import ensure_topics

pytestmark = pytest.mark.integration


def event(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": "response_copied",
        "request_id": str(uuid.uuid4()),
        "occurred_at": (datetime.now(UTC) - timedelta(seconds=2)).isoformat(),
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


async def test_a_mixed_batch_lands_on_both_topics_keyed_and_stamped(
    collector_factory: CollectorFactory, kafka_bootstrap: str
) -> None:
    sent_at = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    own_sent_at = (datetime.now(UTC) - timedelta(milliseconds=1500)).isoformat()
    copied = event()
    rating = event(type="feedback_given", properties={"rating": True}, sent_at=own_sent_at)
    session = event(
        type="session_feedback_given",
        request_id=None,
        session_id="session-77",
        properties={"rating": False},
    )
    uuid7 = event(request_id="018f6f5e-4e8c-7b8a-9a51-8a5d8c1f2e3a")
    no_type = event(type=None)

    async with collector_factory() as (running, settings):
        before_ms = time.time() * 1000
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.post(
                "/v1/events",
                params={"key": KEY},
                content=orjson.dumps(
                    {"sent_at": sent_at, "events": [copied, uuid7, rating, no_type, session]}
                ),
                headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": ORIGIN},
            )
            assert response.status_code == 202, response.text
            assert response.json() == {"accepted": 3, "invalid": 2}
            assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
            assert (await client.get("/readyz")).status_code == 200
            metrics = (await client.get("/metrics")).text
        after_ms = time.time() * 1000

        valid = await read_topic(kafka_bootstrap, settings.topic_ui_events, expected=3)
        invalid = await read_topic(kafka_bootstrap, settings.topic_invalid, expected=2)

    by_id = {orjson.loads(r.value)["event_id"]: r for r in valid}
    assert set(by_id) == {copied["event_id"], rating["event_id"], session["event_id"]}
    assert by_id[copied["event_id"]].key == copied["request_id"].encode()
    assert by_id[rating["event_id"]].key == rating["request_id"].encode()
    assert by_id[session["event_id"]].key == b"session-77"
    assert orjson.loads(by_id[copied["event_id"]].value)["sent_at"] == sent_at
    assert orjson.loads(by_id[session["event_id"]].value)["sent_at"] == sent_at
    assert orjson.loads(by_id[rating["event_id"]].value)["sent_at"] == own_sent_at
    for record in valid:  # the record time is the receive time the events were judged at
        assert before_ms - 1 <= record.timestamp <= after_ms + 1

    documents = sorted((orjson.loads(r.value) for r in invalid), key=lambda d: d["reason"])
    assert [d["reason"] for d in documents] == ["invalid_request_id", "schema_violation"]
    for document in documents:
        assert document["source"]["collector"] is True
        assert set(document["source"]) == {"collector", "timestamp_ms"}  # no client address
    assert [r.key for r in invalid] == [None, None]
    assert 'feedback_collector_events_total{outcome="accepted",reason="none"} 3.0' in metrics
    assert KEY not in metrics


async def test_refused_requests_write_nothing(
    collector_factory: CollectorFactory, kafka_bootstrap: str
) -> None:
    refused_ids: list[str] = []

    def fresh_batch(n: int = 1, bad: int = 0) -> dict[str, Any]:
        events = [event() for _ in range(n)] + [event(type="bogus") for _ in range(bad)]
        refused_ids.extend(e["event_id"] for e in events)
        return {"events": events}

    async with collector_factory(
        collector_max_events=3, collector_max_body_bytes=2_048, collector_rate_per_s=3
    ) as (running, settings):
        async with httpx.AsyncClient(base_url=running.url) as client:

            async def post(body: Any, *, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
                params = {"key": key} if key else {}
                content = body if isinstance(body, bytes) else orjson.dumps(body)
                return await client.post(
                    "/v1/events", params=params, content=content, **kwargs
                )

            # CORS preflight, for an allowed and a foreign origin.
            preflight = await client.options(
                "/v1/events",
                headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
            )
            assert preflight.status_code == 204
            assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
            foreign = await client.options(
                "/v1/events",
                headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"},
            )
            assert foreign.status_code == 403

            answers = [
                await post(fresh_batch(1, 1), key=None),  # 401
                await post(fresh_batch(1, 1), key="pk_wrong"),  # 401
            ]
            # The rate is 3/s per address: spent by the two above and this one.
            answers.append(await post(fresh_batch(4)))  # 413 too many events
            limited = await post(fresh_batch(1))  # 429
            assert limited.status_code == 429
            assert int(limited.headers["Retry-After"]) >= 1
            await asyncio.sleep(1.05)  # tokens come back with wall time (the real clock)
            answers += [
                await post(fresh_batch(1, 1), headers={"Origin": "https://evil.test"}),  # 403
                await post(
                    {"events": [event(type="message_sent", properties={"text": "x" * 3_000})]}
                ),  # 413 body
                await post(b'{"events": [' + orjson.dumps(event()) + b", }"),  # 400
            ]
            assert [(a.status_code, a.json()["error"]) for a in answers] == [
                (401, "missing_write_key"),
                (401, "unknown_write_key"),
                (413, "too_many_events"),
                (403, "origin_not_allowed"),
                (413, "body_too_large"),
                (400, "not_json"),
            ]
            await asyncio.sleep(1.05)
            sentinel = event()
            ok = await post({"events": [sentinel]})
            assert ok.status_code == 202, ok.text

        valid = await read_topic(kafka_bootstrap, settings.topic_ui_events, expected=1)
        invalid = await read_topic(
            kafka_bootstrap, settings.topic_invalid, expected=0, timeout_s=3
        )

    assert [orjson.loads(r.value)["event_id"] for r in valid] == [sentinel["event_id"]]
    assert invalid == []
    assert sentinel["event_id"] not in refused_ids


async def test_serve_stops_on_an_input_topic_with_another_partition_count(
    kafka_bootstrap: str,
) -> None:
    """The one start-up problem waiting cannot fix (DESIGN 2): it needs an operator."""
    suffix = uuid.uuid4().hex[:8]
    base = {
        "kafka_bootstrap_servers": kafka_bootstrap,
        "topic_ui_events": f"collector-events-{suffix}",
        "topic_invalid": f"collector-invalid-{suffix}",
        "collector_host": "127.0.0.1",
        "collector_port": 0,
        "collector_write_keys": KEY,
        "collector_idempotent_producer": False,
    }
    await ensure_topics(
        load_settings({**base, "topic_partitions": 3}), only={str(base["topic_ui_events"])}
    )
    with pytest.raises(TopicMismatchError, match="has 3 partitions"):
        await asyncio.wait_for(serve(load_settings({**base, "topic_partitions": 2})), 60)


async def test_events_near_the_size_limit_and_over_it_are_written(
    collector_factory: CollectorFactory, kafka_bootstrap: str
) -> None:
    """A valid event of ~60 KiB and a too_large one (whose invalid record carries 64 KiB
    as base64) each exceed the producer's 16 KiB batch size; both must still be acked."""
    # Unknown keys are ignored by the schema (frontends may add their own), so they pad.
    big = event(padding="x" * 60_000)
    huge = event(padding="y" * 70_000)
    async with collector_factory() as (running, settings):
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.post(
                "/v1/events", params={"key": KEY}, json={"events": [big, huge]}
            )
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 1, "invalid": 1}
        valid = await read_topic(kafka_bootstrap, settings.topic_ui_events, expected=1)
        invalid = await read_topic(kafka_bootstrap, settings.topic_invalid, expected=1)
    assert [orjson.loads(r.value)["event_id"] for r in valid] == [big["event_id"]]
    (document,) = [orjson.loads(r.value) for r in invalid]
    assert document["reason"] == "too_large"
    assert document["value_truncated"] is True
    assert document["value_size"] > settings.max_event_bytes


async def test_keyed_records_land_where_kafkas_default_partitioner_puts_them(
    collector_factory: CollectorFactory, kafka_bootstrap: str
) -> None:
    """The collector names each keyed record's partition itself (worker/partitioner.py);
    the worker relies on a request's events sitting on the partition Kafka's default
    partitioner gives its key, so the placement is checked against aiokafka's own
    ``DefaultPartitioner``, not against the function the collector calls."""
    batches = [[event() for _ in range(20)] for _ in range(3)]
    session = event(type="session_feedback_given", request_id=None, session_id="sess-p",
                    properties={"rating": True})
    batches[-1].append(session)
    async with collector_factory(topic_partitions=8) as (running, settings):
        async with httpx.AsyncClient(base_url=running.url) as client:
            for batch in batches:  # the first may go out before the topic's metadata is in
                response = await client.post(
                    "/v1/events", params={"key": KEY}, json={"events": batch}
                )
                assert response.status_code == 202, response.text
        valid = await read_topic(kafka_bootstrap, settings.topic_ui_events, expected=61)
    assert len(valid) == 61
    assert {r.key for r in valid} >= {b"sess-p"}
    every = list(range(8))
    for record in valid:
        assert record.key is not None
        assert record.partition == DefaultPartitioner()(record.key, every, every), record.key
    assert len({r.partition for r in valid}) > 4  # spread, not all on one

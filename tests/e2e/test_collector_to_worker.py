"""HTTP collector -> broker -> the real worker process: what the collector writes is what
the worker consumes, keyed so it needs no second hop, and decided on."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
import orjson
import pytest

from tests.fixtures.collector import WRITE_KEY, CollectorFactory
from tests.fixtures.kafka import read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess

pytestmark = pytest.mark.integration


async def test_a_thumbs_up_posted_over_http_becomes_a_decision(
    collector_factory: CollectorFactory,
    worker_factory: Callable[..., WorkerProcess],
    topics: TestTopics,
    kafka_bootstrap: str,
) -> None:
    worker = worker_factory(TOPIC_PARTITIONS="4")
    request_ids = [str(uuid.uuid4()) for _ in range(6)]
    now = datetime.now(UTC)
    events = [
        {
            "event_id": str(uuid.uuid4()),
            "type": "feedback_given",
            "request_id": request_id,
            "occurred_at": (now - timedelta(seconds=1)).isoformat(),
            "properties": {"rating": n % 2 == 0},
        }
        for n, request_id in enumerate(request_ids)
    ]
    async with collector_factory(
        topic_ui_events=topics.ui_events, topic_invalid=topics.invalid, topic_partitions=4
    ) as (running, _):
        worker.wait_ready()
        async with httpx.AsyncClient(base_url=running.url) as client:
            response = await client.post(
                "/v1/events",
                params={"key": WRITE_KEY},
                content=orjson.dumps({"sent_at": now.isoformat(), "events": events}),
                headers={"Content-Type": "text/plain"},
            )
        assert response.status_code == 202, response.text
        assert response.json() == {"accepted": 6, "invalid": 0}

        decisions = await read_topic(kafka_bootstrap, topics.outbox, expected=6)
    by_request = {orjson.loads(r.value)["request_id"]: orjson.loads(r.value) for r in decisions}
    assert set(by_request) == set(request_ids)
    for n, request_id in enumerate(request_ids):
        assert by_request[request_id]["rule"] == "explicit"
        assert by_request[request_id]["rating"] is (n % 2 == 0)
    # Keyed by request id with Kafka's partitioner, so the worker used every record in
    # place: no event needed the rekey hop, and none was invalid.
    assert worker.metric_sum("feedback_events_rekeyed_total") == 0
    assert worker.metric_sum("feedback_events_invalid_total") == 0
    assert worker.metric_sum("feedback_events_total") == 6

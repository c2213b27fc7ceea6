"""Stream time and the detour (issue 19, worker.agents.windows): a partition's stream time
never passes an event that is still on its way to it from the input partition that read it.

The forwarded path is delayed on purpose (tests.fixtures.slow_detour: every forwarded event is
applied 5 x the grace after it was forwarded) while events keyed to the same partition arrive
directly and would drive its stream time on.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from tests.fixtures.kafka import produce, read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess, make_topics
from tests.integration.test_windows import (
    SHAPE,
    SHORT_WINDOWS,
    assert_matches,
    decisions,
    records_of,
    settled,
)
from worker.devtools.traffic import generate, iso
from worker.partitioner import partition_for

pytestmark = pytest.mark.integration

PARTITIONS = 4
GRACE_S = float(SHORT_WINDOWS["WINDOW_GRACE_S"])
DETOUR = {"TEST_DETOUR_DELAY_S": str(5 * GRACE_S), "TOPIC_PARTITIONS": str(PARTITIONS)}
SLOW_DETOUR = "tests.fixtures.slow_detour"


def owned_by(partition: int, count: int) -> list[str]:
    """``count`` request ids whose events the default partitioner puts on ``partition``."""
    found: list[str] = []
    while len(found) < count:
        rid = str(uuid.uuid4())
        if partition_for(rid.encode(), PARTITIONS) == partition:
            found.append(rid)
    return found


def event(kind: str, request_id: str, at_ms: int) -> bytes:
    return orjson.dumps({
        "event_id": str(uuid.uuid4()),
        "type": kind,
        "request_id": request_id,
        "occurred_at": iso(at_ms),
        "properties": {"prompt_text": "q"} if kind == "response_shown" else {},
    })


def test_a_delayed_detour_is_waited_for(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    """An answer shown and copied, sent unkeyed to another partition, takes the detour; events
    keyed to its owner arrive directly and reach 6 s later in event time while it waits 5 s.
    Stream time must wait: the answer's window still gets its copy, and nothing is late."""
    worker: WorkerProcess = worker_factory(module=SLOW_DETOUR, **SHORT_WINDOWS, **DETOUR)
    worker.wait_ready()
    time.sleep(2)  # every source has reported: stream time no longer stands still for start-up
    request, *others = owned_by(0, 7)
    t0 = int(time.time() * 1000) - 20_000
    detour = [(None, event("response_shown", request, t0)),
              (None, event("response_copied", request, t0 + 1_000))]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, detour, partition=1))
    worker.wait_metric("feedback_events_rekeyed_total", lambda n: n >= 2)
    direct = [(rid.encode(), event("response_shown", rid, t0 + 1_000 * (n + 1)))
              for n, rid in enumerate(others)]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, direct, partition=0))

    written = settled([worker], events=len(detour) + len(direct))
    late = asyncio.run(read_topic(kafka_bootstrap, topics.late, expected=0, timeout_s=3))
    assert [(orjson.loads(r.value)["type"], orjson.loads(r.value)["reason"]) for r in late] == []
    assert worker.metric_sum("feedback_stream_time_overruns_total") == 0
    found = {d["request_id"]: d for d in decisions(kafka_bootstrap, topics.outbox, written)}
    assert found[request]["rule"] == "engagement"
    assert found[request]["rating"] is True, found[request]["signals"]


async def _publish_live(
    bootstrap: str, streams: list[tuple[str, list[tuple[bytes | None, bytes]]]], start_ms: int
) -> None:
    """Send each stream's records when the wall clock reaches their event time, as users
    would: ``streams`` are (topic, [(key, value)]) with the same events in the same order."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        futures = []
        for n, (_, value) in enumerate(streams[0][1]):
            occurred_ms = iso_ms(orjson.loads(value)["occurred_at"])
            wait_s = (occurred_ms - time.time() * 1000) / 1000
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            for topic, records in streams:
                key, body = records[n]
                futures.append(await producer.send(topic, key=key, value=body))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def iso_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_unkeyed_journeys_decide_as_keyed_ones_under_a_lagging_detour(
    kafka_bootstrap: str, topics: TestTopics, worker_factory: Any
) -> None:
    """The same journeys, published live to two groups at once: once all keyed by request id,
    once with 30 % of them unkeyed while the detour lags 5 x the grace.  The outboxes must
    hold the same decisions (ids and ratings), and no event may be late in either."""
    keyed_topics = make_topics()
    keyed: WorkerProcess = worker_factory(
        **SHORT_WINDOWS, **keyed_topics.env(), TOPIC_PARTITIONS=str(PARTITIONS)
    )
    detoured: WorkerProcess = worker_factory(module=SLOW_DETOUR, **SHORT_WINDOWS, **DETOUR)
    keyed.wait_ready()
    detoured.wait_ready()
    start = int(time.time() * 1000) + 2_000
    journeys = generate(60, start_ms=start, spread_ms=12_000, windows=SHAPE, seed=19,
                        kinds={"chat": 1, "code": 1, "search": 1})
    unkeyed = {j.request_id for j in journeys[::3]}  # a third: 30 % and some
    records = records_of(journeys)
    asyncio.run(_publish_live(kafka_bootstrap, [
        (keyed_topics.ui_events, list(records)),
        (topics.ui_events, [(None if rid.decode() in unkeyed else rid, value)
                            for rid, value in records]),
    ], start))

    written_keyed = settled([keyed], events=len(records))
    written = settled([detoured], events=len(records))
    assert detoured.metric_sum("feedback_events_rekeyed_total") > 0
    for run in (keyed_topics, topics):
        late = asyncio.run(read_topic(kafka_bootstrap, run.late, expected=0, timeout_s=3))
        assert [orjson.loads(r.value)["reason"] for r in late] == [], run.late
    assert detoured.metric_sum("feedback_stream_time_overruns_total") == 0

    def outcome(found: list[dict[str, Any]]) -> set[tuple[str, Any]]:
        return {(d["decision_id"], d["rating"]) for d in found}

    reference = decisions(kafka_bootstrap, keyed_topics.outbox, written_keyed)
    assert_matches(journeys, reference)
    assert outcome(decisions(kafka_bootstrap, topics.outbox, written)) == outcome(reference)

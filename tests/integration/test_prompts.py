"""Feedback prompts on the real broker: in the real worker, dissatisfied journeys become prompt
records on ``feedback-prompts`` before their windows close and the cooldown lets one per user
through; in the collector, every replica serves a user their prompt (issue 16, part 4)."""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.fixtures.collector import WRITE_KEY as KEY
from tests.fixtures.collector import CollectorFactory
from tests.fixtures.kafka import produce, read_topic
from tests.fixtures.worker import TestTopics, WorkerProcess
from worker.devtools.traffic import iso
from worker.prompts import PromptRecord, prompt_id_for

pytestmark = pytest.mark.integration


def event(
    type_: str, request_id: str, at_ms: int, *, user: str | None, session: str, **props: Any
) -> tuple[bytes, bytes]:
    document: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": type_,
        "request_id": request_id,
        "session_id": session,
        "occurred_at": iso(at_ms),
    }
    if user is not None:
        document["user_id"] = user
    if props:
        document["properties"] = props
    return request_id.encode(), orjson.dumps(document)


def test_dissatisfied_journeys_prompt_once_per_user_before_windows_close(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Callable[..., WorkerProcess],
) -> None:
    prompts_topic = f"feedback-prompts-{topics.suffix}"
    # A 600 s engagement window, and an idle close longer than the test: the prompts below
    # can only come from the early signals themselves, never from a closed window.
    worker = worker_factory(
        TOPIC_PROMPTS=prompts_topic, PROMPTS_ENABLED="true", ENGAGEMENT_WINDOW_S="600",
        IDLE_CLOSE_S="600",
    )
    worker.wait_ready()
    r = [str(uuid.uuid4()) for _ in range(5)]
    t = int(time.time() * 1000) - 20_000
    records = [
        # user-a: a regenerate, then a correction on another answer: one prompt (cooldown).
        event("response_shown", r[0], t, user="user-a", session="s-a"),
        event("response_regenerated", r[0], t + 1_000, user="user-a", session="s-a"),
        event("response_shown", r[1], t + 2_000, user="user-a", session="s-a"),
        event("message_sent", r[1], t + 3_000, user="user-a", session="s-a",
              text="No, that's wrong."),
        # user-b: left 2 s after the answer (quick exit, default 10 s).
        event("response_shown", r[2], t, user="user-b", session="s-b"),
        event("page_left", r[2], t + 2_000, user="user-b", session="s-b"),
        # no user id: the session is the audience.
        event("human_requested", r[3], t + 1_000, user=None, session="s-c"),
        # user-d is happy: no prompt.
        event("response_shown", r[4], t, user="user-d", session="s-d"),
        event("response_copied", r[4], t + 1_000, user="user-d", session="s-d"),
    ]
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, records))

    worker.wait_metric("feedback_prompts_total", lambda v: v >= 3, timeout_s=30)
    worker.wait_metric("feedback_prompts_suppressed_total", lambda v: v >= 1, timeout_s=30)
    got = [
        (rec.key, PromptRecord.model_validate_json(rec.value))
        for rec in asyncio.run(read_topic(kafka_bootstrap, prompts_topic, expected=3, timeout_s=20))
    ]
    by_key: dict[bytes, list[PromptRecord]] = {}
    for key, prompt in got:
        by_key.setdefault(key, []).append(prompt)
    assert set(by_key) == {b"user:user-a", b"user:user-b", b"session:s-c"}
    [a] = by_key[b"user:user-a"]  # the cooldown let exactly one through, whichever came first
    assert (a.request_id, a.reason) in {(r[0], "regenerated"), (r[1], "correction")}
    [b] = by_key[b"user:user-b"]
    assert (b.request_id, b.reason, b.prompt_id) == (r[2], "quick_exit", prompt_id_for(r[2]))
    [c] = by_key[b"session:s-c"]
    assert (c.request_id, c.reason, c.user_id) == (r[3], "human_requested", None)
    samples = worker.metrics()
    assert samples[("feedback_prompts_suppressed_total", (("why", "cooldown"),))] == 1


async def test_every_collector_replica_serves_a_prompt_to_its_user_only(
    kafka_bootstrap: str, collector_factory: CollectorFactory
) -> None:
    """Two collectors, no consumer group: each reads every partition of the prompts topic, so
    whichever one a browser reaches has its prompt, and nobody else's."""
    topic = f"feedback-prompts-{uuid.uuid4().hex[:8]}"
    now = int(time.time() * 1000)
    record = PromptRecord.build(
        request_id=str(uuid.uuid4()),
        reason="regenerated",
        user_id="user-a",
        session_id="s-a",
        signal_ms=now,
        ttl_ms=600_000,
    )
    await produce(kafka_bootstrap, topic, [(b"user:user-a", record.model_dump_json().encode())])
    async with (
        collector_factory(topic_prompts=topic, prompts_enabled=True) as (one, _),
        collector_factory(topic_prompts=topic, prompts_enabled=True) as (two, _),
        httpx.AsyncClient() as client,
    ):
        for running in (one, two):
            assert running.feed is not None
            await asyncio.wait_for(running.feed.assigned.wait(), 30)
            got = await _poll(client, running.url, "user-a")
            assert [p["prompt_id"] for p in got] == [record.prompt_id]
            other = await client.get(
                f"{running.url}/v1/prompts", params={"key": KEY, "user_id": "user-b"}
            )
            assert other.json() == {"prompts": []}


async def _poll(client: httpx.AsyncClient, url: str, user: str) -> list[dict[str, Any]]:
    """GET /v1/prompts until it has something (the feed reads in the background)."""
    deadline = time.monotonic() + 20
    while True:
        response = await client.get(f"{url}/v1/prompts", params={"key": KEY, "user_id": user})
        prompts: list[dict[str, Any]] = response.json()["prompts"]
        if prompts or time.monotonic() > deadline:
            return prompts
        await asyncio.sleep(0.2)


def test_the_cooldown_survives_a_restart_with_the_local_state_wiped(
    kafka_bootstrap: str,
    topics: TestTopics,
    worker_factory: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    """The cooldown table is rebuilt from its changelog: after a restart without local state,
    a second dissatisfied answer of the same user is still inside the cooldown.  (One record
    per producer batch: Tansu's end offsets after multi-record batches cut a table's
    recovery short, DESIGN 2.)"""
    prompts_topic = f"feedback-prompts-{topics.suffix}"
    settings = {
        "TOPIC_PROMPTS": prompts_topic, "PROMPTS_ENABLED": "true", "KAFKA_PRODUCER_BATCH_BYTES": "1"
    }
    state = tmp_path / "state"
    worker = worker_factory(state_dir=state, **settings)
    worker.wait_ready()
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    t = int(time.time() * 1000) - 10_000
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, [
        event("human_requested", first, t, user="user-r", session="s-1"),
    ]))
    worker.wait_metric("feedback_prompts_total", lambda v: v == 1, timeout_s=30)
    worker.stop()
    shutil.rmtree(state, ignore_errors=True)

    restarted = worker_factory(state_dir=state, **settings)
    restarted.wait_ready()
    asyncio.run(produce(kafka_bootstrap, topics.ui_events, [
        event("human_requested", second, t + 60_000, user="user-r", session="s-2"),
    ]))
    restarted.wait_metric("feedback_prompts_suppressed_total", lambda v: v >= 1, timeout_s=30)
    samples = restarted.metrics()
    assert samples[("feedback_prompts_suppressed_total", (("why", "cooldown"),))] == 1
    assert restarted.metric_sum("feedback_prompts_total") == 0
    records = asyncio.run(read_topic(kafka_bootstrap, prompts_topic, expected=1, timeout_s=10))
    assert {PromptRecord.model_validate_json(r.value).request_id for r in records} == {first}

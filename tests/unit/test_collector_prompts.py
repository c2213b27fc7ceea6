"""Feedback prompts in the collector: the bounded box (pure) and the two ways a browser gets
its prompts (the batch answer, GET /v1/prompts), through aiohttp's test client."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from tests.unit.test_collector_app import KEY, ORIGIN, FakeClock, FakeWriter, event
from worker.collector.app import Collector, build_app
from worker.collector.batch import BatchLimits
from worker.collector.policy import Origins, RateLimiter, WriteKeys
from worker.collector.prompt_box import (
    MAX_AUDIENCES_PER_REQUEST,
    PromptBox,
    audience_keys,
    batch_audiences,
)
from worker.metrics import CollectorMetrics
from worker.prompts import PromptRecord
from worker.validation import ValidationLimits

NOW = 1_795_348_800_000


def prompt(user: str | None, *, n: int = 1, session: str | None = None, at: int = NOW) -> bytes:
    record = PromptRecord.build(
        request_id=str(uuid.UUID(int=n, version=4)),
        reason="quick_exit",
        user_id=user,
        session_id=session,
        signal_ms=at,
        ttl_ms=600_000,
    )
    return record.model_dump_json().encode()


# ---------------------------------------------------------------- the box


def test_the_box_answers_only_for_the_audiences_named() -> None:
    box = PromptBox()
    assert box.add(prompt("alice", n=1), now_ms=NOW)
    assert box.add(prompt("bob", n=2), now_ms=NOW)
    assert box.add(prompt(None, n=3, session="s-9"), now_ms=NOW)
    [alice] = box.pending(["user:alice"], now_ms=NOW)
    assert alice["user_id"] == "alice"
    assert box.pending(["user:carol", "session:alice", "alice"], now_ms=NOW) == []
    [by_session] = box.pending(audience_keys(None, "s-9"), now_ms=NOW)
    assert by_session["session_id"] == "s-9"


def test_the_box_keeps_nothing_unusable_and_forgets_what_expires() -> None:
    box = PromptBox()
    assert not box.add(b"{not json", now_ms=NOW)
    assert not box.add(prompt(None, n=1), now_ms=NOW)  # no audience
    assert not box.add(prompt("alice", n=2, at=NOW - 600_000), now_ms=NOW)  # expired
    assert box.add(prompt("alice", n=3), now_ms=NOW)
    assert len(box.pending(["user:alice"], now_ms=NOW + 599_999)) == 1
    assert box.pending(["user:alice"], now_ms=NOW + 600_000) == []


def test_reading_does_not_consume_and_repeats_collapse() -> None:
    box = PromptBox()
    box.add(prompt("alice", n=1), now_ms=NOW)
    box.add(prompt("alice", n=1), now_ms=NOW)  # the same prompt id again (a resend)
    assert len(box.pending(["user:alice"], now_ms=NOW)) == 1
    assert len(box.pending(["user:alice"], now_ms=NOW)) == 1


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(1, 500)), max_size=200))
def test_the_box_is_bounded(adds: list[tuple[int, int]]) -> None:
    box = PromptBox(max_audiences=5, per_audience=2)
    for user, n in adds:
        box.add(prompt(f"u{user}", n=n), now_ms=NOW)
    assert len(box) <= 10
    for user, _ in adds:
        assert len(box.pending([f"user:u{user}"], now_ms=NOW)) <= 2


def test_batch_audiences_are_the_claimed_ids_bounded() -> None:
    values = [orjson.dumps({"user_id": f"u{i}", "session_id": "s"}) for i in range(20)]
    keys = batch_audiences([b"[]", b"{bad", *values])
    assert keys[:3] == ["user:u0", "session:s", "user:u1"]
    assert len(keys) == MAX_AUDIENCES_PER_REQUEST
    assert audience_keys("x" * 129, "") == []


# ---------------------------------------------------------------- the routes


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], PromptBox]]:
    box = PromptBox()
    collector = Collector(
        keys=WriteKeys([SecretStr(KEY)]),
        origins=Origins(frozenset({ORIGIN})),
        limiter=RateLimiter(rate_per_s=50, clock=FakeClock()),
        writer=FakeWriter(),
        metrics=CollectorMetrics(),
        limits=BatchLimits(max_events=10, validation=ValidationLimits()),
        max_body_bytes=4_096,
        events_topic="ui-events",
        invalid_topic="ui-events-invalid",
        clock_ms=lambda: int(time.time() * 1000),
        prompts=box,
    )
    client = TestClient(TestServer(build_app(collector)))
    await client.start_server()
    try:
        yield client, box
    finally:
        await client.close()


async def test_a_batch_answer_carries_the_batch_users_prompts_only(
    served: tuple[TestClient[Any, Any], PromptBox],
) -> None:
    client, box = served
    now = int(time.time() * 1000)
    box.add(prompt("alice", n=1, at=now), now_ms=now)
    box.add(prompt("bob", n=2, at=now), now_ms=now)
    body = {"events": [event(user_id="alice")]}
    response = await client.post("/v1/events", params={"key": KEY}, data=orjson.dumps(body))
    document = await response.json()
    assert response.status == 202
    assert [p["user_id"] for p in document["prompts"]] == ["alice"]
    body = {"events": [event(user_id="carol")]}
    response = await client.post("/v1/events", params={"key": KEY}, data=orjson.dumps(body))
    assert await response.json() == {"accepted": 1, "invalid": 0}  # unchanged without prompts


async def test_get_prompts_is_judged_like_a_post(
    served: tuple[TestClient[Any, Any], PromptBox],
) -> None:
    client, box = served
    now = int(time.time() * 1000)
    box.add(prompt("alice", n=1, at=now), now_ms=now)
    ok = await client.get(
        "/v1/prompts", params={"key": KEY, "user_id": "alice"}, headers={"Origin": ORIGIN}
    )
    assert ok.status == 200
    assert ok.headers["Access-Control-Allow-Origin"] == ORIGIN
    [only] = (await ok.json())["prompts"]
    assert only["request_id"] == str(uuid.UUID(int=1, version=4))
    for params, headers, status, error in [
        ({"user_id": "alice"}, {}, 401, "missing_write_key"),
        ({"key": "nope", "user_id": "alice"}, {}, 401, "unknown_write_key"),
        ({"key": KEY}, {}, 400, "missing_audience"),
        ({"key": KEY, "user_id": "alice"}, {"Origin": "https://evil.example"}, 403,
         "origin_not_allowed"),
    ]:
        refused = await client.get("/v1/prompts", params=params, headers=headers)
        assert (refused.status, (await refused.json())["error"]) == (status, error)
    other = await client.get("/v1/prompts", params={"key": KEY, "user_id": "bob"})
    assert await other.json() == {"prompts": []}

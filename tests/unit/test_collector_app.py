"""The collector's HTTP adapter (worker/collector/app.py) through aiohttp's test client.

The broker side is a fake :class:`BatchWriter` that records what it was asked to write, so
these tests show exactly what reaches Kafka for each request: for every refusal, nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from worker.collector.app import Collector, build_app
from worker.collector.batch import BatchLimits
from worker.collector.policy import Origins, RateLimiter, WriteKeys
from worker.collector.producer import BrokerUnavailable, TopicRecord
from worker.metrics import CollectorMetrics
from worker.validation import ValidationLimits

KEY = "pk_test_7f3a9c"
ORIGIN = "https://app.example.com"


@dataclass
class FakeWriter:
    started: bool = True
    fail: bool = False
    written: list[tuple[list[TopicRecord], int]] = field(default_factory=list)

    async def write(self, records: Sequence[TopicRecord], *, timestamp_ms: int) -> None:
        if self.fail:
            raise BrokerUnavailable("the broker refused the batch (KafkaTimeoutError)")
        self.written.append((list(records), timestamp_ms))

    async def reachable(self) -> bool:
        return self.started


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Harness:
    client: TestClient[Any, Any]
    writer: FakeWriter
    metrics: CollectorMetrics
    clock: FakeClock

    async def post(self, body: bytes | dict[str, Any], **kwargs: Any) -> Any:
        data = orjson.dumps(body) if isinstance(body, dict) else body
        params = kwargs.pop("params", {"key": KEY})
        return await self.client.post("/v1/events", data=data, params=params, **kwargs)

    def sample(self, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(self.metrics.exposition().decode()):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async with started_harness() as started:
        yield started


@asynccontextmanager
async def started_harness(
    *, trust_forwarded_for: bool = False, max_body_bytes: int = 4_096
) -> AsyncIterator[Harness]:
    writer, metrics, clock = FakeWriter(), CollectorMetrics(), FakeClock()
    collector = Collector(
        keys=WriteKeys([SecretStr(KEY), SecretStr("pk_test_other")]),
        origins=Origins(frozenset({ORIGIN})),
        limiter=RateLimiter(rate_per_s=5, clock=clock),
        writer=writer,
        metrics=metrics,
        limits=BatchLimits(max_events=10, validation=ValidationLimits()),
        max_body_bytes=max_body_bytes,
        events_topic="ui-events",
        invalid_topic="ui-events-invalid",
        clock_ms=lambda: int(datetime.now(UTC).timestamp() * 1000),
        trust_forwarded_for=trust_forwarded_for,
    )
    client = TestClient(TestServer(build_app(collector)))
    await client.start_server()
    try:
        yield Harness(client, writer, metrics, clock)
    finally:
        await client.close()


def event(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": "response_copied",
        "request_id": str(uuid.uuid4()),
        "occurred_at": datetime.now(UTC).isoformat(),
    }
    document.update(changes)
    return document


# --------------------------------------------------------------------------- 202


@pytest.mark.parametrize("content_type", ["application/json", "text/plain;charset=UTF-8"])
async def test_a_batch_is_written_whole_then_answered_202(
    harness: Harness, content_type: str
) -> None:
    good, bad = event(), event(request_id="not-a-uuid")
    response = await harness.post(
        {"sent_at": datetime.now(UTC).isoformat(), "events": [good, bad]},
        headers={"Content-Type": content_type},
    )
    assert response.status == 202
    assert await response.json() == {"accepted": 1, "invalid": 1}
    ((records, timestamp_ms),) = harness.writer.written
    assert [(topic, key) for topic, key, _ in records] == [
        ("ui-events", good["request_id"].encode()),
        ("ui-events-invalid", None),
    ]
    assert orjson.loads(records[1][2])["reason"] == "invalid_request_id"
    assert timestamp_ms > 0
    assert harness.sample("feedback_collector_requests_total", status="202") == 1
    assert harness.sample(
        "feedback_collector_events_total", outcome="accepted", reason="none"
    ) == 1
    assert harness.sample(
        "feedback_collector_events_total", outcome="invalid", reason="invalid_request_id"
    ) == 1
    assert harness.sample("feedback_collector_request_duration_seconds_count") == 1


async def test_the_bearer_header_works_without_the_query_key(harness: Harness) -> None:
    response = await harness.post(
        {"events": [event()]}, params={}, headers={"Authorization": "Bearer pk_test_other"}
    )
    assert response.status == 202


async def test_an_allowed_origin_is_echoed(harness: Harness) -> None:
    response = await harness.post({"events": [event()]}, headers={"Origin": ORIGIN})
    assert response.status == 202
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert response.headers["Vary"] == "Origin"


# --------------------------------------------------------------------------- refusals


async def refused(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body: dict[str, Any] = await response.json()
    assert body["error"] == error
    assert KEY not in orjson.dumps(body).decode()
    return body


async def test_not_json_and_not_a_batch_are_400(harness: Harness) -> None:
    await refused(await harness.post(b"{nope"), 400, "not_json")
    await refused(await harness.post(b'[{"type": "x"}]'), 400, "not_a_batch")
    assert harness.writer.written == []
    assert harness.sample("feedback_collector_refused_total", error="not_json") == 1


async def test_deep_nesting_is_400_not_json_and_counted_never_a_500() -> None:
    """Over a real socket: an event nested 255 levels or more cannot be written back (orjson
    writes 254), and past 1,024 the body cannot be parsed; either way the answer is
    DESIGN 11's 400 ``not_json``, counted as refused, with nothing written."""
    async with started_harness(max_body_bytes=1024 * 1024) as h:
        refusals = 0
        for depth in (100, 255, 256, 1024, 100_000):
            for nested in (b"[" * depth + b"]" * depth,
                           b'{"a": ' * depth + b"1" + b"}" * depth):
                h.clock.t += 10  # never rate limited here
                body = b'{"events": [' + orjson.dumps(event()) + b", " + nested + b"]}"
                response = await h.post(body, headers={"Content-Type": "text/plain"})
                if depth == 100:  # shallow enough: one invalid event beside a valid one
                    assert response.status == 202, await response.text()
                    assert await response.json() == {"accepted": 1, "invalid": 1}
                    continue
                await refused(response, 400, "not_json")
                refusals += 1
        assert len(h.writer.written) == 2  # the two batches nested 100 levels
        assert h.sample("feedback_collector_refused_total", error="not_json") == refusals == 8
        assert h.sample("feedback_collector_requests_total", status="400") == 8


async def test_missing_or_unknown_key_is_401(harness: Harness) -> None:
    await refused(await harness.post({"events": [event()]}, params={}), 401, "missing_write_key")
    await refused(
        await harness.post({"events": [event()]}, params={"key": "pk_guess"}),
        401,
        "unknown_write_key",
    )
    assert harness.writer.written == []


async def test_a_foreign_origin_is_403_without_cors_headers(harness: Harness) -> None:
    response = await harness.post({"events": [event()]}, headers={"Origin": "https://evil.test"})
    await refused(response, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert response.headers["Vary"] == "Origin"
    assert harness.writer.written == []


async def test_a_large_body_is_413_by_content_length_and_while_streaming(
    harness: Harness,
) -> None:
    big = orjson.dumps({"events": [event(type="message_sent", properties={"text": "x" * 5_000})]})
    await refused(await harness.post(big), 413, "body_too_large")

    async def chunks() -> AsyncIterator[bytes]:  # chunked: no Content-Length to trust
        for _ in range(100):
            yield b" " * 1_024

    response = await harness.client.post("/v1/events", data=chunks(), params={"key": KEY})
    await refused(response, 413, "body_too_large")
    assert harness.writer.written == []


async def test_too_many_events_is_413(harness: Harness) -> None:
    await refused(await harness.post({"events": [event() for _ in range(11)]}), 413,
                  "too_many_events")
    assert harness.writer.written == []


async def test_over_the_rate_is_429_with_retry_after_until_tokens_return(
    harness: Harness,
) -> None:
    statuses = [(await harness.post({"events": []})).status for _ in range(5)]
    assert statuses == [202] * 5
    response = await harness.post({"events": [event()]}, headers={"Origin": ORIGIN})
    await refused(response, 429, "rate_limited")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN  # readable by the SDK
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert harness.writer.written == []
    harness.clock.t += 1.0
    assert (await harness.post({"events": [event()]})).status == 202


async def test_a_broker_failure_is_503_with_retry_after(harness: Harness) -> None:
    harness.writer.fail = True
    response = await harness.post({"events": [event()]})
    body = await refused(response, 503, "broker_unavailable")
    assert "retry the whole batch" in body["message"]
    assert int(response.headers["Retry-After"]) >= 1
    assert harness.sample(
        "feedback_collector_events_total", outcome="accepted", reason="none"
    ) == 0


# --------------------------------------------------------------------------- CORS preflight


async def test_preflight_for_an_allowed_origin(harness: Harness) -> None:
    response = await harness.client.options(
        "/v1/events",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in response.headers["Access-Control-Allow-Methods"]
    assert "Content-Type" in response.headers["Access-Control-Allow-Headers"]
    assert response.headers["Vary"] == "Origin"


async def test_preflight_for_another_origin_is_403(harness: Harness) -> None:
    response = await harness.client.options(
        "/v1/events",
        headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"},
    )
    await refused(response, 403, "origin_not_allowed")
    assert "Access-Control-Allow-Origin" not in response.headers


# --------------------------------------------------------------------------- operations


async def test_health_readiness_and_metrics(harness: Harness) -> None:
    assert (await harness.client.get("/healthz")).status == 200
    ready = await harness.client.get("/readyz")
    assert ready.status == 200 and (await ready.json())["ready"] is True
    harness.writer.started = False
    not_ready = await harness.client.get("/readyz")
    assert not_ready.status == 503
    assert (await not_ready.json())["checks"]["producer_started"] is False
    metrics = await harness.client.get("/metrics")
    assert metrics.status == 200
    assert "feedback_collector_requests_total" in await metrics.text()


async def test_unknown_paths_and_methods_get_typed_json(harness: Harness) -> None:
    missing = await harness.client.get("/v1/nothing")
    assert missing.status == 404 and (await missing.json())["error"] == "not_found"
    wrong = await harness.client.get("/v1/events")
    assert wrong.status == 405 and (await wrong.json())["error"] == "method_not_allowed"
    assert "POST" in wrong.headers["Allow"]


async def test_metrics_carry_no_ids_keys_or_addresses(harness: Harness) -> None:
    documents = [event(), event(request_id="bad"), event(type="session_feedback_given",
                 request_id=None, session_id="session-secret-9", properties={"rating": True})]
    response = await harness.post({"events": documents}, headers={"Origin": ORIGIN})
    assert response.status == 202
    await harness.post({"events": []}, params={"key": "pk_guess_1234"})
    text = harness.metrics.exposition().decode()
    for value in (KEY, "pk_guess_1234", "127.0.0.1", ORIGIN, "session-secret-9",
                  *(d["event_id"] for d in documents), documents[0]["request_id"]):
        assert value not in text, value


_event_bytes = st.sampled_from(
    [orjson.dumps(event()), b"{}", b"[]", b"null", b'"x"', b"1e999", b"{" * 50]
)
_hostile_bodies = st.one_of(
    st.binary(max_size=5_000),
    st.lists(_event_bytes, max_size=12).map(
        lambda items: b'{"events": [' + b",".join(items) + b"]}"
    ),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(_hostile_bodies, min_size=1, max_size=4))
def test_hostile_bodies_get_a_typed_json_answer_through_the_real_app(
    bodies: list[bytes],
) -> None:
    """Whatever the body: 202 with counts, or a typed refusal and nothing written."""

    async def post_all() -> None:
        async with started_harness() as h:
            for body in bodies:
                h.clock.t += 10  # never rate limited here
                written = len(h.writer.written)
                response = await h.post(body, headers={"Content-Type": "text/plain"})
                document = await response.json()
                if response.status == 202:
                    assert set(document) == {"accepted", "invalid"}
                else:
                    assert response.status in {400, 413}, (response.status, document)
                    assert isinstance(document["error"], str)
                    assert len(h.writer.written) == written

    asyncio.run(post_all())


@pytest.mark.parametrize("trusted", [True, False])
async def test_forwarded_for_picks_the_bucket_only_when_trusted(trusted: bool) -> None:
    """Behind a proxy every peer is the proxy; the address it appends (the last entry) is
    the client's.  Entries before it are whatever the client sent, so they never count."""
    async with started_harness(trust_forwarded_for=trusted) as h:
        statuses = []
        for n in range(6):  # six clients behind one proxy, each with a forged first entry
            response = await h.post(
                {"events": []}, headers={"X-Forwarded-For": f"6.6.6.6, 10.0.0.{n}"}
            )
            statuses.append(response.status)
    # 5 requests a second per address: trusted, six addresses; untrusted, one (the proxy).
    assert statuses == ([202] * 6 if trusted else [202] * 5 + [429])


def _nested(depth: int) -> bytes:
    return b'{"events": [' + b'{"a": ' * depth + b"1" + b"}" * depth + b"]}"


_requests = st.fixed_dictionaries({
    "body": st.one_of(
        _hostile_bodies,
        st.integers(1, 3_000).map(_nested),  # deep nesting
        st.integers(0, 2_000).map(lambda n: b'{"events": [' + b",".join([b"1"] * n) + b"]}"),
        st.sampled_from([b'{"events": {}}', b'{"events": "x"}', b'{"sent_at": 5, "events": []}',
                         b'{"events": [], "sent_at": "not a time"}']),  # wrong types
    ),
    "content_type": st.sampled_from(
        ["text/plain", "application/json", "application/x-www-form-urlencoded",
         "multipart/form-data; boundary=x", "image/png", ""]
    ),
    "origin": st.sampled_from([None, ORIGIN, "https://evil.example.com", "null",
                               ORIGIN + ".evil.com"]),
    "key": st.sampled_from([KEY, "pk_wrong", "", None]),
    "header_bytes": st.sampled_from([0, 100, 4_000]),
})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests=st.lists(_requests, min_size=1, max_size=4))
def test_hostile_requests_get_a_section_11_answer_and_write_nothing_when_refused(
    requests: list[dict[str, Any]],
) -> None:
    """Bodies, content types, forged origins, missing or wrong keys and bulky headers: every
    answer is one of DESIGN 11's codes with a typed JSON error, a refused request writes
    nothing, and the write key never comes back in an answer."""

    async def post_all() -> None:
        async with started_harness() as h:
            for r in requests:
                h.clock.t += 10  # never rate limited here
                written = len(h.writer.written)
                headers = {"X-Filler": "x" * r["header_bytes"]}
                if r["content_type"]:
                    headers["Content-Type"] = r["content_type"]
                if r["origin"] is not None:
                    headers["Origin"] = r["origin"]
                params = {} if r["key"] is None else {"key": r["key"]}
                response = await h.post(r["body"], headers=headers, params=params)
                text = await response.text()
                assert response.status in {202, 400, 401, 403, 413}, (response.status, text)
                assert KEY not in text
                document = orjson.loads(text)
                if response.status == 202:
                    assert set(document) == {"accepted", "invalid"}
                else:
                    assert isinstance(document["error"], str)
                    assert len(h.writer.written) == written

    asyncio.run(post_all())

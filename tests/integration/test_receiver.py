"""HeliconeClient and the devtools receiver over real HTTP on loopback.

No broker is needed.  Tests wait on the receiver's record count (``wait_for``) or stored state
(``wait_stored``), or consume the queued scores at once (``settle``), never on sleeps.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from worker.clock import FakeClock
from worker.delivery import DeliveryOutcome
from worker.devtools import receiver as receiver_module
from worker.devtools.receiver import FEEDBACK_KEY, Receiver, StoredRequest, serve
from worker.errors import AuthRejected, PermanentDelivery, RetryableDelivery
from worker.helicone import HeliconeClient

KEY = "sk-helicone-test-7b1e"
READ_ONLY_KEY = "sk-helicone-readonly-1"


def rid() -> str:
    return str(uuid.uuid4())


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with Receiver(read_only_keys={READ_ONLY_KEY}, unknown_sessions={"ghost"}) as r:
        yield r


@pytest.fixture
async def client(receiver: Receiver) -> AsyncIterator[HeliconeClient]:
    async with HeliconeClient(SecretStr(KEY), base_url=receiver.url) as c:
        yield c


async def raw_post(
    receiver: Receiver, path: str, body: Any, key: str | None = KEY
) -> httpx.Response:
    """A call the client would refuse to make, to see how the receiver answers it."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=receiver.url) as http:
        return await http.post(path, json=body, headers=headers)


async def read_back(receiver: Receiver, request_id: str, key: str | None = KEY) -> httpx.Response:
    """``GET /v1/request/{id}``, as a test or an operator reads Helicone's stored state."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=receiver.url) as http:
        return await http.get(f"/v1/request/{request_id}", headers=headers)


# --------------------------------------------------------------------------- success


async def test_each_endpoint_succeeds_and_is_recorded(
    receiver: Receiver, client: HeliconeClient
) -> None:
    request_id, session_id = rid(), "session-1"
    feedback = await client.post_request_feedback(request_id, True)
    scores = await client.post_request_scores(request_id, {"time_spent_s": 31, "flag": False})
    session = await client.post_session_feedback(session_id, False)

    assert (feedback.status, scores.status, session.status) == (201, 201, 200)
    assert {feedback.outcome, scores.outcome, session.outcome} == {DeliveryOutcome.SUCCESS}
    records = await receiver.wait_for(3)
    assert [(r.method, r.path, r.body) for r in records] == [
        ("POST", f"/v1/request/{request_id}/feedback", {"rating": True}),
        (
            "POST",
            f"/v1/request/{request_id}/score",
            {"scores": {"time_spent_s": 31, "flag": False}},
        ),
        ("POST", f"/v1/session/{session_id}/feedback", {"rating": False}),
    ]
    assert receiver.count("/v1/request/") == 2
    assert receiver.count("/v1/session/") == 1


async def test_concurrent_posts_are_all_recorded(
    receiver: Receiver, client: HeliconeClient
) -> None:
    ids = [rid() for _ in range(20)]
    await asyncio.gather(*(client.post_request_feedback(i, True) for i in ids))
    records = await receiver.wait_for(20, path_prefix="/v1/request/")
    assert {r.path.split("/")[3] for r in records} == set(ids)


async def test_wait_for_times_out_with_what_it_saw(receiver: Receiver) -> None:
    with pytest.raises(TimeoutError, match="got 0"):
        await receiver.wait_for(1, timeout_s=0.05)


# --------------------------------------------------------------------------- Helicone's errors


async def test_wrong_key_is_401_and_auth_rejected(receiver: Receiver) -> None:
    async with HeliconeClient(SecretStr("not-a-helicone-key"), base_url=receiver.url) as c:
        with pytest.raises(AuthRejected) as caught:
            await c.post_request_feedback(rid(), True)
    assert caught.value.status == 401
    assert "not-a-helicone-key" not in str(caught.value)

    missing = await raw_post(receiver, f"/v1/request/{rid()}/feedback", {"rating": True}, key=None)
    assert missing.status_code == 401
    assert set(missing.json()) == {"error", "trace"}
    assert receiver.count() == 0


async def test_read_only_key_is_403_and_auth_rejected(receiver: Receiver) -> None:
    async with HeliconeClient(SecretStr(READ_ONLY_KEY), base_url=receiver.url) as c:
        with pytest.raises(AuthRejected) as caught:
            await c.post_request_scores(rid(), {"a": 1})
    assert caught.value.status == 403


async def test_configured_key_list_replaces_the_prefix_rule() -> None:
    async with Receiver(api_keys={"sk-helicone-only-this"}) as r:
        async with HeliconeClient(SecretStr(KEY), base_url=r.url) as c:
            with pytest.raises(AuthRejected):
                await c.post_request_feedback(rid(), True)
        async with HeliconeClient(SecretStr("sk-helicone-only-this"), base_url=r.url) as c:
            await c.post_request_feedback(rid(), True)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("feedback", {"rating": "yes"}),
        ("feedback", {}),
        ("feedback", {"rating": True, "extra": 1}),
        ("score", {"scores": {"a": "high"}}),
        ("score", {"scores": {"a": 1}, "rating": True}),  # no other fields
        ("score", {"scores": [1]}),
    ],
)
async def test_body_validation_failure_is_422_and_permanent(
    receiver: Receiver, path: str, body: Any
) -> None:
    response = await raw_post(receiver, f"/v1/request/{rid()}/{path}", body)
    assert response.status_code == 422
    assert response.json()["message"] == "Validation Failed"
    assert response.json()["details"]


async def test_422_through_the_client_is_permanent_with_the_body(receiver: Receiver) -> None:
    # The client never builds a bad body, so make the receiver answer as if it had.
    receiver.fail_next(1, status=422, body={"message": "Validation Failed", "details": {"x": {}}})
    async with HeliconeClient(SecretStr(KEY), base_url=receiver.url) as c:
        with pytest.raises(PermanentDelivery) as caught:
            await c.post_request_feedback(rid(), True)
    assert caught.value.status == 422
    assert "Validation Failed" in caught.value.body_excerpt


async def test_invalid_request_id_is_500_at_helicone_and_never_sent_by_the_client(
    receiver: Receiver, client: HeliconeClient
) -> None:
    response = await raw_post(receiver, "/v1/request/not-a-uuid/feedback", {"rating": True})
    assert response.status_code == 500
    assert response.json() == {"data": None, "error": "Invalid requestId: must be a valid UUID"}
    v7 = "0190b7a8-9c4e-7d2a-8f3b-1c2d3e4f5a6b"
    assert (await raw_post(receiver, f"/v1/request/{v7}/score", {"scores": {}})).status_code == 500

    before = receiver.attempts()
    with pytest.raises(PermanentDelivery):
        await client.post_request_feedback("not-a-uuid", True)
    assert receiver.attempts() == before  # validated locally: no call


async def test_non_integer_score_is_500(receiver: Receiver) -> None:
    response = await raw_post(receiver, f"/v1/request/{rid()}/score", {"scores": {"a": 0.5}})
    assert response.status_code == 500
    ok = await raw_post(receiver, f"/v1/request/{rid()}/score", {"scores": {"a": 2, "b": True}})
    assert ok.status_code == 201 and ok.json() == {"data": None, "error": None}


async def test_unknown_session_is_500_no_request_found(
    receiver: Receiver, client: HeliconeClient
) -> None:
    with pytest.raises(RetryableDelivery) as caught:
        await client.post_session_feedback("ghost", True)
    assert caught.value.status == 500
    assert "No request found" in caught.value.body_excerpt


async def test_rate_limit_is_429_with_retry_after_parsed() -> None:
    async with (
        Receiver(rate_limit=2, rate_window_s=30) as r,
        HeliconeClient(SecretStr(KEY), base_url=r.url) as c,
    ):
        await c.post_request_feedback(rid(), True)
        await c.post_request_feedback(rid(), True)
        with pytest.raises(RetryableDelivery) as caught:
            await c.post_request_feedback(rid(), True)
    assert caught.value.status == 429
    assert "Too many requests" in caught.value.body_excerpt
    assert caught.value.retry_after_s is not None and 29 <= caught.value.retry_after_s <= 30
    assert r.count() == 2 and r.attempts() == 3


# --------------------------------------------------------------------------- injected faults


async def test_injected_statuses_then_recovery(receiver: Receiver, client: HeliconeClient) -> None:
    receiver.fail_next(2, status=503, retry_after=3)
    for _ in range(2):
        with pytest.raises(RetryableDelivery) as caught:
            await client.post_request_feedback(rid(), True)
        assert (caught.value.status, caught.value.retry_after_s) == (503, 3)
    await client.post_request_feedback(rid(), True)
    assert receiver.count() == 1 and receiver.attempts() == 3


async def test_fault_for_a_time_span(receiver: Receiver, client: HeliconeClient) -> None:
    receiver.fail_for(60, status=502, path_prefix="/v1/session/")
    with pytest.raises(RetryableDelivery):
        await client.post_session_feedback("s", True)
    await client.post_request_feedback(rid(), True)  # other paths are unaffected
    receiver.clear_faults()
    await client.post_session_feedback("s", True)


async def test_injected_reset_is_retryable_and_the_pool_recovers(
    receiver: Receiver, client: HeliconeClient
) -> None:
    await client.post_request_feedback(rid(), True)  # a kept-alive connection now exists
    receiver.reset_next()
    with pytest.raises(RetryableDelivery) as caught:
        await client.post_request_feedback(rid(), True)
    assert caught.value.status is None
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)
    await client.post_request_feedback(rid(), True)
    assert receiver.count() == 2
    assert [r.status for r in receiver.history] == [201, None, 201]


async def test_latency_is_added_and_a_short_timeout_turns_it_retryable(
    receiver: Receiver,
) -> None:
    """The receiver reports the latency it applied, and the wait is real: a client timeout
    six times shorter than the latency gives up, while the default (10 s) waits it out.
    Nothing here reads the wall clock, so a slow or fast machine cannot change the result."""
    receiver.set_latency(0.3)
    async with HeliconeClient(SecretStr(KEY), base_url=receiver.url) as c:
        record = await c.post_request_feedback(rid(), True)
    assert record.outcome is DeliveryOutcome.SUCCESS

    async with HeliconeClient(
        SecretStr(KEY), base_url=receiver.url, timeout=httpx.Timeout(0.05)
    ) as c:
        with pytest.raises(RetryableDelivery) as caught:
            await c.post_request_feedback(rid(), True)
    assert isinstance(caught.value.__cause__, httpx.ReadTimeout)
    # Like Helicone, the receiver may still apply a write the client gave up on.
    await receiver.wait_for(2)
    assert [(r.status, r.latency_s) for r in receiver.history] == [(201, 0.3), (201, 0.3)]


async def test_faults_can_be_driven_over_http(receiver: Receiver, client: HeliconeClient) -> None:
    async with httpx.AsyncClient(base_url=receiver.url) as admin:
        added = await admin.post(
            "/_admin/faults", json={"status": 429, "count": 1, "retry_after": "5"}
        )
        assert added.status_code == 201
        with pytest.raises(RetryableDelivery) as caught:
            await client.post_request_feedback(rid(), True)
        assert caught.value.retry_after_s == 5

        assert (await admin.post("/_admin/faults", json={"reset": True})).status_code == 201
        with pytest.raises(RetryableDelivery):
            await client.post_request_feedback(rid(), True)

        assert (await admin.post("/_admin/faults", json={"bogus": 1})).status_code == 400
        await admin.post("/_admin/faults", json={"status": 500, "for_s": 60})
        assert (await admin.delete("/_admin/faults")).status_code == 200
        await client.post_request_feedback(rid(), True)

        records = (await admin.get("/_admin/records")).json()["records"]
        assert [r["status"] for r in records] == [429, None, 201]
        await admin.delete("/_admin/records")
        assert receiver.history == []


async def test_serve_runs_until_cancelled() -> None:
    ready: asyncio.Future[Receiver] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(serve("127.0.0.1", 0, rate_limit=5, on_ready=ready.set_result))
    running = await asyncio.wait_for(ready, 5)
    async with HeliconeClient(SecretStr(KEY), base_url=running.url) as c:
        await c.post_request_feedback(rid(), True)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --------------------------------------------------------------------------- what Helicone stores


async def test_feedback_then_score_in_one_batch_loses_the_rating() -> None:
    """The trap of DESIGN 5: both calls are answered 201, but Helicone's consumer keeps only
    the later message of the request in a batch, so the rating is never stored."""
    clock = FakeClock(t_ms=1_700_000_000_000)
    async with (
        Receiver(clock=clock, ingestion_delay_s=600) as r,  # nothing is due before settle()
        HeliconeClient(SecretStr(KEY), base_url=r.url) as c,
    ):
        request_id = rid()
        assert (await c.post_request_feedback(request_id, True)).status == 201
        clock.advance(0.005)
        assert (await c.post_request_scores(request_id, {"time_spent_s": 31})).status == 201
        assert r.stored() == {}  # queued, not stored: the ingestion delay has not passed

        batch = await r.settle()
        assert (batch.consumed, batch.kept, batch.superseded) == (2, 1, 1)
        assert r.stored() == {request_id: StoredRequest({"time_spent_s": 31}, None)}
        data = (await read_back(r, request_id)).json()["data"]
        assert (data["scores"], data["feedback_rating"]) == ({"time_spent_s": 31}, None)


async def test_one_score_call_with_the_feedback_key_stores_scores_and_rating(
    receiver: Receiver, client: HeliconeClient
) -> None:
    """The delivery contract's form: the whole state in one call (consumed by the background
    batches here, not settle())."""
    request_id = rid()
    await client.post_request_scores(request_id, {"time_spent_s": 31, FEEDBACK_KEY: 1})
    stored = await receiver.wait_stored(request_id, lambda s: s.feedback is not None)
    assert stored == StoredRequest({"time_spent_s": 31, FEEDBACK_KEY: 1}, True)


async def test_boolean_scores_are_stored_as_hcone_bool(
    receiver: Receiver, client: HeliconeClient
) -> None:
    request_id = rid()
    await client.post_request_scores(request_id, {"k": 3, "b": True, FEEDBACK_KEY: False})
    stored = await receiver.wait_stored(request_id)
    assert stored == StoredRequest({"k": 3, "b-hcone-bool": 1, f"{FEEDBACK_KEY}-hcone-bool": 0})


async def test_calls_in_separate_batches_merge(receiver: Receiver, client: HeliconeClient) -> None:
    request_id = rid()
    await client.post_request_feedback(request_id, False)
    await receiver.wait_stored(request_id)
    await client.post_request_scores(request_id, {"time_spent_s": 4})
    stored = await receiver.wait_stored(request_id, lambda s: "time_spent_s" in s.scores)
    assert stored == StoredRequest({FEEDBACK_KEY: 0, "time_spent_s": 4}, False)


async def test_the_consumer_uses_the_injected_clock_for_the_ingestion_delay() -> None:
    clock = FakeClock(t_ms=1_700_000_000_000)
    async with (
        Receiver(clock=clock, ingestion_delay_s=600, batch_interval_s=0.01) as r,
        HeliconeClient(SecretStr(KEY), base_url=r.url) as c,
    ):
        request_id = rid()
        await c.post_request_feedback(request_id, True)
        with pytest.raises(TimeoutError, match="pending=1"):
            await r.wait_stored(request_id, timeout_s=0.1)  # ten batches ran; not due yet
        clock.advance(600)
        assert (await r.wait_stored(request_id)).feedback is True


async def test_unknown_request_is_answered_201_then_dropped() -> None:
    known = rid()
    async with (
        Receiver(known_requests={known}) as r,
        HeliconeClient(SecretStr(KEY), base_url=r.url) as c,
    ):
        ghost = rid()
        assert (await c.post_request_feedback(ghost, True)).status == 201
        await c.post_request_feedback(known, True)
        await r.settle()
        assert set(r.stored()) == {known}
        assert (r.counters.queued, r.counters.kept, r.counters.dropped_unknown) == (2, 1, 1)
        missing = await read_back(r, ghost)
        assert missing.status_code == 500
        assert missing.json() == {"data": None, "error": "Request not found"}


async def test_session_feedback_is_stored_per_session(
    receiver: Receiver, client: HeliconeClient
) -> None:
    await client.post_session_feedback("session-1", True)
    await client.post_session_feedback("session-2", True)
    await client.post_session_feedback("session-1", False)
    with pytest.raises(RetryableDelivery):
        await client.post_session_feedback("ghost", True)
    assert receiver.stored_sessions() == {"session-1": False, "session-2": True}


async def test_refused_and_injected_calls_store_nothing(
    receiver: Receiver, client: HeliconeClient
) -> None:
    receiver.fail_next(1, status=201)  # an injected 2xx is not Helicone accepting it
    await client.post_request_feedback(rid(), True)
    await raw_post(receiver, f"/v1/request/{rid()}/score", {"scores": {"a": 0.5}})
    await raw_post(receiver, f"/v1/request/{rid()}/feedback", {"rating": "yes"})
    await receiver.settle()
    assert receiver.stored() == {} and receiver.counters.queued == 0


# --------------------------------------------------------------------------- reading back


async def test_read_back_has_helicones_result_shape(
    receiver: Receiver, client: HeliconeClient
) -> None:
    request_id = rid()
    await client.post_request_scores(request_id, {"x": 2, FEEDBACK_KEY: 1})
    await receiver.settle()
    response = await read_back(receiver, request_id)
    assert response.status_code == 200
    assert response.json() == {
        "data": {
            "request_id": request_id,
            "scores": {"x": 2, FEEDBACK_KEY: 1},
            "feedback_rating": True,
            "properties": {},
        },
        "error": None,
    }
    # A known request with nothing stored yet reads back with no scores and no rating.
    fresh = (await read_back(receiver, rid())).json()["data"]
    assert (fresh["scores"], fresh["feedback_rating"]) == ({}, None)


async def test_read_back_needs_a_key_and_a_read_only_key_is_enough(receiver: Receiver) -> None:
    assert (await read_back(receiver, rid(), key=None)).status_code == 401
    assert (await read_back(receiver, rid(), key="nope")).status_code == 401
    assert (await read_back(receiver, rid(), key=READ_ONLY_KEY)).status_code == 200
    assert receiver.attempts() == 0  # reads are not write calls: not in history


async def test_read_back_is_not_hit_by_injected_faults(
    receiver: Receiver, client: HeliconeClient
) -> None:
    receiver.fail_next(1, status=503)
    assert (await read_back(receiver, rid())).status_code == 200
    with pytest.raises(RetryableDelivery):  # the fault is still there for the write
        await client.post_request_feedback(rid(), True)


async def test_reads_have_their_own_limit() -> None:
    async with (
        Receiver(rate_limit=1, read_rate_limit=2, read_rate_window_s=60) as r,
        HeliconeClient(SecretStr(KEY), base_url=r.url) as c,
    ):
        await c.post_request_feedback(rid(), True)  # uses up the write window
        first = await read_back(r, rid())
        assert first.status_code == 200
        assert first.headers["RateLimit-Policy"] == "2;w=60"
        assert first.headers["RateLimit-Remaining"] == "1"
        assert (await read_back(r, rid())).status_code == 200
        refused = await read_back(r, rid())
        assert refused.status_code == 429
        assert refused.json() == {"error": "Too many requests, please try again later."}
        assert 59 <= int(refused.headers["Retry-After"]) <= 60
        with pytest.raises(RetryableDelivery) as caught:
            await c.post_request_feedback(rid(), True)
        assert caught.value.status == 429  # and the write limit is its own too


# --------------------------------------------------------------------------- rate limit headers


async def test_write_answers_carry_ratelimit_headers() -> None:
    async with Receiver(rate_limit=2, rate_window_s=30) as r:
        first = await raw_post(r, f"/v1/request/{rid()}/feedback", {"rating": True})
        assert first.status_code == 201
        assert first.headers["RateLimit-Policy"] == "2;w=30"
        assert first.headers["RateLimit-Limit"] == "2"
        assert first.headers["RateLimit-Remaining"] == "1"
        assert 29 <= int(first.headers["RateLimit-Reset"]) <= 30
        assert "Retry-After" not in first.headers

        invalid = await raw_post(r, f"/v1/request/{rid()}/feedback", {"rating": "yes"})
        assert invalid.status_code == 422  # counted: the limiter runs before validation
        assert invalid.headers["RateLimit-Remaining"] == "0"

        refused = await raw_post(r, f"/v1/request/{rid()}/feedback", {"rating": True})
        assert refused.status_code == 429
        assert refused.headers["RateLimit-Remaining"] == "0"
        assert refused.headers["Retry-After"] == refused.headers["RateLimit-Reset"]

        unauthorised = await raw_post(r, f"/v1/request/{rid()}/feedback", {"rating": True}, None)
        assert unauthorised.status_code == 401  # auth comes first: no limit headers
        assert "RateLimit-Limit" not in unauthorised.headers


async def test_without_a_write_limit_there_are_no_ratelimit_headers(receiver: Receiver) -> None:
    response = await raw_post(receiver, f"/v1/request/{rid()}/feedback", {"rating": True})
    assert response.status_code == 201 and "RateLimit-Limit" not in response.headers


# --------------------------------------------------------------------------- admin and lifecycle


async def test_stored_state_over_the_admin_routes(
    receiver: Receiver, client: HeliconeClient
) -> None:
    request_id = rid()
    await client.post_request_feedback(request_id, True)
    await client.post_session_feedback("s", False)
    async with httpx.AsyncClient(base_url=receiver.url) as admin:
        settled = (await admin.post("/_admin/settle")).json()
        assert settled["requests"] == {request_id: {"scores": {FEEDBACK_KEY: 1}, "feedback": True}}
        assert settled["sessions"] == {"s": False}
        assert settled["counters"]["kept"] == 1
        assert set(settled["batch"]) == {"consumed", "kept", "superseded", "dropped_unknown"}
        stored = (await admin.get("/_admin/stored")).json()
        assert stored["requests"] == settled["requests"]
        cleared = (await admin.delete("/_admin/stored")).json()
        assert cleared["requests"] == {} and cleared["counters"]["queued"] == 0


async def test_the_consumer_starts_and_stops_with_the_receiver_and_state_survives() -> None:
    def consumers() -> list[asyncio.Task[Any]]:
        return [t for t in asyncio.all_tasks() if t.get_name() == "receiver-consumer"]

    r = Receiver(ingestion_delay_s=600)
    assert consumers() == []
    await r.start()
    try:
        assert len(consumers()) == 1
        async with HeliconeClient(SecretStr(KEY), base_url=r.url) as c:
            request_id = rid()
            await c.post_request_feedback(request_id, True)
        await r.stop()
        assert consumers() == []
        assert r.counters.pending == 1  # queued before the stop, still queued
        await r.start()
        assert len(consumers()) == 1
        await r.settle()
        assert r.stored()[request_id].feedback is True
    finally:
        await r.stop()
    assert consumers() == []


async def test_command_line_flags_reach_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_serve(**options: Any) -> None:
        seen.update(options)

    monkeypatch.setattr(receiver_module, "serve", fake_serve)
    await asyncio.to_thread(
        receiver_module.main,
        [
            "--batch-interval-s", "0.5",
            "--ingestion-delay-s", "600",
            "--rate-limit", "100",
            "--rate-window-s", "60",
            "--read-rate-limit", "none",
            "--known-request", "r-1",
        ],
    )  # fmt: skip
    assert seen["batch_interval_s"] == 0.5 and seen["ingestion_delay_s"] == 600
    assert (seen["rate_limit"], seen["rate_window_s"]) == (100, 60)
    assert seen["read_rate_limit"] is None and seen["known_requests"] == ["r-1"]


@pytest.mark.parametrize(
    "options",
    [{"batch_interval_s": 0}, {"ingestion_delay_s": -1}, {"read_rate_window_s": 0}],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Receiver(**options)

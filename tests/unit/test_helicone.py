"""HeliconeClient against httpx.MockTransport: what is sent, and what every answer means.

As httpx's own test checks that every httpcore exception is mapped, the tables here cover
every status from 100 to 599 and every exception class httpx exports; a new httpx exception
class fails ``test_exception_table_covers_every_httpx_exception`` until it is given an outcome.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from pydantic import SecretStr

from worker.config import Settings
from worker.delivery import DeliveryAttempted, DeliveryOutcome
from worker.errors import (
    AuthRejected,
    ConfigError,
    DeliveryError,
    PermanentDelivery,
    RetryableDelivery,
)
from worker.helicone import (
    EU_BASE_URL,
    US_BASE_URL,
    HeliconeClient,
    classify_response,
    parse_retry_after,
)

KEY = "sk-helicone-SECRET-3f9a7c"
REQUEST_ID = str(uuid.uuid4())
Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, **options: object) -> HeliconeClient:
    return HeliconeClient(
        SecretStr(KEY),
        transport=httpx.MockTransport(handler),
        **options,  # type: ignore[arg-type]
    )


def answer(status: int, body: object = None, headers: dict[str, str] | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json=body, headers=headers)

    return handler


def recording(sent: list[httpx.Request]) -> Handler:
    """Answers 201 as Helicone does, keeping each request in ``sent``."""

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"data": None, "error": None})

    return handler


def expected_outcome(status: int) -> type[DeliveryError] | None:
    """The DESIGN 5 table, written out independently of the code under test."""
    if 200 <= status <= 299:
        return None
    if status in (401, 403):
        return AuthRejected
    if status in (408, 425, 429) or 500 <= status <= 599:
        return RetryableDelivery
    if 400 <= status <= 499:
        return PermanentDelivery
    return RetryableDelivery  # 1xx and 3xx: see the helicone module docstring


# --------------------------------------------------------------------------- every status


@pytest.mark.parametrize("status", range(100, 600))
async def test_every_status_has_exactly_one_outcome(status: int) -> None:
    client = make_client(answer(status, {"error": "x"}))
    expected = expected_outcome(status)
    if expected is None:
        record = await client.post_request_feedback(REQUEST_ID, True)
        assert record.outcome is DeliveryOutcome.SUCCESS and record.status == status
        return
    with pytest.raises(DeliveryError) as caught:
        await client.post_request_feedback(REQUEST_ID, True)
    assert type(caught.value) is expected
    assert caught.value.status == status
    assert caught.value.endpoint == "request_feedback"


@pytest.mark.parametrize("status", range(100, 600))
def test_classify_response_agrees_with_the_table(status: int) -> None:
    result = classify_response(status, {}, b"", now_ms=0)
    expected = expected_outcome(status)
    assert (None if result is None else type(result)) is expected


@pytest.mark.parametrize("status", [0, 99, 600, 999])
def test_statuses_outside_http_are_retryable(status: int) -> None:
    assert type(classify_response(status, {}, b"", now_ms=0)) is RetryableDelivery


# --------------------------------------------------------------------------- every exception

#: Outcome per httpx exception class: an error class, "by status" (HTTPStatusError is
#: classified by its response), or "propagates" (programmer mistakes stay loud).
EXCEPTION_OUTCOMES: dict[str, type[DeliveryError] | str] = {
    "HTTPError": RetryableDelivery,
    "RequestError": RetryableDelivery,
    "TransportError": RetryableDelivery,
    "TimeoutException": RetryableDelivery,
    "ConnectTimeout": RetryableDelivery,
    "ReadTimeout": RetryableDelivery,
    "WriteTimeout": RetryableDelivery,
    "PoolTimeout": RetryableDelivery,
    "NetworkError": RetryableDelivery,
    "ConnectError": RetryableDelivery,
    "ReadError": RetryableDelivery,
    "WriteError": RetryableDelivery,
    "CloseError": RetryableDelivery,
    "ProtocolError": RetryableDelivery,
    "LocalProtocolError": RetryableDelivery,
    "RemoteProtocolError": RetryableDelivery,
    "ProxyError": RetryableDelivery,
    "DecodingError": RetryableDelivery,
    "TooManyRedirects": RetryableDelivery,
    "UnsupportedProtocol": PermanentDelivery,
    "InvalidURL": PermanentDelivery,
    "HTTPStatusError": "by status",
    "CookieConflict": "propagates",
    "StreamError": "propagates",
    "StreamConsumed": "propagates",
    "StreamClosed": "propagates",
    "ResponseNotRead": "propagates",
    "RequestNotRead": "propagates",
}


def httpx_exception_classes() -> set[str]:
    return {
        name
        for name in httpx.__all__
        if isinstance(getattr(httpx, name), type) and issubclass(getattr(httpx, name), Exception)
    }


def test_exception_table_covers_every_httpx_exception() -> None:
    assert set(EXCEPTION_OUTCOMES) == httpx_exception_classes()


def build_exception(name: str, request: httpx.Request) -> Exception:
    cls = getattr(httpx, name)
    if issubclass(cls, httpx.StreamError) and cls is not httpx.StreamError:
        return cls()  # type: ignore[no-any-return]
    if issubclass(cls, httpx.RequestError):
        return cls(f"boom ({name})", request=request)  # type: ignore[no-any-return]
    return cls(f"boom ({name})")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "name", sorted(n for n, o in EXCEPTION_OUTCOMES.items() if o != "by status")
)
async def test_every_httpx_exception_has_exactly_one_outcome(name: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise build_exception(name, request)

    seen: list[DeliveryAttempted] = []
    client = make_client(handler, observer=seen.append)
    expected = EXCEPTION_OUTCOMES[name]
    if expected == "propagates":
        with pytest.raises(getattr(httpx, name)):
            await client.post_request_feedback(REQUEST_ID, False)
        assert seen == []
        return
    with pytest.raises(DeliveryError) as caught:
        await client.post_request_feedback(REQUEST_ID, False)
    assert type(caught.value) is expected
    assert type(caught.value.__cause__) is getattr(httpx, name)  # raise ... from exc
    assert caught.value.status is None
    assert [(r.outcome, r.status) for r in seen] == [
        (
            DeliveryOutcome.RETRYABLE
            if expected is RetryableDelivery
            else DeliveryOutcome.PERMANENT,
            None,
        )
    ]


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (503, RetryableDelivery),
        (404, PermanentDelivery),
        (401, AuthRejected),
        (200, RetryableDelivery),
    ],
)
async def test_http_status_error_from_a_hook_is_classified_by_its_response(
    status: int, expected: type[DeliveryError]
) -> None:
    """Only a lent client with a raise_for_status hook can raise it; classify by status.

    (A 200 cannot come out of raise_for_status; the test raises it by hand to reach the guard.)
    """

    async def raise_for_status(response: httpx.Response) -> None:
        raise httpx.HTTPStatusError("hook", request=response.request, response=response)

    transport = httpx.MockTransport(answer(status, {"error": "x"}, {"Retry-After": "7"}))
    async with httpx.AsyncClient(
        transport=transport, event_hooks={"response": [raise_for_status]}
    ) as http:
        client = HeliconeClient(SecretStr(KEY), client=http)
        with pytest.raises(DeliveryError) as caught:
            await client.post_request_feedback(REQUEST_ID, True)
    assert type(caught.value) is expected
    assert caught.value.status == status
    if status == 503:
        assert isinstance(caught.value, RetryableDelivery) and caught.value.retry_after_s == 7


# --------------------------------------------------------------------------- what is sent


async def test_request_feedback_is_one_bearer_post_with_a_rating() -> None:
    sent: list[httpx.Request] = []
    record = await make_client(recording(sent)).post_request_feedback(REQUEST_ID, False)
    (request,) = sent
    assert request.method == "POST"
    assert str(request.url) == f"{US_BASE_URL}/v1/request/{REQUEST_ID}/feedback"
    assert request.headers["Authorization"] == f"Bearer {KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {"rating": False}
    assert record.endpoint == "request_feedback" and record.status == 201
    assert record.outcome is DeliveryOutcome.SUCCESS


@pytest.mark.parametrize("answered", [True, False])
async def test_a_calls_duration_spans_the_request_on_the_timer(answered: bool) -> None:
    """The timer moves only while the transport holds the request, so the recorded
    duration is exactly that span, for an answer and for a transport failure alike."""
    now_s = [100.0]

    def slow(request: httpx.Request) -> httpx.Response:
        now_s[0] += 0.25
        if not answered:
            raise httpx.ReadTimeout("timed out", request=request)
        return httpx.Response(201)

    seen: list[DeliveryAttempted] = []
    client = make_client(slow, observer=seen.append, timer=lambda: now_s[0])
    if answered:
        await client.post_request_feedback(REQUEST_ID, True)
    else:
        with pytest.raises(RetryableDelivery):
            await client.post_request_feedback(REQUEST_ID, True)
    assert [r.duration_s for r in seen] == [0.25]


async def test_all_scores_go_in_one_post_as_integers() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201, json={"data": None, "error": None})

    client = make_client(handler)
    await client.post_request_scores(REQUEST_ID, {"time_spent_s": 42, "ctr": 0, "flag": True})
    (request,) = sent
    assert request.url.path == f"/v1/request/{REQUEST_ID}/score"
    assert json.loads(request.content) == {"scores": {"time_spent_s": 42, "ctr": 0, "flag": True}}


async def test_session_feedback_quotes_the_session_id() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200, json={"data": None, "error": None})

    record = await make_client(handler).post_session_feedback("chat 7/b?x", True)
    assert sent[0].url.raw_path == b"/v1/session/chat%207%2Fb%3Fx/feedback"
    assert json.loads(sent[0].content) == {"rating": True}
    assert record.endpoint == "session_feedback"


@pytest.mark.parametrize("base_url", [EU_BASE_URL, EU_BASE_URL + "/", "http://127.0.0.1:9/x/"])
async def test_base_url_is_configurable(base_url: str) -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201)

    await make_client(handler, base_url=base_url).post_request_feedback(REQUEST_ID, True)
    assert str(sent[0].url) == base_url.rstrip("/") + f"/v1/request/{REQUEST_ID}/feedback"


@pytest.mark.parametrize("base_url", ["ftp://api.helicone.ai", "api.helicone.ai", ""])
def test_a_base_url_that_is_not_http_is_a_config_error(base_url: str) -> None:
    with pytest.raises(ConfigError, match="HELICONE_BASE_URL"):
        HeliconeClient(SecretStr(KEY), base_url=base_url)


# --------------------------------------------------------------------------- local rejection


def refuse(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"no call expected, got {request.url}")


@pytest.mark.parametrize(
    "request_id",
    [
        "not-a-uuid",
        "00000000-0000-0000-0000-000000000000",  # nil
        "0190b7a8-9c4e-7d2a-8f3b-1c2d3e4f5a6b",  # v7
        "1ef2b7a8-9c4e-6d2a-8f3b-1c2d3e4f5a6b",  # v6
        "0190b7a8-9c4e-4d2a-cf3b-1c2d3e4f5a6b",  # wrong variant
        uuid.uuid4().hex,  # no dashes
        "{" + str(uuid.uuid4()) + "}",
        "",
    ],
)
async def test_invalid_request_ids_are_permanent_without_a_call(request_id: str) -> None:
    seen: list[DeliveryAttempted] = []
    client = make_client(refuse, observer=seen.append)
    for call in (
        client.post_request_feedback(request_id, True),
        client.post_request_scores(request_id, {"a": 1}),
    ):
        with pytest.raises(PermanentDelivery) as caught:
            await call
        assert caught.value.status is None
    assert seen == []


@pytest.mark.parametrize(
    "request_id",
    [
        str(uuid.uuid1()),
        str(uuid.uuid3(uuid.NAMESPACE_DNS, "a")),
        str(uuid.uuid4()).upper(),
        str(uuid.uuid5(uuid.NAMESPACE_DNS, "a")),
    ],
)
async def test_uuid_versions_one_to_five_are_sent(request_id: str) -> None:
    sent: list[httpx.Request] = []
    record = await make_client(recording(sent)).post_request_feedback(request_id, True)
    (request,) = sent
    assert request.url.path == f"/v1/request/{request_id}/feedback"
    assert record.outcome is DeliveryOutcome.SUCCESS


@pytest.mark.parametrize("scores", [{"a": 1.5}, {"a": 2.0}, {"a": "3"}, {"a": None}, {}, {"": 1}])
async def test_scores_must_be_integers_and_are_checked_before_any_call(
    scores: dict[str, object],
) -> None:
    with pytest.raises(PermanentDelivery):
        await make_client(refuse).post_request_scores(REQUEST_ID, scores)  # type: ignore[arg-type]


@pytest.mark.parametrize("session_id", ["", "x" * 129])
async def test_session_ids_are_checked_before_any_call(session_id: str) -> None:
    with pytest.raises(PermanentDelivery):
        await make_client(refuse).post_session_feedback(session_id, True)


async def test_a_non_bool_rating_is_refused() -> None:
    with pytest.raises(PermanentDelivery):
        await make_client(refuse).post_request_feedback(REQUEST_ID, 1)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- Retry-After


NOW_MS = int(datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp() * 1000)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("1.5", 1.5),
        ("0", 0.0),
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),  # IMF-fixdate
        ("Sunday, 01-Mar-26 12:01:00 GMT", 60.0),  # RFC 850
        ("Sun Mar  1 12:00:10 2026", 10.0),  # asctime, read as GMT
        ("Sun, 01 Mar 2026 11:00:00 GMT", 0.0),  # in the past
        ("-5", None),
        ("soon", None),
        ("nan", None),
        ("inf", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, now_ms=NOW_MS) == seconds


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_retryable_answers_carry_retry_after(status: int) -> None:
    error = classify_response(status, {"retry-after": "9"}, b"{}", now_ms=NOW_MS)
    assert isinstance(error, RetryableDelivery) and error.retry_after_s == 9


async def test_retry_after_date_is_read_against_the_injected_clock() -> None:
    class Clock:
        def now_ms(self) -> int:
            return NOW_MS

    headers = {"Retry-After": "Sun, 01 Mar 2026 12:02:00 GMT"}
    client = make_client(answer(429, {"error": "Too many"}, headers), clock=Clock())
    with pytest.raises(RetryableDelivery) as caught:
        await client.post_request_scores(REQUEST_ID, {"a": 1})
    assert caught.value.retry_after_s == 120


def test_missing_retry_after_is_none() -> None:
    error = classify_response(503, {}, b"", now_ms=NOW_MS)
    assert isinstance(error, RetryableDelivery) and error.retry_after_s is None


# --------------------------------------------------------------------------- body excerpt


def test_body_excerpt_is_cut_to_two_kib() -> None:
    error = classify_response(422, {}, b"x" * 10_000, now_ms=0)
    assert error is not None and len(error.body_excerpt) == 2048


def test_body_excerpt_does_not_end_in_half_a_character() -> None:
    error = classify_response(500, {}, b"a" * 2047 + "é".encode(), now_ms=0)
    assert error is not None and error.body_excerpt == "a" * 2047


async def test_body_excerpt_keeps_the_answer() -> None:
    body = {"message": "Validation Failed", "details": {"requestBody.rating": {}}}
    with pytest.raises(PermanentDelivery) as caught:
        await make_client(answer(422, body)).post_request_feedback(REQUEST_ID, True)
    assert json.loads(caught.value.body_excerpt) == body


# --------------------------------------------------------------------------- the key stays secret


def all_text_of(error: BaseException) -> str:
    """Everything a log line or traceback could print about an error and its causes."""
    parts: list[str] = []
    current: BaseException | None = error
    while current is not None:
        parts += [str(current), repr(current), repr(current.args)]
        parts += [repr(v) for v in vars(current).values()]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


async def test_key_is_in_no_repr_error_or_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    def echo(request: httpx.Request) -> httpx.Response:  # a proxy that reflects headers
        return httpx.Response(401, text=f"bad key {request.headers['Authorization']}")

    client = make_client(echo)
    assert KEY not in repr(client) and KEY not in str(client)
    with pytest.raises(AuthRejected) as caught:
        await client.post_request_feedback(REQUEST_ID, True)
    assert KEY not in all_text_of(caught.value)
    assert caught.value.body_excerpt == "bad key Bearer [redacted]"

    def timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(RetryableDelivery) as caught_timeout:
        await make_client(timeout).post_request_feedback(REQUEST_ID, True)
    assert KEY not in all_text_of(caught_timeout.value)
    assert KEY not in caplog.text


def test_api_key_must_be_a_secret() -> None:
    with pytest.raises(TypeError):
        HeliconeClient(KEY)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="HELICONE_API_KEY"):
        HeliconeClient(SecretStr(""))


# --------------------------------------------------------------------------- client plumbing


async def test_dry_run_posts_nothing_and_says_what_it_would_post(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="worker.helicone")
    seen: list[DeliveryAttempted] = []
    client = make_client(refuse, dry_run=True, observer=seen.append)
    record = await client.post_request_scores(REQUEST_ID, {"ctr": 50})
    assert record.outcome is DeliveryOutcome.DRY_RUN and record.status is None
    assert f"/v1/request/{REQUEST_ID}/score" in caplog.text and "'ctr': 50" in caplog.text
    assert seen == []  # nothing went on the wire


async def test_observer_sees_every_call_on_the_wire() -> None:
    statuses = iter([503, 422, 401, 201])

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(next(statuses))

    seen: list[DeliveryAttempted] = []
    client = make_client(handler, observer=seen.append)
    for _ in range(3):
        with pytest.raises(DeliveryError):
            await client.post_request_feedback(REQUEST_ID, True)
    await client.post_request_feedback(REQUEST_ID, True)
    assert [(r.outcome, r.status) for r in seen] == [
        (DeliveryOutcome.RETRYABLE, 503),
        (DeliveryOutcome.PERMANENT, 422),
        (DeliveryOutcome.AUTH_REJECTED, 401),
        (DeliveryOutcome.SUCCESS, 201),
    ]
    assert {r.endpoint for r in seen} == {"request_feedback"}


async def test_a_lent_client_is_not_closed_but_an_own_one_is() -> None:
    transport = httpx.MockTransport(answer(201))
    async with httpx.AsyncClient(transport=transport) as http:
        async with HeliconeClient(SecretStr(KEY), client=http) as client:
            await client.post_request_feedback(REQUEST_ID, True)
        assert not http.is_closed

    async with make_client(answer(201)) as own:
        await own.post_request_feedback(REQUEST_ID, True)
    with pytest.raises(RuntimeError, match="closed"):
        await own.post_request_feedback(REQUEST_ID, True)


def test_client_and_transport_are_exclusive() -> None:
    with pytest.raises(ValueError):
        HeliconeClient(
            SecretStr(KEY), client=httpx.AsyncClient(), transport=httpx.MockTransport(answer(201))
        )


def test_timeout_comes_from_the_arguments() -> None:
    client = HeliconeClient(SecretStr(KEY), timeout=httpx.Timeout(3.0, connect=1.0))
    assert client.timeout == httpx.Timeout(3.0, connect=1.0)


def test_from_settings() -> None:
    settings = Settings(
        helicone_api_key=SecretStr(KEY),
        helicone_base_url=EU_BASE_URL,
        delivery_timeout_s=4.0,
    )
    client = HeliconeClient.from_settings(settings)
    assert client.base_url == EU_BASE_URL
    assert client.timeout.read == 4.0
    assert KEY not in repr(client)

    with pytest.raises(ConfigError, match="HELICONE_API_KEY"):
        HeliconeClient.from_settings(Settings())
    dry = HeliconeClient.from_settings(Settings(feedback_dry_run=True))
    assert "dry_run=True" in repr(dry)

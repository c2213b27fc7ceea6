"""The collector's HTTP side: aiohttp handlers as thin adapters over the pure core.

Routes (DESIGN 11)::

    POST    /v1/events   a batch of events; 202 {"accepted", "invalid"} once all are acked
    OPTIONS /v1/events   CORS preflight
    GET     /v1/prompts  the caller's pending feedback prompts (worker.collector.prompt_box)
    GET     /healthz     the process serves requests
    GET     /readyz      the producer is started and the broker answers
    GET     /metrics     Prometheus text format (the collector's own registry)

A POST is judged in this order, cheapest first, and stops at the first refusal; a refusal
writes nothing (:mod:`worker.collector.batch`)::

    403 Origin not allowed  ->  429 rate  ->  401 write key  ->  413 body size / 408 body
    time (while reading)  ->  400 / 413 batch shape and event count  ->  503 broker  ->  202

Every answer carries ``Vary: Origin`` and, for an allowed origin, the CORS headers, so a
browser can read refusals too (``Retry-After`` included).  Every answer is counted
(:class:`~worker.metrics.CollectorMetrics`); no key or address appears in a body, a log line
or a label.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from worker.collector.batch import Batch, BatchLimits, Refusal, parse_batch, refusal
from worker.collector.policy import Origins, RateLimiter, WriteKeys, presented_key
from worker.collector.producer import BatchWriter, BrokerUnavailable
from worker.collector.prompt_box import PromptBox, audience_keys, batch_audiences
from worker.metrics import CONTENT_TYPE_LATEST, CollectorMetrics

__all__ = [
    "BROKER_RETRY_AFTER_S",
    "EVENTS_PATH",
    "PROMPTS_PATH",
    "Collector",
    "build_app",
    "read_body",
]

EVENTS_PATH = "/v1/events"
PROMPTS_PATH = "/v1/prompts"
#: What a 503 tells the client to wait: long enough for a broker failover or a restart,
#: short enough that a page's pending events still leave before the user does.
BROKER_RETRY_AFTER_S = 5


@dataclass
class Collector:
    """Everything a request needs, built once from the settings
    (:func:`worker.collector.server.build_collector`)."""

    keys: WriteKeys
    origins: Origins
    limiter: RateLimiter
    writer: BatchWriter
    metrics: CollectorMetrics
    limits: BatchLimits
    max_body_bytes: int
    events_topic: str
    invalid_topic: str
    #: Wall clock in milliseconds: the received time, and each record's Kafka timestamp.
    clock_ms: Callable[[], int]
    trust_forwarded_for: bool = False
    #: ``COLLECTOR_BODY_TIMEOUT_S``: how long the body may take once the headers are in.
    body_timeout_s: float = 10.0
    #: Why the collector can never become ready (a topic mismatch), or None.
    fatal: Callable[[], str | None] = lambda: None
    #: Recent feedback prompts by audience (None: PROMPTS_ENABLED=false, no prompts served).
    prompts: PromptBox | None = None

    # ---- POST /v1/events

    async def post_events(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        origin = request.headers.get("Origin")
        outcome = await self._judge_and_write(request, origin)
        if isinstance(outcome, Refusal):
            response = error_response(outcome)
            if not request.content.is_eof():
                response.force_close()  # the rest of the body is not read: drop it
            error: str | None = outcome.error
        else:
            document: dict[str, object] = {
                "accepted": outcome.accepted,
                "invalid": outcome.invalid,
            }
            pending = self._prompts_for(
                batch_audiences(value for valid, _, value in outcome.records if valid)
            )
            if pending:  # only when there are some: the answer stays as it was otherwise
                document["prompts"] = pending
            response = _json(document, 202)
            error = None
        response.headers.update(self.origins.headers(origin))
        self.metrics.observe_request(
            response.status, error=error, duration_s=time.perf_counter() - started
        )
        return response

    def _admit(self, request: web.Request, origin: str | None, action: str) -> Refusal | None:
        """The checks every request passes, in this order: its Origin, the per-client rate,
        then the write key (so a flood of bad keys is rate limited before it is judged)."""
        if not self.origins.permits(origin):
            return refusal("origin_not_allowed", f"this Origin may not {action}")
        wait_s = self.limiter.take(self._client_address(request))
        if wait_s is not None:
            return refusal("rate_limited", "too many requests", retry_after_s=wait_s)
        return self.keys.check(
            presented_key(request.query.get("key"), request.headers.get("Authorization"))
        )

    async def _judge_and_write(self, request: web.Request, origin: str | None) -> Batch | Refusal:
        denied = self._admit(request, origin, "post events")
        if denied is not None:
            return denied
        body = await read_body(request, self.max_body_bytes, timeout_s=self.body_timeout_s)
        if isinstance(body, Refusal):
            return body
        received_at_ms = self.clock_ms()
        batch = parse_batch(body, received_at_ms=received_at_ms, limits=self.limits)
        if isinstance(batch, Refusal):
            return batch
        if batch.records:
            events_topic, invalid_topic = self.events_topic, self.invalid_topic
            records = [
                (events_topic if valid else invalid_topic, key, value)
                for valid, key, value in batch.records
            ]
            try:
                await self.writer.write(records, timestamp_ms=received_at_ms)
            except BrokerUnavailable as exc:
                return refusal(
                    "broker_unavailable",
                    f"{exc}; retry the whole batch",
                    retry_after_s=BROKER_RETRY_AFTER_S,
                )
        self.metrics.observe_events(
            accepted=batch.accepted, invalid_reasons=batch.invalid_reasons
        )
        return batch

    def _client_address(self, request: web.Request) -> str:
        """The address rate limits apply to.  Behind one trusted proxy the last
        ``X-Forwarded-For`` entry is the one that proxy appended, so a client cannot
        choose its own bucket by sending the header itself."""
        if self.trust_forwarded_for:
            forwarded = request.headers.get("X-Forwarded-For", "")
            last = forwarded.rsplit(",", 1)[-1].strip()
            if last:
                return last[:64]
        return request.remote or "unknown"

    # ---- feedback prompts

    def _prompts_for(self, keys: list[str]) -> list[dict[str, object]]:
        if self.prompts is None or not keys:
            return []
        pending = self.prompts.pending(keys, now_ms=self.clock_ms())
        if pending:
            self.metrics.prompts_served.inc(len(pending))
        return pending

    async def get_prompts(self, request: web.Request) -> web.StreamResponse:
        """``GET /v1/prompts?key=&user_id=&session_id=``: the caller's pending prompts, judged
        like a POST (origin, rate, write key) and answering only for the ids it names."""
        origin = request.headers.get("Origin")
        outcome = self._judge_read(request, origin)
        if isinstance(outcome, Refusal):
            response = error_response(outcome)
            error: str | None = outcome.error
        else:
            response = _json({"prompts": self._prompts_for(outcome)}, 200)
            error = None
        response.headers.update(self.origins.headers(origin))
        self.metrics.observe_request(response.status, error=error, duration_s=None)
        return response

    def _judge_read(self, request: web.Request, origin: str | None) -> list[str] | Refusal:
        denied = self._admit(request, origin, "read prompts")
        if denied is not None:
            return denied
        keys = audience_keys(request.query.get("user_id"), request.query.get("session_id"))
        if not keys:
            return refusal("missing_audience", "name a user_id or a session_id (1-128 chars)")
        return keys

    # ---- OPTIONS /v1/events

    async def preflight(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is not None and self.origins.permits(origin):
            response = web.Response(status=204, headers=self.origins.preflight_headers(origin))
            error: str | None = None
        else:
            response = error_response(
                refusal("origin_not_allowed", "this Origin may not post events")
            )
            response.headers.update(self.origins.headers(origin))
            error = "origin_not_allowed"
        self.metrics.observe_request(response.status, error=error, duration_s=None)
        return response

    # ---- operations

    async def healthz(self, request: web.Request) -> web.StreamResponse:
        return _json({"status": "ok"}, 200)

    async def readyz(self, request: web.Request) -> web.StreamResponse:
        checks = {"producer_started": self.writer.started}
        checks["broker_reachable"] = checks["producer_started"] and await self.writer.reachable()
        ready = all(checks.values())
        document: dict[str, object] = {"ready": ready, "checks": checks}
        fatal = self.fatal()
        if fatal is not None:
            document["error"] = fatal
        return _json(document, 200 if ready else 503)

    async def metrics_page(self, request: web.Request) -> web.StreamResponse:
        # aiohttp refuses a charset in content_type=, so the header is set directly.
        return web.Response(
            body=self.metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )


@web.middleware
async def typed_routing_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Unknown paths and methods answer JSON with a typed ``error`` too (aiohttp's own
    answers are plain text), so a misconfigured client can read what went wrong."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        error = "not_found" if exc.status == 404 else "method_not_allowed"
        response = _json({"error": error, "message": exc.reason}, exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


def build_app(collector: Collector) -> web.Application:
    """The aiohttp application for ``collector``."""
    app = web.Application(middlewares=[typed_routing_errors])
    app.router.add_post(EVENTS_PATH, collector.post_events)
    app.router.add_route("OPTIONS", EVENTS_PATH, collector.preflight)
    if collector.prompts is not None:
        app.router.add_get(PROMPTS_PATH, collector.get_prompts)
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)
    app.router.add_get("/metrics", collector.metrics_page)
    return app


async def read_body(
    request: web.Request, max_bytes: int, *, timeout_s: float
) -> bytes | Refusal:
    """The request body, or the refusal as soon as it is known to be unusable.

    A declared ``Content-Length`` over the limit is refused before reading; otherwise the
    body is read in chunks and reading stops at the first byte over, so a hostile client
    cannot make the collector buffer more than ``max_bytes`` (chunked or compressed bodies
    included: the count is of the bytes the handler receives).  The whole body must arrive
    within ``timeout_s`` of the handler starting to read it, else ``body_timeout`` (408): a
    client that trickles its body (or stops sending) would otherwise hold a connection and
    its buffer for as long as it likes.  A body that ends early (the client hung up) or
    whose transfer or content encoding is broken is ``not_json``: what arrived cannot be a
    whole JSON document.
    """
    too_large = refusal("body_too_large", f"the body exceeds {max_bytes} bytes (split it)")
    if request.content_length is not None and request.content_length > max_bytes:
        return too_large
    content = request.content
    chunks: list[bytes] = []
    size = 0
    try:
        if content.is_eof():
            # The whole body came in with the headers (as a small batch usually does): it
            # is buffered already, so there is nothing to wait for and no deadline to arm.
            # aiohttp stops reading at its buffer's high-water mark, which bounds it.
            body = await content.read()
            return too_large if len(body) > max_bytes else body
        async with asyncio.timeout(timeout_s):
            async for chunk in content.iter_chunked(64 * 1024):
                size += len(chunk)
                if size > max_bytes:
                    return too_large
                chunks.append(chunk)
    except TimeoutError:
        return refusal("body_timeout", f"the body did not arrive within {timeout_s:g} s")
    except (ConnectionError, HttpProcessingError) as exc:
        return refusal("not_json", f"the body is incomplete ({type(exc).__name__})")
    return b"".join(chunks)


def error_response(refused: Refusal) -> web.Response:
    """The JSON answer of a refusal: ``{"error": <code>, "message": ...}``."""
    response = _json({"error": refused.error, "message": refused.message}, refused.status)
    if refused.retry_after_s is not None:
        response.headers["Retry-After"] = str(refused.retry_after_s)
    return response


def _json(document: object, status: int) -> web.Response:
    return web.Response(
        body=orjson.dumps(document), status=status, content_type="application/json"
    )

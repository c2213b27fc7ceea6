"""A Helicone-compatible server for tests and the demo: answers, stores, misbehaves like it.

DESIGN 2, 5 and 6 say what it must do.

Two parts with one job each: :class:`HeliconeStore`, a pure model of what Helicone ends up
*storing* (no I/O, time passed in), and :class:`Receiver`, the aiohttp adapter that answers
calls, records them, injects faults and runs the store's consumer on a timer.

Answering the write calls.  Checks run in Helicone's order::

    injected fault        latency, then a forced status or a connection reset
    authentication        no/unknown key -> 401 {"error", "trace"}; read-only key -> 403
    rate limit            over `rate_limit` calls per `rate_window_s` -> 429 + Retry-After;
                          every answer from here on carries RateLimit-Policy/-Limit/-Remaining/
                          -Reset (express-rate-limit `standardHeaders: true`, IETF draft 6)
    body validation       malformed JSON -> 400; wrong shape or extra field -> 422
                          {"message": "Validation Failed", "details": {...}}
    path id               request id not UUID v1-v5 -> 500 "Invalid requestId: ..."
                          a session id listed in `unknown_sessions` -> 500 "No request found"
    write                 score with a non-integer number -> 500 (as Helicone's insert fails)
                          request feedback / score -> 201, session feedback -> 200,
                          body {"data": null, "error": null}

Storing.  Each accepted request feedback or score call becomes a scores message
``{request_id, scores: {key: int}, created_at_ms}``: ``/feedback {"rating": true}`` is
``{"helicone-score-feedback": 1}``; ``/score`` keeps integer keys and stores a boolean ``k`` as
``k-hcone-bool`` 1/0.  A message is visible to the consumer ``ingestion_delay_s`` after the call
(Helicone: 10 minutes).  Every ``batch_interval_s`` the consumer takes the visible messages,
keeps only the latest per request, drops those of unknown requests (answered 2xx all the same)
and merges the rest into the stored scores; a kept message with ``helicone-score-feedback``
sets the feedback rating.  So ``/feedback`` then ``/score`` in one batch loses the rating, and
one ``/score`` that carries ``helicone-score-feedback`` stores both.  Session feedback is stored
at once per session id.  ``GET /v1/request/{id}`` reads a request back (own limit, 600 per 5 min
by default): ``{"data": {"request_id", "scores", "feedback_rating", "properties"}, "error":
null}``, or 500 ``{"data": null, "error": "Request not found"}`` for an unknown request.

Sources (Helicone/helicone on GitHub, read for this module):
``valhalla/jawn/src/managers/score/ScoreManager.ts`` (``addScores``/``mapScores``: one message
per call; ``procesScores``: the per-request dedupe with a strict ``createdAt <``, the
``-hcone-bool`` suffix, the feedback upsert; ``addBatchScores``: the 10-minute delay);
``valhalla/jawn/src/lib/stores/ScoreStore.ts`` (``putScoresIntoClickhouse``: new keys merged
over the stored scores, requests older than 30 days or never logged not found);
``valhalla/jawn/src/controllers/public/requestController.ts`` (routes, 201 for scores, every
error a 500 with a ``Result`` body ``{data, error}``); ``RequestManager.ts`` (feedback needs the
logged request); ``valhalla/jawn/src/middleware/ratelimitter.ts`` (express-rate-limit with
``standardHeaders: true``: header names and format from express-rate-limit's
``source/headers.ts`` ``setDraft6Headers``/``setRetryAfterHeader``).  The read-back shape
follows the ``HeliconeRequest`` result of ``GET /v1/request/{requestId}`` in Helicone's
published OpenAPI (docs.helicone.ai/rest/request/get-v1request); only the fields the stored
state determines are sent.  The status of its not-found answer (500) is inferred from the
controller pattern above, not read from that handler.

In-process use (tests)::

    async with Receiver(rate_limit=2) as receiver:
        client = HeliconeClient(key, base_url=receiver.url)
        receiver.fail_next(2, status=503, retry_after=1)
        ...
        await receiver.wait_for(3, path_prefix="/v1/request/")   # a signal, not a sleep
        await receiver.settle()                                  # consume what is queued now
        assert receiver.stored()[request_id] == StoredRequest({...}, feedback=True)

From another process (the demo, docker-compose) run :func:`serve` or
``python -m worker.devtools.receiver --port 8585`` and drive faults over HTTP:
``POST /_admin/faults`` with ``{"status": 429, "count": 3, "retry_after": "2"}``,
``{"reset": true}``, ``{"status": 503, "for_s": 10}`` or ``{"latency_s": 0.5}``;
``DELETE /_admin/faults`` clears them; ``GET /_admin/records`` lists what was received;
``GET /_admin/stored`` shows the stored state and counters, ``POST /_admin/settle`` consumes
everything queued first, ``DELETE /_admin/stored`` forgets it.
The admin routes are unauthenticated: bind the receiver to loopback or a private network only.
Helicone's dataset API is mounted from :mod:`worker.devtools.receiver_datasets`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from worker.clock import Clock, SystemClock
from worker.devtools.helicone_store import (
    BOOL_SUFFIX,
    FEEDBACK_KEY,
    BatchResult,
    HeliconeStore,
    KnownRequests,
    ScoresMessage,
    StoreCounters,
    StoredRequest,
    feedback_message,
    score_message,
)
from worker.devtools.receiver_datasets import DatasetStore, mount_datasets, with_result
from worker.devtools.receiver_properties import PropertyStore, mount_properties
from worker.events import is_helicone_request_id

__all__ = [
    "BOOL_SUFFIX",
    "FEEDBACK_KEY",
    "HELICONE_KEY_PREFIX",
    "BatchResult",
    "Fault",
    "FixedWindowLimiter",
    "HeliconeStore",
    "RateDecision",
    "Received",
    "Receiver",
    "ScoresMessage",
    "StoreCounters",
    "StoredRequest",
    "feedback_message",
    "main",
    "score_message",
    "serve",
]

_log = logging.getLogger(__name__)

#: With no explicit key list, any key with this prefix is accepted (EU keys included).
HELICONE_KEY_PREFIX: Final = "sk-helicone-"

_OK: Final = {"data": None, "error": None}
_API_PREFIX: Final = "/v1/"


@dataclass(frozen=True, slots=True)
class RateDecision:
    """One call through a :class:`FixedWindowLimiter` and the headers to answer it with."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    window_s: int

    def headers(self) -> dict[str, str]:
        """express-rate-limit's ``standardHeaders: true`` (IETF draft 6), as Helicone sends.

        ``RateLimit-Reset`` is in seconds from now; a refused call also gets ``Retry-After``.
        """
        headers = {
            "RateLimit-Policy": f"{self.limit};w={self.window_s}",
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
        }
        if self.reset_s:
            headers["RateLimit-Reset"] = str(self.reset_s)
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


class FixedWindowLimiter:
    """``limit`` calls per fixed window of ``window_ms``, the window starting at its first call.

    Every call counts, refused ones too (as express-rate-limit increments before it checks),
    which does not change who is refused within a fixed window.
    """

    def __init__(self, limit: int, window_ms: int) -> None:
        if limit < 0:
            raise ValueError("rate limit must be >= 0")
        if window_ms <= 0:
            raise ValueError("rate window must be > 0")
        self.limit = limit
        self.window_ms = window_ms
        self._start_ms: int | None = None
        self._used = 0

    def hit(self, now_ms: int) -> RateDecision:
        if self._start_ms is None or now_ms >= self._start_ms + self.window_ms:
            self._start_ms, self._used = now_ms, 0
        self._used += 1
        left_ms = self._start_ms + self.window_ms - now_ms
        return RateDecision(
            allowed=self._used <= self.limit,
            limit=self.limit,
            remaining=max(self.limit - self._used, 0),
            reset_s=max(1, math.ceil(left_ms / 1000)),
            window_s=math.ceil(self.window_ms / 1000),
        )


# --------------------------------------------------------------------------- the HTTP server


@dataclass(frozen=True, slots=True)
class Received:
    """One write call and how it was answered (``status=None``: connection reset).

    ``latency_s`` is the injected latency the receiver waited before answering, as it
    stood when the call came in (0.0 when none was set); a test reads what was applied
    here rather than timing the call.  The ``Authorization`` header is deliberately not
    kept.
    """

    method: str
    path: str
    body: Any
    at_ms: int
    status: int | None
    latency_s: float = 0.0

    @property
    def accepted(self) -> bool:
        return self.status is not None and 200 <= self.status <= 299


@dataclass(slots=True)
class Fault:
    """A misbehaviour for matching calls: a forced answer, or a reset when ``reset`` is set.

    Active while ``remaining`` calls are left, or, when ``remaining`` is None, until
    ``until_ms`` on the receiver's clock.
    """

    status: int = 500
    reset: bool = False
    retry_after: str | None = None
    body: Any = None
    remaining: int | None = 1
    until_ms: int | None = None
    path_prefix: str = ""

    def applies(self, path: str, now_ms: int) -> bool:
        if not path.startswith(self.path_prefix):
            return False
        if self.remaining is not None:
            return self.remaining > 0
        return self.until_ms is not None and now_ms < self.until_ms

    def expired(self, now_ms: int) -> bool:
        if self.remaining is not None:
            return self.remaining <= 0
        return self.until_ms is None or now_ms >= self.until_ms


class Receiver:
    """The fake Helicone: start with ``async with`` (or :meth:`start`/:meth:`stop`).

    ``api_keys``: the keys accepted for writes (None: any key starting ``sk-helicone-``).
    ``read_only_keys``: keys that authenticate but may not write (403).
    ``unknown_sessions``: session ids answered with Helicone's 500 "No request found".
    ``rate_limit``: write calls allowed per fixed window of ``rate_window_s`` (None: unlimited).
    ``read_rate_limit``: ``GET /v1/request/{id}`` calls per ``read_rate_window_s``, counted
    apart from writes (Helicone: 600 per 5 minutes; None: unlimited).
    ``batch_interval_s``: how often the consumer of scores messages runs (a real loop timer).
    ``ingestion_delay_s``: how long after the call a message becomes visible to the consumer
    (Helicone: 10 minutes; 0 here by default, so stored state follows within a batch interval).
    ``known_requests``: the request ids Helicone has logged, as a collection or a predicate
    (None: every valid UUID); messages for others are answered 2xx and dropped at consumption.
    It is consulted when a batch runs, so adding to a live set later makes a request known.
    ``clock``: drives the rate windows, fault time spans, record times and message times.

    ``store`` is the :class:`HeliconeStore` behind it; :meth:`stored`, :meth:`settle`,
    :meth:`wait_stored` and :attr:`counters` are the usual way in.

    ``history`` and the fault injection cover the write calls only: reading back is how tests
    look, so it neither consumes faults nor shows up in ``records``/``count``/``wait_for``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_keys: Collection[str] | None = None,
        read_only_keys: Collection[str] = (),
        unknown_sessions: Collection[str] = (),
        rate_limit: int | None = None,
        rate_window_s: float = 300.0,
        clock: Clock | None = None,
        read_rate_limit: int | None = 600,
        read_rate_window_s: float = 300.0,
        batch_interval_s: float = 0.05,
        ingestion_delay_s: float = 0.0,
        known_requests: KnownRequests = None,
    ) -> None:
        if rate_limit is not None and rate_limit < 0:
            raise ValueError("rate_limit must be >= 0")
        if not rate_window_s > 0:
            raise ValueError("rate_window_s must be > 0")
        if not batch_interval_s > 0:
            raise ValueError("batch_interval_s must be > 0")
        if ingestion_delay_s < 0:
            raise ValueError("ingestion_delay_s must be >= 0")
        if read_rate_limit is not None and read_rate_limit < 0:
            raise ValueError("read_rate_limit must be >= 0")
        if not read_rate_window_s > 0:
            raise ValueError("read_rate_window_s must be > 0")
        self._host = host
        self._port = port
        self._api_keys = None if api_keys is None else frozenset(api_keys)
        self._read_only_keys = frozenset(read_only_keys)
        self._unknown_sessions = frozenset(unknown_sessions)
        self._write_limiter = (
            None
            if rate_limit is None
            else FixedWindowLimiter(rate_limit, math.ceil(rate_window_s * 1000))
        )
        self._read_limiter = (
            None
            if read_rate_limit is None
            else FixedWindowLimiter(read_rate_limit, math.ceil(read_rate_window_s * 1000))
        )
        self._batch_interval_s = batch_interval_s
        self.store = HeliconeStore(
            ingestion_delay_ms=math.ceil(ingestion_delay_s * 1000), known_requests=known_requests
        )
        #: Helicone's datasets (:mod:`worker.devtools.receiver_datasets`).
        self.datasets = DatasetStore(is_known=self.store.is_known)
        self._consumer: asyncio.Task[None] | None = None
        self._clock: Clock = clock or SystemClock()
        self.properties = PropertyStore()  # PUT /v1/request/{id}/property (receiver_properties)
        self.history: list[Received] = []
        self._faults: list[Fault] = []
        self._latency_s = 0.0
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return f"Receiver(url={self._url!r}, received={len(self.history)})"

    # ---- lifecycle

    @property
    def url(self) -> str:
        """The base URL to give the client, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("the receiver is not running; use `async with Receiver()`")
        return self._url

    async def start(self) -> str:
        """Listen (port 0 picks a free port) and return the base URL."""
        app = web.Application()
        app.router.add_post("/v1/request/{request_id}/feedback", self._request_feedback)
        app.router.add_post("/v1/request/{request_id}/score", self._request_score)
        app.router.add_post("/v1/session/{session_id}/feedback", self._session_feedback)
        app.router.add_get("/v1/request/{request_id}", self._read_request)
        mount_properties(app, self)
        app.router.add_post("/_admin/faults", self._admin_add_fault)
        app.router.add_delete("/_admin/faults", self._admin_clear_faults)
        app.router.add_get("/_admin/records", self._admin_records)
        app.router.add_delete("/_admin/records", self._admin_clear_records)
        app.router.add_get("/_admin/stored", self._admin_stored)
        app.router.add_post("/_admin/settle", self._admin_settle)
        app.router.add_delete("/_admin/stored", self._admin_clear_stored)
        mount_datasets(app, self)
        # A short shutdown timeout: a call parked in injected latency must not hold up stop().
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._consumer = asyncio.create_task(self._consume_forever(), name="receiver-consumer")
        host, port = runner.addresses[0][:2]
        host = f"[{host}]" if ":" in host else host
        self._url = f"http://{host}:{port}"
        return self._url

    async def stop(self) -> None:
        """Stop listening and stop the consumer; what is stored or still queued is kept, so
        :meth:`start` again carries on (like Helicone's queue across an API outage)."""
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._consumer
            self._consumer = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            self._url = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # ---- what was received

    @property
    def records(self) -> list[Received]:
        """The calls that were accepted (2xx), in arrival order."""
        return [r for r in self.history if r.accepted]

    def count(self, path_prefix: str = "") -> int:
        """How many accepted calls have a path starting with ``path_prefix``."""
        return sum(1 for r in self.history if r.accepted and r.path.startswith(path_prefix))

    def attempts(self, path_prefix: str = "") -> int:
        """How many calls arrived at all (accepted, rejected, faulted or reset)."""
        return sum(1 for r in self.history if r.path.startswith(path_prefix))

    async def wait_for(
        self, n: int, *, path_prefix: str = "", timeout_s: float = 5.0
    ) -> list[Received]:
        """Wait until ``n`` accepted calls match ``path_prefix``; return those records.

        Raises ``TimeoutError`` naming how many arrived, so a failing test says what it saw.
        """
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.count(path_prefix) >= n), timeout_s
                )
            except TimeoutError:
                raise TimeoutError(
                    f"waited {timeout_s} s for {n} accepted calls under {path_prefix!r}; "
                    f"got {self.count(path_prefix)} ({self.attempts(path_prefix)} arrived)"
                ) from None
        return [r for r in self.records if r.path.startswith(path_prefix)]

    def clear_records(self) -> None:
        self.history.clear()

    # ---- what Helicone stored

    def stored(self) -> dict[str, StoredRequest]:
        """Request id -> what Helicone holds for it after the batches consumed so far."""
        return self.store.stored()

    def stored_sessions(self) -> dict[str, bool]:
        """Session id -> the session rating Helicone holds."""
        return self.store.sessions()

    @property
    def counters(self) -> StoreCounters:
        """Messages queued / kept / superseded in a batch / dropped unknown, batches, pending."""
        return self.store.counters

    async def settle(self) -> BatchResult:
        """Consume every message queued so far as one batch, now, whatever the ingestion delay.

        One batch means Helicone's dedupe applies across all of them: call it where a test
        would otherwise wait for the delay, not between calls it expects to land apart.
        """
        result = self.store.consume(None)
        await self._notify()
        return result

    async def wait_stored(
        self,
        request_id: str,
        check: Callable[[StoredRequest], bool] = lambda _: True,
        *,
        timeout_s: float = 5.0,
    ) -> StoredRequest:
        """Wait until the stored state of ``request_id`` passes ``check``; return it.

        Raises ``TimeoutError`` with the state it saw.
        """

        def ready() -> bool:
            stored = self.store.request(request_id)
            return stored is not None and check(stored)

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(ready), timeout_s)
            except TimeoutError:
                raise TimeoutError(
                    f"waited {timeout_s} s for the stored state of {request_id}; it is "
                    f"{self.store.request(request_id)!r} ({self.counters})"
                ) from None
        stored = self.store.request(request_id)
        assert stored is not None
        return stored

    def clear_stored(self) -> None:
        """Forget stored state, queued messages and counters (``history`` is kept)."""
        self.store.clear()
        self.properties.clear()

    async def _consume_forever(self) -> None:
        """The consumer: one batch every ``batch_interval_s`` over the messages visible by the
        receiver's clock.  A failing batch is logged and the loop goes on."""
        while True:
            await asyncio.sleep(self._batch_interval_s)
            try:
                result = self.store.consume(self._clock.now_ms())
            except Exception:  # pragma: no cover - the store is pure; this is a safety net
                _log.exception("the receiver's scores consumer failed a batch")
                continue
            if result.consumed:
                await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    # ---- fault injection

    def fail_next(
        self,
        count: int = 1,
        *,
        status: int = 500,
        retry_after: str | float | None = None,
        body: Any = None,
        path_prefix: str = "",
    ) -> None:
        """Answer the next ``count`` matching calls with ``status`` (and ``Retry-After``)."""
        self._faults.append(
            Fault(
                status=status,
                retry_after=_header_value(retry_after),
                body=body,
                remaining=count,
                path_prefix=path_prefix,
            )
        )

    def fail_for(
        self,
        seconds: float,
        *,
        status: int = 503,
        retry_after: str | float | None = None,
        body: Any = None,
        path_prefix: str = "",
    ) -> None:
        """Answer every matching call with ``status`` for the next ``seconds``."""
        self._faults.append(
            Fault(
                status=status,
                retry_after=_header_value(retry_after),
                body=body,
                remaining=None,
                until_ms=self._clock.now_ms() + math.ceil(seconds * 1000),
                path_prefix=path_prefix,
            )
        )

    def reset_next(self, count: int = 1, *, path_prefix: str = "") -> None:
        """Close the connection without answering on the next ``count`` matching calls."""
        self._faults.append(Fault(reset=True, remaining=count, path_prefix=path_prefix))

    def set_latency(self, seconds: float) -> None:
        """Delay every API answer by ``seconds`` (0 turns it off)."""
        if seconds < 0:
            raise ValueError("latency must be >= 0")
        self._latency_s = seconds

    def clear_faults(self) -> None:
        """Remove every fault and the latency."""
        self._faults.clear()
        self._latency_s = 0.0

    # ---- API routes

    async def _request_feedback(self, request: web.Request) -> web.StreamResponse:
        def accept(body: dict[str, Any]) -> None:
            message = feedback_message(
                request.match_info["request_id"], body["rating"], self._clock.now_ms()
            )
            self.store.enqueue(message)

        return await self._handle(request, _validate_rating, accept, success=201)

    async def _request_score(self, request: web.Request) -> web.StreamResponse:
        def accept(body: dict[str, Any]) -> None:
            message = score_message(
                request.match_info["request_id"], body["scores"], self._clock.now_ms()
            )
            self.store.enqueue(message)

        return await self._handle(request, _validate_scores, accept, success=201)

    async def _session_feedback(self, request: web.Request) -> web.StreamResponse:
        def accept(body: dict[str, Any]) -> None:
            self.store.set_session_feedback(request.match_info["session_id"], body["rating"])

        return await self._handle(request, _validate_rating, accept, success=200)

    async def answer_with(
        self,
        request: web.Request,
        validate: Callable[[Any], dict[str, Any]],
        accept: Callable[[dict[str, Any]], tuple[int, Any]],
    ) -> web.StreamResponse:
        """Answer a route mounted from outside (datasets) as the feedback calls are answered;
        ``accept`` gets the validated body and returns the (status, body) Helicone would send."""
        return await self._handle(request, validate, accept, success=200)

    def now_ms(self) -> int:
        return self._clock.now_ms()

    async def _handle(
        self,
        request: web.Request,
        validate: Callable[[Any], dict[str, Any]],
        accept: Callable[[dict[str, Any]], tuple[int, Any] | None],
        *,
        success: int,
    ) -> web.StreamResponse:
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
            malformed = True
        else:
            malformed = False
        latency_s = self._latency_s
        if latency_s:
            await asyncio.sleep(latency_s)
        response, accepted = self._answer(request, body, malformed, validate, success)
        if accepted:  # Helicone's own 2xx (not an injected one): it queues what it was sent
            result = accept(body)
            if result is not None and response is not None:  # a route with its own answer
                response = with_result(response, result)
        if response is None:  # an injected reset: hang up without a word
            if request.transport is not None:
                request.transport.close()
            response = web.Response(status=200)
            status: int | None = None
        else:
            status = response.status
        self.history.append(
            Received(request.method, request.path, body, self._clock.now_ms(), status, latency_s)
        )
        await self._notify()
        return response

    #: For routes mounted from other modules (:mod:`worker.devtools.receiver_properties`).
    handle_write = _handle

    def _answer(
        self,
        request: web.Request,
        body: Any,
        malformed: bool,
        validate: Callable[[Any], dict[str, Any]],
        success: int,
    ) -> tuple[web.Response | None, bool]:
        """The answer Helicone would give (or a fault's; None for a connection reset), and
        whether Helicone accepted the call."""
        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.reset:
                return None, False
            headers = {"Retry-After": fault.retry_after} if fault.retry_after else None
            payload = fault.body if fault.body is not None else {"error": "injected fault"}
            return web.json_response(payload, status=fault.status, headers=headers), False
        denied = self._authenticate(request.headers.get("Authorization"), write=True)
        if denied is not None:
            return denied, False
        # Helicone's limiter runs after auth (it counts per organisation) and before the route,
        # so every answer from here on carries the RateLimit-* headers.
        limit = self._hit(self._write_limiter)
        headers = limit.headers() if limit is not None else {}
        if limit is not None and not limit.allowed:
            return _too_many(headers), False
        problem = self._problem(request, body, malformed, validate)
        if problem is not None:
            status, payload = problem
            return web.json_response(payload, status=status, headers=headers), False
        return web.json_response(_OK, status=success, headers=headers), True

    def _problem(
        self,
        request: web.Request,
        body: Any,
        malformed: bool,
        validate: Callable[[Any], dict[str, Any]],
    ) -> tuple[int, Any] | None:
        """Why Helicone would refuse this authorised call (status, body), or None."""
        if malformed:
            return 400, {"message": "Malformed JSON body"}
        details = validate(body)
        if details:
            return 422, {"message": "Validation Failed", "details": details}
        request_id = request.match_info.get("request_id")
        if request_id is not None and not is_helicone_request_id(request_id):
            return 500, {"data": None, "error": "Invalid requestId: must be a valid UUID"}
        if request.match_info.get("session_id") in self._unknown_sessions:
            return 500, {"data": None, "error": "No request found"}
        if request.method == "PUT" and not self.store.is_known(request_id or ""):
            return 500, {"data": None, "error": "Request not found"}  # a property, not logged
        scores = body.get("scores") if isinstance(body, dict) else None
        if isinstance(scores, dict) and any(
            isinstance(v, float) and not v.is_integer() for v in scores.values()
        ):
            return 500, {"data": None, "error": "invalid input syntax for type integer"}
        return None

    async def _read_request(self, request: web.Request) -> web.Response:
        """``GET /v1/request/{requestId}``: the request as Helicone returns it (``Result``).

        Any key may read (read-only keys too); reads have their own limit; unknown requests get
        Helicone's error result.  No faults, no latency, not recorded in ``history``.
        """
        denied = self._authenticate(request.headers.get("Authorization"), write=False)
        if denied is not None:
            return denied
        limit = self._hit(self._read_limiter)
        headers = limit.headers() if limit is not None else {}
        if limit is not None and not limit.allowed:
            return _too_many(headers)
        request_id = request.match_info["request_id"]
        if not self.store.is_known(request_id):
            return web.json_response(
                {"data": None, "error": "Request not found"}, status=500, headers=headers
            )
        stored = self.store.request(request_id) or StoredRequest({})
        return web.json_response(
            {"data": _helicone_request(request_id, stored, self.properties.of(request_id)),
             "error": None},
            status=200,
            headers=headers,
        )

    def _hit(self, limiter: FixedWindowLimiter | None) -> RateDecision | None:
        return None if limiter is None else limiter.hit(self._clock.now_ms())

    def _take_fault(self, path: str) -> Fault | None:
        now_ms = self._clock.now_ms()
        self._faults = [f for f in self._faults if not f.expired(now_ms)]
        for fault in self._faults:
            if fault.applies(path, now_ms):
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _authenticate(self, authorization: str | None, *, write: bool) -> web.Response | None:
        scheme, _, key = (authorization or "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return _auth_error(401, "Missing or malformed Authorization header")
        if key in self._read_only_keys:
            return _auth_error(403, "This API key does not have write access") if write else None
        known = (
            key in self._api_keys
            if self._api_keys is not None
            else (key.startswith(HELICONE_KEY_PREFIX))
        )
        return None if known else _auth_error(401, "Invalid API key")

    # ---- admin routes (for a receiver in another process)

    async def _admin_add_fault(self, request: web.Request) -> web.Response:
        try:
            spec = await request.json()
            if not isinstance(spec, dict):
                raise ValueError("expected a JSON object")
            self._add_fault_from(spec)
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(
            {"faults": len(self._faults), "latency_s": self._latency_s}, status=201
        )

    def _add_fault_from(self, spec: Mapping[str, Any]) -> None:
        known = {
            "status",
            "count",
            "for_s",
            "retry_after",
            "reset",
            "latency_s",
            "body",
            "path_prefix",
        }
        if unknown := set(spec) - known:
            raise ValueError(f"unknown fields {sorted(unknown)}; expected some of {sorted(known)}")
        if "latency_s" in spec:
            self.set_latency(float(spec["latency_s"]))
        if not {"status", "reset", "count", "for_s"} & set(spec):
            return  # latency only
        prefix = str(spec.get("path_prefix", ""))
        if spec.get("reset"):
            self.reset_next(int(spec.get("count", 1)), path_prefix=prefix)
            return
        status = int(spec.get("status", 500))
        if not 100 <= status <= 599:
            raise ValueError("status must be 100-599")
        options: dict[str, Any] = {
            "status": status,
            "retry_after": spec.get("retry_after"),
            "body": spec.get("body"),
            "path_prefix": prefix,
        }
        if "for_s" in spec:
            self.fail_for(float(spec["for_s"]), **options)
        else:
            self.fail_next(int(spec.get("count", 1)), **options)

    async def _admin_clear_faults(self, request: web.Request) -> web.Response:
        self.clear_faults()
        return web.json_response({"faults": 0, "latency_s": 0.0})

    async def _admin_records(self, request: web.Request) -> web.Response:
        return web.json_response({"records": [asdict(r) for r in self.history]})

    async def _admin_clear_records(self, request: web.Request) -> web.Response:
        self.clear_records()
        return web.json_response({"records": []})

    async def _admin_stored(self, request: web.Request) -> web.Response:
        return web.json_response(self._stored_json())

    async def _admin_settle(self, request: web.Request) -> web.Response:
        batch = await self.settle()
        return web.json_response({"batch": asdict(batch), **self._stored_json()})

    async def _admin_clear_stored(self, request: web.Request) -> web.Response:
        self.clear_stored()
        return web.json_response(self._stored_json())

    def _stored_json(self) -> dict[str, Any]:
        """``{"requests": {id: {"scores", "feedback"}}, "sessions": {id: bool}, "counters"}``."""
        return {
            "requests": {rid: asdict(s) for rid, s in self.stored().items()},
            "sessions": self.stored_sessions(),
            "properties": self.properties.all(),
            "counters": asdict(self.counters),
        }


# --------------------------------------------------------------------------- validation


def _validate_rating(body: Any) -> dict[str, Any]:
    """Problems with a ``{"rating": bool}`` body, in tsoa's ``details`` shape (empty: fine)."""
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details: dict[str, Any] = {}
    if not isinstance(body.get("rating"), bool):
        details["requestBody.rating"] = {
            "message": "'rating' is required" if "rating" not in body else "invalid boolean value",
            "value": body.get("rating"),
        }
    details.update(_extra_fields(body, {"rating"}))
    return details


def _validate_scores(body: Any) -> dict[str, Any]:
    """Problems with a ``{"scores": {name: number | bool}}`` body (empty: fine).

    Non-integer numbers pass validation, as at Helicone, and fail later with a 500.
    """
    if not isinstance(body, dict):
        return {"requestBody": {"message": "invalid object", "value": body}}
    details: dict[str, Any] = dict(_extra_fields(body, {"scores"}))
    scores = body.get("scores")
    if not isinstance(scores, dict):
        details["requestBody.scores"] = {"message": "invalid object", "value": scores}
        return details
    for name, value in scores.items():
        if not isinstance(value, int | float):  # bool is an int here, and allowed
            details[f"requestBody.scores.{name}"] = {
                "message": "invalid number or boolean value",
                "value": value,
            }
    return details


def _extra_fields(body: Mapping[str, Any], allowed: set[str]) -> dict[str, Any]:
    extra = sorted(set(body) - allowed)
    if not extra:
        return {}
    return {
        "requestBody": {
            "message": f'"{", ".join(extra)}" is an excess property and therefore is not allowed'
        }
    }


def _helicone_request(
    request_id: str, stored: StoredRequest, properties: dict[str, str]
) -> dict[str, Any]:
    """The fields of Helicone's ``HeliconeRequest`` that the stored state determines.

    Helicone returns many more (bodies, model, tokens, cost...); a fake has none of them, and
    leaving them out beats inventing them.
    """
    return {
        "request_id": request_id,
        "scores": dict(stored.scores),
        "feedback_rating": stored.feedback,
        "properties": properties,
    }


def _too_many(headers: Mapping[str, str]) -> web.Response:
    return web.json_response(
        {"error": "Too many requests, please try again later."}, status=429, headers=headers
    )


def _auth_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "trace": "auth.middleware"}, status=status)


def _header_value(retry_after: str | float | None) -> str | None:
    if retry_after is None:
        return None
    if isinstance(retry_after, float | int):
        return str(math.ceil(retry_after))
    return retry_after


# --------------------------------------------------------------------------- running it alone


async def serve(
    host: str = "127.0.0.1",
    port: int = 8585,
    *,
    api_keys: Collection[str] | None = None,
    read_only_keys: Collection[str] = (),
    unknown_sessions: Collection[str] = (),
    rate_limit: int | None = None,
    rate_window_s: float = 300.0,
    on_ready: Callable[[Receiver], None] | None = None,
    read_rate_limit: int | None = 600,
    read_rate_window_s: float = 300.0,
    batch_interval_s: float = 0.05,
    ingestion_delay_s: float = 0.0,
    known_requests: KnownRequests = None,
) -> None:
    """Run a receiver until cancelled; ``on_ready`` gets it once it listens (default: print)."""
    async with Receiver(
        host=host,
        port=port,
        api_keys=api_keys,
        read_only_keys=read_only_keys,
        unknown_sessions=unknown_sessions,
        rate_limit=rate_limit,
        rate_window_s=rate_window_s,
        read_rate_limit=read_rate_limit,
        read_rate_window_s=read_rate_window_s,
        batch_interval_s=batch_interval_s,
        ingestion_delay_s=ingestion_delay_s,
        known_requests=known_requests,
    ) as receiver:
        if on_ready is not None:
            on_ready(receiver)
        else:
            print(f"Helicone-compatible receiver listening on {receiver.url}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    """``python -m worker.devtools.receiver``: the receiver as a standalone process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8585, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accepted key (repeatable); default: any sk-helicone-... key",
    )
    parser.add_argument("--read-only-key", action="append", default=[], dest="read_only_keys")
    parser.add_argument("--unknown-session", action="append", default=[], dest="unknown_sessions")
    parser.add_argument("--rate-limit", type=int, default=None, help="write calls per window")
    parser.add_argument("--rate-window-s", type=float, default=300.0)
    parser.add_argument(
        "--read-rate-limit",
        type=_optional_int,
        default=600,
        help="GET /v1/request/{id} calls per read window (Helicone: 600); 'none': unlimited",
    )
    parser.add_argument("--read-rate-window-s", type=float, default=300.0)
    parser.add_argument(
        "--batch-interval-s", type=float, default=0.05, help="how often scores are consumed"
    )
    parser.add_argument(
        "--ingestion-delay-s",
        type=float,
        default=0.0,
        help="delay before a call's scores can be consumed (Helicone: 600)",
    )
    parser.add_argument(
        "--known-request",
        action="append",
        dest="known_requests",
        help="a request id Helicone has logged (repeatable); default: every valid UUID",
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it is meant to stop
        asyncio.run(serve(**vars(args)))


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


if __name__ == "__main__":
    main()

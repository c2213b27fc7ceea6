"""The fake Helicone's HTTP adapter: :class:`Receiver` answers, records and stores calls.

It owns the I/O: the aiohttp app and its routes, the call history and the waits on it, and
the timer that runs the store's consumer.  What an answer is comes from
:mod:`~worker.devtools.receiver_answers` (validation, auth) and
:mod:`~worker.devtools.receiver_limits` (rates), what is stored from
:mod:`~worker.devtools.helicone_store`, misbehaviour from :mod:`~worker.devtools.receiver_faults`.
The overview, and the order in which an answer's checks run, is in :mod:`worker.devtools.receiver`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from worker.clock import Clock, SystemClock
from worker.devtools.helicone_store import (
    BatchResult,
    HeliconeStore,
    KnownRequests,
    StoreCounters,
    StoredRequest,
    feedback_message,
    score_message,
)
from worker.devtools.receiver_admin import mount_admin
from worker.devtools.receiver_answers import (
    Keys,
    authenticate,
    helicone_request,
    refusal,
    too_many,
    validate_rating,
    validate_scores,
)
from worker.devtools.receiver_datasets import DatasetStore, mount_datasets, with_result
from worker.devtools.receiver_faults import Fault, FaultInjection
from worker.devtools.receiver_limits import FixedWindowLimiter, RateDecision
from worker.devtools.receiver_properties import PropertyStore, mount_properties

__all__ = ["Received", "Receiver"]

_log = logging.getLogger(__name__)

_OK: Final = {"data": None, "error": None}


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


class Receiver(FaultInjection):
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
        self._keys = Keys(
            None if api_keys is None else frozenset(api_keys), frozenset(read_only_keys)
        )
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
        # any character but "/" (aiohttp's default, [^{}/]+, would 404 an id with a brace,
        # which Helicone's router takes)
        app.router.add_post("/v1/session/{session_id:[^/]+}/feedback", self._session_feedback)
        app.router.add_get("/v1/request/{request_id}", self._read_request)
        mount_properties(app, self)
        mount_admin(app, self)
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

    # ---- API routes

    async def _request_feedback(self, request: web.Request) -> web.StreamResponse:
        def accept(body: dict[str, Any]) -> None:
            message = feedback_message(
                request.match_info["request_id"], body["rating"], self._clock.now_ms()
            )
            self.store.enqueue(message)

        return await self._handle(request, validate_rating, accept, success=201)

    async def _request_score(self, request: web.Request) -> web.StreamResponse:
        def accept(body: dict[str, Any]) -> None:
            message = score_message(
                request.match_info["request_id"], body["scores"], self._clock.now_ms()
            )
            self.store.enqueue(message)

        return await self._handle(request, validate_scores, accept, success=201)

    async def _session_feedback(self, request: web.Request) -> web.StreamResponse:
        def accept(body: dict[str, Any]) -> None:
            self.store.set_session_feedback(request.match_info["session_id"], body["rating"])

        return await self._handle(request, validate_rating, accept, success=200)

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
        denied = authenticate(
            request.headers.get("Authorization"), self._keys, write=True
        )
        if denied is not None:
            return denied, False
        # Helicone's limiter runs after auth (it counts per organisation) and before the route,
        # so every answer from here on carries the RateLimit-* headers.
        limit = self._hit(self._write_limiter)
        headers = limit.headers() if limit is not None else {}
        if limit is not None and not limit.allowed:
            return too_many(headers), False
        problem = refusal(
            request, body, malformed, validate,
            unknown_sessions=self._unknown_sessions, is_known=self.store.is_known,
        )
        if problem is not None:
            status, payload = problem
            return web.json_response(payload, status=status, headers=headers), False
        return web.json_response(_OK, status=success, headers=headers), True

    async def _read_request(self, request: web.Request) -> web.Response:
        """``GET /v1/request/{requestId}``: the request as Helicone returns it (``Result``).

        Any key may read (read-only keys too); reads have their own limit; unknown requests get
        Helicone's error result.  No faults, no latency, not recorded in ``history``.
        """
        denied = authenticate(request.headers.get("Authorization"), self._keys, write=False)
        if denied is not None:
            return denied
        limit = self._hit(self._read_limiter)
        headers = limit.headers() if limit is not None else {}
        if limit is not None and not limit.allowed:
            return too_many(headers)
        request_id = request.match_info["request_id"]
        if not self.store.is_known(request_id):
            return web.json_response(
                {"data": None, "error": "Request not found"}, status=500, headers=headers
            )
        stored = self.store.request(request_id) or StoredRequest({})
        return web.json_response(
            {"data": helicone_request(request_id, stored, self.properties.of(request_id)),
             "error": None},
            status=200,
            headers=headers,
        )

    def _hit(self, limiter: FixedWindowLimiter | None) -> RateDecision | None:
        return None if limiter is None else limiter.hit(self._clock.now_ms())

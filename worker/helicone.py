"""The Helicone REST client: the only module that imports httpx (STYLE 4.4, 4.7).

Map of the module::

    US_BASE_URL, EU_BASE_URL      Helicone's two hosts (DESIGN 6)
    DEFAULT_TIMEOUT/LIMITS        used when the caller passes none
    classify_response(...)        what an HTTP answer means: None (success) or a DeliveryError
    classify_exception(...)       what an httpx exception means, as a DeliveryError
    parse_retry_after(...)        Retry-After as seconds (re-exported from worker.http_headers)
    HeliconeClient                three POSTs and a PUT, each one call: success record or
                                  DeliveryError

Status to outcome (:func:`classify_response`; :mod:`worker.delivery` reacts to the class only)::

    2xx                    success (201 today, 200 from older deployments; DESIGN 6)
    401, 403               AuthRejected        wrong or read-only key: pause and probe
    400, 404, 422          PermanentDelivery   Helicone rejected this body or path
    other 4xx              PermanentDelivery   a client error does not heal by waiting
    408, 425, 429, 5xx     RetryableDelivery   with .retry_after_s from Retry-After
    1xx, 3xx               RetryableDelivery   see below
    anything else          RetryableDelivery   not HTTP as we know it; treat like a bad gateway

Why 1xx and 3xx are retryable: httpx consumes interim 1xx answers itself, so a final 1xx is a
broken peer or proxy, the same class of trouble as a protocol error.  Redirects are never
followed (``follow_redirects=False``): a 301/302/303 would turn the POST into a GET, and httpx
drops ``Authorization`` on a cross-origin hop.  A 3xx from Helicone therefore means a
misconfigured base URL or an intercepting proxy.  That is a fault of the deployment, not of
the decision, so dead-lettering would empty the outbox into the DLQ over a config fix.
Retrying keeps the decisions, the breaker stops the storm, and the failure metric shows it.

httpx exceptions (:func:`classify_exception`): timeouts, network errors, protocol errors, proxy
errors, decoding errors and TooManyRedirects are retryable; ``InvalidURL`` and
``UnsupportedProtocol`` mean this request can never be sent as built, so they are permanent;
``HTTPStatusError`` (only raised if an injected client's hook calls ``raise_for_status``) is
classified by its response.  ``StreamError`` and ``CookieConflict`` are programmer mistakes
(httpx keeps them outside ``HTTPError`` for that reason); they propagate unchanged, loudly,
rather than being turned into an outcome that would dead-letter or retry decisions over a bug.

The API key is a :class:`~pydantic.SecretStr`, read only where the ``Authorization`` header is
built.  It is not in the client's repr, log lines or any error (an answer that echoes it has
it replaced before the body excerpt is kept).
"""

from __future__ import annotations

import codecs
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Self
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from worker.clock import Clock, SystemClock
from worker.delivery import DeliveryAttempted, DeliveryOutcome, Endpoint, outcome_of
from worker.errors import (
    AuthRejected,
    ConfigError,
    DeliveryError,
    PermanentDelivery,
    RequestNotLogged,
    RetryableDelivery,
)
from worker.events import is_helicone_request_id
from worker.http_headers import header as _header
from worker.http_headers import parse_rate_limit, parse_retry_after

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = [
    "BODY_EXCERPT_BYTES",
    "DEFAULT_LIMITS",
    "DEFAULT_TIMEOUT",
    "EU_BASE_URL",
    "US_BASE_URL",
    "HeliconeClient",
    "classify_exception",
    "classify_response",
    "parse_rate_limit",
    "parse_retry_after",
]

log = logging.getLogger(__name__)

US_BASE_URL: Final = "https://api.helicone.ai"
EU_BASE_URL: Final = "https://eu.api.helicone.ai"

#: How much of an error answer is kept for logs and the dead-letter record (DESIGN 5: 2 KiB).
BODY_EXCERPT_BYTES: Final = 2048

#: A slow Helicone must not hold a delivery slot for long; connecting should be quick.
DEFAULT_TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
#: Matches the default delivery concurrency (32 in flight), all of them kept alive.
DEFAULT_LIMITS: Final = httpx.Limits(
    max_connections=32, max_keepalive_connections=32, keepalive_expiry=5.0
)

_MAX_SESSION_ID_CHARS: Final = 128
#: Longest property key and value sent (Helicone sets no limit we know of; ours are short).
_MAX_PROPERTY_CHARS: Final = 1_024
_REDACTED: Final = "[redacted]"

_PERMANENT_STATUSES: Final = frozenset({400, 404, 422})
_RETRYABLE_4XX: Final = frozenset({408, 425, 429})
_AUTH_STATUSES: Final = frozenset({401, 403})

ObserveAttempt = Callable[[DeliveryAttempted], None]

# --------------------------------------------------------------------------- classification


def _excerpt(body: bytes | str) -> str:
    """At most :data:`BODY_EXCERPT_BYTES` bytes of ``body``, decoded without a split character."""
    raw = body.encode("utf-8", "replace") if isinstance(body, str) else body
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    return decoder.decode(raw[:BODY_EXCERPT_BYTES], final=False)


def classify_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    endpoint: str = "unknown",
    now_ms: int | None = None,
) -> DeliveryError | None:
    """What Helicone's answer means: ``None`` for success, else the error to raise.

    The one place that reads status codes (table in the module docstring).  ``now_ms`` is only
    used to turn a ``Retry-After`` HTTP-date into seconds; it defaults to the wall clock.
    """
    if 200 <= status <= 299:
        return None
    excerpt = _excerpt(body)
    common: dict[str, Any] = {"endpoint": endpoint, "status": status, "body_excerpt": excerpt}
    if status in _AUTH_STATUSES:
        what = "rejected the API key" if status == 401 else "refused the key write access"
        return AuthRejected(
            f"Helicone {what} ({status}) on {endpoint}; check HELICONE_API_KEY "
            "(it needs write permission and the right region)",
            **common,
        )
    if status in _RETRYABLE_4XX or 500 <= status <= 599 or not 400 <= status <= 499:
        now = SystemClock().now_ms() if now_ms is None else now_ms
        retry_after_s = parse_retry_after(_header(headers, "Retry-After"), now_ms=now)
        return RetryableDelivery(
            f"Helicone answered {status} on {endpoint}; will retry",
            retry_after_s=retry_after_s,
            **common,
        )
    reason = "rejected the call" if status in _PERMANENT_STATUSES else "gave a client error"
    return PermanentDelivery(f"Helicone {reason} ({status}) on {endpoint}", **common)


_PERMANENT_EXCEPTIONS: Final = (httpx.InvalidURL, httpx.UnsupportedProtocol)


def classify_exception(
    exc: httpx.HTTPError | httpx.InvalidURL, *, endpoint: str = "unknown", now_ms: int | None = None
) -> DeliveryError:
    """The delivery error an httpx failure stands for (table in the module docstring).

    The caller raises the result ``from exc``, so the httpx exception stays in the chain for
    debugging (httpx masks ``Authorization`` in header reprs, and its messages carry no headers).
    """
    name = type(exc).__name__
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        error = classify_response(
            response.status_code,
            response.headers,
            response.content if _is_read(response) else b"",
            endpoint=endpoint,
            now_ms=now_ms,
        )
        if error is not None:
            return error
        return RetryableDelivery(
            f"raise_for_status raised on a {response.status_code} from {endpoint}",
            endpoint=endpoint,
            status=response.status_code,
        )
    if isinstance(exc, _PERMANENT_EXCEPTIONS):
        return PermanentDelivery(f"cannot send to {endpoint}: {name}: {exc}", endpoint=endpoint)
    # Timeout, network, protocol, proxy and decoding errors, TooManyRedirects, and the bare
    # HTTPError / RequestError / TransportError bases a custom transport may raise: the call
    # failed on the way, which waiting can cure.
    return RetryableDelivery(f"no answer from Helicone on {endpoint}: {name}", endpoint=endpoint)


def _is_read(response: httpx.Response) -> bool:
    try:
        response.content  # noqa: B018 - probing whether the body has been read
    except httpx.ResponseNotRead:
        return False
    return True


# --------------------------------------------------------------------------- client


class HeliconeClient:
    """Posts feedback, scores and session feedback to Helicone over one pooled connection set.

    One instance per worker; close it on shutdown (``async with`` or :meth:`aclose`).  Every
    ``post_*`` method makes at most one HTTP call and either returns the
    :class:`~worker.delivery.DeliveryAttempted` record of a success (or dry run) or raises a
    :class:`~worker.errors.DeliveryError` subclass; it never retries by itself, because the
    retry schedule must survive restarts and lives in the delivery engine.  ``observer`` gets
    the record of every call that went on the wire (success or not), which is what metrics,
    the circuit breaker and the auth pause should count.  Arguments that are rejected before
    any call (a request id that is not a UUID v1-v5, a non-integer score) raise
    PermanentDelivery with ``status=None`` and produce no record.

    Pass ``client`` to share an ``httpx.AsyncClient`` (it is not closed here), or
    ``transport`` (e.g. ``httpx.MockTransport``) to keep this client's own pool and settings.
    ``limits`` apply only to httpx's default transport.  ``timer`` is a monotonic counter in
    seconds; a record's ``duration_s`` is the difference of two of its readings, taken just
    before the request and just after the answer, so a test can set the duration exactly.
    """

    def __init__(
        self,
        api_key: SecretStr,
        *,
        base_url: str = US_BASE_URL,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        limits: httpx.Limits = DEFAULT_LIMITS,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        dry_run: bool = False,
        observer: ObserveAttempt | None = None,
        clock: Clock | None = None,
        timer: Callable[[], float] = time.perf_counter,
        trust_env: bool = False,
    ) -> None:
        if not isinstance(api_key, SecretStr):
            # A plain str would show up in tracebacks' locals and in any repr of the arguments.
            raise TypeError("api_key must be a pydantic SecretStr")
        if not api_key.get_secret_value() and not dry_run:
            raise ConfigError(["HELICONE_API_KEY: empty (expected sk-helicone-...)"])
        if client is not None and transport is not None:
            raise ValueError("pass either client or transport, not both")
        url = httpx.URL(base_url)
        if url.scheme not in ("http", "https") or not url.host:
            raise ConfigError(
                [
                    f"HELICONE_BASE_URL: {base_url!r} is not an http(s) URL "
                    f"(expected {US_BASE_URL} or {EU_BASE_URL})"
                ]
            )
        self._base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._dry_run = dry_run
        self._observer = observer
        self._clock: Clock = clock or SystemClock()
        self._timer = timer
        self._owns_client = client is None
        self._http = client or httpx.AsyncClient(
            transport=transport,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,  # see the module docstring: 3xx is an outcome, not a hop
            trust_env=trust_env,  # proxies from the environment only when asked for
        )

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        observer: ObserveAttempt | None = None,
    ) -> HeliconeClient:
        """The worker's client: key, base URL, timeout, pool size and dry run from settings."""
        dry_run = settings.feedback_dry_run
        key = settings.helicone_api_key if dry_run else settings.require_api_key()
        pool = settings.delivery_concurrency
        if settings.helicone_evidence_properties:  # the evidence lane's own slots
            from worker.evidence_sender import property_concurrency

            pool += property_concurrency(settings.delivery_concurrency)
        return cls(
            key or SecretStr(""),
            base_url=settings.helicone_base,
            timeout=httpx.Timeout(settings.delivery_timeout_s, connect=5.0),
            limits=httpx.Limits(
                max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=5.0
            ),
            transport=transport,
            dry_run=dry_run,
            observer=observer,
        )

    def __repr__(self) -> str:
        return f"HeliconeClient(base_url={self._base_url!r}, dry_run={self._dry_run})"

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def timeout(self) -> httpx.Timeout:
        return self._http.timeout

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool, unless the ``httpx.AsyncClient`` was lent to us."""
        if self._owns_client:
            await self._http.aclose()

    # ---- the three calls

    async def post_request_feedback(self, request_id: str, rating: bool) -> DeliveryAttempted:
        """Rate one request: ``POST /v1/request/{id}/feedback {"rating": bool}``."""
        endpoint: Endpoint = "request_feedback"
        self._check_request_id(request_id, endpoint)
        self._check_rating(rating, endpoint)
        path = f"/v1/request/{request_id}/feedback"
        return await self._post(endpoint, path, {"rating": rating})

    async def post_request_scores(
        self, request_id: str, scores: Mapping[str, int]
    ) -> DeliveryAttempted:
        """All scores of one request in one call: ``POST /v1/request/{id}/score``.

        Helicone overwrites per key, so one call with every key is the only way to make the
        set consistent (DESIGN 6).  Values must be integers (bools are accepted, as Helicone
        does); a float would be answered with a 500, so it is rejected here instead.
        """
        endpoint: Endpoint = "request_score"
        self._check_request_id(request_id, endpoint)
        if not scores:
            raise PermanentDelivery("no scores to post", endpoint=endpoint)
        bad = sorted(name for name, value in scores.items() if not isinstance(value, int))
        if bad or not all(isinstance(name, str) and name for name in scores):
            raise PermanentDelivery(
                f"scores must be non-empty names with integer values; bad: {bad}",
                endpoint=endpoint,
            )
        path = f"/v1/request/{request_id}/score"
        return await self._post(endpoint, path, {"scores": dict(scores)})

    async def post_session_feedback(self, session_id: str, rating: bool) -> DeliveryAttempted:
        """Rate a whole session: ``POST /v1/session/{id}/feedback {"rating": bool}``."""
        endpoint: Endpoint = "session_feedback"
        if not isinstance(session_id, str) or not 1 <= len(session_id) <= _MAX_SESSION_ID_CHARS:
            raise PermanentDelivery(
                f"session id must be 1-{_MAX_SESSION_ID_CHARS} characters", endpoint=endpoint
            )
        self._check_rating(rating, endpoint)
        path = f"/v1/session/{quote(session_id, safe='')}/feedback"
        return await self._post(endpoint, path, {"rating": rating})

    async def put_request_property(
        self, request_id: str, key: str, value: str
    ) -> DeliveryAttempted:
        """Set one property of a request: ``PUT /v1/request/{id}/property {"key", "value"}``.

        Helicone reads the request's latest row, sets the key and writes the row again, so two
        calls for one request must not overlap (the later write would drop the other's key);
        the evidence lane makes them one after the other.  Its 500 "Request not found" (the
        request is not logged yet) raises :class:`~worker.errors.RequestNotLogged`.
        """
        endpoint: Endpoint = "request_property"
        self._check_request_id(request_id, endpoint)
        for name, text in (("key", key), ("value", value)):
            if not isinstance(text, str) or not text or len(text) > _MAX_PROPERTY_CHARS:
                raise PermanentDelivery(
                    f"property {name} must be 1-{_MAX_PROPERTY_CHARS} characters",
                    endpoint=endpoint,
                )
        path = f"/v1/request/{request_id}/property"
        try:
            return await self._post(endpoint, path, {"key": key, "value": value}, method="PUT")
        except RetryableDelivery as exc:
            if exc.status == 500 and "not found" in exc.body_excerpt.lower():
                raise RequestNotLogged(
                    f"Helicone has not logged request {request_id} yet (500 not found)",
                    endpoint=endpoint, status=500, body_excerpt=exc.body_excerpt,
                ) from exc
            raise

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        """Read one request back: ``GET /v1/request/{id}``, its ``data`` object or None.

        None when Helicone does not know the request (a 404, or its 500 "not found": every
        error is a 500 there, DESIGN 6).  The shape read is the ``HeliconeRequest`` of
        Helicone's published OpenAPI for this route: ``scores`` (name -> number) and
        ``feedback_rating``.  Other failures raise a DeliveryError, as the posts do.
        """
        endpoint: Endpoint = "request_score"
        self._check_request_id(request_id, endpoint)
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        try:
            response = await self._http.get(
                f"{self._base_url}/v1/request/{request_id}", headers=headers
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = classify_exception(exc, endpoint=endpoint, now_ms=self._clock.now_ms())
            self._redact(failure)
            raise failure from exc
        if response.status_code == 404 or (
            response.status_code == 500 and b"not found" in response.content.lower()
        ):
            return None
        error = classify_response(
            response.status_code, response.headers, response.content,
            endpoint=endpoint, now_ms=self._clock.now_ms(),
        )
        if error is not None:
            self._redact(error)
            raise error
        try:
            data = response.json().get("data")
        except ValueError as exc:
            raise RetryableDelivery("read-back answer is not JSON", endpoint=endpoint) from exc
        return data if isinstance(data, dict) else None

    async def post_json(
        self, path: str, payload: Mapping[str, Any], *, label: str
    ) -> tuple[Any, int | None, float | None]:
        """One POST beyond the feedback calls (the dataset API): ``(body, remaining, reset_s)``.

        ``body`` is the parsed JSON answer of a 2xx (None when it is not JSON); the other two
        are its ``RateLimit-Remaining``/``-Reset``.  Anything else raises the DeliveryError of
        :func:`classify_response`/:func:`classify_exception` (a 429 with ``retry_after_s``),
        with ``label`` as its endpoint.  No observer record (``label`` is no metric label) and
        no dry run: a caller that must not post does not call.
        """
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        try:
            response = await self._http.post(self._base_url + path, json=payload, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = classify_exception(exc, endpoint=label, now_ms=self._clock.now_ms())
            self._redact(failure)
            raise failure from exc
        error = classify_response(
            response.status_code, response.headers, response.content,
            endpoint=label, now_ms=self._clock.now_ms(),
        )
        self._redact(error)
        if error is not None:
            raise error
        try:
            body = response.json()
        except ValueError:
            body = None
        return (body, *parse_rate_limit(response.headers))

    # ---- internals

    @staticmethod
    def _check_request_id(request_id: str, endpoint: Endpoint) -> None:
        # Helicone answers a non-UUID id with a 500, which would look retryable and burn the
        # whole retry budget; DESIGN 6 says to validate locally.
        if not isinstance(request_id, str) or not is_helicone_request_id(request_id):
            raise PermanentDelivery(
                f"invalid request id {str(request_id)[:64]!r}: Helicone accepts UUID v1-v5 only",
                endpoint=endpoint,
            )

    @staticmethod
    def _check_rating(rating: bool, endpoint: Endpoint) -> None:
        if not isinstance(rating, bool):
            raise PermanentDelivery("rating must be a bool", endpoint=endpoint)

    async def _post(
        self, endpoint: Endpoint, path: str, payload: dict[str, Any], *, method: str = "POST"
    ) -> DeliveryAttempted:
        if self._dry_run:
            log.info("dry run: would %s %s %s", method, path, payload)
            return DeliveryAttempted(endpoint, DeliveryOutcome.DRY_RUN, 0.0, None)
        headers = {
            "Authorization": f"Bearer {self._api_key.get_secret_value()}",
            "Accept": "application/json",
        }
        started = self._timer()
        try:
            response = await self._http.request(
                method, self._base_url + path, json=payload, headers=headers
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            failure = classify_exception(exc, endpoint=endpoint, now_ms=self._clock.now_ms())
            self._redact(failure)
            self._observe(endpoint, failure, self._timer() - started, None)
            raise failure from exc
        duration_s = self._timer() - started
        error = classify_response(
            response.status_code,
            response.headers,
            response.content,
            endpoint=endpoint,
            now_ms=self._clock.now_ms(),
        )
        self._redact(error)
        remaining, reset_s = parse_rate_limit(response.headers)
        record = self._observe(
            endpoint,
            error,
            duration_s,
            response.status_code,
            rate_remaining=remaining,
            rate_reset_s=reset_s,
        )
        if error is not None:
            log.debug("%s (%.3f s)", error, duration_s)
            raise error
        return record

    def _observe(
        self,
        endpoint: Endpoint,
        error: DeliveryError | None,
        duration_s: float,
        status: int | None,
        *,
        rate_remaining: int | None = None,
        rate_reset_s: float | None = None,
    ) -> DeliveryAttempted:
        retry_after_s = error.retry_after_s if isinstance(error, RetryableDelivery) else None
        record = DeliveryAttempted(
            endpoint,
            outcome_of(error),
            duration_s,
            status,
            rate_remaining=rate_remaining,
            rate_reset_s=rate_reset_s,
            retry_after_s=retry_after_s,
        )
        if self._observer is not None:
            self._observer(record)
        return record

    def _redact(self, error: DeliveryError | None) -> None:
        """Replace any echo of the key in the kept body excerpt (a proxy may reflect headers)."""
        secret = self._api_key.get_secret_value()
        if error is not None and secret and secret in error.body_excerpt:
            error.body_excerpt = error.body_excerpt.replace(secret, _REDACTED)

"""Delivery policy: when to retry, when to stop calling, how fast to call (DESIGN 5).

This is the pure half of delivery.  It imports no httpx, faust or prometheus_client: the
adapters (the HTTP client in :mod:`worker.helicone`, the delivery adapter, :mod:`worker.metrics`)
import it, never the other way round.  Every object here takes time as data or through an
injected :class:`~worker.clock.Clock`, so tests drive it with a ``FakeClock`` and never sleep.

Map of the module::

    Endpoint, DeliveryOutcome   closed sets used as metric labels (no ids, ever)
    DeliveryAttempted           frozen record of one HTTP call, emitted for observers (metrics)
    BreakerStateChanged         frozen record of a breaker transition
    AuthPauseChanged            frozen record of delivery pausing or resuming on auth
    outcome_of(error)           DeliveryError class -> DeliveryOutcome (the only place that maps)
    RetryPolicy                 backoff + jitter + Retry-After, capped by attempts and age
    CircuitBreaker              closed / open / half-open over a rolling window of outcomes
    TokenBucket, AdaptiveRate   how fast to call (re-exported from :mod:`worker.rate`)
    AuthPause                   401/403 pause every delivery until a probe is accepted
    DeadLetterReason            why a decision went to the dead-letter topic (closed set)
    plan_calls(...)             which calls one decision needs, in order
    RetryState                  one decision's durable progress: attempts, calls done, when next

How the delivery engine (:mod:`worker.delivery_engine`) combines them, per decision::

    if auth or breaker refuses (retry_in_ms() > 0, or allow() is False):
        keep it durably until then (RetryState.waiting) and move on; nothing is dropped
    for each call in plan_calls(...) not in state.done:
        take a token (a short sleep of this one actor if the bucket is empty); post;
        the outcome goes to breaker and auth pause (their ``record``);
        success -> state.succeeded(call); 401/403 -> wait for the auth probe;
        permanent -> dead-letter; retryable -> state.failed(policy, ...) -> wait or dead-letter
"""

from __future__ import annotations

import enum
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from worker.errors import AuthRejected, PermanentDelivery, RetryableDelivery
from worker.rate import AdaptiveRate, TokenBucket

if TYPE_CHECKING:
    from worker.clock import Clock

__all__ = [
    "DEAD_LETTER_REASONS",
    "ENDPOINTS",
    "AdaptiveRate",
    "AuthPause",
    "AuthPauseChanged",
    "BreakerState",
    "BreakerStateChanged",
    "CircuitBreaker",
    "DeadLetterReason",
    "DeliveryAttempted",
    "DeliveryOutcome",
    "Endpoint",
    "RetryPolicy",
    "RetryState",
    "TokenBucket",
    "WaitingFor",
    "outcome_of",
    "plan_calls",
]

#: The Helicone write calls, by name.  Used as the ``endpoint`` metric label, so it never
#: contains the request or session id that the real path does.  ``request_property`` is the
#: evidence lane's ``PUT /v1/request/{id}/property`` (:mod:`worker.evidence`).
Endpoint = Literal["request_feedback", "request_score", "session_feedback", "request_property"]
ENDPOINTS: tuple[Endpoint, ...] = (
    "request_feedback", "request_score", "session_feedback", "request_property",
)


class DeliveryOutcome(enum.Enum):
    """What one call came to; the ``outcome`` metric label is the value."""

    #: Helicone answered 2xx: the write is queued (DESIGN 6: not necessarily applied yet).
    SUCCESS = "success"
    #: Transport failure, timeout, 408/425/429/5xx: try again later under the RetryPolicy.
    RETRYABLE = "retryable"
    #: Helicone will never accept this call as built: dead-letter it with the reason.
    PERMANENT = "permanent"
    #: 401/403: the key is wrong or read-only; pause everything, never dead-letter.
    AUTH_REJECTED = "auth_rejected"
    #: FEEDBACK_DRY_RUN: logged what would have been posted, posted nothing.
    DRY_RUN = "dry_run"


@dataclass(frozen=True, slots=True)
class DeliveryAttempted:
    """One HTTP call to Helicone (or one dry-run stand-in), for metrics and logs to observe.

    ``status`` is ``None`` when no answer came back (timeout, reset, dry run).
    """

    endpoint: Endpoint
    outcome: DeliveryOutcome
    duration_s: float
    status: int | None
    #: What the answer said of the rate limit: calls left in the window and seconds until it
    #: resets (``RateLimit-Remaining`` / ``RateLimit-Reset``), and a 429's ``Retry-After``.
    rate_remaining: int | None = None
    rate_reset_s: float | None = None
    retry_after_s: float | None = None


def outcome_of(error: BaseException | None) -> DeliveryOutcome:
    """The outcome a call ended with: ``None`` is success, a DeliveryError maps by its class.

    Anything that is not one of the three delivery errors is a bug, not an outcome, so it is
    re-raised rather than guessed at.
    """
    if error is None:
        return DeliveryOutcome.SUCCESS
    if isinstance(error, AuthRejected):
        return DeliveryOutcome.AUTH_REJECTED
    if isinstance(error, PermanentDelivery):
        return DeliveryOutcome.PERMANENT
    if isinstance(error, RetryableDelivery):
        return DeliveryOutcome.RETRYABLE
    raise TypeError(f"not a delivery outcome: {type(error).__name__}") from error


# --------------------------------------------------------------------------- retry schedule


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """Exponential backoff with jitter, honouring ``Retry-After``, bounded by attempts and age.

    The policy only computes *when*; the durable retry store and the timer that wakes it are
    adapters (STYLE 4.5), so a 24 h horizon survives restarts and never blocks a partition.

    The delay after the ``n``-th failed attempt is ``min(cap_s, base_s * factor**(n-1))``,
    multiplied by a uniform factor in ``[1 - jitter, 1 + jitter]`` and capped at ``cap_s``
    again: ``cap_s`` is a hard bound an operator can rely on.  A server ``Retry-After`` is
    clamped to ``[retry_after_min_s, retry_after_max_s]`` and the delay is never shorter than
    it ("not before" is what the header means); it is also never shorter than our own backoff,
    so a server that keeps answering "1 s" cannot pull a tenth retry into a tight loop.
    """

    base_s: float = 1.0
    factor: float = 2.0
    cap_s: float = 600.0
    jitter: float = 0.2
    max_attempts: int = 12
    max_age_s: float = 86_400.0
    retry_after_min_s: float = 1.0
    retry_after_max_s: float = 3_600.0
    #: Source of jitter; inject a seeded ``random.Random`` to make schedules reproducible.
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if not self.base_s > 0:
            problems.append("base_s must be > 0")
        if not self.factor >= 1:
            problems.append("factor must be >= 1")
        if not self.cap_s >= self.base_s:
            problems.append("cap_s must be >= base_s")
        if not 0 <= self.jitter < 1:
            problems.append("jitter must be in [0, 1)")
        if self.max_attempts < 1:
            problems.append("max_attempts must be >= 1")
        if not self.max_age_s > 0:
            problems.append("max_age_s must be > 0")
        if not 0 < self.retry_after_min_s <= self.retry_after_max_s:
            problems.append("need 0 < retry_after_min_s <= retry_after_max_s")
        if problems:
            raise ValueError("invalid RetryPolicy: " + "; ".join(problems))

    def backoff_s(self, attempt: int) -> float:
        """The un-jittered delay after the ``attempt``-th failure (1-based); never above cap.

        Computed in log space so that a large attempt number cannot overflow a float.
        """
        if attempt < 1:
            raise ValueError("attempt counts failed attempts and starts at 1")
        exponent = attempt - 1
        if self.factor == 1 or exponent * math.log(self.factor) < math.log(
            self.cap_s / self.base_s
        ):
            return min(self.cap_s, self.base_s * self.factor**exponent)
        return self.cap_s

    def clamp_retry_after(self, retry_after_s: float) -> float:
        """A server's ``Retry-After`` forced into ``[1 s, 1 h]`` (by default; DESIGN 5)."""
        return min(self.retry_after_max_s, max(self.retry_after_min_s, retry_after_s))

    def delay_s(self, attempt: int, *, retry_after_s: float | None = None) -> float:
        """The jittered delay after the ``attempt``-th failure, honouring ``retry_after_s``."""
        spread = self.rng.uniform(1 - self.jitter, 1 + self.jitter) if self.jitter else 1.0
        delay = min(self.cap_s, self.backoff_s(attempt) * spread)
        if retry_after_s is not None:
            delay = max(delay, self.clamp_retry_after(retry_after_s))
        return delay

    def next_attempt_at(
        self,
        attempt: int,
        *,
        first_attempt_ms: int,
        now_ms: int,
        retry_after_s: float | None = None,
    ) -> int | None:
        """When to try again after the ``attempt``-th failed attempt, or ``None``: dead-letter.

        ``attempt`` counts attempts made so far (1 after the first failure).  ``None`` once
        ``max_attempts`` have been made, or when the next attempt would fall after
        ``first_attempt_ms + max_age_s``: past the horizon the answer is the dead-letter topic,
        from where ``dlq redrive`` can bring it back.
        """
        if attempt >= self.max_attempts:
            return None
        at_ms = now_ms + math.ceil(self.delay_s(attempt, retry_after_s=retry_after_s) * 1000)
        if at_ms > first_attempt_ms + self.max_age_s * 1000:
            return None
        return at_ms


# --------------------------------------------------------------------------- circuit breaker


class BreakerState(enum.IntEnum):
    """Breaker states; the int value is the ``feedback_delivery_breaker_state`` gauge."""

    #: Calls flow and their outcomes fill the rolling window.
    CLOSED = 0
    #: Cool-down over: a limited number of probe calls may go; the rest still wait.
    HALF_OPEN = 1
    #: Most recent calls failed: nothing is sent until the cool-down has passed.
    OPEN = 2


@dataclass(frozen=True, slots=True)
class BreakerStateChanged:
    """A breaker transition, for a gauge and a log line."""

    previous: BreakerState
    current: BreakerState
    at_ms: int


class CircuitBreaker:
    """Stops calling Helicone when most recent calls failed, then probes before resuming.

    Closed: every outcome goes into a window of the last ``window_size`` outcomes; once it
    holds at least ``min_calls`` and more than ``failure_ratio`` of them are failures, the
    breaker opens.  Open: :meth:`allow` says no until ``cool_down_s`` has passed, then the
    breaker is half-open and lets ``half_open_probes`` calls through.  A probe success closes
    it with an empty window; a probe failure opens it again for another cool-down.  A probe
    that never reports (its task was cancelled) stops counting after one cool-down, so the
    breaker cannot wedge half-open.

    Only :class:`~worker.errors.RetryableDelivery` is a failure here: a 4xx means Helicone is
    up and answering, and 401/403 are handled by :class:`AuthPause`.  Refusing a call drops
    nothing: the caller reschedules it after :meth:`retry_in_ms`.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        window_size: int = 20,
        min_calls: int = 10,
        failure_ratio: float = 0.5,
        cool_down_s: float = 30.0,
        half_open_probes: int = 1,
        on_change: Callable[[BreakerStateChanged], None] | None = None,
    ) -> None:
        if not 1 <= min_calls <= window_size:
            raise ValueError("need 1 <= min_calls <= window_size")
        if not 0 <= failure_ratio < 1:
            raise ValueError("failure_ratio must be in [0, 1)")
        if not cool_down_s > 0 or half_open_probes < 1:
            raise ValueError("cool_down_s must be > 0 and half_open_probes >= 1")
        self._clock = clock
        self._min_calls = min_calls
        self._failure_ratio = failure_ratio
        self._cool_down_ms = math.ceil(cool_down_s * 1000)
        self._half_open_probes = half_open_probes
        self._on_change = on_change
        self._window: deque[bool] = deque(maxlen=window_size)  # True = failure
        self._state = BreakerState.CLOSED
        self._opened_at_ms = 0
        self._probe_started_ms: list[int] = []

    def __repr__(self) -> str:
        return f"CircuitBreaker(state={self._state.name}, window={list(self._window)!r})"

    @property
    def state(self) -> BreakerState:
        """The current state; OPEN turns HALF_OPEN when :meth:`allow` is next asked."""
        return self._state

    def allow(self) -> bool:
        """May a call be made now?  In half-open, a True answer reserves a probe slot."""
        now_ms = self._clock.now_ms()
        if self._state is BreakerState.OPEN:
            if now_ms < self._opened_at_ms + self._cool_down_ms:
                return False
            self._set_state(BreakerState.HALF_OPEN, now_ms)
        if self._state is BreakerState.HALF_OPEN:
            self._probe_started_ms = [
                t for t in self._probe_started_ms if now_ms < t + self._cool_down_ms
            ]
            if len(self._probe_started_ms) >= self._half_open_probes:
                return False
            self._probe_started_ms.append(now_ms)
        return True

    def retry_in_ms(self) -> int:
        """How long until :meth:`allow` may say yes (0: ask now).  Reserves nothing."""
        now_ms = self._clock.now_ms()
        if self._state is BreakerState.OPEN:
            return max(0, self._opened_at_ms + self._cool_down_ms - now_ms)
        if self._state is BreakerState.HALF_OPEN:
            live = [t for t in self._probe_started_ms if now_ms < t + self._cool_down_ms]
            if len(live) >= self._half_open_probes:
                return max(0, min(live) + self._cool_down_ms - now_ms)
        return 0

    def record_success(self) -> None:
        """A call got an answer that shows Helicone is working (2xx or a non-auth 4xx)."""
        now_ms = self._clock.now_ms()
        if self._state is BreakerState.HALF_OPEN:
            self._window.clear()
            self._probe_started_ms.clear()
            self._set_state(BreakerState.CLOSED, now_ms)
        elif self._state is BreakerState.CLOSED:
            self._window.append(False)

    def record_failure(self) -> None:
        """A call failed in a way that says Helicone (or the path to it) is in trouble."""
        now_ms = self._clock.now_ms()
        if self._state is BreakerState.HALF_OPEN:
            self._open(now_ms)
        elif self._state is BreakerState.CLOSED:
            self._window.append(True)
            calls = len(self._window)
            if calls >= self._min_calls and sum(self._window) / calls > self._failure_ratio:
                self._open(now_ms)
        # OPEN: a late answer from a call started before opening changes nothing.

    def record(self, outcome: DeliveryOutcome) -> None:
        """Record an outcome by kind; auth rejections and dry runs say nothing about health."""
        if outcome in (DeliveryOutcome.SUCCESS, DeliveryOutcome.PERMANENT):
            self.record_success()
        elif outcome is DeliveryOutcome.RETRYABLE:
            self.record_failure()

    def _open(self, now_ms: int) -> None:
        self._opened_at_ms = now_ms
        self._probe_started_ms.clear()
        self._window.clear()
        self._set_state(BreakerState.OPEN, now_ms)

    def _set_state(self, state: BreakerState, now_ms: int) -> None:
        previous, self._state = self._state, state
        if previous is not state and self._on_change is not None:
            self._on_change(BreakerStateChanged(previous, state, now_ms))


# --------------------------------------------------------------------------- auth pause


@dataclass(frozen=True, slots=True)
class AuthPauseChanged:
    """Delivery paused (a 401/403 came back) or resumed (a probe was accepted)."""

    paused: bool
    at_ms: int


class AuthPause:
    """After a 401/403 every delivery waits, and one probe call is let through per interval.

    A wrong or read-only key fails every call the same way, so retrying each decision would
    only burn its attempts and fill the dead-letter topic (DESIGN 5 forbids that).  Instead
    delivery pauses; the operator sees a metric and an error log; and every
    ``probe_interval_s`` one real decision is let through as the probe.  Any answer that
    passed authentication (2xx, or a non-auth 4xx) resumes delivery; another 401/403 keeps it
    paused; a transport failure or 5xx proves nothing either way and leaves it as it is.
    """

    def __init__(
        self,
        *,
        clock: Clock,
        probe_interval_s: float = 30.0,
        on_change: Callable[[AuthPauseChanged], None] | None = None,
    ) -> None:
        if not probe_interval_s > 0:
            raise ValueError("probe_interval_s must be > 0")
        self._clock = clock
        self._interval_ms = math.ceil(probe_interval_s * 1000)
        self._on_change = on_change
        self._paused = False
        self._next_probe_ms = 0

    def __repr__(self) -> str:
        return f"AuthPause(paused={self._paused})"

    @property
    def paused(self) -> bool:
        return self._paused

    def allow(self) -> bool:
        """May a call go now?  While paused, a True answer makes that call the probe."""
        if not self._paused:
            return True
        now_ms = self._clock.now_ms()
        if now_ms < self._next_probe_ms:
            return False
        # The next probe is due one interval later even if this one never reports back.
        self._next_probe_ms = now_ms + self._interval_ms
        return True

    def retry_in_ms(self) -> int:
        """How long until :meth:`allow` may say yes (0: ask now).  Reserves nothing."""
        if not self._paused:
            return 0
        return max(0, self._next_probe_ms - self._clock.now_ms())

    def record_rejected(self) -> None:
        """A call came back 401/403: pause (again) and wait one interval for the next probe."""
        now_ms = self._clock.now_ms()
        self._next_probe_ms = now_ms + self._interval_ms
        if not self._paused:
            self._paused = True
            self._notify(now_ms)

    def record_accepted(self) -> None:
        """A call passed authentication: resume if paused."""
        if self._paused:
            self._paused = False
            self._notify(self._clock.now_ms())

    def record(self, outcome: DeliveryOutcome) -> None:
        """Record an outcome by kind (see the class docstring for what each one proves)."""
        if outcome is DeliveryOutcome.AUTH_REJECTED:
            self.record_rejected()
        elif outcome in (DeliveryOutcome.SUCCESS, DeliveryOutcome.PERMANENT):
            self.record_accepted()

    def _notify(self, now_ms: int) -> None:
        if self._on_change is not None:
            self._on_change(AuthPauseChanged(self._paused, now_ms))


# --------------------------------------------------------------------------- retry state

#: Why a decision ended in ``feedback-dlq``; the ``reason`` field there and the metric label.
#:
#: * ``rejected``: Helicone answered 400/404/422 (or another client error) for one of its calls;
#: * ``invalid``: the decision cannot be posted as it is (not a decision, a request id that is
#:   not a UUID v1-v5, a session decision with scores), found before any call was made;
#: * ``max_attempts``: every allowed attempt failed in a retryable way;
#: * ``max_age``: the next attempt would fall after the retry horizon.
DeadLetterReason = Literal["rejected", "invalid", "max_attempts", "max_age"]
DEAD_LETTER_REASONS: tuple[DeadLetterReason, ...] = (
    "rejected",
    "invalid",
    "max_attempts",
    "max_age",
)

#: What a waiting decision waits for: its backoff after a failed attempt, the circuit breaker
#: to let calls through again, or a probe to show the API key is accepted again.  Only
#: ``backoff`` follows a counted attempt; the other two never use up the retry budget.
WaitingFor = Literal["backoff", "breaker", "auth"]


def plan_calls(
    *, target: Literal["request", "session"], rating: bool | None, has_scores: bool
) -> tuple[Endpoint, ...]:
    """The calls one decision needs, in the order they are made (DESIGN 5).

    The rating goes first, then all scores in one call.  Helicone has no score endpoint for
    sessions, so a session decision with scores raises ``ValueError`` (it is dead-lettered
    as ``invalid`` rather than half-delivered).  A decision with neither needs no call.
    """
    if target == "session":
        if has_scores:
            raise ValueError("a session decision cannot carry scores (Helicone has no endpoint)")
        return ("session_feedback",) if rating is not None else ()
    calls: list[Endpoint] = []
    if rating is not None:
        calls.append("request_feedback")
    if has_scores:
        calls.append("request_score")
    return tuple(calls)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryState:
    """One decision's delivery progress, kept durably while it waits to be tried again.

    ``done`` holds the calls that already succeeded, so a retry makes only the ones left
    (a rating that went through is not posted again because its scores failed).  ``seq``
    changes on every transition: a wake-up record carries the ``seq`` it was issued for, so
    a stale or doubled wake-up is recognised and ignored.  ``attempts`` counts attempts that
    failed in a retryable way; waiting for the breaker or the auth pause does not count.
    """

    seq: int = 0
    attempts: int = 0
    first_attempt_ms: int | None = None
    next_at_ms: int = 0
    waiting_for: WaitingFor = "backoff"
    done: tuple[Endpoint, ...] = ()
    last_status: int | None = None
    last_endpoint: Endpoint | None = None
    last_error: str = ""
    last_body: str = ""

    def remaining(self, calls: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        """The calls of ``calls`` not made successfully yet, in order."""
        return tuple(call for call in calls if call not in self.done)

    def succeeded(self, endpoint: Endpoint) -> RetryState:
        """``endpoint`` went through: never make that call again for this decision."""
        if endpoint in self.done:
            return self
        return replace(self, done=(*self.done, endpoint))

    def started(self, now_ms: int) -> RetryState:
        """An attempt is being made now; the age horizon counts from the first one."""
        if self.first_attempt_ms is not None:
            return self
        return replace(self, first_attempt_ms=now_ms)

    def waiting(self, *, until_ms: int, waiting_for: WaitingFor) -> RetryState:
        """Wait until ``until_ms`` without using up an attempt (breaker open, auth pause)."""
        return replace(self, seq=self.seq + 1, next_at_ms=until_ms, waiting_for=waiting_for)

    def failed(
        self,
        policy: RetryPolicy,
        *,
        now_ms: int,
        endpoint: Endpoint,
        status: int | None,
        error: str,
        body: str = "",
        retry_after_s: float | None = None,
    ) -> tuple[RetryState, DeadLetterReason | None]:
        """An attempt failed in a retryable way: the state to keep, and why to give up if so.

        The returned reason is ``None`` when another attempt is scheduled (at ``next_at_ms``
        of the returned state), else ``max_attempts`` or ``max_age`` and the state is the
        final one, for the dead-letter record.
        """
        first_ms = self.first_attempt_ms if self.first_attempt_ms is not None else now_ms
        attempts = self.attempts + 1
        recorded = replace(
            self,
            attempts=attempts,
            first_attempt_ms=first_ms,
            last_status=status,
            last_endpoint=endpoint,
            last_error=error,
            last_body=body,
        )
        at_ms = policy.next_attempt_at(
            attempts, first_attempt_ms=first_ms, now_ms=now_ms, retry_after_s=retry_after_s
        )
        if at_ms is None:
            reason: DeadLetterReason = (
                "max_attempts" if attempts >= policy.max_attempts else "max_age"
            )
            return recorded, reason
        return recorded.waiting(until_ms=at_ms, waiting_for="backoff"), None

    def noted(
        self, *, endpoint: Endpoint, status: int | None, error: str, body: str = ""
    ) -> RetryState:
        """Remember the last answer without counting an attempt (a 401/403, a rejection)."""
        return replace(
            self, last_status=status, last_endpoint=endpoint, last_error=error, last_body=body
        )

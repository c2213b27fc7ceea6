"""The pure delivery policy: retry schedule, circuit breaker, token bucket, auth pause.

Time only moves through a FakeClock and randomness comes from a seeded Random, so nothing here
sleeps and every run is the same.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.clock import FakeClock
from worker.delivery import (
    AuthPause,
    AuthPauseChanged,
    BreakerState,
    BreakerStateChanged,
    CircuitBreaker,
    DeliveryOutcome,
    RetryPolicy,
    TokenBucket,
    outcome_of,
)
from worker.errors import AuthRejected, PermanentDelivery, RetryableDelivery

HOUR_MS = 3_600_000


def test_policy_imports_no_io_libraries() -> None:
    """STYLE 4.1: the policy half stays importable without any I/O library."""
    probe = (
        "import sys, worker.delivery; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'faust', 'aiokafka', 'httpx', 'prometheus_client', 'aiohttp'}))"
    )
    # From the project root: the autouse fixture moved the working directory elsewhere.
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, DeliveryOutcome.SUCCESS),
        (RetryableDelivery("x", endpoint="e"), DeliveryOutcome.RETRYABLE),
        (PermanentDelivery("x", endpoint="e"), DeliveryOutcome.PERMANENT),
        (AuthRejected("x", endpoint="e"), DeliveryOutcome.AUTH_REJECTED),
    ],
)
def test_outcome_of_maps_each_error_class(
    error: BaseException | None, outcome: DeliveryOutcome
) -> None:
    assert outcome_of(error) is outcome


def test_outcome_of_refuses_to_guess_about_other_exceptions() -> None:
    with pytest.raises(TypeError):
        outcome_of(ValueError("a bug"))


# --------------------------------------------------------------------------- retry policy


def policy(seed: int = 0, **overrides: float) -> RetryPolicy:
    return RetryPolicy(rng=random.Random(seed), **overrides)  # type: ignore[arg-type]


def test_defaults_match_design() -> None:
    p = RetryPolicy()
    assert (p.base_s, p.factor, p.cap_s, p.jitter) == (1.0, 2.0, 600.0, 0.2)
    assert (p.max_attempts, p.max_age_s) == (12, 86_400.0)
    assert (p.retry_after_min_s, p.retry_after_max_s) == (1.0, 3_600.0)


def test_policy_is_frozen_and_keyword_only() -> None:
    p = RetryPolicy()
    with pytest.raises(AttributeError):
        p.base_s = 2.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        RetryPolicy(1.0)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "bad",
    [
        {"base_s": 0},
        {"factor": 0.5},
        {"cap_s": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"max_attempts": 0},
        {"max_age_s": 0},
        {"retry_after_min_s": 0},
    ],
)
def test_invalid_policy_is_rejected(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid RetryPolicy"):
        RetryPolicy(**bad)  # type: ignore[arg-type]


def test_schedule_without_jitter_doubles_up_to_the_cap() -> None:
    p = policy(jitter=0)
    delays = [p.delay_s(n) for n in range(1, 13)]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 600, 600]


def test_same_seed_gives_the_same_schedule() -> None:
    first = [policy(seed=7).delay_s(n) for n in range(1, 12)]
    again = [policy(seed=7).delay_s(n) for n in range(1, 12)]
    assert first == again


@given(attempt=st.integers(min_value=1, max_value=10_000), seed=st.integers(0, 2**32))
def test_jittered_delay_stays_within_twenty_percent_and_under_the_cap(
    attempt: int, seed: int
) -> None:
    p = policy(seed)
    nominal = p.backoff_s(attempt)
    delay = p.delay_s(attempt)
    assert nominal * 0.8 - 1e-9 <= delay <= min(p.cap_s, nominal * 1.2) + 1e-9
    assert delay <= p.cap_s


@given(
    base=st.floats(min_value=0.01, max_value=100),
    factor=st.floats(min_value=1, max_value=10),
    cap_over_base=st.floats(min_value=1, max_value=10_000),
    attempt=st.integers(min_value=1, max_value=5_000),
)
def test_backoff_is_monotonic_and_capped(
    base: float, factor: float, cap_over_base: float, attempt: int
) -> None:
    p = RetryPolicy(base_s=base, factor=factor, cap_s=base * cap_over_base)
    assert p.backoff_s(attempt) <= p.backoff_s(attempt + 1) <= p.cap_s
    assert p.backoff_s(1) == base


@given(
    retry_after=st.floats(min_value=0, max_value=10 * 86_400, allow_nan=False),
    attempt=st.integers(min_value=1, max_value=11),
    seed=st.integers(0, 2**32),
)
def test_retry_after_is_honoured_within_one_second_and_one_hour(
    retry_after: float, attempt: int, seed: int
) -> None:
    p = policy(seed)
    clamped = min(3_600.0, max(1.0, retry_after))
    delay = p.delay_s(attempt, retry_after_s=retry_after)
    assert clamped <= delay <= max(clamped, p.cap_s)
    assert 1.0 <= delay <= 3_600.0


def test_short_retry_after_does_not_undercut_a_long_backoff() -> None:
    p = policy(jitter=0)
    assert p.delay_s(10, retry_after_s=1) == 512


def test_next_attempt_at_is_now_plus_delay() -> None:
    p = policy(jitter=0)
    assert p.next_attempt_at(3, first_attempt_ms=0, now_ms=10_000) == 14_000
    assert p.next_attempt_at(1, first_attempt_ms=0, now_ms=0, retry_after_s=30) == 30_000


def test_dead_letter_after_max_attempts() -> None:
    p = policy(max_attempts=3)
    assert p.next_attempt_at(2, first_attempt_ms=0, now_ms=0) is not None
    assert p.next_attempt_at(3, first_attempt_ms=0, now_ms=0) is None


def test_dead_letter_when_the_next_attempt_would_pass_the_horizon() -> None:
    p = policy(jitter=0, max_age_s=100, max_attempts=1_000)
    assert p.next_attempt_at(5, first_attempt_ms=0, now_ms=80_000) == 96_000
    assert p.next_attempt_at(6, first_attempt_ms=0, now_ms=80_000) is None
    # A Retry-After that reaches past the horizon dead-letters too.
    assert p.next_attempt_at(1, first_attempt_ms=0, now_ms=0, retry_after_s=200) is None


@given(
    attempt=st.integers(min_value=1, max_value=50),
    first_ms=st.integers(min_value=0, max_value=10**12),
    elapsed_ms=st.integers(min_value=0, max_value=2 * 86_400_000),
    retry_after=st.none() | st.floats(min_value=-10, max_value=10**6, allow_nan=False),
    seed=st.integers(0, 2**32),
)
def test_next_attempt_is_in_the_future_and_within_the_horizon(
    attempt: int, first_ms: int, elapsed_ms: int, retry_after: float | None, seed: int
) -> None:
    p = policy(seed)
    now_ms = first_ms + elapsed_ms
    at = p.next_attempt_at(
        attempt, first_attempt_ms=first_ms, now_ms=now_ms, retry_after_s=retry_after
    )
    if attempt >= p.max_attempts:
        assert at is None
    if at is not None:
        assert now_ms + 800 <= at <= now_ms + HOUR_MS
        assert at <= first_ms + 86_400_000


# --------------------------------------------------------------------------- circuit breaker


def state_of(b: CircuitBreaker) -> BreakerState:
    """Read the state afresh (mypy would otherwise keep the narrowing of an earlier assert)."""
    return b.state


def breaker(clock: FakeClock, changes: list[BreakerStateChanged] | None = None) -> CircuitBreaker:
    return CircuitBreaker(
        clock=clock,
        window_size=10,
        min_calls=5,
        failure_ratio=0.5,
        cool_down_s=30,
        on_change=None if changes is None else changes.append,
    )


def test_breaker_stays_closed_below_the_minimum_call_count() -> None:
    b = breaker(FakeClock())
    for _ in range(4):
        b.record_failure()
    assert state_of(b) is BreakerState.CLOSED
    assert b.allow()


def test_breaker_stays_closed_when_half_or_fewer_fail() -> None:
    b = breaker(FakeClock())
    for _ in range(5):
        b.record_success()
        b.record_failure()
    assert state_of(b) is BreakerState.CLOSED


def test_breaker_opens_when_most_recent_calls_fail_and_probes_after_cool_down() -> None:
    clock = FakeClock()
    changes: list[BreakerStateChanged] = []
    b = breaker(clock, changes)
    for _ in range(2):
        b.record_success()
    for _ in range(3):
        b.record_failure()
    assert state_of(b) is BreakerState.OPEN
    assert not b.allow()
    assert b.retry_in_ms() == 30_000

    clock.advance(29.999)
    assert not b.allow()
    clock.advance(0.001)
    assert b.allow()  # the probe
    assert state_of(b) is BreakerState.HALF_OPEN
    assert not b.allow()  # only one probe at a time
    assert b.retry_in_ms() == 30_000

    b.record_success()
    assert state_of(b) is BreakerState.CLOSED
    assert b.allow()
    assert [(c.previous, c.current) for c in changes] == [
        (BreakerState.CLOSED, BreakerState.OPEN),
        (BreakerState.OPEN, BreakerState.HALF_OPEN),
        (BreakerState.HALF_OPEN, BreakerState.CLOSED),
    ]
    assert [c.at_ms for c in changes] == [0, 30_000, 30_000]


def test_failed_probe_reopens_for_another_cool_down() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(5):
        b.record_failure()
    clock.advance(30)
    assert b.allow()
    b.record_failure()
    assert state_of(b) is BreakerState.OPEN
    assert b.retry_in_ms() == 30_000


def test_probe_that_never_reports_frees_its_slot_after_a_cool_down() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(5):
        b.record_failure()
    clock.advance(30)
    assert b.allow()
    clock.advance(29)
    assert not b.allow()
    clock.advance(1)
    assert b.allow()


def test_window_is_fresh_after_closing() -> None:
    clock = FakeClock()
    b = breaker(clock)
    for _ in range(5):
        b.record_failure()
    clock.advance(30)
    b.allow()
    b.record_success()
    for _ in range(4):  # below min_calls again: old failures are forgotten
        b.record_failure()
    assert state_of(b) is BreakerState.CLOSED


def test_old_outcomes_roll_out_of_the_window() -> None:
    b = breaker(FakeClock())
    for _ in range(4):
        b.record_failure()
    for _ in range(10):
        b.record_success()
    for _ in range(5):  # 5 of the last 10 failed: not most of them
        b.record_failure()
    assert state_of(b) is BreakerState.CLOSED
    b.record_failure()
    assert state_of(b) is BreakerState.OPEN


def test_breaker_counts_only_retryable_outcomes_as_failures() -> None:
    b = breaker(FakeClock())
    for outcome in [DeliveryOutcome.AUTH_REJECTED, DeliveryOutcome.DRY_RUN] * 10:
        b.record(outcome)
    for _ in range(10):
        b.record(DeliveryOutcome.PERMANENT)  # Helicone answered: it is up
    assert state_of(b) is BreakerState.CLOSED
    for _ in range(11):
        b.record(DeliveryOutcome.RETRYABLE)
    assert state_of(b) is BreakerState.OPEN


def test_state_values_are_the_gauge_values() -> None:
    assert [int(s) for s in (BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN)] == [
        0,
        1,
        2,
    ]


# --------------------------------------------------------------------------- token bucket


def test_bucket_allows_a_burst_then_spaces_calls_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0, 0, 0]
    assert bucket.try_acquire() == 100
    clock.advance(0.05)
    assert bucket.try_acquire() == 50
    clock.advance(0.05)
    assert bucket.try_acquire() == 0
    assert bucket.try_acquire() == 100


def test_bucket_default_burst_is_one_second_of_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, clock=FakeClock())
    assert sum(1 for _ in range(20) if bucket.try_acquire() == 0) == 10


def test_bucket_ignores_a_clock_that_steps_back() -> None:
    clock = FakeClock(t_ms=10_000)
    bucket = TokenBucket(rate_per_s=1, burst=1, clock=clock)
    assert bucket.try_acquire() == 0
    clock.t_ms = 0
    assert bucket.try_acquire() > 0


@given(
    rate=st.floats(min_value=0.1, max_value=1_000),
    burst=st.integers(min_value=1, max_value=50),
    steps_ms=st.lists(st.integers(min_value=0, max_value=500), min_size=1, max_size=200),
)
def test_bucket_never_exceeds_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps_ms: list[int]
) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=rate, burst=burst, clock=clock)
    granted = 0
    for step in steps_ms:
        clock.t_ms += step
        while bucket.try_acquire() == 0:
            granted += 1
    assert granted <= burst + rate * clock.t_ms / 1000 + 1e-6


@given(
    rate=st.floats(min_value=0.1, max_value=1_000),
    burst=st.integers(min_value=1, max_value=5),
)
def test_waiting_the_answered_time_is_enough(rate: float, burst: int) -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=rate, burst=burst, clock=clock)
    for _ in range(burst):
        assert bucket.try_acquire() == 0
    for _ in range(20):
        wait_ms = bucket.try_acquire()
        assert wait_ms >= 1
        clock.t_ms += wait_ms
        assert bucket.try_acquire() == 0


def test_sustained_rate_over_a_simulated_minute() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate_per_s=10, burst=10, clock=clock)
    granted = 0
    while clock.t_ms < 60_000:
        wait_ms = bucket.try_acquire()
        if wait_ms == 0:
            granted += 1
        else:
            clock.t_ms += wait_ms
    assert 600 <= granted <= 611


def test_invalid_bucket_is_rejected() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, clock=FakeClock())
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=1, burst=0.5, clock=FakeClock())
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=1, burst=1, clock=FakeClock()).try_acquire(2)


# --------------------------------------------------------------------------- auth pause


def test_auth_pause_stops_everything_until_a_probe_is_accepted() -> None:
    clock = FakeClock()
    changes: list[AuthPauseChanged] = []
    pause = AuthPause(clock=clock, probe_interval_s=60, on_change=changes.append)
    assert pause.allow() and not pause.paused

    pause.record(DeliveryOutcome.AUTH_REJECTED)
    assert pause.paused
    assert not pause.allow()
    assert pause.retry_in_ms() == 60_000

    clock.advance(60)
    assert pause.allow()  # the probe
    assert not pause.allow()  # only one per interval
    pause.record(DeliveryOutcome.AUTH_REJECTED)  # still a bad key
    assert pause.paused and pause.retry_in_ms() == 60_000

    clock.advance(60)
    assert pause.allow()
    pause.record(DeliveryOutcome.RETRYABLE)  # a 503 says nothing about the key
    assert pause.paused

    clock.advance(60)
    assert pause.allow()
    pause.record(DeliveryOutcome.SUCCESS)
    assert not pause.paused
    assert pause.allow() and pause.retry_in_ms() == 0
    assert changes == [AuthPauseChanged(True, 0), AuthPauseChanged(False, 180_000)]


def test_a_lost_probe_does_not_wedge_the_pause() -> None:
    clock = FakeClock()
    pause = AuthPause(clock=clock, probe_interval_s=10)
    pause.record_rejected()
    clock.advance(10)
    assert pause.allow()
    clock.advance(10)  # the probe never reported
    assert pause.allow()


def test_a_permanent_answer_proves_the_key_works() -> None:
    pause = AuthPause(clock=FakeClock())
    pause.record_rejected()
    pause.record(DeliveryOutcome.PERMANENT)
    assert not pause.paused

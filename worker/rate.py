"""How fast to call Helicone: a token bucket, and the adaptive rate that drives it.

Pure: time comes from an injected :class:`~worker.clock.Clock`, and nothing here imports
httpx, faust or prometheus_client.  What holds: the rate never exceeds the configured budget
(``DELIVERY_RATE_PER_S``), whatever Helicone's headers say; a 429 or a ``RateLimit-*`` answer
only ever slows it down, and it climbs back gradually.  Used by delivery, the read-back
verification and the ``dataset`` command, which share Helicone's per-organisation limit.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.clock import Clock

__all__ = ["AdaptiveRate", "TokenBucket"]


_TOKEN_EPSILON = 1e-9


class TokenBucket:
    """A token bucket: ``rate_per_s`` tokens a second, at most ``burst`` saved up.

    It starts full.  :meth:`try_acquire` never blocks: it takes a token and returns 0, or takes
    nothing and returns how many milliseconds until one will be there, so the caller can park
    the work in its timer instead of sleeping on the partition.
    """

    def __init__(self, *, rate_per_s: float, clock: Clock, burst: float | None = None) -> None:
        burst = max(1.0, rate_per_s) if burst is None else burst
        if not rate_per_s > 0 or not burst >= 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._rate_per_ms = rate_per_s / 1000
        self._burst = burst
        self._clock = clock
        self._tokens = burst
        self._last_ms = clock.now_ms()

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate_per_s={self._rate_per_ms * 1000:g}, burst={self._burst:g}, "
            f"tokens={self._tokens:.2f})"
        )

    def try_acquire(self, tokens: float = 1.0) -> int:
        """Take ``tokens`` and return 0, or take none and return the wait in ms (>= 1)."""
        if tokens > self._burst:
            raise ValueError("cannot take more tokens than the burst holds")
        self._refill()
        # Refill is rate x elapsed in floats: waiting exactly the answered time can leave
        # 0.9999999 tokens, which must count as one.
        if self._tokens + _TOKEN_EPSILON >= tokens:
            self._tokens = max(0.0, self._tokens - tokens)
            return 0
        return max(1, math.ceil((tokens - self._tokens) / self._rate_per_ms - _TOKEN_EPSILON))

    def _refill(self) -> None:
        now_ms = self._clock.now_ms()
        elapsed_ms = now_ms - self._last_ms
        if elapsed_ms > 0:  # a clock that steps back refills nothing rather than going negative
            self._tokens = min(self._burst, self._tokens + elapsed_ms * self._rate_per_ms)
            self._last_ms = now_ms


#: ``RateLimit-Reset`` is in whole seconds: below this many, ``remaining / reset`` is too far
#: off the true pace (by up to a second in a few) to be followed.  Helicone's windows are
#: five minutes long.
_MIN_HINT_WINDOW_S = 10.0


class AdaptiveRate:
    """How fast to call Helicone now: never above the budget, slower when Helicone says so.

    Helicone limits calls per organisation in fixed windows and says so in its answers
    (``RateLimit-Remaining`` / ``RateLimit-Reset``, ``Retry-After`` on a 429; DESIGN 6).  The
    rate follows them (AIMD, as TCP does, so a budget set too high costs a few 429s, not a
    storm):

    * it never exceeds ``ceiling_per_s`` (``DELIVERY_RATE_PER_S``);
    * a 429 halves it (down to ``floor_per_s``) and pauses every call until ``Retry-After``;
    * ``RateLimit-Remaining: r`` with ``RateLimit-Reset: s`` caps it at ``r / s`` until that
      window resets (the budget left, spread evenly; only for ``s`` of 10 s or more, as the
      header counts whole seconds), and ``r = 0`` pauses calls until then;
    * otherwise it recovers additively, back to the ceiling in ``recovery_s`` of calm.

    :meth:`try_acquire` never blocks: a token, or the milliseconds to wait for one.
    """

    def __init__(
        self,
        *,
        ceiling_per_s: float,
        clock: Clock,
        floor_per_s: float = 0.05,
        recovery_s: float = 60.0,
    ) -> None:
        if not ceiling_per_s > 0 or not floor_per_s > 0 or not recovery_s > 0:
            raise ValueError("need ceiling_per_s > 0, floor_per_s > 0 and recovery_s > 0")
        self._ceiling = ceiling_per_s
        self._floor = min(floor_per_s, ceiling_per_s)
        self._step_per_ms = ceiling_per_s / (recovery_s * 1000)
        self._clock = clock
        self._rate = ceiling_per_s
        self._hint_per_s: float | None = None
        self._hint_until_ms = 0
        self._paused_until_ms = 0
        self._last_ms = clock.now_ms()
        # At most one call's worth saved up, so a recovered rate never turns into a burst
        # that lands in one of Helicone's fixed windows.
        self._tokens = 1.0
        self._tokens_at_ms = self._last_ms

    def __repr__(self) -> str:
        return f"AdaptiveRate(per_s={self.per_s:.3g}, ceiling={self._ceiling:g})"

    @property
    def per_s(self) -> float:
        """The rate in force now (calls per second)."""
        self._recover()
        if self._hint_per_s is not None:
            return max(self._floor, min(self._rate, self._hint_per_s))
        return self._rate

    def paused_ms(self) -> int:
        """How long every call must still wait (a 429's Retry-After, an exhausted window)."""
        return max(0, self._paused_until_ms - self._clock.now_ms())

    def try_acquire(self) -> int:
        """Take a token and return 0, or return the milliseconds until one is there."""
        paused = self.paused_ms()
        if paused > 0:
            return paused
        rate_per_ms = self.per_s / 1000
        now_ms = self._clock.now_ms()
        self._tokens = min(1.0, self._tokens + max(0, now_ms - self._tokens_at_ms) * rate_per_ms)
        self._tokens_at_ms = now_ms
        if self._tokens + _TOKEN_EPSILON >= 1.0:
            self._tokens -= 1.0
            return 0
        return max(1, math.ceil((1.0 - self._tokens) / rate_per_ms))

    def throttled(self, retry_after_s: float | None) -> None:
        """A 429: halve the rate and pause calls until ``Retry-After`` (at least a second)."""
        self._recover()
        self._rate = max(self._floor, self._rate / 2)
        wait_ms = math.ceil(max(1.0, retry_after_s or 1.0) * 1000)
        self._paused_until_ms = max(self._paused_until_ms, self._clock.now_ms() + wait_ms)
        self._tokens = 0.0

    def answered(self, *, remaining: int | None, reset_s: float | None) -> None:
        """An answer with ``RateLimit-*`` headers: pace the rest of the window evenly."""
        if remaining is None or reset_s is None:
            return
        now_ms = self._clock.now_ms()
        reset_ms = math.ceil(max(0.0, reset_s) * 1000)
        if remaining <= 0:
            self._paused_until_ms = max(self._paused_until_ms, now_ms + max(reset_ms, 1_000))
            return
        if reset_s < _MIN_HINT_WINDOW_S:
            return  # whole seconds are too coarse to pace a short window by; 429s still count
        self._hint_per_s = remaining / reset_s
        self._hint_until_ms = now_ms + reset_ms

    def _recover(self) -> None:
        now_ms = self._clock.now_ms()
        if self._hint_per_s is not None and now_ms >= self._hint_until_ms:
            self._hint_per_s = None
        elapsed = now_ms - self._last_ms
        if elapsed > 0:
            if now_ms >= self._paused_until_ms:
                self._rate = min(self._ceiling, self._rate + elapsed * self._step_per_ms)
            self._last_ms = now_ms

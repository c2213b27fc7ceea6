"""The fake Helicone's rate limiting: a fixed window per limit, answered with Helicone's headers.

Helicone limits with express-rate-limit (``valhalla/jawn/src/middleware/ratelimitter.ts``,
``standardHeaders: true``); the header names and formats follow express-rate-limit's
``source/headers.ts`` (``setDraft6Headers``/``setRetryAfterHeader``).  Pure: time is passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["FixedWindowLimiter", "RateDecision"]


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

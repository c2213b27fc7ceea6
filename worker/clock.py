"""The wall clock, injected.

The core never calls ``time.time()``: event time comes with the data, and the few places that
need the wall clock (idle close, backoff, breaker probes) take a :class:`Clock`.  Tests pass a
:class:`FakeClock` and move it by hand instead of sleeping or patching.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch."""
        ...


class SystemClock:
    """The real wall clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


@dataclass
class FakeClock:
    """A clock that only moves when told to."""

    t_ms: int = 0

    def now_ms(self) -> int:
        return self.t_ms

    def advance(self, seconds: float) -> None:
        self.t_ms += int(seconds * 1000)

"""The gates in front of every Helicone call, and what each call on the wire teaches them.

Three things may hold a call back (the classes are :mod:`worker.delivery`'s):

* the circuit breaker stops calls when most recent ones failed; nothing is dropped, the
  states wait;
* 401/403 pauses everything (:class:`~worker.delivery.AuthPause`), one probe per interval,
  and nothing is dead-lettered meanwhile;
* a 429 or ``RateLimit-*`` headers slow the rate (:class:`~worker.delivery.AdaptiveRate`).

When the breaker closes or the pause lifts, ``wake`` makes the sender look again at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from worker.delivery import (
    AdaptiveRate,
    AuthPause,
    AuthPauseChanged,
    BreakerState,
    BreakerStateChanged,
    CircuitBreaker,
    DeliveryAttempted,
)

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.delivery_ports import DeliveryConfig
    from worker.metrics import Metrics

__all__ = ["Gates"]

log = logging.getLogger(__name__)

#: While the breaker or the auth pause refuses calls, look again at least this often.
MIN_GATE_WAIT_MS = 100


class Gates:
    """The breaker, the auth pause and the adaptive rate of one engine."""

    def __init__(
        self,
        config: DeliveryConfig,
        *,
        clock: Clock,
        metrics: Metrics,
        wake: Callable[[], None],
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._wake = wake
        self.breaker = CircuitBreaker(
            clock=clock, cool_down_s=config.breaker_cool_down_s, on_change=self._breaker_changed
        )
        self.auth = AuthPause(
            clock=clock,
            probe_interval_s=config.auth_probe_interval_s,
            on_change=self._auth_changed,
        )
        self.rate = AdaptiveRate(
            ceiling_per_s=config.rate_per_s, clock=clock, recovery_s=config.rate_recovery_s
        )

    def observe(self, record: DeliveryAttempted, *, breaker: bool = True) -> None:
        """A call that went on the wire: metrics, the auth pause, the rate and (unless
        ``breaker`` is False, as for property calls) the circuit breaker learn."""
        self._metrics.observe_attempt(record)
        if breaker:
            self.breaker.record(record.outcome)
        self.auth.record(record.outcome)
        if record.status == 429:
            self._metrics.delivery_throttled.inc()
            self.rate.throttled(record.retry_after_s)
        self.rate.answered(remaining=record.rate_remaining, reset_s=record.rate_reset_s)

    def refused_ms(self) -> int:
        """0 when the breaker and the auth pause let a call start now (taking the probe if
        one is due), else how long to wait before looking again."""
        gate_ms = max(self.auth.retry_in_ms(), self.breaker.retry_in_ms())
        if gate_ms > 0 or not self.breaker.allow() or not self.auth.allow():
            return max(gate_ms, MIN_GATE_WAIT_MS)
        return 0

    def _breaker_changed(self, change: BreakerStateChanged) -> None:
        self._metrics.observe_breaker(change)
        if change.current is BreakerState.OPEN:
            log.warning(
                "circuit breaker open: most recent calls to Helicone failed; no calls for "
                "%.0f s, then one probe (waiting states are kept)",
                self._config.breaker_cool_down_s,
            )
        elif change.current is BreakerState.CLOSED:
            log.info("circuit breaker closed: a probe succeeded, delivery resumes")
            self._wake()

    def _auth_changed(self, change: AuthPauseChanged) -> None:
        self._metrics.observe_auth_pause(change)
        if change.paused:
            log.error(
                "delivery paused: Helicone rejected the API key (401/403). Check "
                "HELICONE_API_KEY (write access, right region). Nothing is dead-lettered; "
                "one state is tried as a probe every %.0f s",
                self._config.auth_probe_interval_s,
            )
        else:
            log.warning("delivery resumed: Helicone accepted the API key again")
            self._wake()

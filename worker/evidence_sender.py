"""The evidence lane's sender: property calls in the delivery budget, after every rating.

:class:`PropertySender` is attached to the delivery engine (:mod:`worker.delivery_engine`)
when ``HELICONE_EVIDENCE_PROPERTIES`` is on.  The engine offers it each decision it merges
and, whenever its own dispatch finds **no rating state due now**, lets it start property
calls with what is left of the same budget.  What :mod:`worker.evidence`'s lane holds, and
why, is said there; how the calls share the budget is said here.

Why ratings are never delayed by properties:

* **Priority.**  The engine asks the lane only after its own due index came up empty at this
  instant, so a rating that is due is always started before any property call; property
  calls fill the gaps between ratings, never the other way round.
* **Same rate, same ceiling.**  A property call takes a token of the engine's
  :class:`~worker.delivery.AdaptiveRate`, so ratings and properties together never exceed
  ``DELIVERY_RATE_PER_S`` (Helicone's limiter counts every call of the organisation,
  property calls included).  The rate holds at most one token, so the most a property call
  can cost a rating that becomes due just after it is one token interval, the same a rating
  costs another.  A 429 or ``RateLimit-*`` answer to a property call slows both lanes.
* **Own slots.**  At most ``concurrency`` property calls are in flight (default an eighth of
  ``DELIVERY_CONCURRENCY``, at least one), and only while ratings leave slots free; the
  HTTP pool is sized for both (``HeliconeClient.from_settings``).
* **No say in the breaker.**  A property call's failure (most often "Request not found",
  which Helicone answers 500) is not fed to the circuit breaker, so it cannot stop ratings;
  the lane only goes while the breaker is closed and delivery is not paused on auth.  A
  401/403 to a property call does pause delivery: it is the same key.

Properties waiting survive a restart and a rebalance: with a
:class:`~worker.evidence_store.PendingStore` (the worker always has one) every change of the
lane is written to the changelogged table ``evidence-properties``, and the entries of the
partitions a worker is assigned are restored into its lane after recovery, due when they
were, with their counters.  Why that is at-least-once and what a rebalance does is said
there.  None of it touches ratings: the table is written in the same events as the delivery
state, and restored entries wait behind due ratings like any other.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from worker.delivery import BreakerState, DeliveryAttempted, DeliveryOutcome
from worker.errors import AuthRejected, PermanentDelivery, RequestNotLogged, RetryableDelivery
from worker.evidence import LaneOutcome, PropertyCall, PropertyLane

if TYPE_CHECKING:
    from collections.abc import Iterable

    from worker.config import Settings
    from worker.delivery_engine import Delivery
    from worker.events import Decision
    from worker.evidence_store import PendingStore

__all__ = ["EvidenceConfig", "PropertyPoster", "PropertySender"]

log = logging.getLogger(__name__)

#: The longest the engine's sender sleeps on the lane's account (a finished call wakes it).
_IDLE_MS = 500
#: While the breaker is not closed or the auth pause holds, look again this often.
_GATE_MS = 250


class PropertyPoster(Protocol):
    """The one call the lane makes (:class:`~worker.helicone.HeliconeClient` has it)."""

    async def put_request_property(
        self, request_id: str, key: str, value: str
    ) -> DeliveryAttempted:
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class EvidenceConfig:
    """The evidence lane's slice of the settings (STYLE 4.6)."""

    enabled: bool = False
    not_found_horizon_s: float = 300.0
    concurrency: int = 4
    max_pending: int = 50_000

    @classmethod
    def from_settings(cls, settings: Settings) -> EvidenceConfig:
        return cls(
            enabled=settings.helicone_evidence_properties,
            not_found_horizon_s=settings.helicone_property_not_found_s,
            concurrency=property_concurrency(settings.delivery_concurrency),
        )


def property_concurrency(delivery_concurrency: int) -> int:
    """Property calls in flight at most: an eighth of the ratings' slots, at least one."""
    return max(1, delivery_concurrency // 8)


class PropertySender:
    """Sends the lane's calls inside the engine's budget (see the module docstring)."""

    def __init__(
        self,
        delivery: Delivery,
        poster: PropertyPoster,
        config: EvidenceConfig,
        store: PendingStore | None = None,
    ) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        self._delivery = delivery
        self._poster = poster
        self._config = config
        self._metrics = delivery.metrics
        self._clock = delivery.clock
        self.lane = PropertyLane(
            policy=delivery.policy,
            not_found_horizon_s=config.not_found_horizon_s,
            max_pending=config.max_pending,
            on_drop=self._metrics.observe_property_dropped,
            track_changes=store is not None,
        )
        self.store = store
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"PropertySender(pending={len(self.lane)}, in_flight={self._in_flight})"

    def offer(self, decision: Decision) -> None:
        """A decision was merged: its properties wait in the lane (replacing older ones)."""
        result = self.lane.offer_decision(decision, now_ms=self._clock.now_ms())
        if self.store is not None and result is not None and decision.request_id is not None:
            self.store.save_offered(self.lane, self.store.partition_of(decision.request_id))
        if result == "replaced":
            self._metrics.property_superseded.inc()
        if result in ("new", "replaced"):
            self._delivery.wake()

    def dispatch(self, free_slots: int) -> int:
        """Start the property calls that may start now; the ms until more may (a hint).

        Called by the engine only when no rating state is due now.  ``free_slots`` is what
        ratings leave of ``DELIVERY_CONCURRENCY``.  Never blocks.
        """
        delivery = self._delivery
        while True:
            now_ms = self._clock.now_ms()
            due_ms = self.lane.next_due_ms()
            if due_ms is None:
                return _IDLE_MS
            if due_ms > now_ms:
                return min(_IDLE_MS, due_ms - now_ms)
            if self._in_flight >= min(self._config.concurrency, free_slots):
                return _IDLE_MS
            if (
                delivery.breaker.state is not BreakerState.CLOSED
                or delivery.breaker.retry_in_ms() > 0
                or delivery.auth.paused
            ):
                return _GATE_MS
            if not delivery.config.dry_run:
                wait_ms = delivery.rate.try_acquire()
                if wait_ms > 0:
                    return wait_ms
            call = self.lane.take(now_ms)
            if call is None:  # pragma: no cover - next_due_ms said one is due
                return _IDLE_MS
            self._in_flight += 1
            task = asyncio.ensure_future(self._put(call))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _put(self, call: PropertyCall) -> None:
        """Make one call and tell the lane how it ended."""
        outcome: LaneOutcome = "ok"
        retry_after_s: float | None = None
        wait_ms = 0
        try:
            record = await self._poster.put_request_property(
                call.request_id, call.key, call.value
            )
            if record.outcome is DeliveryOutcome.DRY_RUN:
                self._metrics.observe_attempt(record)  # not on the wire: count it here
        except AuthRejected:
            outcome, wait_ms = "auth", self._delivery.auth.retry_in_ms()
        except RequestNotLogged:
            outcome = "not_found"
            self._metrics.property_not_found.inc()
        except RetryableDelivery as exc:
            outcome, retry_after_s = "retryable", exc.retry_after_s
        except PermanentDelivery as exc:
            outcome = "rejected"
            log.warning("property %s of one request rejected: %s", call.key, exc)
        except Exception:  # one call's bug must not stop the lane
            log.exception("a property call failed unexpectedly; trying it again later")
            outcome = "retryable"
        finally:
            self._in_flight -= 1
        self.lane.done(
            call, outcome, now_ms=self._clock.now_ms(),
            retry_after_s=retry_after_s, wait_ms=wait_ms,
        )
        if self.store is not None:
            self.store.mark_changed(self.lane.take_changed())
        self._delivery.wake()

    def apply(self, value: bytes | None, partition: int) -> None:
        """A ``property`` record of the retry topic, in its partition's event: persist the
        entries it names (:meth:`~worker.evidence_store.PendingStore.apply`)."""
        if self.store is not None:
            self.store.apply(self.lane, value, partition)

    def restore(self, items: Iterable[tuple[bytes, bytes]], owned: set[int]) -> int:
        """After recovery: the waiting properties of ``owned`` partitions back into the lane."""
        if self.store is None:
            return 0
        restored = self.store.restore(self.lane, items, owned)
        self.store.mark_changed(self.lane.take_changed())  # entries evicted to make room
        self.update_gauges()
        self._delivery.wake()
        return restored

    def observe(self, record: DeliveryAttempted) -> None:
        """A property call went on the wire: metrics, the auth pause and the rate learn;
        the circuit breaker does not (see the module docstring)."""
        self._delivery.gates.observe(record, breaker=False)

    def update_gauges(self) -> None:
        self._metrics.property_backlog.set(len(self.lane))

    async def drain(self) -> None:
        """Wait for every property call in flight (tests, and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.store is not None:
            await self.store.drain()

    def cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.store is not None:
            self.store.cancel()

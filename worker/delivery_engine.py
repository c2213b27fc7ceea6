"""The delivery engine: each target's whole feedback state into Helicone (DESIGN 5 and 6).

No Faust here: tables are anything with ``get``/``__setitem__``/``items`` (a dict in tests),
records go out through an injected ``send``, time through an injected clock.  The Faust
adapter (:mod:`worker.agents.deliver`) hands it records in context and runs its sender.

Map of the module::

    DeliveryConfig        the delivery slice of the settings
    Delivery              the engine: merge decisions into states, send states, record outcomes
    dead_letter_record()  the JSON document written to ``feedback-dlq``
    REDRIVE_HEADER        marks a decision put back on the outbox by ``dlq redrive``

What is sent.  Per target (a request, or a session) one
:class:`~worker.delivery_state.FeedbackState` holds the rating and every score decided so far;
each change of it is sent as one call that carries all of it
(:func:`~worker.delivery_state.calls_for`), so whichever scores message Helicone keeps of a
batch is complete.  A state that changes while it waits is sent once, as it is by then.

Two halves, so that Helicone can never hold ingestion back:

* **The deliver agent** (in a Faust event, so it may write the table) only merges: each
  outbox decision into its target's state in the changelogged table ``delivery-state``
  (key ``b"<partition>/<r|s>:<id>"``, co-partitioned with the outbox: the outbox is keyed by
  target id, and a decision found on another partition is first forwarded to its owner
  through the internal topic ``<group>-delivery-retry``).  No HTTP, no sleeping: a record is
  merged and acked in microseconds whatever Helicone does, so the outbox's buffer never fills
  and never stops Faust's fetch loop, which also feeds the input topic.
* **The sender** (one task, outside any event) takes due states from an in-memory index at
  the rate :class:`~worker.delivery.AdaptiveRate` allows, at most ``DELIVERY_CONCURRENCY``
  calls in flight and one per target (two calls of one target in flight could reach Helicone
  out of order and the older one would win).  It reads the state, makes the call, and
  reports the outcome for that *version* as a ``result`` record on the retry topic; the agent
  applies it to the table in context (Faust allows table writes only there).

Why this is at-least-once and idempotent: a state is durable (changelogged) before its
outbox record is acked; its outcome is durable only once the ``result`` record is applied.
A crash in between sends the whole state again, which Helicone overwrites key by key.  A
result for an old version settles only that version (``FeedbackState.delivered``), so a change
merged during a call is still sent.  Merging is commutative and idempotent, so duplicates,
replays and redrives never double-count; a duplicate changes nothing and costs no call.

Retry-topic records (header :data:`KIND_HEADER`): ``forward`` (an outbox decision moved to its
owner partition), ``result`` (``{"results": [{"key", "version", "outcome", "retry"?}, ...]}``:
the outcomes of one partition that finished within 100 ms of each other, so a
fast Helicone costs one record per batch of calls rather than one per call) and ``sweep``
(``{"keys"}``: settled states past ``DELIVERY_DEDUPE_TTL_S``, to delete).

Failure policy (the classes are :mod:`worker.delivery`'s):

* success: the version is settled; the decisions it carried count as delivered;
* retryable (timeouts, resets, 408/425/429/5xx): :class:`~worker.delivery.RetryPolicy` picks
  the next attempt (backoff with jitter, ``Retry-After`` honoured), or gives up;
* permanent (400/404/422), or given up: every decision of the version goes to
  ``feedback-dlq``; a later change of the state starts afresh;
* 401/403: everything waits (:class:`~worker.delivery.AuthPause`), one probe per interval;
* the circuit breaker stops calls when most recent ones failed; nothing is dropped;
* a 429 or ``RateLimit-*`` headers slow the rate (:class:`~worker.delivery.AdaptiveRate`).

Evidence properties (``HELICONE_EVIDENCE_PROPERTIES``): :attr:`Delivery.properties`, a
:class:`~worker.evidence_sender.PropertySender`, is offered every merged decision and may
start property calls only when :meth:`Delivery.dispatch` finds no rating due now.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
from pydantic import ValidationError

from worker.delivery import (
    AdaptiveRate,
    AuthPause,
    AuthPauseChanged,
    BreakerState,
    BreakerStateChanged,
    CircuitBreaker,
    DeadLetterReason,
    DeliveryAttempted,
    DeliveryOutcome,
    Endpoint,
    RetryPolicy,
    RetryState,
)
from worker.delivery_state import (
    Call,
    FeedbackState,
    RatingVia,
    calls_for,
    merge,
    new_pairs,
    state_key,
)
from worker.envelopes import (
    DLQ_REASON_HEADER,
    KIND_HEADER,
    REDRIVE_HEADER,
    dead_letter_record,
    has_header,
)
from worker.envelopes import header as _header
from worker.errors import AuthRejected, ConfigError, PermanentDelivery, RetryableDelivery
from worker.events import Decision, is_helicone_request_id
from worker.kafka import delivery_retry_topic_name
from worker.partitioner import partition_for
from worker.readback import ReadBack

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.config import Settings
    from worker.evidence_sender import PropertySender
    from worker.metrics import Metrics

__all__ = [
    "TICK_INTERVAL_S",
    "Delivery",
    "DeliveryConfig",
    "KeyValueTable",
    "Poster",
]

log = logging.getLogger(__name__)

#: How often the timer refreshes the backlog metrics and looks for states to sweep.
TICK_INTERVAL_S = 1.0
#: The longest the sender sleeps without looking again (a kick wakes it sooner).
_MAX_IDLE_S = 0.5
#: While the breaker or the auth pause refuses calls, look again at least this often.
_MIN_GATE_WAIT_MS = 100
#: After an unexpected failure a state is due again this much later; a result record that
#: could not be sent is tried again this much later.
_RESULT_RETRY_MS = 1_000
#: A state restored after a rebalance waits this long before it is sent, so that the agent
#: can apply the result records the partition's previous owner wrote for it (they sit at the
#: head of the retry topic).  Without the wait, a state whose 2xx came in just before the
#: handover would be sent a second time by its new owner.
RESTORE_SETTLE_MS = 3_000
#: How long a revocation waits for the calls of its partitions still in flight.
REVOKE_WAIT_S = 15.0
#: Decoded states kept in memory (the most recently written due ones); a backlog beyond this
#: is read from the table again when it is sent.
_DECODED_MAX = 4_096
#: Outcomes of a partition that finish within this long of each other share one ``result`` record.
#: It delays only when an outcome becomes durable (``_settled`` knows it meanwhile), never a call
#: or a decision.  Each record costs a produce and a pass through Faust's per-record path, which
#: shares the fetch loop with the rekeyed and outbox topics: at 5 ms, steady traffic made one
#: record per call and the windows' lag in the live phase of ``bench/pipeline.py`` grew four- to
#: sixfold; at 100 ms a partition writes at most ten a second.
_RESULT_LINGER_S = 0.1
#: The most outcomes in one ``result`` record (a few hundred bytes each).
_RESULTS_PER_RECORD = 500
#: Settled states deleted per sweep record.
_SWEEP_BATCH = 500
RecordKind = Literal["forward", "result", "sweep"]
#: Sends one record and waits for the broker's acknowledgement:
#: (topic, key, value, partition or None, headers).
Send = Callable[[str, bytes, bytes, int | None, list[tuple[str, bytes]]], Awaitable[None]]


class Poster(Protocol):
    """The Helicone calls (:class:`~worker.helicone.HeliconeClient` is the real one): three
    writes, and the read-back of :mod:`worker.readback`."""

    async def post_request_feedback(self, request_id: str, rating: bool) -> DeliveryAttempted:
        ...

    async def post_request_scores(
        self, request_id: str, scores: Mapping[str, int]
    ) -> DeliveryAttempted:
        ...

    async def post_session_feedback(self, session_id: str, rating: bool) -> DeliveryAttempted:
        ...

    async def get_request(self, request_id: str) -> dict[str, Any] | None:
        ...

    async def aclose(self) -> None:
        ...


class KeyValueTable(Protocol):
    """What delivery needs of a table: a Faust table in the worker, a dict in tests.

    Writes must happen inside the event of the key's partition (Faust's rule); reads may
    happen anywhere.
    """

    def get(self, key: bytes, /) -> bytes | None:
        ...

    def __setitem__(self, key: bytes, value: bytes, /) -> None:
        ...

    def __delitem__(self, key: bytes, /) -> None:
        ...

    def items(self) -> Iterable[tuple[bytes, bytes]]:
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryConfig:
    """The delivery slice of the settings (STYLE 4.6)."""

    partitions: int
    retry_topic: str
    dlq_topic: str
    concurrency: int = 32
    rate_per_s: float = 10.0
    max_attempts: int = 12
    max_age_s: float = 86_400.0
    backoff_base_s: float = 1.0
    backoff_cap_s: float = 600.0
    breaker_cool_down_s: float = 30.0
    auth_probe_interval_s: float = 30.0
    dedupe_ttl_s: float = 7 * 86_400.0
    rate_recovery_s: float = 60.0
    rating_via: RatingVia = "score"
    verify_sample: float = 0.0
    verify_delay_s: float = 660.0
    verify_reads_per_5min: int = 600
    dry_run: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> DeliveryConfig:
        return cls(
            partitions=settings.topic_partitions,
            retry_topic=delivery_retry_topic_name(settings),
            dlq_topic=settings.topic_dlq,
            concurrency=settings.delivery_concurrency,
            rate_per_s=settings.delivery_rate_per_s,
            max_attempts=settings.delivery_max_attempts,
            max_age_s=settings.delivery_max_age_s,
            backoff_base_s=settings.delivery_backoff_base_s,
            backoff_cap_s=settings.delivery_backoff_cap_s,
            breaker_cool_down_s=settings.delivery_breaker_cool_down_s,
            auth_probe_interval_s=settings.delivery_auth_probe_interval_s,
            dedupe_ttl_s=settings.delivery_dedupe_ttl_s,
            rating_via=settings.helicone_rating_via,
            verify_sample=settings.delivery_verify_sample,
            verify_delay_s=settings.delivery_verify_delay_s,
            verify_reads_per_5min=settings.delivery_verify_reads_per_5min,
            dry_run=settings.feedback_dry_run,
        )


@dataclass(slots=True)
class _Due:
    """A state waiting on one of this worker's partitions (the in-memory index)."""

    partition: int
    due_ms: int
    oldest_ms: int
    #: True after a failed attempt (the ``feedback_delivery_retry_queue`` gauge).
    retrying: bool = False


class Delivery:
    """The delivery engine; see the module docstring.  All methods run on the event loop.

    ``on_outbox`` and ``on_retry`` must be called inside the Faust event of the record they
    handle (they write the table); :meth:`dispatch`, :meth:`run`, :meth:`tick`,
    :meth:`rebuild` and :meth:`on_revoked` never write it.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        *,
        states: KeyValueTable,
        send: Send,
        metrics: Metrics,
        clock: Clock,
        poster: Poster | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        self.config = config
        self.poster = poster
        self.states = states
        self.metrics = metrics
        self.clock = clock
        self._send = send
        self.policy = policy or RetryPolicy(
            base_s=config.backoff_base_s,
            cap_s=config.backoff_cap_s,
            max_attempts=config.max_attempts,
            max_age_s=config.max_age_s,
        )
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
        self.readback = ReadBack(
            sample=0.0 if config.dry_run else config.verify_sample,
            delay_s=config.verify_delay_s,
            reads_per_5min=config.verify_reads_per_5min,
            clock=clock,
            metrics=metrics,
        )
        self._heap: list[tuple[int, int, bytes]] = []  # (due_ms, tie, table key)
        self._tie = itertools.count()
        self._due: dict[bytes, _Due] = {}
        self._inflight: dict[bytes, _Due] = {}
        self._again: set[bytes] = set()  # became due while in flight: look again after
        #: Versions settled (2xx or given up) whose result record the agent has not applied to
        #: the table yet: until it has, the table still says "due", and must not be believed.
        self._settled: dict[bytes, tuple[int, bool]] = {}  # key -> (version, delivered?)
        #: Decoded states, written through: the engine is the table's only writer, so a state
        #: it wrote is the table's state until a recovery rewrites the table (then cleared).
        self._decoded: dict[bytes, FeedbackState] = {}
        #: Outcomes waiting to go out as one ``result`` record per partition (see _report);
        #: a list is its batch's identity, so a sent batch is never taken for the open one.
        self._results: dict[int, list[dict[str, Any]]] = {}
        #: Result records on their way, per partition (awaited when it is revoked).
        self._recording: dict[int, set[asyncio.Task[None]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_of: dict[bytes, asyncio.Task[None]] = {}
        #: Partitions whose states this worker sends; None until the first rebuild.
        self._owned: set[int] | None = None
        self._kick = asyncio.Event()
        self._dedupe_ttl_ms = int(config.dedupe_ttl_s * 1000)
        self._sweep_interval_ms = int(min(3_600.0, config.dedupe_ttl_s / 4) * 1000)
        self._next_sweep_ms = clock.now_ms() + self._sweep_interval_ms
        #: The evidence lane, when HELICONE_EVIDENCE_PROPERTIES is on (set by the adapter).
        self.properties: PropertySender | None = None

    def __repr__(self) -> str:
        return (
            f"Delivery(due={len(self._due)}, in_flight={len(self._inflight)}, "
            f"breaker={self.breaker.state.name}, auth_paused={self.auth.paused})"
        )

    # ------------------------------------------------------------------ observers

    def observe(self, record: DeliveryAttempted) -> None:
        """Every call that went on the wire: metrics, breaker, auth pause and rate learn."""
        if record.endpoint == "request_property" and self.properties is not None:
            self.properties.observe(record)  # it keeps property failures out of the breaker
            return
        self.metrics.observe_attempt(record)
        self.breaker.record(record.outcome)
        self.auth.record(record.outcome)
        if record.status == 429:
            self.metrics.delivery_throttled.inc()
            self.rate.throttled(record.retry_after_s)
        self.rate.answered(remaining=record.rate_remaining, reset_s=record.rate_reset_s)

    def _breaker_changed(self, change: BreakerStateChanged) -> None:
        self.metrics.observe_breaker(change)
        if change.current is BreakerState.OPEN:
            log.warning(
                "circuit breaker open: most recent calls to Helicone failed; no calls for "
                "%.0f s, then one probe (waiting states are kept)",
                self.config.breaker_cool_down_s,
            )
        elif change.current is BreakerState.CLOSED:
            log.info("circuit breaker closed: a probe succeeded, delivery resumes")
            self._kick.set()

    def _auth_changed(self, change: AuthPauseChanged) -> None:
        self.metrics.observe_auth_pause(change)
        if change.paused:
            log.error(
                "delivery paused: Helicone rejected the API key (401/403). Check "
                "HELICONE_API_KEY (write access, right region). Nothing is dead-lettered; "
                "one state is tried as a probe every %.0f s",
                self.config.auth_probe_interval_s,
            )
        else:
            log.warning("delivery resumed: Helicone accepted the API key again")
            self._kick.set()

    def wake(self) -> None:
        """Make the sender look again now (the evidence lane has work or a free slot)."""
        self._kick.set()

    @property
    def backlog(self) -> int:
        """States waiting to be sent or in flight on this worker's partitions."""
        return len(self._due) + len(self._inflight)

    # ------------------------------------------------------------------ records, in context

    async def on_outbox(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
        headers: list[tuple[str, bytes]] | None = None,
        topic: str = "outbox",
    ) -> None:
        """One outbox record: merge it into its target's state, or forward it to its owner."""
        decision = _parse_decision(value)
        if decision is None:
            await self._dead_letter_unreadable(
                key=key, value=value, topic=topic, partition=partition, offset=offset
            )
            return
        target = _target_bytes(decision)
        if target is not None:
            owner = partition_for(target, self.config.partitions)
            if owner != partition:
                await self._send(
                    self.config.retry_topic,
                    target,
                    value or b"",
                    owner,
                    [(KIND_HEADER, b"forward"), *_redrive_headers(headers)],
                )
                return
        await self._merge(decision, partition, redrive=has_header(headers, REDRIVE_HEADER))

    async def on_retry(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
        headers: list[tuple[str, bytes]] | None,
    ) -> None:
        """One record of the internal retry topic (kinds in the module docstring)."""
        kind = _header(headers, KIND_HEADER)
        if kind == b"forward":
            decision = _parse_decision(value)
            if decision is None:
                await self._dead_letter_unreadable(
                    key=key,
                    value=value,
                    topic=self.config.retry_topic,
                    partition=partition,
                    offset=offset,
                )
                return
            await self._merge(decision, partition, redrive=has_header(headers, REDRIVE_HEADER))
        elif kind == b"result":
            try:
                document = orjson.loads(value or b"{}")
                self._apply_results(document, partition)
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning(
                    "ignoring a malformed result on %s[%d]@%d",
                    self.config.retry_topic, partition, offset,
                )
        elif kind == b"sweep":
            self._on_sweep(orjson.loads(value or b"{}").get("keys", []), partition)
        else:
            log.warning(
                "ignoring a record of unknown kind %r on %s[%d]@%d",
                kind, self.config.retry_topic, partition, offset,
            )

    async def _merge(self, decision: Decision, partition: int, *, redrive: bool) -> None:
        """A decision seen on its owner partition: fold it into the state; due if changed."""
        if decision.is_abstention:  # nothing to post or validate: no state, no call
            self.metrics.delivery_unchanged.inc()
            return
        problem = _problem(decision)
        if problem is not None:
            await self._dead_letter(
                [decision.model_dump(mode="json")], RetryState(),
                target=_target_bytes(decision) or decision.decision_id.encode(),
                reason="invalid", message=problem,
            )
            return
        key = state_key(decision)
        assert key is not None  # _problem checked the target id
        table_key = _table_key(partition, key)
        held = self._read(table_key)
        before = self._as_known(table_key, held) if held is not None else None
        now_ms = self.clock.now_ms()
        state, changed = merge(before, decision, now_ms=now_ms, force=redrive)
        for pair in new_pairs(before, state):
            self.metrics.observe_agreement(pair)
        if not changed and before is not None and decision.decision_id in before.recent_ids:
            self.metrics.delivery_duplicates.labels(
                state="pending" if before.due else "delivered"
            ).inc()
        elif not changed:  # a first decision that changes nothing posted: no call needed
            self.metrics.delivery_unchanged.inc()
        self._write(table_key, state)
        if state.due:
            self._schedule(table_key, partition, state, keep_earlier=True)
        if self.properties is not None:
            self.properties.offer(decision)

    def _apply_results(self, document: Mapping[str, Any], partition: int) -> None:
        """A ``result`` record: ``{"results": [outcome, ...]}``, or one outcome alone (the
        form written before outcomes were batched, still read from older retry topics)."""
        for outcome in document.get("results", (document,)):
            self._apply_result(outcome, partition)

    def _apply_result(self, document: Mapping[str, Any], partition: int) -> None:
        table_key = _table_key(partition, str(document["key"]))
        state = self._read(table_key)
        if state is None:
            return  # swept meanwhile: nothing left to settle
        version, outcome = int(document["version"]), document["outcome"]
        now_ms = self.clock.now_ms()
        if outcome == "delivered":
            state = state.delivered(version, now_ms=now_ms)
        elif outcome == "dead":
            state = state.given_up(version, now_ms=now_ms)
        elif outcome == "failed" and state.due:
            state = state.failed(_retry_from_json(document["retry"]), now_ms=now_ms)
        else:
            return
        self._write(table_key, state)
        if max(state.sent, state.dead) >= self._settled_version(table_key):
            self._settled.pop(table_key, None)

    def _on_sweep(self, keys: Iterable[Any], partition: int) -> None:
        cutoff_ms = self.clock.now_ms() - self._dedupe_ttl_ms
        removed = 0
        for key in keys:
            table_key = _table_key(partition, str(key))
            state = self._read(table_key)
            if state is not None and not state.due and state.updated_at_ms <= cutoff_ms:
                self._forget(table_key)
                removed += 1
        if removed:
            log.debug("forgot %d settled states on partition %d", removed, partition)

    # ------------------------------------------------------------------ the sender

    async def run(self) -> None:
        """The sender: dispatch due states for as long as the worker runs."""
        try:
            while True:
                wait_ms = self.dispatch()
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._kick.wait(), timeout=min(_MAX_IDLE_S, max(wait_ms, 1) / 1000)
                    )
        finally:
            for task in list(self._tasks):
                task.cancel()

    def dispatch(self) -> int:
        """Start the calls that may start now; the milliseconds until more may (a hint).

        Stops at the first refusal, in this order: no state is due, every slot is busy, the
        breaker or the auth pause refuses, the rate has no token.  Never blocks.
        """
        while True:
            now_ms = self.clock.now_ms()
            table_key = self._peek(now_ms)
            if table_key is None:  # no rating due now: the evidence lane may use the budget
                wait_ms = self._next_due_in(now_ms)
                if self.properties is not None:
                    free = self.config.concurrency - len(self._inflight)
                    wait_ms = min(wait_ms, self.properties.dispatch(free))
                return wait_ms
            if len(self._inflight) >= self.config.concurrency:
                return _MAX_IDLE_S_MS
            gate_ms = max(self.auth.retry_in_ms(), self.breaker.retry_in_ms())
            if gate_ms > 0 or not self.breaker.allow() or not self.auth.allow():
                return max(gate_ms, _MIN_GATE_WAIT_MS)
            if not self.config.dry_run:
                wait_ms = self.rate.try_acquire()
                if wait_ms > 0:
                    return wait_ms
            heapq.heappop(self._heap)
            due = self._due.pop(table_key)
            self._inflight[table_key] = due
            task = asyncio.ensure_future(self._deliver(table_key, due))
            self._tasks.add(task)
            self._task_of[table_key] = task
            task.add_done_callback(self._tasks.discard)

    def _peek(self, now_ms: int) -> bytes | None:
        """The earliest due state that may be sent now (stale heap entries dropped)."""
        while self._heap:
            due_ms, _, table_key = self._heap[0]
            due = self._due.get(table_key)
            if due is None or due.due_ms != due_ms:
                heapq.heappop(self._heap)
                continue
            if self._owned is not None and due.partition not in self._owned:
                heapq.heappop(self._heap)
                del self._due[table_key]
                continue
            if table_key in self._inflight:
                heapq.heappop(self._heap)
                del self._due[table_key]
                self._again.add(table_key)
                continue
            return table_key if due_ms <= now_ms else None
        return None

    def next_due_ms(self) -> int | None:
        """When the earliest due state may go (stale index entries dropped), or None."""
        self._peek(self.clock.now_ms())
        return self._heap[0][0] if self._heap else None

    def _next_due_in(self, now_ms: int) -> int:
        return max(1, self._heap[0][0] - now_ms) if self._heap else _MAX_IDLE_S_MS

    async def drain(self) -> None:
        """Wait for every call in flight (tests, and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.properties is not None:
            await self.properties.drain()

    async def _deliver(self, table_key: bytes, due: _Due) -> None:
        """Send one state as it is now, and report the outcome of that version."""
        try:
            state = self._read(table_key)
            if state is None or not self._is_due(table_key, state):
                return
            await self._attempt(table_key, due, state)
        except Exception:  # one state's bug must not stop the sender
            log.exception("delivery of a state failed unexpectedly; trying it again later")
            self._reschedule(table_key, due, self.clock.now_ms() + _RESULT_RETRY_MS)
        finally:
            self._inflight.pop(table_key, None)
            self._task_of.pop(table_key, None)
            if table_key in self._again:
                self._again.discard(table_key)
                state = self._read(table_key)
                if state is not None and state.due:
                    self._schedule(table_key, due.partition, state, keep_earlier=True)
            self._kick.set()

    async def _attempt(self, table_key: bytes, due: _Due, state: FeedbackState) -> None:
        version, now_ms = state.version, self.clock.now_ms()
        retry = state.retry.started(now_ms)
        key = table_key.split(b"/", 1)[1].decode()
        calls = calls_for(state, via=self.config.rating_via)
        endpoint: Endpoint = calls[0].endpoint if calls else "request_score"
        try:
            for call in calls:
                endpoint = call.endpoint
                await self._call(call, state.target_id)
        except AuthRejected as exc:
            wait_ms = max(self.auth.retry_in_ms(), _MIN_GATE_WAIT_MS)
            log.debug("state %s waits for the auth probe: %s", key, exc)
            self._reschedule(table_key, due, self.clock.now_ms() + wait_ms)
            return
        except PermanentDelivery as exc:
            retry = retry.noted(
                endpoint=endpoint, status=exc.status, error=str(exc),
                body=exc.body_excerpt,
            )
            reason: DeadLetterReason = "rejected" if exc.status is not None else "invalid"
            await self._give_up(table_key, due, state, retry, reason=reason, message=str(exc))
            return
        except RetryableDelivery as exc:
            retry, give_up = retry.failed(
                self.policy,
                now_ms=self.clock.now_ms(),
                endpoint=endpoint,
                status=exc.status,
                error=str(exc),
                body=exc.body_excerpt,
                retry_after_s=exc.retry_after_s,
            )
            if give_up is not None:
                await self._give_up(table_key, due, state, retry, reason=give_up,
                                    message=str(exc))
                return
            log.info(
                "state %s: %s (attempt %d); next attempt in %.1f s",
                key, exc, retry.attempts, (retry.next_at_ms - self.clock.now_ms()) / 1000,
            )
            self._reschedule(table_key, due, retry.next_at_ms, retrying=True)
            self._report(due.partition, key, version, "failed", retry=retry)
            return
        now_ms = self.clock.now_ms()
        for decision in state.settled_decisions(version, after=self._counted_version(table_key)):
            decided_at = datetime.fromisoformat(decision["decided_at"]).timestamp()
            self.metrics.observe_delivered(state.target, delay_s=now_ms / 1000 - decided_at)
        self._settled[table_key] = (version, True)
        if state.target == "request" and calls and self.config.rating_via == "score":
            self.readback.delivered(state.target_id, calls[-1].body["scores"])
        self._report(due.partition, key, version, "delivered")

    async def _give_up(self, table_key: bytes, due: _Due, state: FeedbackState,
                       retry: RetryState, *, reason: DeadLetterReason, message: str) -> None:
        key = table_key.split(b"/", 1)[1].decode()
        await self._dead_letter(
            state.settled_decisions(state.version, after=self._counted_version(table_key)),
            retry,
            target=state.target_id.encode(), reason=reason, message=message,
        )
        self._settled[table_key] = (state.version, False)
        self._report(due.partition, key, state.version, "dead")

    def _report(
        self,
        partition: int,
        key: str,
        version: int,
        outcome: Literal["delivered", "failed", "dead"],
        *,
        retry: RetryState | None = None,
    ) -> None:
        """Make an outcome durable: it goes out in a ``result`` record the agent applies to
        the table, shared by the outcomes of that partition that finish within
        ``_RESULT_LINGER_S``.

        Returns at once: the call's slot is free as soon as Helicone answered.  Until the
        record is applied, ``_settled`` holds the outcome in memory, so the state is not sent
        again by this process; a crash before then sends it again, which Helicone overwrites
        key by key.  Waiting for the broker here held each slot a produce round trip longer
        than the call, which capped a fast Helicone at ``DELIVERY_CONCURRENCY`` per round trip.
        """
        document: dict[str, Any] = {"key": key, "version": version, "outcome": outcome}
        if retry is not None:
            document["retry"] = retry  # orjson writes a dataclass field by field
        batch = self._results.get(partition)
        if batch is None or len(batch) >= _RESULTS_PER_RECORD:
            batch = self._results[partition] = []
            task = asyncio.ensure_future(self._send_results(partition, batch))
            recording = self._recording.setdefault(partition, set())
            for tasks in (self._tasks, recording):
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        batch.append(document)

    async def _send_results(self, partition: int, batch: list[dict[str, Any]]) -> None:
        """Send ``batch`` after the linger; until acknowledged, or until the partition is no
        longer this worker's (its next owner sends those states again, which is harmless)."""
        await asyncio.sleep(_RESULT_LINGER_S)
        if self._results.get(partition) is batch:
            del self._results[partition]
        value = orjson.dumps({"results": batch})
        while True:
            try:
                await self._send(self.config.retry_topic, b"results", value, partition,
                                 [(KIND_HEADER, b"result")])
                return
            except Exception:
                if self._owned is not None and partition not in self._owned:
                    log.warning("could not record %d delivery outcome(s) of revoked partition "
                                "%d; its next owner sends them again", len(batch),
                                partition)
                    return
                log.warning("could not record %d delivery outcome(s); trying again",
                            len(batch))
                await asyncio.sleep(_RESULT_RETRY_MS / 1000)

    async def _call(self, call: Call, target_id: str) -> None:
        poster = self.poster
        if poster is None:
            raise ConfigError(
                ["HELICONE_API_KEY: missing (expected a key with write access, sk-helicone-...; "
                 "or set FEEDBACK_DRY_RUN=true)"]
            )
        if call.endpoint == "request_score":
            record = await poster.post_request_scores(target_id, call.body["scores"])
        elif call.endpoint == "request_feedback":
            record = await poster.post_request_feedback(target_id, call.body["rating"])
        else:
            record = await poster.post_session_feedback(target_id, call.body["rating"])
        if record.outcome is DeliveryOutcome.DRY_RUN:
            # The client's observer sees only calls on the wire; count the stand-ins here.
            self.metrics.observe_attempt(record)

    # ------------------------------------------------------------------ the due index

    def _schedule(
        self,
        table_key: bytes,
        partition: int,
        state: FeedbackState,
        *,
        keep_earlier: bool,
        not_before_ms: int = 0,
    ) -> None:
        """Make ``state`` due at its retry time (now if none); an entry already there stays.

        A state that changes while it waits keeps its place: it is replaced, not queued.
        """
        now_ms = self.clock.now_ms()
        if table_key in self._inflight:
            self._again.add(table_key)
            return
        if not self._is_due(table_key, state):
            return
        if keep_earlier and table_key in self._due:
            return
        due_ms = max(now_ms, state.retry.next_at_ms, not_before_ms)
        oldest = state.oldest_unsent_ms or now_ms
        self._due[table_key] = _Due(partition, due_ms, oldest, state.retry.attempts > 0)
        heapq.heappush(self._heap, (due_ms, next(self._tie), table_key))
        self._kick.set()

    def _is_due(self, table_key: bytes, state: FeedbackState) -> bool:
        return state.due and state.version > self._settled_version(table_key)

    def _settled_version(self, table_key: bytes) -> int:
        return self._settled.get(table_key, (0, True))[0]

    def _counted_version(self, table_key: bytes) -> int:
        """The highest version whose decisions are counted (delivered or dead): known in
        memory until its result record is applied, then in the table.  Read both when a call
        ends, not from the call's copy of the state: a record applied meanwhile moves it."""
        held = self._read(table_key)
        in_table = max(held.sent, held.dead) if held is not None else 0
        return max(self._settled_version(table_key), in_table)

    def _as_known(self, table_key: bytes, state: FeedbackState) -> FeedbackState:
        """``state`` with the outcome this process already knows applied (its result record
        may still be on its way), so a merge does not file a decision under a settled version."""
        known = self._settled.get(table_key)
        if known is None:
            return state
        version, delivered = known
        now_ms = self.clock.now_ms()
        return (state.delivered(version, now_ms=now_ms) if delivered
                else state.given_up(version, now_ms=now_ms))

    def _read(self, table_key: bytes) -> FeedbackState | None:
        state = self._decoded.get(table_key)
        if state is None:
            raw = self.states.get(table_key)
            if raw is None:
                return None
            state = FeedbackState.from_json(raw)
        return state

    def _write(self, table_key: bytes, state: FeedbackState) -> None:
        """Write ``state`` to the table (in context) and keep it decoded while it may be read
        again soon: until it is settled.  Settled states are read only by a later merge."""
        self.states[table_key] = state.to_json()
        self._decoded.pop(table_key, None)
        if state.due:
            self._decoded[table_key] = state  # last in the eviction order
            if len(self._decoded) > _DECODED_MAX:
                del self._decoded[next(iter(self._decoded))]

    def _forget(self, table_key: bytes) -> None:
        self._decoded.pop(table_key, None)
        with contextlib.suppress(KeyError):
            del self.states[table_key]

    def _reschedule(
        self, table_key: bytes, due: _Due, due_ms: int, *, retrying: bool = False
    ) -> None:
        self._due[table_key] = _Due(due.partition, due_ms, due.oldest_ms, retrying)
        heapq.heappush(self._heap, (due_ms, next(self._tie), table_key))

    def rebuild(self, items: Iterable[tuple[bytes, bytes]], owned: set[int]) -> int:
        """After a rebalance and recovery: index the due states of ``owned`` partitions.

        ``items`` are the table's entries (every partition this worker holds).
        """
        self._owned = set(owned)
        self._heap.clear()
        self._due.clear()
        self._decoded.clear()  # recovery may have rewritten any state
        for table_key, raw in items:
            partition = _partition_of(table_key)
            if partition not in owned or raw is None:
                continue
            state = FeedbackState.from_json(raw)
            if state.due:
                self._schedule(
                    table_key, partition, state, keep_earlier=False,
                    not_before_ms=self.clock.now_ms() + RESTORE_SETTLE_MS,
                )
        log.info("delivery: %d due state(s) on partitions %s", len(self._due), sorted(owned))
        self.update_gauges()
        return len(self._due)

    def on_revoked(self, partitions: set[int]) -> None:
        """Partitions went to another worker: stop sending their states."""
        if self._owned is not None:
            self._owned -= partitions
        for table_key, due in list(self._due.items()):
            if due.partition in partitions:
                del self._due[table_key]
        for table_key in [k for k in self._decoded if _partition_of(k) in partitions]:
            del self._decoded[table_key]  # their next owner may change them
        self.update_gauges()

    async def wait_revoked(self, partitions: set[int], *, timeout_s: float = REVOKE_WAIT_S) -> None:
        """Wait for the calls of ``partitions`` still in flight, and their result records.

        Run while a rebalance revokes them, before their new owner restores them: a call
        whose outcome is recorded is not made again there.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        calls = [task for key, task in self._task_of.items() if _partition_of(key) in partitions]
        if calls:
            await asyncio.wait(calls, timeout=timeout_s)  # their outcomes join a record...
        records = [task for p in partitions for task in self._recording.get(p, ())]
        if records:  # ...and the records go out
            await asyncio.wait(records, timeout=max(0.0, deadline - loop.time()))

    def update_gauges(self) -> None:
        """Backlog, its oldest change, the time to drain it and the rate in force."""
        now_ms = self.clock.now_ms()
        waiting = [*self._due.values(), *self._inflight.values()]
        oldest = min((d.oldest_ms for d in waiting), default=now_ms)
        per_s = self.rate.per_s
        self.metrics.delivery_backlog.set(len(waiting))
        self.metrics.delivery_retry_queue.set(sum(1 for d in self._due.values() if d.retrying))
        self.metrics.delivery_backlog_age.set(max(0.0, (now_ms - oldest) / 1000))
        self.metrics.delivery_drain.set(0.0 if self.config.dry_run else len(waiting) / per_s)
        self.metrics.delivery_rate.set(per_s)
        if self.properties is not None:
            self.properties.update_gauges()

    async def tick(self, items: Callable[[], Iterable[tuple[bytes, bytes]]]) -> None:
        """Run by the timer: refresh the gauges, read back what is due; now and then, sweep
        old settled states."""
        self.update_gauges()
        await self.readback.tick(self.poster)
        if self.clock.now_ms() >= self._next_sweep_ms:
            self._next_sweep_ms = self.clock.now_ms() + self._sweep_interval_ms
            await self.sweep(items())

    async def sweep(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Find settled states past their TTL and send their partitions a ``sweep`` record.

        Reads only (outside any event); the deletes happen in the agent, in context.
        """
        cutoff_ms = self.clock.now_ms() - self._dedupe_ttl_ms
        expired: dict[int, list[str]] = {}
        for index, (table_key, raw) in enumerate(items):
            if index % 1_000 == 999:
                await asyncio.sleep(0)  # a big table must not stall heartbeats
            partition = _partition_of(table_key)
            if self._owned is not None and partition not in self._owned:
                continue
            state = FeedbackState.from_json(raw)
            if not state.due and state.updated_at_ms <= cutoff_ms:
                expired.setdefault(partition, []).append(table_key.split(b"/", 1)[1].decode())
        for partition, keys in expired.items():
            for start in range(0, len(keys), _SWEEP_BATCH):
                await self._send(
                    self.config.retry_topic,
                    b"sweep",
                    orjson.dumps({"keys": keys[start : start + _SWEEP_BATCH]}),
                    partition,
                    [(KIND_HEADER, b"sweep")],
                )
        return sum(len(keys) for keys in expired.values())

    async def aclose(self) -> None:
        if self.properties is not None:
            self.properties.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.poster is not None:
            await self.poster.aclose()

    # ------------------------------------------------------------------ dead letters

    async def _dead_letter(
        self,
        decisions: list[dict[str, Any]],
        state: RetryState,
        *,
        target: bytes,
        reason: DeadLetterReason,
        message: str,
    ) -> None:
        """One dead-letter record per decision (each acknowledged), so redrive can replay it."""
        now_ms = self.clock.now_ms()
        for decision in decisions:
            record = dead_letter_record(
                decision_id=decision.get("decision_id"),
                decision=decision,
                reason=reason,
                message=message,
                state=state,
                now_ms=now_ms,
            )
            await self._send(
                self.config.dlq_topic, target, orjson.dumps(record), None,
                [(DLQ_REASON_HEADER, reason.encode())],
            )
            self.metrics.observe_dead_letter(reason)
        log.warning(
            "%d decision(s) for one target dead-lettered (%s) after %d attempt(s): %s",
            len(decisions), reason, state.attempts, message,
        )

    async def _dead_letter_unreadable(
        self, *, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int
    ) -> None:
        """Not a decision at all: keep the bytes and where they came from."""
        record = dead_letter_record(
            decision_id=None,
            decision=None,
            reason="invalid",
            message="not a valid decision (DESIGN 5)",
            state=RetryState(),
            now_ms=self.clock.now_ms(),
            source={"topic": topic, "partition": partition, "offset": offset},
            value=value,
        )
        await self._send(
            self.config.dlq_topic, key or b"", orjson.dumps(record), None,
            [(DLQ_REASON_HEADER, b"invalid")],
        )
        self.metrics.observe_dead_letter("invalid")
        log.warning("record %s[%d]@%d is not a decision; dead-lettered", topic, partition, offset)


_MAX_IDLE_S_MS = int(_MAX_IDLE_S * 1000)


# --------------------------------------------------------------------------- records


# --------------------------------------------------------------------------- helpers


def _table_key(partition: int, key: str) -> bytes:
    return f"{partition}/{key}".encode()


def _partition_of(table_key: bytes) -> int:
    return int(table_key.split(b"/", 1)[0])


def _redrive_headers(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    return [(REDRIVE_HEADER, b"1")] if has_header(headers, REDRIVE_HEADER) else []


def _parse_decision(value: bytes | None) -> Decision | None:
    if not value:
        return None
    try:
        return Decision.model_validate_json(value)
    except ValidationError:
        return None


def _target_bytes(decision: Decision) -> bytes | None:
    target = decision.request_id if decision.target == "request" else decision.session_id
    return target.encode() if target else None


def _problem(decision: Decision) -> str | None:
    """Why this decision can never be posted as it is, or None (DESIGN 6: validate locally)."""
    if decision.target == "request":
        if decision.request_id is None:
            return "target is request but request_id is null"
        if not is_helicone_request_id(decision.request_id):
            return "request_id is not a UUID v1-v5 (Helicone answers those with a 500)"
        return None
    if not decision.session_id or len(decision.session_id) > 128:
        return "target is session but session_id is missing or longer than 128 characters"
    if decision.scores:
        return "a session decision cannot carry scores (Helicone has no endpoint)"
    return None


def _retry_from_json(document: Mapping[str, Any]) -> RetryState:
    fields = dict(document)
    fields["done"] = tuple(fields.get("done", ()))
    return RetryState(**fields)

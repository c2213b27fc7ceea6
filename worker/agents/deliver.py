"""The deliver adapter: each outbox decision's effect in Helicone, once (DESIGN 5 and 6).

Map of the module::

    DeliveryConfig        the delivery slice of the settings
    Delivery              the engine: one call per record, state in two tables, a timer
    install_delivery()    wires it into the Faust app: topics, tables, agent, timer, readiness
    dead_letter_record()  the JSON document written to ``feedback-dlq``
    REDRIVE_HEADER        marks a decision put back on the outbox by ``dlq redrive``

Records and state.  Everything about one decision lives on one partition number: the outbox
is keyed by the decision's target id (request or session id), and delivery's own records go to
``partition_for(target id)`` explicitly.  A decision found on another partition (a producer
that keyed it otherwise) is first forwarded there.  Two changelogged tables, co-partitioned with
the outbox, hold the state; their keys are ``b"<partition>/<decision_id>"`` so one partition's
keys can be picked out after a rebalance:

* ``delivery-pending``: the decision and its :class:`~worker.delivery.RetryState` (attempts,
  calls already done, when to try next) while it waits for a retry, the breaker or the auth
  pause;
* ``delivery-done``: decision ids that are settled (delivered, or dead-lettered), with the
  time, kept for ``DELIVERY_DEDUPE_TTL_S``.  A decision written to the outbox twice, or
  redelivered after a crash, finds its id here and is skipped.  A dead-lettered id is skipped
  too, unless the record carries :data:`REDRIVE_HEADER`.

Faust allows table writes only inside stream iteration (the event picks the partition), so
the timer never writes state.  It produces small records to the internal retry topic
``<group>-delivery-retry`` instead, and the deliver agent acts on them in context:

* ``due``      ``{"id", "seq"}``: a waiting decision's time has come.  The record is acted on
               only if the pending entry still has that ``seq``; a doubled or stale wake-up
               (after a crash or a rebalance) is ignored;
* ``forward``  an outbox decision moved to the partition that owns its target;
* ``sweep``    ``{"ids"}``: settled ids past their TTL, to delete.

Concurrency.  The agent runs ``DELIVERY_CONCURRENCY`` actors on the one stream of outbox and
retry records; each actor makes at most one call at a time, so that is the bound of calls in
flight, and each call runs inside its own event so the table writes after it are legal.  Faust
commits only offsets below every unfinished event.  A waiting decision holds no actor: it is
written to ``delivery-pending``, its event is acked, and an in-memory heap of due times (rebuilt
from the table after every rebalance and recovery) tells the timer when to wake it.  So
waiting retries survive a restart, and neither block other decisions nor the partition.  Only
the token bucket (DELIVERY_RATE_PER_S) makes an actor sleep: that is the rate limit working as
back-pressure on the outbox (at 10/s with 32 actors, about 3 s at most).  Two copies of one
decision in flight at once are serialised per decision id.

Failure policy (the classes are :mod:`worker.delivery`'s):

* success: the call is noted in ``done``, and a retry never makes it again; when every call of
  the decision is done it is settled as delivered;
* retryable (timeouts, resets, 408/425/429/5xx): :class:`~worker.delivery.RetryPolicy` picks
  the next attempt (backoff with jitter, Retry-After honoured), or says to dead-letter it
  (``max_attempts`` / ``max_age``);
* permanent (400/404/422, or found invalid before any call): dead-lettered at once;
* 401/403: delivery pauses (:class:`~worker.delivery.AuthPause`), the decision waits without
  using an attempt, and one decision is let through as a probe every
  ``DELIVERY_AUTH_PROBE_INTERVAL_S``; nothing is dead-lettered for it;
* the circuit breaker opens when most recent calls failed; while it is open, decisions wait
  (durably) and the timer wakes one at a time as probes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson
from pydantic import ValidationError

from worker.delivery import (
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
    TokenBucket,
    WaitingFor,
    plan_calls,
)
from worker.errors import AuthRejected, ConfigError, PermanentDelivery, RetryableDelivery
from worker.events import Decision, is_helicone_request_id
from worker.kafka import (
    DELIVERY_DONE_TABLE,
    DELIVERY_PENDING_TABLE,
    delivery_retry_topic_name,
    partition_for,
)

if TYPE_CHECKING:
    import faust

    from worker.app import Readiness
    from worker.clock import Clock
    from worker.config import Settings
    from worker.metrics import Metrics

__all__ = [
    "KIND_HEADER",
    "REDRIVE_HEADER",
    "Delivery",
    "DeliveryConfig",
    "Poster",
    "dead_letter_record",
    "install_delivery",
]

log = logging.getLogger(__name__)

#: Header naming what a retry-topic record is: ``due``, ``forward`` or ``sweep``.
KIND_HEADER = "fw-delivery"
#: Header on outbox records written by ``feedback-worker dlq redrive``: a dead-lettered id may
#: be tried again (a delivered one is still skipped).
REDRIVE_HEADER = "fw-redrive"
#: Header on dead-letter records: the reason, so tools can filter without parsing.
DLQ_REASON_HEADER = "fw-dlq-reason"

#: How often the timer looks at the due heap (the resolution of retry times).
TICK_INTERVAL_S = 0.1
#: While the breaker is half-open or delivery is paused on auth, wake one decision (the probe)
#: at most this often; the others stay where they are.
_PROBE_RELEASE_GAP_MS = 1_000
#: A woken decision whose wake-up was not acted on in this time is woken again (a lost record,
#: a crashed actor); a doubled wake-up is harmless, see ``seq``.
_WAKE_WATCHDOG_MS = 300_000
#: After a failed send of a wake-up, try again this much later.
_WAKE_RETRY_MS = 1_000
#: A decision refused by the breaker or the auth pause waits at least this long.
_MIN_GATE_WAIT_MS = 100
#: Largest number of decisions woken in one tick (beyond the release rate).
_MAX_WAKE_BATCH = 1_000
#: Settled ids deleted per sweep record.
_SWEEP_BATCH = 500
#: Raw bytes of an undecodable outbox record kept in its dead-letter record.
_MAX_DLQ_VALUE_BYTES = 65_536
_MAX_MESSAGE_CHARS = 1_000

RecordKind = Literal["due", "forward", "sweep"]
#: Sends one record and waits for the broker's acknowledgement:
#: (topic, key, value, partition or None, headers).
Send = Callable[[str, bytes, bytes, int | None, list[tuple[str, bytes]]], Awaitable[None]]


class Poster(Protocol):
    """The three Helicone calls (:class:`~worker.helicone.HeliconeClient` is the real one)."""

    async def post_request_feedback(self, request_id: str, rating: bool) -> DeliveryAttempted:
        ...

    async def post_request_scores(
        self, request_id: str, scores: Mapping[str, int]
    ) -> DeliveryAttempted:
        ...

    async def post_session_feedback(self, session_id: str, rating: bool) -> DeliveryAttempted:
        ...

    async def aclose(self) -> None:
        ...


class KeyValueTable(Protocol):
    """What delivery needs of a table: a Faust table in the worker, a dict in tests.

    Reads and writes must happen inside the event of the key's partition (Faust's rule).
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
            dry_run=settings.feedback_dry_run,
        )


@dataclass(frozen=True, slots=True)
class _Waiting:
    """A decision waiting on one of this worker's partitions (the in-memory index)."""

    seq: int
    partition: int
    key: bytes
    waiting_for: WaitingFor


class Delivery:
    """The delivery engine; see the module docstring.  All methods run on the event loop.

    ``on_outbox`` and ``on_retry`` must be called inside the Faust event of the record they
    handle (they write the tables); ``tick``, ``rebuild`` and ``on_revoked`` never write.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        *,
        pending: KeyValueTable,
        done: KeyValueTable,
        send: Send,
        metrics: Metrics,
        clock: Clock,
        poster: Poster | None = None,
        policy: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        self.config = config
        self.poster = poster
        self.pending = pending
        self.done = done
        self.metrics = metrics
        self.clock = clock
        self._send = send
        self._sleep = sleep
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
        self.bucket = TokenBucket(rate_per_s=config.rate_per_s, clock=clock)
        # Wakes decisions no faster than they can be sent, so a long outage's backlog is not
        # dumped on the retry topic (and re-parked) all at once when it ends.
        self._wake_bucket = TokenBucket(
            rate_per_s=config.rate_per_s,
            clock=clock,
            burst=max(1.0, min(float(config.concurrency), config.rate_per_s * 60)),
        )
        self._heap: list[tuple[int, int, str, int]] = []  # (due_ms, tie, decision_id, seq)
        self._tie = itertools.count()
        self._waiting: dict[str, _Waiting] = {}
        #: Partitions whose waiting decisions this worker wakes; None until the first rebuild.
        self._owned: set[int] | None = None
        self._inflight: dict[str, asyncio.Event] = {}
        self._next_probe_wake_ms = 0
        self._dedupe_ttl_ms = int(config.dedupe_ttl_s * 1000)
        self._sweep_interval_ms = int(min(3_600.0, config.dedupe_ttl_s / 4) * 1000)
        self._next_sweep_ms = clock.now_ms() + self._sweep_interval_ms

    def __repr__(self) -> str:
        return (
            f"Delivery(waiting={len(self._waiting)}, breaker={self.breaker.state.name}, "
            f"auth_paused={self.auth.paused})"
        )

    # ------------------------------------------------------------------ observers

    def observe(self, record: DeliveryAttempted) -> None:
        """Every call that went on the wire: metrics, breaker and auth pause learn from it."""
        self.metrics.observe_attempt(record)
        self.breaker.record(record.outcome)
        self.auth.record(record.outcome)

    def _breaker_changed(self, change: BreakerStateChanged) -> None:
        self.metrics.observe_breaker(change)
        if change.current is BreakerState.OPEN:
            log.warning(
                "circuit breaker open: most recent calls to Helicone failed; no calls for "
                "%.0f s, then one probe (waiting decisions are kept)",
                self.config.breaker_cool_down_s,
            )
        elif change.current is BreakerState.CLOSED:
            log.info("circuit breaker closed: a probe succeeded, delivery resumes")
            self._wake_now("breaker")

    def _auth_changed(self, change: AuthPauseChanged) -> None:
        self.metrics.observe_auth_pause(change)
        if change.paused:
            log.error(
                "delivery paused: Helicone rejected the API key (401/403). Check "
                "HELICONE_API_KEY (write access, right region). Nothing is dead-lettered; "
                "one decision is tried as a probe every %.0f s",
                self.config.auth_probe_interval_s,
            )
        else:
            log.warning("delivery resumed: Helicone accepted the API key again")
            self._wake_now("auth")

    @property
    def waiting_count(self) -> int:
        """Decisions waiting on this worker's partitions (the retry-queue gauge)."""
        return len(self._waiting)

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
        """One outbox record: deliver it now, or forward it to the partition that owns it."""
        decision = _parse_decision(value)
        if decision is None:
            await self._dead_letter_unreadable(
                key=key, value=value, topic=topic, partition=partition, offset=offset
            )
            return
        target = _target_key(decision)
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
        await self._start(decision, partition, redrive=_has_header(headers, REDRIVE_HEADER))

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
        if kind == b"due":
            try:
                wake = orjson.loads(value or b"{}")
                decision_id, seq = str(wake["id"]), int(wake["seq"])
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                log.warning(
                    "ignoring a malformed wake-up on %s[%d]@%d",
                    self.config.retry_topic, partition, offset,
                )
                return
            await self._on_due(decision_id, seq, partition)
        elif kind == b"forward":
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
            await self._start(decision, partition, redrive=_has_header(headers, REDRIVE_HEADER))
        elif kind == b"sweep":
            self._on_sweep(orjson.loads(value or b"{}").get("ids", []), partition)
        else:
            log.warning(
                "ignoring a record of unknown kind %r on %s[%d]@%d",
                kind, self.config.retry_topic, partition, offset,
            )

    async def _start(self, decision: Decision, partition: int, *, redrive: bool) -> None:
        """A decision seen on the outbox (or forwarded): skip it if settled or waiting."""
        decision_id = decision.decision_id
        table_key = _table_key(partition, decision_id)
        async with self._exclusive(decision_id):
            settled = self.done.get(table_key)
            if settled is not None:
                outcome = orjson.loads(settled).get("outcome", "delivered")
                if outcome == "delivered" or not redrive:
                    self.metrics.delivery_duplicates.labels(state=outcome).inc()
                    log.debug("decision %s already %s; skipped", decision_id, outcome)
                    return
            if self.pending.get(table_key) is not None:
                self.metrics.delivery_duplicates.labels(state="pending").inc()
                log.debug("decision %s is already waiting for a retry; skipped", decision_id)
                return
            problem = _problem(decision)
            if problem is not None:
                await self._dead_letter(
                    decision, RetryState(), partition,
                    reason="invalid", message=problem, stored=False,
                )
                return
            await self._attempt(decision, RetryState(), partition, stored=False)

    async def _on_due(self, decision_id: str, seq: int, partition: int) -> None:
        table_key = _table_key(partition, decision_id)
        async with self._exclusive(decision_id):
            raw = self.pending.get(table_key)
            if raw is None:
                log.debug("wake-up for %s: no longer waiting", decision_id)
                return
            decision, state = _decode_pending(raw)
            if state.seq != seq:
                log.debug("stale wake-up for %s (seq %d, now %d)", decision_id, seq, state.seq)
                return
            await self._attempt(decision, state, partition, stored=True)

    def _on_sweep(self, ids: Iterable[Any], partition: int) -> None:
        cutoff_ms = self.clock.now_ms() - self._dedupe_ttl_ms
        removed = 0
        for decision_id in ids:
            table_key = _table_key(partition, str(decision_id))
            raw = self.done.get(table_key)
            if raw is not None and int(orjson.loads(raw).get("at", 0)) <= cutoff_ms:
                with contextlib.suppress(KeyError):
                    del self.done[table_key]
                removed += 1
        if removed:
            log.debug("forgot %d settled decision ids on partition %d", removed, partition)

    # ------------------------------------------------------------------ one attempt

    async def _attempt(
        self, decision: Decision, state: RetryState, partition: int, *, stored: bool
    ) -> None:
        """Make the calls this decision still needs, then settle it or make it wait."""
        calls = plan_calls(
            target=decision.target, rating=decision.rating, has_scores=bool(decision.scores)
        )
        gate = self._gate()
        if gate is not None:
            until_ms, waiting_for = gate
            self._wait(decision, state.waiting(until_ms=until_ms, waiting_for=waiting_for),
                       partition)
            return
        state = state.started(self.clock.now_ms())
        for endpoint in state.remaining(calls):
            await self._take_token()
            try:
                await self._call(endpoint, decision)
            except AuthRejected as exc:
                state = state.noted(
                    endpoint=endpoint, status=exc.status, error=str(exc), body=exc.body_excerpt
                )
                until_ms = self.clock.now_ms() + max(self.auth.retry_in_ms(), _MIN_GATE_WAIT_MS)
                self._wait(decision, state.waiting(until_ms=until_ms, waiting_for="auth"),
                           partition)
                return
            except PermanentDelivery as exc:
                state = state.noted(
                    endpoint=endpoint, status=exc.status, error=str(exc), body=exc.body_excerpt
                )
                reason: DeadLetterReason = "rejected" if exc.status is not None else "invalid"
                await self._dead_letter(
                    decision, state, partition, reason=reason, message=str(exc), stored=stored
                )
                return
            except RetryableDelivery as exc:
                state, give_up = state.failed(
                    self.policy,
                    now_ms=self.clock.now_ms(),
                    endpoint=endpoint,
                    status=exc.status,
                    error=str(exc),
                    body=exc.body_excerpt,
                    retry_after_s=exc.retry_after_s,
                )
                if give_up is None:
                    log.info(
                        "decision %s: %s (attempt %d); next attempt in %.1f s",
                        decision.decision_id, exc, state.attempts,
                        (state.next_at_ms - self.clock.now_ms()) / 1000,
                    )
                    self._wait(decision, state, partition)
                else:
                    await self._dead_letter(
                        decision, state, partition,
                        reason=give_up, message=str(exc), stored=stored,
                    )
                return
            state = state.succeeded(endpoint)
        self._settle_delivered(decision, state, partition, stored=stored)

    def _gate(self) -> tuple[int, WaitingFor] | None:
        """None: calls may go now (a probe slot is taken if one is needed).  Else until when
        and for what the decision must wait."""
        auth_ms = self.auth.retry_in_ms()
        breaker_ms = self.breaker.retry_in_ms()
        if auth_ms == 0 and breaker_ms == 0 and self.breaker.allow() and self.auth.allow():
            return None
        waiting_for: WaitingFor = "auth" if self.auth.paused else "breaker"
        wait_ms = max(auth_ms, breaker_ms, _MIN_GATE_WAIT_MS)
        return self.clock.now_ms() + wait_ms, waiting_for

    async def _take_token(self) -> None:
        if self.config.dry_run:
            return  # nothing goes to Helicone, so there is no rate to keep
        while (wait_ms := self.bucket.try_acquire()) > 0:
            await self._sleep(wait_ms / 1000)

    async def _call(self, endpoint: Endpoint, decision: Decision) -> None:
        poster = self.poster
        if poster is None:
            raise ConfigError(
                ["HELICONE_API_KEY: missing (expected a key with write access, sk-helicone-...; "
                 "or set FEEDBACK_DRY_RUN=true)"]
            )
        rating = decision.rating
        if endpoint == "request_feedback":
            assert decision.request_id is not None and rating is not None
            record = await poster.post_request_feedback(decision.request_id, rating)
        elif endpoint == "request_score":
            assert decision.request_id is not None
            record = await poster.post_request_scores(decision.request_id, decision.scores)
        else:
            assert decision.session_id is not None and rating is not None
            record = await poster.post_session_feedback(decision.session_id, rating)
        if record.outcome is DeliveryOutcome.DRY_RUN:
            # The client's observer sees only calls on the wire; count the stand-ins here.
            self.metrics.observe_attempt(record)

    # ------------------------------------------------------------------ state transitions

    def _wait(self, decision: Decision, state: RetryState, partition: int) -> None:
        """Keep the decision durably and let the timer wake it at ``state.next_at_ms``."""
        decision_id = decision.decision_id
        target = _target_key(decision) or b""
        self.pending[_table_key(partition, decision_id)] = _encode_pending(
            decision, state, target
        )
        self._schedule(
            decision_id, state.seq, partition, target, state.next_at_ms, state.waiting_for
        )

    def _settle_delivered(
        self, decision: Decision, state: RetryState, partition: int, *, stored: bool
    ) -> None:
        now_ms = self.clock.now_ms()
        table_key = _table_key(partition, decision.decision_id)
        self.done[table_key] = orjson.dumps(
            {"outcome": "delivered", "at": now_ms, "attempts": state.attempts + 1,
             "dry_run": self.config.dry_run}
        )
        if stored:
            with contextlib.suppress(KeyError):
                del self.pending[table_key]
        self._forget(decision.decision_id)
        delay_s = now_ms / 1000 - decision.decided_at.timestamp()
        self.metrics.observe_delivered(decision.target, delay_s=delay_s)

    async def _dead_letter(
        self,
        decision: Decision,
        state: RetryState,
        partition: int,
        *,
        reason: DeadLetterReason,
        message: str,
        stored: bool,
    ) -> None:
        """Write the dead-letter record (acknowledged first), then settle the decision."""
        now_ms = self.clock.now_ms()
        record = dead_letter_record(
            decision_id=decision.decision_id,
            decision=decision.model_dump(mode="json"),
            reason=reason,
            message=message,
            state=state,
            now_ms=now_ms,
        )
        key = _target_key(decision) or decision.decision_id.encode()
        await self._send(
            self.config.dlq_topic, key, orjson.dumps(record), None,
            [(DLQ_REASON_HEADER, reason.encode())],
        )
        table_key = _table_key(partition, decision.decision_id)
        self.done[table_key] = orjson.dumps(
            {"outcome": "dead_lettered", "at": now_ms, "reason": reason}
        )
        if stored:
            with contextlib.suppress(KeyError):
                del self.pending[table_key]
        self._forget(decision.decision_id)
        self.metrics.observe_dead_letter(reason)
        log.warning(
            "decision %s dead-lettered (%s) after %d attempt(s): %s",
            decision.decision_id, reason, state.attempts, message,
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

    @contextlib.asynccontextmanager
    async def _exclusive(self, decision_id: str) -> AsyncIterator[None]:
        """One actor at a time per decision (two copies of it may be in the stream at once)."""
        while (busy := self._inflight.get(decision_id)) is not None:
            await busy.wait()
        event = self._inflight[decision_id] = asyncio.Event()
        try:
            yield
        finally:
            del self._inflight[decision_id]
            event.set()

    # ------------------------------------------------------------------ the due index

    def _schedule(
        self,
        decision_id: str,
        seq: int,
        partition: int,
        key: bytes,
        due_ms: int,
        waiting_for: WaitingFor,
    ) -> None:
        self._waiting[decision_id] = _Waiting(seq, partition, key, waiting_for)
        heapq.heappush(self._heap, (due_ms, next(self._tie), decision_id, seq))
        self.metrics.delivery_retry_queue.set(len(self._waiting))

    def _wake_now(self, waiting_for: WaitingFor) -> None:
        """The breaker closed or the key works again: what waited for it is due now (the
        wake rate still paces them), not at the end of the cool-down it was parked for."""
        now_ms = self.clock.now_ms()
        for decision_id, waiting in self._waiting.items():
            if waiting.waiting_for == waiting_for:
                heapq.heappush(self._heap, (now_ms, next(self._tie), decision_id, waiting.seq))

    def _forget(self, decision_id: str) -> None:
        if self._waiting.pop(decision_id, None) is not None:
            self.metrics.delivery_retry_queue.set(len(self._waiting))

    def rebuild(self, items: Iterable[tuple[bytes, bytes]], owned: set[int]) -> int:
        """After a rebalance and recovery: index the waiting decisions of ``owned`` partitions.

        ``items`` are the pending table's entries (every partition this worker holds).
        """
        self._owned = set(owned)
        self._heap.clear()
        self._waiting.clear()
        for table_key, raw in items:
            partition, decision_id = _split_table_key(table_key)
            if partition not in owned or raw is None:
                continue
            document = orjson.loads(raw)
            state = _state_from_json(document["state"])
            self._schedule(
                decision_id,
                state.seq,
                partition,
                document["key"].encode(),
                state.next_at_ms,
                state.waiting_for,
            )
        self.metrics.delivery_retry_queue.set(len(self._waiting))
        log.info(
            "delivery: %d waiting decision(s) on partitions %s",
            len(self._waiting), sorted(owned),
        )
        return len(self._waiting)

    def on_revoked(self, partitions: set[int]) -> None:
        """Partitions went to another worker: stop waking their decisions."""
        if self._owned is not None:
            self._owned -= partitions
        for decision_id, waiting in list(self._waiting.items()):
            if waiting.partition in partitions:
                del self._waiting[decision_id]
        self.metrics.delivery_retry_queue.set(len(self._waiting))

    def next_due_ms(self) -> int | None:
        """When the earliest waiting decision is due (stale heap entries included)."""
        return self._heap[0][0] if self._heap else None

    async def wake_due(self) -> int:
        """The timer's job: publish a wake-up for each waiting decision that is due.

        Nothing is woken while the breaker is open or the auth pause waits for its next probe;
        while probing, one decision per :data:`_PROBE_RELEASE_GAP_MS`.  Returns how many.
        """
        now_ms = self.clock.now_ms()
        if self.breaker.retry_in_ms() > 0 or self.auth.retry_in_ms() > 0:
            return 0
        probing = self.breaker.state is not BreakerState.CLOSED or self.auth.paused
        if probing and now_ms < self._next_probe_wake_ms:
            return 0
        limit = 1 if probing else _MAX_WAKE_BATCH
        batch: list[tuple[str, _Waiting]] = []
        while self._heap and self._heap[0][0] <= now_ms and len(batch) < limit:
            decision_id, seq = self._heap[0][2], self._heap[0][3]
            waiting = self._waiting.get(decision_id)
            if waiting is None or waiting.seq != seq:
                heapq.heappop(self._heap)  # stale: the decision moved on
                continue
            if self._owned is not None and waiting.partition not in self._owned:
                heapq.heappop(self._heap)
                self._forget(decision_id)
                continue
            if not probing and self._wake_bucket.try_acquire() > 0:
                break  # the rest stay due; the next tick takes them at the send rate
            heapq.heappop(self._heap)
            batch.append((decision_id, waiting))
        if not batch:
            return 0
        if probing:
            self._next_probe_wake_ms = now_ms + _PROBE_RELEASE_GAP_MS
        results = await asyncio.gather(
            *(
                self._send(
                    self.config.retry_topic,
                    waiting.key,
                    orjson.dumps({"id": decision_id, "seq": waiting.seq}),
                    waiting.partition,
                    [(KIND_HEADER, b"due")],
                )
                for decision_id, waiting in batch
            ),
            return_exceptions=True,
        )
        failed = 0
        for (decision_id, waiting), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                failed += 1
                again_ms = now_ms + _WAKE_RETRY_MS
            else:
                again_ms = now_ms + _WAKE_WATCHDOG_MS
            heapq.heappush(self._heap, (again_ms, next(self._tie), decision_id, waiting.seq))
        if failed:
            log.warning("could not send %d of %d wake-ups; trying again", failed, len(batch))
        return len(batch) - failed

    async def tick(self, done_items: Callable[[], Iterable[tuple[bytes, bytes]]]) -> None:
        """Run by the timer: wake due decisions; now and then, sweep expired settled ids."""
        await self.wake_due()
        if self.clock.now_ms() >= self._next_sweep_ms:
            self._next_sweep_ms = self.clock.now_ms() + self._sweep_interval_ms
            await self.sweep(done_items())

    async def sweep(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Find settled ids past their TTL and send their partitions a ``sweep`` record.

        Reads only (outside any event); the deletes happen in the agent, in context.
        """
        cutoff_ms = self.clock.now_ms() - self._dedupe_ttl_ms
        expired: dict[int, list[str]] = defaultdict(list)
        for index, (table_key, raw) in enumerate(items):
            if index % 1_000 == 999:
                await asyncio.sleep(0)  # a big table must not stall heartbeats
            partition, decision_id = _split_table_key(table_key)
            if self._owned is not None and partition not in self._owned:
                continue
            if raw is not None and int(orjson.loads(raw).get("at", 0)) <= cutoff_ms:
                expired[partition].append(decision_id)
        for partition, ids in expired.items():
            for start in range(0, len(ids), _SWEEP_BATCH):
                chunk = ids[start : start + _SWEEP_BATCH]
                await self._send(
                    self.config.retry_topic,
                    b"sweep",
                    orjson.dumps({"ids": chunk}),
                    partition,
                    [(KIND_HEADER, b"sweep")],
                )
        return sum(len(ids) for ids in expired.values())

    async def aclose(self) -> None:
        if self.poster is not None:
            await self.poster.aclose()


# --------------------------------------------------------------------------- records


def dead_letter_record(
    *,
    decision_id: str | None,
    decision: Mapping[str, Any] | None,
    reason: DeadLetterReason,
    message: str,
    state: RetryState,
    now_ms: int,
    source: Mapping[str, Any] | None = None,
    value: bytes | None = None,
) -> dict[str, Any]:
    """The ``feedback-dlq`` document: what, why, how often it was tried, what Helicone said.

    ``last_body`` is the last error answer cut to 2 KiB (the client cuts it and removes any
    echo of the key).  ``decision`` is the decision as it was on the outbox, so ``dlq
    redrive`` can put it back; for a record that was not a decision at all, ``value_b64``
    keeps its bytes instead and ``source`` says where it was.
    """
    record: dict[str, Any] = {
        "decision_id": decision_id,
        "reason": reason,
        "message": message[:_MAX_MESSAGE_CHARS],
        "attempts": state.attempts,
        "last_status": state.last_status,
        "last_endpoint": state.last_endpoint,
        "last_body": state.last_body.encode("utf-8", "replace")[:2048].decode("utf-8", "ignore"),
        "calls_done": list(state.done),
        "first_attempt_at": _iso(state.first_attempt_ms),
        "dead_lettered_at": _iso(now_ms),
        "decision": dict(decision) if decision is not None else None,
    }
    if source is not None:
        record["source"] = dict(source)
    if value is not None or decision is None:
        raw = value or b""
        record["value_b64"] = base64.b64encode(raw[:_MAX_DLQ_VALUE_BYTES]).decode()
        record["value_size"] = len(raw)
    return record


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


# --------------------------------------------------------------------------- helpers


def _table_key(partition: int, decision_id: str) -> bytes:
    return f"{partition}/{decision_id}".encode()


def _split_table_key(table_key: bytes) -> tuple[int, str]:
    partition, _, decision_id = table_key.decode().partition("/")
    return int(partition), decision_id


def _header(headers: list[tuple[str, bytes]] | None, name: str) -> bytes | None:
    for header, value in headers or ():
        if header == name:
            return value
    return None


def _has_header(headers: list[tuple[str, bytes]] | None, name: str) -> bool:
    return _header(headers, name) is not None


def _redrive_headers(headers: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    return [(REDRIVE_HEADER, b"1")] if _has_header(headers, REDRIVE_HEADER) else []


def _parse_decision(value: bytes | None) -> Decision | None:
    if not value:
        return None
    try:
        return Decision.model_validate_json(value)
    except ValidationError:
        return None


def _target_key(decision: Decision) -> bytes | None:
    target = decision.request_id if decision.target == "request" else decision.session_id
    return target.encode() if target else None


def _problem(decision: Decision) -> str | None:
    """Why this decision can never be posted as it is, or None (DESIGN 6: validate locally)."""
    if decision.target == "request":
        if decision.request_id is None:
            return "target is request but request_id is null"
        if not is_helicone_request_id(decision.request_id):
            return "request_id is not a UUID v1-v5 (Helicone answers those with a 500)"
    elif not decision.session_id or len(decision.session_id) > 128:
        return "target is session but session_id is missing or longer than 128 characters"
    try:
        plan_calls(
            target=decision.target, rating=decision.rating, has_scores=bool(decision.scores)
        )
    except ValueError as exc:
        return str(exc)
    return None


def _state_to_json(state: RetryState) -> dict[str, Any]:
    document = asdict(state)
    document["done"] = list(state.done)
    return document


def _state_from_json(document: Mapping[str, Any]) -> RetryState:
    fields = dict(document)
    fields["done"] = tuple(fields.get("done", ()))
    return RetryState(**fields)


def _encode_pending(decision: Decision, state: RetryState, target: bytes) -> bytes:
    return orjson.dumps(
        {
            "key": target.decode(),
            "decision": decision.model_dump(mode="json"),
            "state": _state_to_json(state),
        }
    )


def _decode_pending(raw: bytes) -> tuple[Decision, RetryState]:
    document = orjson.loads(raw)
    return Decision.model_validate(document["decision"]), _state_from_json(document["state"])


# --------------------------------------------------------------------------- Faust wiring


def install_delivery(
    app: faust.App,
    *,
    settings: Settings,
    metrics: Metrics,
    topics: dict[str, faust.TopicT],
    readiness: Readiness,
    clock: Clock,
) -> Delivery:
    """Add delivery to the app: retry topic, two tables, the deliver agent and its timer.

    The HTTP client is created here (it connects lazily); without an API key and outside dry
    run there is none, and the first call raises :class:`ConfigError` (``run`` checks first).
    """
    from worker.helicone import HeliconeClient

    config = DeliveryConfig.from_settings(settings)
    partitions = settings.topic_partitions
    retry_topic = app.topic(
        config.retry_topic,
        key_type=bytes,
        value_type=bytes,
        partitions=partitions,
        internal=False,
    )
    topics[config.retry_topic] = retry_topic
    pending = app.Table(
        DELIVERY_PENDING_TABLE,
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options=settings.rocksdb_options,
        help="Decisions waiting for a retry, the circuit breaker or the auth pause.",
    )
    done = app.Table(
        DELIVERY_DONE_TABLE,
        default=None,
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        options=settings.rocksdb_options,
        help="Settled decision ids (delivered or dead-lettered), for dedupe.",
    )

    async def send(
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        acked = await topics[topic].send(
            key=key, value=value, partition=partition, headers=headers
        )
        await acked

    delivery = Delivery(
        config, pending=pending, done=done, send=send, metrics=metrics, clock=clock
    )
    if settings.feedback_dry_run or settings.helicone_api_key is not None:
        delivery.poster = HeliconeClient.from_settings(settings, observer=delivery.observe)

    outbox_name = settings.topic_outbox
    channel = app.topic(outbox_name, config.retry_topic, key_type=bytes, value_type=bytes)

    async def deliver_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            arguments: dict[str, Any] = {
                "key": message.key,
                "value": message.value,
                "partition": message.partition,
                "offset": message.offset,
                "headers": list(message.headers or ()),
            }
            if message.topic == config.retry_topic:
                await delivery.on_retry(**arguments)
            else:
                await delivery.on_outbox(topic=outbox_name, **arguments)

    app.agent(channel, name="deliver", concurrency=settings.delivery_concurrency)(deliver_agent)

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == outbox_name}

    async def recovered() -> None:
        delivery.rebuild(list(pending.items()), owned_partitions())

    pending.on_recover(recovered)

    @app.on_partitions_revoked.connect
    def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        delivery.on_revoked({tp.partition for tp in revoked if tp.topic == outbox_name})

    async def timer() -> None:
        try:
            while True:
                await asyncio.sleep(TICK_INTERVAL_S)
                try:
                    await delivery.tick(done.items)
                except Exception:  # the timer must outlive one bad tick
                    log.exception("delivery timer tick failed; continuing")
        finally:
            await delivery.aclose()

    app.task(timer)
    readiness.checks["delivery_not_paused"] = lambda: not delivery.auth.paused
    return delivery

"""The delivery engine: each target's whole feedback state into Helicone (DESIGN 5 and 6).

No Faust or HTTP here: the table, ``send`` and Helicone are ports
(:mod:`worker.delivery_ports`), time an injected clock.  The Faust adapter
(:mod:`worker.agents.deliver`) hands the engine each partition's records and runs its sender.

Map of the engine (this module holds :class:`Delivery`, which merges decisions into
states, sends states and records outcomes; the rest is its parts)::

    delivery_ports         DeliveryConfig (the settings slice); Poster, KeyValueTable, Send
    delivery_records       outbox decisions checked; the table key of a state
    delivery_known         the table as the engine knows it (decoded, settled in memory)
    delivery_due           the due index: which states wait, when, which are in flight
    delivery_gates         breaker, auth pause and rate, and what each call teaches them
    delivery_results       outcomes batched into ``result`` records, and applied
    delivery_dead_letters  what cannot be posted, to ``feedback-dlq``
    delivery_sweep         settled states past their TTL, deleted

What is sent.  Per target (a request, or a session) one
:class:`~worker.delivery_state.FeedbackState` holds the rating and every score decided so far;
each change of it is sent as one call that carries all of it
(:func:`~worker.delivery_state.calls_for`), so whichever scores message Helicone keeps of a
batch is complete.  A state that changes while it waits is sent once, as it is by then.

Two halves, so that Helicone can never hold ingestion back:

* **The deliver handler** (the only writer of a partition's keys) only merges: each
  outbox decision into its target's state in the changelogged table ``delivery-state``
  (key ``b"<partition>/<r|s>:<id>"``, co-partitioned with the outbox: the outbox is keyed by
  target id, and a decision found on another partition is first forwarded to its owner
  through the internal topic ``<group>-delivery-retry``).  No HTTP, no sleeping: a record is
  merged in microseconds whatever Helicone does, and acknowledged once the adapter's next
  flush has its write in the changelog (:mod:`worker.agents.buffered`), so the outbox never
  backs up into Faust's fetch loop, which also feeds the input topic.
* **The sender** (one task, outside any event) takes due states from an in-memory index at
  the rate :class:`~worker.delivery.AdaptiveRate` allows, at most ``DELIVERY_CONCURRENCY``
  calls in flight and one per target (two calls of one target in flight could reach Helicone
  out of order and the older one would win).  It reads the state, makes the call, and
  reports the outcome for that *version* as a ``result`` record on the retry topic, which the
  partition's handler applies (:mod:`worker.delivery_results` says why a record).

Why this is at-least-once and idempotent: a state is durable (changelogged) before its
outbox record is acked and, in the worker, before it is sent (:meth:`Delivery.durable`: the
next owner of a partition must restore a state that was sent, or it would replay the
decision into a state it never had, drop the call's result as one for an unknown state and
call again); its outcome is durable only once the ``result`` record is applied.
A crash in between sends the whole state again, which Helicone overwrites key by key.  A
result for an old version settles only that version (``FeedbackState.delivered``), so a change
merged during a call is still sent.  Merging is commutative and idempotent, so duplicates,
replays and redrives never double-count; a duplicate changes nothing and costs no call.

Retry-topic records (header :data:`~worker.envelopes.KIND_HEADER`): ``forward`` (an outbox
decision moved to its owner partition), ``result`` (outcomes, :mod:`worker.delivery_results`)
and ``sweep`` (settled states to delete, :mod:`worker.delivery_sweep`).

Failure policy (:mod:`worker.delivery`'s classes): a 2xx settles the version; a retryable
failure (timeouts, resets, 408/425/429/5xx) is retried as :class:`~worker.delivery.RetryPolicy`
says, or given up; a permanent one (400/404/422), or one given up, sends every decision of the
version to ``feedback-dlq``; 401/403, an open breaker, a 429: calls wait (delivery_gates).

Evidence properties (``HELICONE_EVIDENCE_PROPERTIES``): :attr:`Delivery.properties`, a
:class:`~worker.evidence_sender.PropertySender`, is offered every merged decision and may
start property calls only when :meth:`Delivery.dispatch` finds no rating due now.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson

from worker.delivery import (
    DeadLetterReason,
    DeliveryAttempted,
    DeliveryOutcome,
    Endpoint,
    RetryPolicy,
    RetryState,
)
from worker.delivery_dead_letters import DeadLetters
from worker.delivery_due import MAX_IDLE_MS, MAX_IDLE_S, Due, DueIndex
from worker.delivery_gates import MIN_GATE_WAIT_MS, Gates
from worker.delivery_known import KnownStates
from worker.delivery_ports import DeliveryConfig, KeyValueTable, Poster, Send
from worker.delivery_records import (
    parse_decision,
    partition_of,
    redrive_headers,
    table_key_of,
    target_bytes,
)
from worker.delivery_records import problem as problem_of
from worker.delivery_results import ResultRecords, settle
from worker.delivery_state import Call, FeedbackState, calls_for, merge, new_pairs, state_key
from worker.delivery_sweep import Sweep
from worker.envelopes import KIND_HEADER, REDRIVE_HEADER, has_header, header
from worker.errors import AuthRejected, ConfigError, PermanentDelivery, RetryableDelivery
from worker.events import Decision
from worker.partitioner import partition_for
from worker.readback import ReadBack

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.evidence_sender import PropertySender
    from worker.metrics import Metrics

#: The ports are :mod:`worker.delivery_ports`'s, re-exported for the adapter and the tests.
__all__ = ["TICK_INTERVAL_S", "Connect", "Delivery", "DeliveryConfig", "KeyValueTable", "Poster",
           "Send"]

log = logging.getLogger(__name__)

#: How often the timer refreshes the backlog metrics and looks for states to sweep.
TICK_INTERVAL_S = 1.0
#: After an unexpected failure a state is due again this much later.
_FAILED_RETRY_MS = 1_000
#: A state restored after a rebalance waits this long before it is sent, so that the result
#: records the partition's previous owner wrote for it (at the head of the retry topic) are
#: applied first: else a state whose 2xx came just before the handover is sent again.
RESTORE_SETTLE_MS = 3_000
#: How long a revocation waits for the calls of its partitions still in flight.
REVOKE_WAIT_S = 15.0
#: Builds the engine's Helicone client and its evidence lane, given the engine: the client
#: reports every call to :meth:`Delivery.observe`, and the lane shares the engine's budget.
Connect = Callable[["Delivery"], "tuple[Poster | None, PropertySender | None]"]


class Delivery:
    """The delivery engine; see the module docstring.  All methods run on the event loop.

    ``on_outbox`` and ``on_retry`` are called by the handler of the record's partition (they
    write the table); :meth:`dispatch`, :meth:`run`, :meth:`tick`, :meth:`rebuild` and
    :meth:`on_revoked` never write it.
    """

    def __init__(
        self,
        config: DeliveryConfig,
        *,
        states: KeyValueTable,
        send: Send,
        metrics: Metrics,
        clock: Clock,
        connect: Connect | None = None,
        policy: RetryPolicy | None = None,
        send_when_durable: bool = False,
    ) -> None:
        self.config = config
        self._send_when_durable = send_when_durable  # else a merged state is due at once
        self._awaiting: set[bytes] = set()  # merged, not durable yet: properties wait too
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
        self._kick = asyncio.Event()
        gates = self.gates = Gates(config, clock=clock, metrics=metrics, wake=self._kick.set)
        self.breaker, self.auth, self.rate = gates.breaker, gates.auth, gates.rate
        self.readback = ReadBack(
            sample=0.0 if config.dry_run else config.verify_sample,
            delay_s=config.verify_delay_s,
            reads_per_5min=config.verify_reads_per_5min,
            clock=clock,
            metrics=metrics,
        )
        self._index = DueIndex()
        self._known = KnownStates(states, clock=clock)
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_of: dict[bytes, asyncio.Task[None]] = {}
        self.results = ResultRecords(
            send=send, topic=config.retry_topic, owns=self._index.owns, tasks=self._tasks
        )
        self._dead = DeadLetters(send=send, topic=config.dlq_topic, metrics=metrics, clock=clock)
        self._sweep = Sweep(send=send, topic=config.retry_topic, ttl_s=config.dedupe_ttl_s,
                            clock=clock, owns=self._index.owns)
        #: The Helicone client (None without an API key outside dry run) and the evidence
        #: lane (None unless HELICONE_EVIDENCE_PROPERTIES is on), built last from the engine
        #: itself by ``connect``: both need it (the client reports to :meth:`observe`, the
        #: lane shares the budget), so nothing is wired into the engine once it exists.
        self.poster: Poster | None = None
        self.properties: PropertySender | None = None
        if connect is not None:
            self.poster, self.properties = connect(self)

    def __repr__(self) -> str:
        return (f"Delivery(due={len(self._index.waiting)}, in_flight={len(self._index.in_flight)}"
                f", breaker={self.breaker.state.name}, auth_paused={self.auth.paused})")

    # ------------------------------------------------------------------ observers

    def observe(self, record: DeliveryAttempted) -> None:
        """Every call that went on the wire: metrics, breaker, auth pause and rate learn."""
        if record.endpoint == "request_property" and self.properties is not None:
            self.properties.observe(record)  # it keeps property failures out of the breaker
            return
        self.gates.observe(record)

    def wake(self) -> None:
        """Make the sender look again now (the evidence lane has work or a free slot)."""
        self._kick.set()

    @property
    def backlog(self) -> int:
        """States waiting to be sent or in flight on this worker's partitions."""
        return len(self._index)

    # ------------------------------------------------------------------ records, by partition

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
        decision = parse_decision(value)
        if decision is None:
            await self._dead.unreadable(
                key=key, value=value, topic=topic, partition=partition, offset=offset
            )
            return
        target = target_bytes(decision)
        if target is not None:
            owner = partition_for(target, self.config.partitions)
            if owner != partition:
                await self._send(self.config.retry_topic, target, value or b"", owner,
                                 [(KIND_HEADER, b"forward"), *redrive_headers(headers)])
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
        kind = header(headers, KIND_HEADER)
        if kind == b"forward":
            decision = parse_decision(value)
            if decision is None:
                await self._dead.unreadable(key=key, value=value, topic=self.config.retry_topic,
                                            partition=partition, offset=offset)
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
            self._sweep.apply(orjson.loads(value or b"{}").get("keys", []), partition, self._known)
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
        problem = problem_of(decision)
        if problem is not None:
            await self._dead.decisions(
                [decision.model_dump(mode="json")], RetryState(),
                target=target_bytes(decision) or decision.decision_id.encode(),
                reason="invalid", message=problem,
            )
            return
        key = state_key(decision)
        assert key is not None  # _problem checked the target id
        table_key = table_key_of(partition, key)
        stored = self._known.read(table_key)
        before = self._known.as_known(table_key, stored) if stored is not None else None
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
        self._known.write(table_key, state)
        if state.due and self._send_when_durable:
            self._awaiting.add(table_key)
        elif state.due:
            self._schedule(table_key, partition, state, keep_earlier=True)
        if self.properties is not None:
            self.properties.offer(decision)

    def durable(self, partition: int, table_keys: Iterable[bytes]) -> None:
        """The changelog now holds these keys' writes: the due states may be sent (module
        docstring, at-least-once)."""
        for table_key in table_keys:
            self._awaiting.discard(table_key)
            state = self._known.read(table_key)
            if state is not None and state.due:
                self._schedule(table_key, partition, state, keep_earlier=True)
        self._kick.set()

    def _apply_results(self, document: Mapping[str, Any], partition: int) -> None:
        """A ``result`` record: ``{"results": [outcome, ...]}``, or one outcome (older form)."""
        for outcome in document.get("results", (document,)):
            self._apply_result(outcome, partition)

    def _apply_result(self, document: Mapping[str, Any], partition: int) -> None:
        table_key = table_key_of(partition, str(document["key"]))
        state = self._known.read(table_key)
        if state is None:
            return  # swept meanwhile: nothing left to settle
        state = settle(state, document, now_ms=self.clock.now_ms())
        if state is None:
            return
        self._known.write(table_key, state)
        self._known.applied(table_key, state)

    # ------------------------------------------------------------------ the sender

    async def run(self) -> None:
        """The sender: dispatch due states for as long as the worker runs."""
        try:
            while True:
                wait_ms = self.dispatch()
                self._kick.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._kick.wait(), timeout=min(MAX_IDLE_S, max(wait_ms, 1) / 1000)
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
            table_key = self._index.peek(now_ms)
            if table_key is None:  # no rating due now: the evidence lane may use the budget
                wait_ms = self._index.next_due_in(now_ms)
                if self.properties is not None and not self._awaiting:
                    free = self.config.concurrency - len(self._index.in_flight)
                    wait_ms = min(wait_ms, self.properties.dispatch(free))
                return wait_ms
            if len(self._index.in_flight) >= self.config.concurrency:
                return MAX_IDLE_MS
            refused_ms = self.gates.refused_ms()
            if refused_ms > 0:
                return refused_ms
            if not self.config.dry_run:
                wait_ms = self.rate.try_acquire()
                if wait_ms > 0:
                    return wait_ms
            due = self._index.start(table_key)
            task = asyncio.ensure_future(self._deliver(table_key, due))
            self._tasks.add(task)
            self._task_of[table_key] = task
            task.add_done_callback(self._tasks.discard)

    def next_due_ms(self) -> int | None:
        """When the earliest due state may go (stale index entries dropped), or None."""
        return self._index.next_due_ms(self.clock.now_ms())

    async def drain(self) -> None:
        """Wait for every call in flight (tests, and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.properties is not None:
            await self.properties.drain()

    async def _deliver(self, table_key: bytes, due: Due) -> None:
        """Send one state as it is now, and report the outcome of that version."""
        try:
            state = self._known.read(table_key)
            if state is None or not self._known.is_due(table_key, state):
                return
            await self._attempt(table_key, due, state)
        except Exception:  # one state's bug must not stop the sender
            log.exception("delivery of a state failed unexpectedly; trying it again later")
            self._index.reschedule(table_key, due, self.clock.now_ms() + _FAILED_RETRY_MS)
        finally:
            again = self._index.finish(table_key)
            self._task_of.pop(table_key, None)
            if again:
                state = self._known.read(table_key)
                if state is not None and state.due:
                    self._schedule(table_key, due.partition, state, keep_earlier=True)
            self._kick.set()

    async def _attempt(self, table_key: bytes, due: Due, state: FeedbackState) -> None:
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
            wait_ms = max(self.auth.retry_in_ms(), MIN_GATE_WAIT_MS)
            log.debug("state %s waits for the auth probe: %s", key, exc)
            self._index.reschedule(table_key, due, self.clock.now_ms() + wait_ms)
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
            self._index.reschedule(table_key, due, retry.next_at_ms, retrying=True)
            self.results.report(due.partition, key, version, "failed", retry=retry)
            return
        now_ms = self.clock.now_ms()
        counted = self._known.counted_version(table_key)
        for decision in state.settled_decisions(version, after=counted):
            decided_at = datetime.fromisoformat(decision["decided_at"]).timestamp()
            self.metrics.observe_delivered(state.target, delay_s=now_ms / 1000 - decided_at)
        self._known.settled(table_key, version, delivered=True)
        if state.target == "request" and calls and self.config.rating_via == "score":
            self.readback.delivered(state.target_id, calls[-1].body["scores"])
        self.results.report(due.partition, key, version, "delivered")

    async def _give_up(self, table_key: bytes, due: Due, state: FeedbackState,
                       retry: RetryState, *, reason: DeadLetterReason, message: str) -> None:
        key = table_key.split(b"/", 1)[1].decode()
        await self._dead.decisions(
            state.settled_decisions(state.version, after=self._known.counted_version(table_key)),
            retry,
            target=state.target_id.encode(), reason=reason, message=message,
        )
        self._known.settled(table_key, state.version, delivered=False)
        self.results.report(due.partition, key, state.version, "dead")

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
        is_due = self._known.is_due(table_key, state)
        if self._index.schedule(table_key, partition, state, is_due=is_due,
                                now_ms=self.clock.now_ms(), keep_earlier=keep_earlier,
                                not_before_ms=not_before_ms):
            self._kick.set()

    def rebuild(self, items: Iterable[tuple[bytes, bytes]], owned: set[int]) -> int:
        """After a rebalance and recovery: index the due states of ``owned`` partitions.

        ``items`` are the table's entries (every partition this worker holds).
        """
        self._index.reset(owned)
        self._known.drop_decoded()  # recovery may have rewritten any state
        for table_key, raw in items:
            partition = partition_of(table_key)
            if partition not in owned or raw is None:
                continue
            state = FeedbackState.from_json(raw)
            if state.due:
                self._schedule(
                    table_key, partition, state, keep_earlier=False,
                    not_before_ms=self.clock.now_ms() + RESTORE_SETTLE_MS,
                )
        due = len(self._index.waiting)
        log.info("delivery: %d due state(s) on partitions %s", due, sorted(owned))
        self.update_gauges()
        return due

    def on_revoked(self, partitions: set[int]) -> None:
        """Partitions went to another worker: stop sending their states."""
        self._index.revoke(partitions)
        self._awaiting = {k for k in self._awaiting if partition_of(k) not in partitions}
        self._known.drop_decoded(  # their next owner may change them
            [k for k in self._known.decoded_keys() if partition_of(k) in partitions]
        )
        self.update_gauges()

    async def wait_revoked(self, partitions: set[int], *, timeout_s: float = REVOKE_WAIT_S) -> None:
        """Wait for the calls of ``partitions`` still in flight, and their result records.

        Run while a rebalance revokes them, before their new owner restores them: a call
        whose outcome is recorded is not made again there.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        calls = [task for key, task in self._task_of.items() if partition_of(key) in partitions]
        if calls:
            await asyncio.wait(calls, timeout=timeout_s)  # their outcomes join a record...
        records = self.results.recording(partitions)
        if records:  # ...and the records go out
            await asyncio.wait(records, timeout=max(0.0, deadline - loop.time()))

    def update_gauges(self) -> None:
        """Backlog, its oldest change, the time to drain it and the rate in force."""
        now_ms = self.clock.now_ms()
        waiting = [*self._index.waiting.values(), *self._index.in_flight.values()]
        oldest = min((d.oldest_ms for d in waiting), default=now_ms)
        per_s = self.rate.per_s
        self.metrics.delivery_backlog.set(len(waiting))
        self.metrics.delivery_retry_queue.set(self._index.retrying())
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
        if self._sweep.due():
            await self.sweep(items())

    async def sweep(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Send ``sweep`` records for expired settled states (reads only; the agent deletes)."""
        return await self._sweep.find(items)

    async def aclose(self) -> None:
        if self.properties is not None:
            self.properties.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self.poster is not None:
            await self.poster.aclose()

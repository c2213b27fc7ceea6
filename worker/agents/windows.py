"""The windows adapter: per-partition :class:`~worker.windows.WindowEngine`s over one Faust table.

Why a plain changelogged table and not Faust's windowed tables: those close windows on the wall
clock, lose their close callbacks across restarts and rebalances, and cannot give one final
result per window (DESIGN 4).  Here the engine owns the window semantics and the table is only
its durable key-value store.

Faust allows a table write only while a stream event is being processed (the event's partition
picks the changelog partition and the RocksDB instance).  So every engine call happens inside
an event of the partition it belongs to:

* valid events reach :meth:`Windows.on_event` from the ingest agent (input topic, fast path) or
  the rekeyed agent (forwarded events), both with the owning partition's event current;
* the wall-clock check (idle close) must also run in context, so a timer *produces* a tick
  record to the rekeyed topic for each partition this worker owns, and the rekeyed agent hands
  it to :meth:`Windows.on_tick`.  Timers never write state themselves.

Keys are namespaced by partition (``"3/<request id>"``) so that rebuilding one partition's
engine after recovery reads only its own records.

**Coalesced writes.**  A Faust table write costs about 190 us (a changelog record each), more
than everything else an event costs together, and a request's events come in bursts.  So the
engine writes into a per-partition buffer (:class:`PartitionStore`), and the buffer is written
to the table, once per key, when the partition's next tick arrives (about every second) or
when it holds :attr:`Windows.flush_keys` keys.  Records whose effects sit in the buffer are
*not acknowledged* until that flush: Faust commits only acknowledged offsets, so a crash
before the flush replays those records instead of losing their effects (at-least-once, and
the engine's per-key dedupe makes the replay harmless).  Decisions are sent at once; a replay
can only send the same decision (same ``decision_id``) again.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.agents.acks import Flushed, OrderedAcks
from worker.agents.ingest import Ack
from worker.envelopes import late_record
from worker.faust_compat import TableIO
from worker.windows import META_KEY, Outcome, WindowEngine
from worker.windows.watermarks import Floor, SourceMark, partition_floor

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.metrics import Metrics
    from worker.producing import Producer
    from worker.rules import RuleConfig
    from worker.validation import Accepted

__all__ = [
    "PartitionStore",
    "TableIO",
    "Windows",
]

log = logging.getLogger(__name__)


_DELETED = None


class PartitionStore:
    """A :class:`~worker.windows.WindowStore` over one partition's keys of the table, with
    writes buffered until :meth:`flush` (module docstring)."""

    def __init__(self, io: TableIO[str], partition: int) -> None:
        self._io = io
        self._partition = partition
        self._prefix = f"{partition}/"
        self._pending: dict[str, bytes | None] = {}

    @property
    def pending(self) -> int:
        """Keys written since the last flush."""
        return len(self._pending)

    def get(self, key: str) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        return self._io.get(self._partition, self._prefix + key)

    def put(self, key: str, value: bytes) -> None:
        self._pending[key] = value

    def delete(self, key: str) -> None:
        self._pending[key] = _DELETED

    def items(self) -> Iterable[tuple[str, bytes]]:
        cut = len(self._prefix)
        for key, value in self._io.items(self._partition, self._prefix):
            name = key[cut:]
            if name not in self._pending:
                yield name, value
        for name, pending in list(self._pending.items()):
            if pending is not None:
                yield name, pending

    def take(self) -> dict[str, bytes | None]:
        """The buffered writes (full table keys), now written to RocksDB; the buffer empties.

        RocksDB is written here, synchronously, so no read can fall between the buffer and
        the table; the changelog records follow (:meth:`TableIO.send_changelog`)."""
        if not self._pending:
            return {}
        prefix = self._prefix
        pending = self._pending
        entries = {prefix + name: value for name, value in pending.items() if name != META_KEY}
        if META_KEY in pending:  # last: see "Stream time" in worker.windows
            entries[prefix + META_KEY] = pending[META_KEY]
        self._pending.clear()
        self._io.put_local(self._partition, entries)
        return entries


@dataclass
class Windows:
    """Owns one engine per partition and sends what the engines return."""

    io: TableIO[str]
    config: RuleConfig
    grace_ms: int
    idle_close_ms: int
    max_signals: int
    clock: Clock
    metrics: Metrics
    producer: Producer
    outbox_topic: str
    late_topic: str
    #: Input partitions whose watermarks bound stream time (TOPIC_PARTITIONS; 0: none, for
    #: an engine fed only directly).
    sources: int = 0
    #: Called when the broker did not take a flush's records: the worker must stop (and
    #: replay from its last commit when it restarts) rather than go on without acking.
    on_failure: Callable[[BaseException], object] = lambda exc: None
    #: Flush a partition's buffer early once it holds this many keys...
    #: Decoded states each partition's engine keeps in memory (WINDOW_CACHE_KEYS).
    cache_keys: int = 10_000
    flush_keys: int = 2_000
    #: ...or this many unacknowledged records: Faust stops handing out records when too many
    #: are unacknowledged (its stream buffer), so waiting for the tick would throttle a busy
    #: partition to about this many records per tick.
    flush_records: int = 500
    _engines: dict[int, WindowEngine] = field(default_factory=dict)
    _stores: dict[int, PartitionStore] = field(default_factory=dict)
    #: Deliveries (outbox, late topic) not yet confirmed, awaited before the next acks.
    _inflight: dict[int, list[Awaitable[Any]]] = field(default_factory=dict)
    #: Held acks; events of a partition revoked and not assigned again are dropped, never
    #: acknowledged, since the next owner replays them from the committed offset anyway.
    _acks: OrderedAcks = field(init=False)
    #: Per owned partition: input partition -> its latest mark applied there.
    _marks: dict[int, dict[int, SourceMark]] = field(default_factory=dict)
    #: Per owned partition: the wall clock when its engine was built (after assignment).
    _built_at: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._acks = OrderedAcks("state or decisions", lambda exc: self.on_failure(exc))

    def engine(self, partition: int) -> WindowEngine:
        engine = self._engines.get(partition)
        if engine is None:
            store = self._stores[partition] = PartitionStore(self.io, partition)
            engine = self._engines[partition] = WindowEngine(
                store,
                config=self.config,
                grace_ms=self.grace_ms,
                idle_close_ms=self.idle_close_ms,
                max_signals=self.max_signals,
                clock=self.clock,
                cache_size=self.cache_keys,
            )
            engine.rebuild()  # restored windows get back into the due index, and still close
            self._built_at[partition] = self.clock.now_ms()
            engine.align(self._floor(partition).stream_ms)  # STANDSTILL until every source reported
            log.info("partition %d: window state loaded", partition)
        return engine

    async def on_event(
        self, partition: int, accepted: Accepted, ack: Ack, read_ms: int | None = None
    ) -> None:
        """One valid event of ``partition``, inside an event of that partition; ``read_ms``:
        when its source read it, if it was forwarded."""
        if self._acks.revoked(partition):
            return  # never acked: the partition's next owner processes it again
        epoch = self._acks.epoch(partition)
        engine = self.engine(partition)
        if read_ms is not None:
            self._check_overrun(partition, engine, accepted, read_ms)
        await self._publish(partition, engine.process(accepted))
        if self._acks.epoch(partition) != epoch:
            return  # revoked (and maybe reassigned) meanwhile: its state went with the engine
        self.hold(partition, ack)
        if (
            self._stores[partition].pending >= self.flush_keys
            or self._acks.held(partition) >= self.flush_records
        ):
            await self.flush(partition)

    async def on_tick(self, partition: int, ack: Ack, *, caught_up: bool = True) -> None:
        """The wall clock reached ``partition`` (idle close while nothing that may reach it
        is left to read, see :meth:`WindowEngine.tick`), and its buffer is flushed."""
        if self._acks.revoked(partition):
            return
        epoch = self._acks.epoch(partition)
        engine = self.engine(partition)
        floor = self._floor(partition)
        await self._publish(partition, engine.align(floor.stream_ms))
        await self._publish(
            partition,
            engine.tick(
                caught_up=caught_up and floor.idle_until_ms is not None,
                until_ms=floor.idle_until_ms,
            ),
        )
        if self._acks.epoch(partition) != epoch:
            return
        self.hold(partition, ack)
        await self.flush(partition)

    async def on_watermark(
        self, partition: int, marks: Mapping[int, SourceMark], ack: Ack, *, sent_ms: int
    ) -> None:
        """Marks of input partitions (worker.windows.watermarks), which bound ``partition``'s stream
        time so that events they forwarded here are not passed while on their way.

        Watermarks sent before this worker took the partition over are ignored: their cuts
        are wall-clock times of this partition's previous owner, whose history of what it
        had seen went with it."""
        if self._acks.revoked(partition):
            return
        epoch = self._acks.epoch(partition)
        engine = self.engine(partition)
        if sent_ms >= self._built_at.get(partition, 0):
            self._marks.setdefault(partition, {}).update(marks)
        await self._publish(partition, engine.align(self._floor(partition).stream_ms))
        if self._acks.epoch(partition) != epoch:
            return
        self.hold(partition, ack)

    def _check_overrun(
        self, partition: int, engine: WindowEngine, accepted: Accepted, read_ms: int
    ) -> None:
        """Count a forwarded event that finds stream time past the invariant's bound
        (worker.windows.watermarks): what this partition had seen when the event was read, or the
        event's own time.  Only a clock that disagrees between workers lets it happen."""
        stream_time = engine.stream_time_ms
        if stream_time is None or not self.sources:
            return
        bound = max(engine.seen_as_of(read_ms), accepted.event_time_ms)
        if stream_time > bound:
            self.metrics.stream_time_overruns.inc()
            log.warning(
                "partition %d: stream time %d ms past a forwarded event read at %d "
                "(bound %d ms): are the workers' clocks in step?",
                partition, stream_time, read_ms, bound,
            )

    def _floor(self, partition: int) -> Floor:
        """``partition``'s floor from its sources' latest marks (worker.windows.watermarks)."""
        if not self.sources:
            return Floor(None, self.clock.now_ms())
        engine = self._engines[partition]
        marks = self._marks.get(partition, {})
        floor = partition_floor(marks, sources=self.sources, seen_as_of=engine.seen_as_of)
        if marks:
            engine.forget_seen_before(min(mark.cut_ms for mark in marks.values()) - 1)
        return floor

    def hold(self, partition: int, ack: Ack) -> None:
        """Acknowledge a record of ``partition`` at its next flush, after those before it
        (:class:`~worker.agents.acks.OrderedAcks`).  Every ack of a partition goes through
        here, the forwarding stage's too, so a partition's acks keep offset order."""
        self._acks.hold(partition, ack)

    async def flush(self, partition: int) -> None:
        """Write the partition's buffered state, then acknowledge the records it covers once
        the broker has the state and every decision sent since the last flush.

        Two agents (input and rekeyed topic) feed one partition's engine, so while one waits
        in here the other may process and flush too: :class:`OrderedAcks` takes the buffer
        and the acks it covers together and keeps the sends and the acks in order.
        """

        async def write(owned: Callable[[], bool]) -> Flushed | None:
            store = self._stores.get(partition)
            entries = store.take() if store is not None else {}
            inflight = self._inflight.pop(partition, [])
            if not (entries or inflight):
                return None
            changelog = (
                await self.io.send_changelog(partition, entries, owned) if entries else []
            )

            def confirmed(results: list[Any]) -> None:
                if changelog:
                    self.io.committed(partition, max(r.offset for r in results[: len(changelog)]))

            return Flushed([*changelog, *inflight], confirmed)

        await self._acks.flush(partition, write)

    async def drain(self) -> None:
        """Wait for every pending confirmation (tests and shutdown)."""
        await self._acks.drain()

    def on_revoked(self, partitions: Iterable[int]) -> None:
        """Forget engines of partitions this worker no longer owns; the new owner rebuilds.

        Unflushed state is dropped with them: its records were never acknowledged, so their
        offsets were not committed and the new owner processes them again.
        """
        partitions = list(partitions)
        self._acks.on_revoked(partitions)
        for partition in partitions:
            self._stores.pop(partition, None)
            self._inflight.pop(partition, None)
            self._marks.pop(partition, None)
            self._built_at.pop(partition, None)
            if self._engines.pop(partition, None) is not None:
                log.info("partition %d: revoked", partition)
        self._update_open_gauge()

    def on_assigned(self, partitions: Iterable[int]) -> None:
        """Partitions (re)assigned: their engines are rebuilt from the table on first use."""
        self._acks.on_assigned(partitions)

    async def _publish(self, partition: int, outcome: Outcome) -> None:
        if not (outcome.decisions or outcome.late or outcome.duplicates):
            return
        now_ms = self.clock.now_ms()
        inflight = self._inflight.setdefault(partition, [])
        for decision in outcome.decisions:
            inflight.append(
                await self.producer.send(
                    self.outbox_topic,
                    decision.target_id.encode(),
                    decision.outbox_json(),
                )
            )
            self.metrics.observe_decision(decision, now_ms=now_ms)
        for late in outcome.late:
            inflight.append(
                await self.producer.send(self.late_topic, late.key.encode(), late_record(late))
            )
            self.metrics.events_late.inc()
        if outcome.duplicates:
            self.metrics.events_duplicate.inc(outcome.duplicates)

    def _update_open_gauge(self) -> None:
        totals: dict[str, int] = {}
        for engine in self._engines.values():
            for rule, count in engine.windows_open.items():
                totals[rule] = totals.get(rule, 0) + count
        self.metrics.set_windows_open(totals)

    def refresh_gauges(self) -> None:
        """Called by the tick timer: open windows per rule, summed over owned partitions."""
        self._update_open_gauge()

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

import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from worker.agents.ingest import Ack
from worker.windows import LateEvent, Outcome, WindowEngine

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.ingest import Accepted
    from worker.metrics import Metrics
    from worker.rules import RuleConfig

__all__ = ["TICK_HEADER", "PartitionStore", "Windows"]

log = logging.getLogger(__name__)

#: Header marking a tick record on the rekeyed topic (value: the sender's wall clock, ms).
TICK_HEADER = "fw-tick"

#: Sends one record: (topic, key, value).
Send = Callable[[str, bytes, bytes], Awaitable[Any]]

_DELETED = None


class PartitionStore:
    """A :class:`~worker.windows.WindowStore` over one partition's keys of a Faust table,
    with writes buffered until :meth:`flush` (module docstring)."""

    def __init__(self, table: Any, partition: int) -> None:
        self._table = table
        self._prefix = f"{partition}/"
        self._pending: dict[str, bytes | None] = {}

    @property
    def pending(self) -> int:
        """Keys written since the last flush."""
        return len(self._pending)

    def get(self, key: str) -> bytes | None:
        if key in self._pending:
            return self._pending[key]
        value: bytes | None = self._table.get(self._prefix + key)
        return value

    def put(self, key: str, value: bytes) -> None:
        self._pending[key] = value

    def delete(self, key: str) -> None:
        self._pending[key] = _DELETED

    def items(self) -> Iterable[tuple[str, bytes]]:
        prefix, cut = self._prefix, len(self._prefix)
        for key, value in list(self._table.items()):
            name = key[cut:]
            if key.startswith(prefix) and value is not None and name not in self._pending:
                yield name, value
        for name, pending in list(self._pending.items()):
            if pending is not None:
                yield name, pending

    def flush(self) -> int:
        """Write the buffered keys to the table; only while an event of this partition is
        being processed (Faust takes the changelog partition from it).  Returns the count."""
        table, prefix = self._table, self._prefix
        for name, value in self._pending.items():
            if value is None:
                with contextlib.suppress(KeyError):
                    del table[prefix + name]
            else:
                table[prefix + name] = value
        written = len(self._pending)
        self._pending.clear()
        return written


@dataclass
class Windows:
    """Owns one engine per partition and sends what the engines return."""

    table: Any
    config: RuleConfig
    grace_ms: int
    idle_close_ms: int
    max_signals: int
    clock: Clock
    metrics: Metrics
    send: Send
    outbox_topic: str
    late_topic: str
    #: Flush a partition's buffer early once it holds this many keys...
    flush_keys: int = 2_000
    #: ...or this many unacknowledged records: Faust stops handing out records when too many
    #: are unacknowledged (its stream buffer), so waiting for the tick would throttle a busy
    #: partition to about this many records per tick.
    flush_records: int = 500
    _engines: dict[int, WindowEngine] = field(default_factory=dict)
    _stores: dict[int, PartitionStore] = field(default_factory=dict)
    _held: dict[int, list[Ack]] = field(default_factory=dict)
    #: Partitions revoked and not (yet) assigned again: events of theirs still in flight are
    #: dropped, since the next owner replays them from the committed offset anyway.
    _revoked: set[int] = field(default_factory=set)

    def engine(self, partition: int) -> WindowEngine:
        engine = self._engines.get(partition)
        if engine is None:
            store = self._stores[partition] = PartitionStore(self.table, partition)
            engine = self._engines[partition] = WindowEngine(
                store,
                config=self.config,
                grace_ms=self.grace_ms,
                idle_close_ms=self.idle_close_ms,
                max_signals=self.max_signals,
                clock=self.clock,
            )
            engine.rebuild()  # restored windows get back into the due index, and still close
            log.info("partition %d: window state loaded", partition)
        return engine

    async def on_event(self, partition: int, accepted: Accepted, ack: Ack) -> None:
        """One valid event of ``partition``, inside an event of that partition."""
        if partition in self._revoked:
            return  # never acked: the partition's next owner processes it again
        await self._publish(partition, self.engine(partition).process(accepted))
        self.hold(partition, ack)
        if (
            self._stores[partition].pending >= self.flush_keys
            or len(self._held.get(partition, ())) >= self.flush_records
        ):
            await self.flush(partition)

    async def on_tick(self, partition: int, ack: Ack) -> None:
        """The wall clock reached ``partition`` (idle close), and its buffer is flushed."""
        if partition in self._revoked:
            return
        await self._publish(partition, self.engine(partition).tick())
        self.hold(partition, ack)
        await self.flush(partition)

    def hold(self, partition: int, ack: Ack) -> None:
        """Acknowledge a record of ``partition`` at its next flush, after those before it.

        Every ack of a partition goes through here, so records are acknowledged in offset
        order: Faust's commit may skip a single unacknowledged record at the head of the
        acknowledged ones (and any, before the first commit), so out-of-order acks could lose
        a record whose state is still buffered.
        """
        if partition not in self._revoked:
            self._held.setdefault(partition, []).append(ack)

    async def flush(self, partition: int) -> None:
        """Write the partition's buffered state, then acknowledge the records it covers."""
        store = self._stores.get(partition)
        if store is not None:
            store.flush()
        held = self._held.pop(partition, [])
        for ack in held:
            await ack()

    def on_revoked(self, partitions: Iterable[int]) -> None:
        """Forget engines of partitions this worker no longer owns; the new owner rebuilds.

        Unflushed state is dropped with them: its records were never acknowledged, so their
        offsets were not committed and the new owner processes them again.
        """
        for partition in partitions:
            self._revoked.add(partition)
            self._stores.pop(partition, None)
            self._held.pop(partition, None)
            if self._engines.pop(partition, None) is not None:
                log.info("partition %d: revoked", partition)
        self._update_open_gauge()

    def on_assigned(self, partitions: Iterable[int]) -> None:
        """Partitions (re)assigned: their engines are rebuilt from the table on first use."""
        self._revoked.difference_update(partitions)

    async def _publish(self, partition: int, outcome: Outcome) -> None:
        now_ms = self.clock.now_ms()
        for decision in outcome.decisions:
            await self.send(
                self.outbox_topic,
                decision.target_id.encode(),
                decision.model_dump_json().encode(),
            )
            self.metrics.observe_decision(decision, now_ms=now_ms)
        for late in outcome.late:
            await self.send(self.late_topic, late.key.encode(), _late_record(late))
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


def _late_record(late: LateEvent) -> bytes:
    event = late.accepted.event.model_dump(mode="json") if late.accepted is not None else None
    return orjson.dumps(
        {
            "reason": late.reason,
            "key": late.key,
            "event_id": late.event_id,
            "type": late.type,
            "event_time_ms": late.event_time_ms,
            "event": event,
        }
    )

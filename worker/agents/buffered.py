"""Changelogged tables written in batches, with each input acknowledged only once the
changelog holds what it changed: delivery's ``delivery-state`` and ``evidence-properties``.

Why not ``table[key] = value``: Faust allows it only inside a stream event (the event's
partition picks the changelog partition), and each write is one changelog record on Faust's
per-record path (about 190 us).  Delivery merges one decision per outbox record and applies
one outcome per ``result`` record, mostly to keys written a moment before, so writing each
change was most of what delivery cost the shared event loop (``bench/REPORT.md`` 1b).

Here a write lands in a per-partition buffer; :meth:`Checkpoints.flush` writes each key once
(RocksDB at once, then the changelog through :class:`~worker.faust_compat.TableIO`), and the
records whose effects were buffered are acknowledged only after the broker has the changelog
records of every table they changed.  When acks are released, in which order, and what a
refused send or a revocation does to them is :class:`~worker.agents.acks.OrderedAcks`'s, as
for the windows adapter.  What this module adds, and why it holds:

* **Reads see every write.**  A read checks the buffer first; RocksDB is written when the
  buffer is taken, before the changelog records are sent, so no read falls between the two.
* **A state is durable before it is sent.**  :attr:`Checkpoints.on_durable` names the keys
  of a flush only once the changelog records of all its tables are confirmed.
* **A revoked partition's buffer is dropped, not flushed:** its records were never
  acknowledged, so its next owner reads them again.

Keys start with their partition (``b"3/r:<id>"``), as both tables' keys always have, so a
write outside any event still knows its changelog partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from worker.agents.acks import Flushed, OrderedAcks
from worker.agents.ingest import Ack
from worker.faust_compat import TableIO

__all__ = ["FLUSH_INTERVAL_S", "BufferedTable", "Checkpoints", "partition_of_key"]

log = logging.getLogger(__name__)

#: How often buffered writes are flushed.  It bounds how long a merged state waits before it
#: may be sent (delivery sends a state only once it is durable) and how long a record waits
#: for its ack; writes of one key within it cost one changelog record.
FLUSH_INTERVAL_S = 0.2


def partition_of_key(key: bytes) -> int:
    """The partition a table key names: the digits before its first ``/``."""
    return int(key.split(b"/", 1)[0])


class BufferedTable:
    """One table's :class:`~worker.delivery_ports.KeyValueTable`, writes buffered per
    partition until :meth:`Checkpoints.flush` takes them (module docstring)."""

    def __init__(self, io: TableIO[bytes], items: Callable[[], Iterable[tuple[bytes, bytes]]]):
        self.io = io
        self._items = items
        self._pending: dict[int, dict[bytes, bytes | None]] = {}

    def get(self, key: bytes, /) -> bytes | None:
        partition = partition_of_key(key)
        pending = self._pending.get(partition)
        if pending is not None and key in pending:
            return pending[key]
        return self.io.get(partition, key)

    def __setitem__(self, key: bytes, value: bytes, /) -> None:
        self._pending.setdefault(partition_of_key(key), {})[key] = value

    def __delitem__(self, key: bytes, /) -> None:
        self._pending.setdefault(partition_of_key(key), {})[key] = None

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every entry of the partitions this worker holds, buffered writes included."""
        pending = self._pending
        for key, value in self._items():
            buffered = pending.get(partition_of_key(key))
            if buffered is None or key not in buffered:
                yield key, value
        for buffered in list(pending.values()):
            for key, maybe in list(buffered.items()):
                if maybe is not None:
                    yield key, maybe

    def partitions(self) -> set[int]:
        """Partitions with buffered writes."""
        return set(self._pending)

    def pending(self, partition: int) -> int:
        """Keys of ``partition`` written since its last flush."""
        return len(self._pending.get(partition, ()))

    def take(self, partition: int) -> dict[bytes, bytes | None]:
        """The partition's buffered writes, now written to RocksDB; its buffer empties."""
        entries = self._pending.pop(partition, None)
        if not entries:
            return {}
        self.io.put_local(partition, entries)
        return entries

    def drop(self, partition: int) -> None:
        """Forget the partition's buffered writes (revoked: never acknowledged)."""
        self._pending.pop(partition, None)


@dataclass
class Checkpoints:
    """Flushes :attr:`tables` per partition and releases the acks the flush covers
    (:class:`~worker.agents.acks.OrderedAcks`)."""

    tables: list[BufferedTable]
    #: Called when the broker did not take a flush's records: the worker must stop (and
    #: replay from its last commit when it restarts) rather than go on without acking.
    on_failure: Callable[[BaseException], object] = lambda exc: None
    #: Called once the changelog holds a flush's writes: (table, partition, keys written).
    on_durable: Callable[[BufferedTable, int, list[bytes]], object] = (
        lambda table, partition, keys: None
    )
    #: Flush a partition early once one table holds this many of its keys...
    flush_keys: int = 2_000
    #: ...or this many of its records wait for their ack (bounds what a crash replays).
    flush_records: int = 500
    _acks: OrderedAcks = field(init=False)

    def __post_init__(self) -> None:
        self._acks = OrderedAcks("delivery state", lambda exc: self.on_failure(exc))

    async def run(self, interval_s: float = FLUSH_INTERVAL_S) -> None:
        """Flush every partition each ``interval_s``, for as long as the app runs."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush_all()
            except Exception as exc:  # its acks are lost with it: stop, and replay at restart
                log.exception("flushing delivery's tables failed")
                self.on_failure(exc)

    def hold(self, partition: int, ack: Ack) -> None:
        """Acknowledge a record of ``partition`` at its next flush, after those before it.
        Call it once the record's writes are buffered."""
        self._acks.hold(partition, ack)

    def full(self, partition: int) -> bool:
        """Whether the partition should be flushed now rather than at the next tick."""
        return self._acks.held(partition) >= self.flush_records or any(
            table.pending(partition) >= self.flush_keys for table in self.tables
        )

    async def flush_all(self) -> None:
        """Flush every partition with held acks or buffered writes (the timer's tick)."""
        partitions = self._acks.partitions()
        for table in self.tables:
            partitions |= table.partitions()
        for partition in sorted(partitions):
            await self.flush(partition)

    async def flush(self, partition: int) -> None:
        """Write the partition's buffered writes once per key, then acknowledge the records
        they cover once the broker has the changelog records of every table (module
        docstring).  The wait for the broker runs in the background."""
        if self._acks.revoked(partition):  # not ours: whatever was written here is dropped
            for table in self.tables:
                table.drop(partition)
            return

        async def write(owned: Callable[[], bool]) -> Flushed | None:
            taken = [(table, table.take(partition)) for table in self.tables]
            if not any(entries for _, entries in taken):
                return None
            sends: list[tuple[BufferedTable, list[bytes], list[Awaitable[Any]]]] = []
            for table, entries in taken:
                if entries:
                    written = [key for key, value in entries.items() if value is not None]
                    futures = await table.io.send_changelog(partition, entries, owned)
                    sends.append((table, written, futures))

            def confirmed(results: list[Any]) -> None:
                at = 0
                for table, written, futures in sends:
                    mine, at = results[at : at + len(futures)], at + len(futures)
                    if mine:
                        table.io.committed(partition, max(result.offset for result in mine))
                    if written:
                        self.on_durable(table, partition, written)

            return Flushed([future for _, _, futures in sends for future in futures], confirmed)

        await self._acks.flush(partition, write)

    async def drain(self) -> None:
        """Wait for every pending confirmation (tests and shutdown)."""
        await self._acks.drain()

    def on_revoked(self, partitions: Iterable[int]) -> None:
        """Drop the partitions' buffers and held acks (module docstring)."""
        partitions = list(partitions)
        self._acks.on_revoked(partitions)
        for partition in partitions:
            for table in self.tables:
                table.drop(partition)

    def on_assigned(self, partitions: Iterable[int]) -> None:
        self._acks.on_assigned(partitions)

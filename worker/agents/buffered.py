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
records.  Invariants, and why they hold:

* **Nothing acknowledged is lost.**  A record's ack is held (:meth:`Checkpoints.hold`) after
  its writes are buffered, and the buffers and the acks they cover are taken together, before
  any await, so an ack is never released before a flush that holds its writes is confirmed.
  A crash before that replays the record from the last commit; merging is idempotent.
* **Acks keep offset order.**  Faust's commit may skip one unacknowledged record at the head
  of the acknowledged ones, so each partition's acks are released in the order they were held,
  one confirmation after another.
* **The changelog keeps write order.**  One lock per partition serialises the sends, so the
  last value of a key is the last record of it.
* **Reads see every write.**  A read checks the buffer first; RocksDB is written when the
  buffer is taken, before the changelog records are sent, so no read falls between the two.
* **A revoked partition's buffer is dropped, not flushed:** its records were never
  acknowledged, so its next owner reads them again; a confirmation that ends after the
  revocation acknowledges nothing.

Keys start with their partition (``b"3/r:<id>"``), as both tables' keys always have, so a
write outside any event still knows its changelog partition.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

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
    """Flushes :attr:`tables` per partition and releases the acks the flush covers."""

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
    _held: dict[int, list[Ack]] = field(default_factory=dict)
    _locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    _epochs: dict[int, int] = field(default_factory=dict)
    _revoked: set[int] = field(default_factory=set)
    #: The newest confirmation per partition; each waits for the one before it.
    _confirming: dict[int, asyncio.Future[bool]] = field(default_factory=dict)

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
        if partition not in self._revoked:
            self._held.setdefault(partition, []).append(ack)

    def full(self, partition: int) -> bool:
        """Whether the partition should be flushed now rather than at the next tick."""
        return len(self._held.get(partition, ())) >= self.flush_records or any(
            table.pending(partition) >= self.flush_keys for table in self.tables
        )

    async def flush_all(self) -> None:
        """Flush every partition with held acks or buffered writes (the timer's tick)."""
        partitions = set(self._held)
        for table in self.tables:
            partitions |= table.partitions()
        for partition in sorted(partitions):
            await self.flush(partition)

    async def flush(self, partition: int) -> None:
        """Write the partition's buffered writes once per key, then acknowledge the records
        they cover once the broker has the changelog records (module docstring).  The wait
        for the broker runs in the background, so the caller goes on with the next record."""
        if partition in self._revoked:  # not ours: whatever was written here is dropped
            for table in self.tables:
                table.drop(partition)
            return
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            taken = [(table, table.take(partition)) for table in self.tables]
            held = self._held.pop(partition, [])
            if not (held or any(entries for _, entries in taken)):
                return
            epoch = self._epochs.get(partition, 0)

            def owned() -> bool:
                return self._epochs.get(partition, 0) == epoch

            sends: list[tuple[BufferedTable, list[bytes], list[Awaitable[Any]]]] = []
            for table, entries in taken:
                if entries:
                    written = [key for key, value in entries.items() if value is not None]
                    futures = await table.io.send_changelog(partition, entries, owned)
                    sends.append((table, written, futures))
            if not owned():
                return  # revoked meanwhile: the new owner replays these records
            self._confirming[partition] = asyncio.ensure_future(
                self._confirm(partition, epoch, self._confirming.get(partition), sends, held)
            )

    async def _confirm(
        self,
        partition: int,
        epoch: int,
        previous: asyncio.Future[bool] | None,
        sends: list[tuple[BufferedTable, list[bytes], list[Awaitable[Any]]]],
        held: list[Ack],
    ) -> bool:
        """Ack ``held`` once the changelog records are confirmed; False (and nothing acked,
        now or later on this partition) if the broker refused them."""
        if previous is not None and not await previous:
            return False
        try:
            confirmed = [(table, written, await asyncio.gather(*futures))
                         for table, written, futures in sends]
        except Exception as exc:  # the producer gave up after its own retries
            log.error("partition %d: delivery state not confirmed by the broker: %r",
                      partition, exc)
            self.on_failure(exc)
            return False
        if self._epochs.get(partition, 0) != epoch:
            return True  # revoked meanwhile: the partition's next owner replays these records
        for table, written, results in confirmed:
            if results:
                table.io.committed(partition, max(result.offset for result in results))
            if written:
                self.on_durable(table, partition, written)
        for ack in held:
            await ack()
        return True

    async def drain(self) -> None:
        """Wait for every pending confirmation (tests and shutdown)."""
        pending = [task for task in self._confirming.values() if not task.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def on_revoked(self, partitions: Iterable[int]) -> None:
        """Drop the partitions' buffers and held acks (module docstring)."""
        for partition in partitions:
            self._revoked.add(partition)
            self._epochs[partition] = self._epochs.get(partition, 0) + 1
            self._confirming.pop(partition, None)
            self._held.pop(partition, None)
            for table in self.tables:
                table.drop(partition)

    def on_assigned(self, partitions: Iterable[int]) -> None:
        self._revoked.difference_update(partitions)

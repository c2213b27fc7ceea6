"""Acks held per partition and released in order, once the broker has what they cover.

The windows adapter and delivery's tables both buffer what a record changes and write it
later, in one flush per partition.  A record may be acknowledged only after that: Faust
commits up to the acknowledged records, and a committed record is never read again.  This
module is the one place that decides when a held ack is released.  Invariants, and why
they hold:

* **Nothing is acknowledged before the broker confirmed the flush that covers it.**  A
  record's ack is held (:meth:`OrderedAcks.hold`) after its effects are buffered; a flush
  takes the held acks and, in the same synchronous step, the buffered effects
  (:data:`Write`), so every held ack is covered by the sends it waits for.
* **Acks keep offset order.**  Faust's commit may skip one unacknowledged record at the
  head of the acknowledged ones (and any, before the first commit), so a partition's acks are
  released in the order they were held: each flush's confirmation waits for the one before.
* **Sends keep write order.**  One lock per partition serialises flushes, so the last value
  of a key is the last changelog record of it.  The lock is per partition for good, not per
  assignment: a flush of a revoked assignment finishes its sends before a new one starts.
* **A refused send stops the partition.**  If a flush's records are refused, by the broker
  (the producer gave up after its own retries) or by the producer before they were queued
  (it is closed, or its buffer stayed full), nothing on that partition is acknowledged, then
  or later, and :attr:`OrderedAcks.on_failure` is told: the worker must stop and replay
  from its last commit rather than go on with a gap.
* **Nothing of a revoked assignment is acknowledged.**  Revocation bumps the partition's
  epoch and drops its held acks; a flush or confirmation of the old epoch acknowledges
  nothing, since the partition's next owner reads those records again.

The wait for the broker runs in the background, so the stream goes on with its next record:
blocking it on a produce round trip per flush would idle the CPU, and Faust's stream buffer
already bounds how far processing runs ahead of the acks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from worker.agents.ingest import Ack

__all__ = ["Flushed", "OrderedAcks", "Write"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Flushed:
    """What one flush sent: the broker acknowledgements its held acks wait for, and what to
    do with their results once all came while the partition is still owned."""

    sends: list[Awaitable[Any]]
    confirmed: Callable[[list[Any]], object] = lambda results: None


#: Takes a partition's buffered effects and sends them; None when there were none.  It gets
#: ``owned()``, true while the partition is still held by the assignment that flushes.  It
#: must take the buffer before its first await (see the module docstring).
Write = Callable[[Callable[[], bool]], Awaitable[Flushed | None]]


def _refused() -> asyncio.Future[bool]:
    """A confirmation that failed: every later one of the partition waits on it, so none acks."""
    refused: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    refused.set_result(False)
    return refused


@dataclass
class OrderedAcks:
    """Held acks per partition, released in order after their flush is confirmed."""

    #: What the sends carry, for the log line when the broker refuses them.
    what: str
    #: Called when the broker refused a flush's records.
    on_failure: Callable[[BaseException], object]
    _held: dict[int, list[Ack]] = field(default_factory=dict)
    _locks: dict[int, asyncio.Lock] = field(default_factory=dict)
    _epochs: dict[int, int] = field(default_factory=dict)
    #: Partitions revoked and not (yet) assigned again.
    _revoked: set[int] = field(default_factory=set)
    #: The newest confirmation per partition; each waits for the one before it.
    _confirming: dict[int, asyncio.Future[bool]] = field(default_factory=dict)

    def revoked(self, partition: int) -> bool:
        """Whether ``partition`` was revoked and not assigned again: its records are dropped,
        never acknowledged, since the next owner reads them again."""
        return partition in self._revoked

    def epoch(self, partition: int) -> int:
        """The partition's assignment count: compare before and after an await to tell
        whether it was revoked meanwhile."""
        return self._epochs.get(partition, 0)

    def hold(self, partition: int, ack: Ack) -> None:
        """Acknowledge a record of ``partition`` at its next flush, after those before it.
        Call it once the record's effects are buffered."""
        if partition not in self._revoked:
            self._held.setdefault(partition, []).append(ack)

    def held(self, partition: int) -> int:
        """Records of ``partition`` waiting for a flush."""
        return len(self._held.get(partition, ()))

    def partitions(self) -> set[int]:
        """Partitions with held acks."""
        return set(self._held)

    async def flush(self, partition: int, write: Write) -> None:
        """Send the partition's buffered effects with ``write``, then, in the background,
        release the acks held until now once the sends are confirmed (module docstring)."""
        lock = self._locks.setdefault(partition, asyncio.Lock())
        async with lock:
            if partition in self._revoked:
                return
            held = self._held.pop(partition, [])
            epoch = self.epoch(partition)

            def owned() -> bool:
                return self.epoch(partition) == epoch

            try:
                flushed = await write(owned)
            except Exception as exc:  # refused before it was queued (closed, buffer full)
                log.error("partition %d: %s not sent: %r", partition, self.what, exc)
                if owned():  # the acks held now and later on this assignment stay held
                    self._confirming[partition] = _refused()
                self.on_failure(exc)
                return
            if flushed is None and not held:
                return
            if not owned():
                return  # revoked meanwhile: the new owner replays these records
            self._confirming[partition] = asyncio.ensure_future(
                self._confirm(partition, epoch, self._confirming.get(partition),
                              flushed or Flushed([]), held)
            )

    async def _confirm(
        self,
        partition: int,
        epoch: int,
        previous: asyncio.Future[bool] | None,
        flushed: Flushed,
        held: list[Ack],
    ) -> bool:
        """Ack ``held`` once ``flushed`` is confirmed; False (and nothing acked, now or later
        on this partition) if the broker refused it."""
        if previous is not None and not await previous:
            return False
        try:
            results = await asyncio.gather(*flushed.sends)
        except Exception as exc:  # the producer gave up after its own retries
            log.error("partition %d: %s not confirmed by the broker: %r",
                      partition, self.what, exc)
            self.on_failure(exc)
            return False
        if self.epoch(partition) != epoch:
            return True  # revoked meanwhile: the partition's next owner replays these records
        flushed.confirmed(list(results))
        for ack in held:
            await ack()
        return True

    async def drain(self) -> None:
        """Wait for every pending confirmation (tests and shutdown)."""
        pending = [task for task in self._confirming.values() if not task.done()]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def on_revoked(self, partitions: Iterable[int]) -> None:
        """Drop the partitions' held acks; what is in flight for them acknowledges nothing."""
        for partition in partitions:
            self._revoked.add(partition)
            self._epochs[partition] = self.epoch(partition) + 1
            self._confirming.pop(partition, None)
            self._held.pop(partition, None)

    def on_assigned(self, partitions: Iterable[int]) -> None:
        self._revoked.difference_update(partitions)

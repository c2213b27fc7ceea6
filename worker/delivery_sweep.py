"""Sweeping: settled states past ``DELIVERY_DEDUPE_TTL_S`` are deleted from the table.

A settled state is kept that long so that a duplicate or replayed decision is recognised and
costs no call.  The sweep is in two steps because only a partition's handler writes its
keys (one writer per partition, and only while the partition is owned): the timer *finds*
expired states (reads only) and sends each partition a ``sweep`` record (``{"keys"}``) on
the retry topic; the handler *deletes* them when it reads that record, after checking again
that each is still settled and expired (a decision merged meanwhile makes it due, and keeps
it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import orjson

from worker.delivery_records import partition_of, table_key_of
from worker.delivery_state import FeedbackState
from worker.envelopes import KIND_HEADER

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.delivery_known import KnownStates
    from worker.delivery_ports import Send

__all__ = ["Sweep"]

log = logging.getLogger(__name__)

#: Settled states deleted per sweep record.
_SWEEP_BATCH = 500


class Sweep:
    """Finds expired settled states (timer) and deletes them (agent); see the module docstring."""

    def __init__(
        self, *, send: Send, topic: str, ttl_s: float, clock: Clock, owns: Callable[[int], bool]
    ) -> None:
        self._send = send
        self._topic = topic
        self._clock = clock
        self._owns = owns
        self._ttl_ms = int(ttl_s * 1000)
        self._interval_ms = int(min(3_600.0, ttl_s / 4) * 1000)
        self._next_ms = clock.now_ms() + self._interval_ms

    def due(self) -> bool:
        """True once per interval: time to look for expired states."""
        if self._clock.now_ms() < self._next_ms:
            return False
        self._next_ms = self._clock.now_ms() + self._interval_ms
        return True

    async def find(self, items: Iterable[tuple[bytes, bytes]]) -> int:
        """Find settled states past their TTL and send their partitions a ``sweep`` record.

        Reads only; the deletes happen in the partition's handler.
        """
        cutoff_ms = self._clock.now_ms() - self._ttl_ms
        expired: dict[int, list[str]] = {}
        for index, (table_key, raw) in enumerate(items):
            if index % 1_000 == 999:
                await asyncio.sleep(0)  # a big table must not stall heartbeats
            partition = partition_of(table_key)
            if not self._owns(partition):
                continue
            state = FeedbackState.from_json(raw)
            if not state.due and state.updated_at_ms <= cutoff_ms:
                expired.setdefault(partition, []).append(table_key.split(b"/", 1)[1].decode())
        for partition, keys in expired.items():
            for start in range(0, len(keys), _SWEEP_BATCH):
                await self._send(
                    self._topic,
                    b"sweep",
                    orjson.dumps({"keys": keys[start : start + _SWEEP_BATCH]}),
                    partition,
                    [(KIND_HEADER, b"sweep")],
                )
        return sum(len(keys) for keys in expired.values())

    def apply(self, keys: Iterable[Any], partition: int, known: KnownStates) -> None:
        """A ``sweep`` record, in its partition's handler: delete the states still settled
        and expired."""
        cutoff_ms = self._clock.now_ms() - self._ttl_ms
        removed = 0
        for key in keys:
            table_key = table_key_of(partition, str(key))
            state = known.read(table_key)
            if state is not None and not state.due and state.updated_at_ms <= cutoff_ms:
                known.forget(table_key)
                removed += 1
        if removed:
            log.debug("forgot %d settled states on partition %d", removed, partition)

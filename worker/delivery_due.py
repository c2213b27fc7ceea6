"""The due index: which states of this worker's partitions wait to be sent, when, and which
are in flight.

Invariants, and why they hold:

* **One entry per state.**  A state that changes while it waits keeps its place: its entry
  is replaced, not queued (:meth:`DueIndex.schedule` with ``keep_earlier``).  Heap entries
  whose time no longer matches the state's entry are stale and dropped when they surface.
* **One call per state in flight.**  A state that becomes due while its call is in flight is
  only marked (``again``), and scheduled once the call ends: two calls of one target in
  flight could reach Helicone out of order and the older one would win.
* **Only owned partitions are sent.**  Entries of a partition revoked from this worker are
  dropped (its next owner sends those states), and ``owned`` is None only until the first
  rebuild.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.delivery_state import FeedbackState

__all__ = ["Due", "DueIndex"]

#: The longest the sender sleeps without looking again (a kick wakes it sooner).
MAX_IDLE_S = 0.5
MAX_IDLE_MS = int(MAX_IDLE_S * 1000)


@dataclass(slots=True)
class Due:
    """A state waiting on one of this worker's partitions (the in-memory index)."""

    partition: int
    due_ms: int
    oldest_ms: int
    #: True after a failed attempt (the ``feedback_delivery_retry_queue`` gauge).
    retrying: bool = False


class DueIndex:
    """Due states by time, and the states in flight; see the module docstring."""

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, bytes]] = []  # (due_ms, tie, table key)
        self._tie = itertools.count()
        self.waiting: dict[bytes, Due] = {}
        self.in_flight: dict[bytes, Due] = {}
        self.again: set[bytes] = set()  # became due while in flight: look again after
        #: Partitions whose states this worker sends; None until the first rebuild.
        self.owned: set[int] | None = None

    def __len__(self) -> int:
        """States waiting to be sent or in flight."""
        return len(self.waiting) + len(self.in_flight)

    def schedule(
        self,
        table_key: bytes,
        partition: int,
        state: FeedbackState,
        *,
        is_due: bool,
        now_ms: int,
        keep_earlier: bool,
        not_before_ms: int = 0,
    ) -> bool:
        """Make ``state`` due at its retry time (now if none); an entry already there stays
        when ``keep_earlier``.  True when an entry was made (the sender should look again)."""
        if table_key in self.in_flight:
            self.again.add(table_key)
            return False
        if not is_due:
            return False
        if keep_earlier and table_key in self.waiting:
            return False
        due_ms = max(now_ms, state.retry.next_at_ms, not_before_ms)
        oldest = state.oldest_unsent_ms or now_ms
        self.reschedule(table_key, Due(partition, due_ms, oldest), due_ms,
                        retrying=state.retry.attempts > 0)
        return True

    def reschedule(
        self, table_key: bytes, due: Due, due_ms: int, *, retrying: bool = False
    ) -> None:
        self.waiting[table_key] = Due(due.partition, due_ms, due.oldest_ms, retrying)
        heapq.heappush(self._heap, (due_ms, next(self._tie), table_key))

    def peek(self, now_ms: int) -> bytes | None:
        """The earliest due state that may be sent now (stale heap entries dropped)."""
        while self._heap:
            due_ms, _, table_key = self._heap[0]
            due = self.waiting.get(table_key)
            if due is None or due.due_ms != due_ms:
                heapq.heappop(self._heap)
                continue
            if self.owned is not None and due.partition not in self.owned:
                heapq.heappop(self._heap)
                del self.waiting[table_key]
                continue
            if table_key in self.in_flight:
                heapq.heappop(self._heap)
                del self.waiting[table_key]
                self.again.add(table_key)
                continue
            return table_key if due_ms <= now_ms else None
        return None

    def start(self, table_key: bytes) -> Due:
        """Move the state :meth:`peek` returned from waiting to in flight."""
        heapq.heappop(self._heap)
        due = self.waiting.pop(table_key)
        self.in_flight[table_key] = due
        return due

    def finish(self, table_key: bytes) -> bool:
        """The state's call ended; True if it became due meanwhile (look at it again)."""
        self.in_flight.pop(table_key, None)
        if table_key in self.again:
            self.again.discard(table_key)
            return True
        return False

    def next_due_ms(self, now_ms: int) -> int | None:
        """When the earliest due state may go (stale index entries dropped), or None."""
        self.peek(now_ms)
        return self._heap[0][0] if self._heap else None

    def next_due_in(self, now_ms: int) -> int:
        return max(1, self._heap[0][0] - now_ms) if self._heap else MAX_IDLE_MS

    def reset(self, owned: set[int]) -> None:
        """Before a rebuild: this worker now sends ``owned``, and nothing is indexed."""
        self.owned = set(owned)
        self._heap.clear()
        self.waiting.clear()

    def revoke(self, partitions: set[int]) -> None:
        """``partitions`` went to another worker: stop sending their states."""
        if self.owned is not None:
            self.owned -= partitions
        for table_key, due in list(self.waiting.items()):
            if due.partition in partitions:
                del self.waiting[table_key]

    def retrying(self) -> int:
        """Waiting states that failed an attempt (the ``feedback_delivery_retry_queue`` gauge)."""
        return sum(1 for due in self.waiting.values() if due.retrying)

    def owns(self, partition: int) -> bool:
        return self.owned is None or partition in self.owned

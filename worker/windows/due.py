"""The due index: which keys of a partition need looking at before a given time.

The engine keeps two (windows to close and parked events to settle; tombstones to purge), so a
step that moves stream time touches only the keys that became due, not every key.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

__all__ = ["DueIndex"]


class DueIndex:
    """A min-heap of (due_ms, key) with lazy invalidation: O(log n) per change.

    ``_due[key]`` is the due time of the one heap entry that speaks for ``key``; entries
    that disagree with it are stale and skipped.  A key's entry may be earlier than its real
    due time (the key is then looked at, found not due, and rescheduled), never later:
    :meth:`schedule` only ever replaces an entry by an earlier one, and a key leaves the
    index only when it is popped, so the caller reschedules every key it looks at.
    """

    __slots__ = ("_due", "_heap")

    def __init__(self) -> None:
        self._heap: list[tuple[int, str]] = []
        self._due: dict[str, int] = {}

    def schedule(self, key: str, due_ms: int | None) -> None:
        """Make ``key`` due at ``due_ms`` at the latest (None: nothing to schedule)."""
        if due_ms is None:
            return
        current = self._due.get(key)
        if current is None or due_ms < current:
            heapq.heappush(self._heap, (due_ms, key))
            self._due[key] = due_ms

    def next_due_before(self, horizon_ms: int) -> bool:
        """Whether any entry (possibly stale) is due: the cheap check before popping."""
        return bool(self._heap) and self._heap[0][0] < horizon_ms

    def pop_due(self, horizon_ms: int) -> Iterator[str]:
        """Keys whose entry is due (due < horizon), earliest first; each leaves the index."""
        heap = self._heap
        while heap and heap[0][0] < horizon_ms:
            due, key = heapq.heappop(heap)
            if self._due.get(key) == due:
                del self._due[key]
                yield key

    def reset(self, entries: list[tuple[int, str]]) -> None:
        """Replace the index by ``entries`` (one per key), e.g. after a rebuild."""
        heapq.heapify(entries)
        self._heap = entries
        self._due = {key: due for due, key in entries}

    def __len__(self) -> int:
        return len(self._due)

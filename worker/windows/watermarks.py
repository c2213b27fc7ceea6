"""Stream time and the detour: the pure functions behind a partition's floor.

Events whose producer did not key them by request id are read on one input partition (the
*source*) and forwarded, through the rekeyed topic, to the partition that owns their request.
Events keyed by request id reach that partition directly, and they move its stream time.

**The invariant.**  While an event is on its way from the source that read it to the partition
that owns it, that partition's stream time stays at or below the largest event time the
partition itself had seen when the source read the event.  So the hop adds no lateness: a
forwarded event is judged exactly as strictly as if its owner had read it at the moment its
source did.  (Stream time cannot instead stay below the event's own time: an event older than
stream time may be read at any moment, and stream time never moves back.)

**Why it holds.**  Each worker sends every partition, four times a second, a watermark record
on the rekeyed topic with a :class:`SourceMark` per input partition it owns.  The mark's
``cut_ms`` is a wall-clock time before which the source read nothing that is not already
queued for the rekeyed topic: the time of sending, or the read time of a record still being
routed if one is.  One producer queues both, and a partition's records keep their order, so on
the receiving partition every event its source read before the cut comes *before* the
watermark, and is applied before it.  Any event still on its way was therefore read after the
cut of the latest mark applied.  The partition keeps the history of the largest event time it
has seen (:class:`SeenHistory`), and its floor is that value as of the cut
(:func:`partition_floor`): at or below what it had seen when any event still on its way was
read.  Stream time never passes the floor.  A mark that waits (its worker is slow, the
rekeyed partition lags, the source changes owner) only keeps the floor lower; nothing has to
be fresh for the floor to be right.  A partition's stream time stands still until every source
has sent a mark since the partition was assigned (:data:`STANDSTILL`).

**Keyed equivalence under a source's backlog.**  The invariant covers events once read.  An
input partition that has records left to read adds its own stream time as a second bound
(``behind_ms``): what it reads next was keyed, had the producer keyed it, to partitions that
would not have moved past it either.  That bound is as exact as the backlog the consumer
knows (from fetch responses); it is what makes a lagging source's unkeyed journeys decide as
keyed ones do.

**Idle close** (the wall clock closing windows of a silent partition) follows the same cut:
a partition may close by the wall clock only up to the earliest cut among its sources, and
not while any source is behind, so an event read before the cut is never passed by silence.

**What it costs.**  Stream time trails the direct events by the age of the marks: the
watermark interval, the rekeyed topic's round trip and the time the receiving partition takes
to reach the mark.  Windows close (and decisions go out) that much later, about a quarter to
half a second on a healthy worker, and as much later as the rekeyed topic lags on a busy one.

**Clocks.**  The cut is the source's wall clock and the history the receiving partition's.
Partitions of one worker share a clock, so between them the argument is exact; between
workers it is exact up to the difference of their clocks (NTP keeps it to milliseconds).
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import orjson

__all__ = [
    "STANDSTILL",
    "Floor",
    "SeenHistory",
    "SourceMark",
    "decode_marks",
    "encode_marks",
    "partition_floor",
    "source_mark",
]

log = logging.getLogger(__name__)

#: A floor at which stream time stands still where it is (any time below it would do).
STANDSTILL = -1


@dataclass(frozen=True, slots=True)
class SourceMark:
    """What one input partition told one partition in its latest watermark."""

    #: Everything the source read before this wall-clock time (ms) is ahead of the watermark.
    cut_ms: int
    #: The source's stream time while it has records left to read; None when caught up.
    behind_ms: int | None = None


def source_mark(
    *, now_ms: int, routing_since_ms: int | None, backlog: int | None, stream_time: int | None
) -> SourceMark:
    """The mark an input partition sends now.

    ``routing_since_ms``: when the record it is routing was read (None: none is), since that
    record may not be queued yet; ``backlog``: records left to read (None: not known yet,
    counted as behind); ``stream_time``: the largest event time it has read (None: none).
    """
    cut = now_ms if routing_since_ms is None else min(now_ms, routing_since_ms)
    behind = (stream_time or 0) if backlog != 0 else None
    return SourceMark(cut, behind)


@dataclass(frozen=True, slots=True)
class Floor:
    """A partition's bounds from its sources' marks."""

    #: Stream time must not pass this event time (:data:`STANDSTILL`: must not move; None: free).
    stream_ms: int | None
    #: The wall clock may close windows of a silent partition up to this time; None: not now.
    idle_until_ms: int | None


def partition_floor(
    marks: Mapping[int, SourceMark], *, sources: int, seen_as_of: Callable[[int], int]
) -> Floor:
    """The floor a partition's stream time and idle close obey (module docstring).

    ``marks``: input partition -> its latest mark applied here; ``sources``: how many input
    partitions there are; ``seen_as_of``: the largest event time this partition had seen at
    a wall-clock time (:meth:`SeenHistory.as_of`).
    """
    if len(marks) < sources or any(source not in marks for source in range(sources)):
        return Floor(STANDSTILL, None)
    cut = min(mark.cut_ms for mark in marks.values())
    floor = seen_as_of(cut - 1)  # seen before the cut: an event read at the cut may be on its way
    behind = [mark.behind_ms for mark in marks.values() if mark.behind_ms is not None]
    if behind:
        return Floor(min(floor, *behind), None)
    return Floor(floor, cut)


class SeenHistory:
    """The largest event time a partition has seen, as of each wall-clock time.

    Entries are (wall ms, value), both non-decreasing: a clock that steps back records at the
    last time instead.  Before the first entry the value is ``initial`` (what the partition
    had when it was built).  :meth:`forget_before` drops what no mark can ask for any more.
    """

    __slots__ = ("_initial", "_values", "_walls")

    def __init__(self, initial: int) -> None:
        self._initial = initial
        self._walls: list[int] = []
        self._values: list[int] = []

    def record(self, wall_ms: int, value: int) -> None:
        """The partition has seen ``value`` by ``wall_ms``."""
        walls, values = self._walls, self._values
        if values and value <= values[-1]:
            return
        if walls and wall_ms <= walls[-1]:
            values[-1] = value  # same (or an earlier) millisecond: the later value counts
            return
        walls.append(wall_ms)
        values.append(value)

    def as_of(self, wall_ms: int) -> int:
        """The largest value seen at or before ``wall_ms``."""
        at = bisect_right(self._walls, wall_ms)
        return self._values[at - 1] if at else self._initial

    def forget_before(self, wall_ms: int) -> None:
        """Keep only what :meth:`as_of` answers for times from ``wall_ms`` on."""
        at = bisect_right(self._walls, wall_ms) - 1
        if at > 0:
            self._initial = self._values[at - 1]
            del self._walls[:at], self._values[:at]

    def __len__(self) -> int:
        return len(self._walls)


def encode_marks(marks: Mapping[int, SourceMark]) -> bytes:
    """A watermark record's value: ``{"cuts": {"<input partition>": <cut ms>}, "sources":
    {"<input partition>": <its stream time while behind, or null>}}``."""
    return orjson.dumps({
        "cuts": {str(source): mark.cut_ms for source, mark in marks.items()},
        "sources": {str(source): mark.behind_ms for source, mark in marks.items()},
    })


def decode_marks(value: bytes | None) -> dict[int, SourceMark]:
    """The marks in a watermark record.  A record this version cannot read, or a source
    without a cut (sent by a version before cuts), counts as no mark: the partition keeps
    waiting for that source, which is safe, until a readable one arrives."""
    try:
        body = orjson.loads(value or b"{}")
        cuts, behind = body["cuts"], body["sources"]
        return {
            int(source): SourceMark(
                int(cut), None if behind.get(source) is None else int(behind[source])
            )
            for source, cut in cuts.items()
        }
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        log.warning("ignoring an unreadable watermark record")
        return {}

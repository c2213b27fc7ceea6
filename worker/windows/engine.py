"""The window engine of one partition: its store, its cache, its stream time, its due keys.

:class:`WindowEngine` is pure and synchronous (DESIGN 4; what it decides and why is the
package docstring, :mod:`worker.windows`).  The Faust adapter hands it each accepted event
(:meth:`WindowEngine.process`) and calls :meth:`WindowEngine.tick` on a timer; both *return*
what happened (an :class:`Outcome`) and the adapter sends it.  State lives in a
:class:`WindowStore` (a changelogged table in production, a dict in tests) under the routing
key, written through at the end of every call; the wall clock enters only through the
injected :class:`~worker.clock.Clock`.  What an event or the passing of time does to one
key's state is :class:`~worker.windows.transitions.Transitions`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import orjson

from worker.rules import RULE_FOR_TYPE, RULES, RuleConfig, RuleSpec
from worker.validation import Accepted
from worker.windows.due import DueIndex
from worker.windows.outcome import Outcome
from worker.windows.state import SESSION_KEY_PREFIX, KeyState
from worker.windows.transitions import NEVER, Transitions
from worker.windows.watermarks import SeenHistory

if TYPE_CHECKING:
    from worker.clock import Clock

__all__ = ["META_KEY", "DictStore", "WindowEngine", "WindowStore"]

#: Reserved store key for the partition's stream time (request ids are UUIDs and session
#: keys carry :data:`SESSION_KEY_PREFIX`, so neither can collide with it).
META_KEY = "\x00meta"


class WindowStore(Protocol):
    """Where an engine keeps its state: one partition's changelogged table in production."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""
        ...

    def items(self) -> Iterable[tuple[str, bytes]]:
        """Every stored entry, for :meth:`WindowEngine.rebuild` after recovery."""
        ...


class DictStore:
    """A :class:`WindowStore` in a dict, nothing durable: the engine as the chaos tests'
    reference model, the unit tests and the benchmarks run it.  Counts its writes."""

    def __init__(self, data: dict[str, bytes] | None = None) -> None:
        self.data: dict[str, bytes] = data if data is not None else {}
        self.puts = 0
        self.deletes = 0

    def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    def put(self, key: str, value: bytes) -> None:
        self.puts += 1
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.deletes += 1
        self.data.pop(key, None)

    def items(self) -> Iterable[tuple[str, bytes]]:
        return list(self.data.items())


# --------------------------------------------------------------------------- the engine


class WindowEngine:
    """Event-time windows of one partition (:mod:`worker.windows`).

    ``grace_ms``: how late (in stream time) an event may arrive and still count.
    ``idle_close_ms``: wall-clock silence after which windows close by the wall clock.
    ``max_signals``: cap on stored signals per window, on parked signals per key and on the
    per-key list of ids of events that changed nothing.
    ``retention_ms``: minimum time tombstones outlive their window (see :mod:`worker.windows`).
    ``cache_size``: decoded key states kept in memory (LRU); the store is written through,
    so the cache only saves decoding.
    """

    def __init__(
        self,
        store: WindowStore,
        *,
        config: RuleConfig,
        grace_ms: int,
        idle_close_ms: int,
        max_signals: int,
        clock: Clock,
        retention_ms: int = 300_000,
        cache_size: int = 100_000,
    ) -> None:
        if grace_ms < 0 or idle_close_ms <= 0 or max_signals < 1 or retention_ms < 0:
            raise ValueError(
                "need grace_ms >= 0, idle_close_ms > 0, max_signals >= 1, retention_ms >= 0"
            )
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self._store = store
        self._grace = grace_ms
        self._idle_close = idle_close_ms
        self._clock = clock
        self._cache_size = cache_size
        self._rule_for_type: dict[str, RuleSpec[Any]] = dict(RULE_FOR_TYPE)
        self._transitions = Transitions(
            config=config, grace_ms=grace_ms, max_signals=max_signals, retention_ms=retention_ms
        )
        self._cache: OrderedDict[str, KeyState] = OrderedDict()
        self._closing = DueIndex()  # windows to close and parked events to settle
        self._purging = DueIndex()  # tombstones to drop (by stream time only)
        #: Stream time: what closing, lateness and purging are judged by.  It follows the
        #: largest event time seen, except that it does not pass the floor (see :meth:`align`).
        self._stream_time = NEVER
        self._seen_max = NEVER  # the largest event time seen
        #: ...and when it was seen, for the floor (worker.windows.watermarks).
        self._seen = SeenHistory(NEVER)
        self._floor: int | None = None
        self._meta_stream_time = NEVER
        self._last_event_wall_ms = clock.now_ms()
        self._ready = False
        self._dirty: dict[str, KeyState] = {}  # keys this step changed

    # ------------------------------------------------------------------ public

    @property
    def stream_time_ms(self) -> int | None:
        """The largest event time seen on this partition (None before the first event)."""
        return None if self._stream_time == NEVER else self._stream_time

    @property
    def windows_open(self) -> dict[str, int]:
        """Open windows per rule (for the ``feedback_windows_open`` gauge)."""
        opened = self._transitions.open.items()
        return {rule: n for rule, n in opened if RULES[rule].kind == "window"}

    def process(self, accepted: Accepted) -> Outcome:
        """Apply one valid, skew-corrected event; return the decisions and late events due."""
        if not self._ready:
            self.rebuild()
        event = accepted.event
        spec = self._rule_for_type.get(event.type)
        self._transitions.now_ms = now = self._clock.now_ms()
        self._last_event_wall_ms = now
        if spec is None:  # an ignored type (none today)
            return Outcome()
        key = (
            SESSION_KEY_PREFIX + event.routing_key
            if spec.target == "session"
            else event.routing_key
        )
        state = self._load(key)
        if event.event_id in state.ids:
            return Outcome(duplicates=1)
        t = accepted.event_time_ms
        if t > self._seen_max:
            self._seen_max = t
            self._seen.record(now, t)
        advanced = self._advance()
        state.ids.add(event.event_id)
        self._dirty[key] = state
        self._transitions.apply(key, state, spec, accepted)
        return self._finish(advanced=advanced)

    def align(self, floor_ms: int | None) -> Outcome:
        """Keep stream time at or below ``floor_ms`` (None: no limit); return what closes.

        Events that reach this partition by another path than its own input (forwarded from
        the partitions their producer chose) may still be on their way while the events
        that arrive directly move stream time on.  The adapter passes the floor that keeps
        stream time from passing them (:func:`~worker.windows.watermarks.partition_floor`).
        Stream time never moves back: a floor below it keeps it where it is, and a window
        once closed stays closed.
        """
        if not self._ready:
            self.rebuild()
        self._floor = floor_ms
        self._transitions.now_ms = self._clock.now_ms()
        if not self._advance():
            return Outcome()
        return self._finish(advanced=True)

    def tick(self, *, caught_up: bool = True, until_ms: int | None = None) -> Outcome:
        """Wall-clock check: after ``idle_close_ms`` without events, close by the wall clock.

        ``caught_up`` says nothing is left to read that may reach this partition (its own
        input, and sources that are behind): silence is not idleness while events wait
        unprocessed (after a restart, or while the worker lags), and closing then would send
        the backlog's on-time events to the late topic.  ``until_ms`` limits the wall clock
        to a time before which everything read has arrived (:mod:`worker.windows.watermarks`:
        idle close).
        """
        if not self._ready:
            self.rebuild()
        self._transitions.now_ms = now = self._clock.now_ms()
        at = now if until_ms is None else min(now, until_ms)
        if not caught_up or at - self._last_event_wall_ms < self._idle_close:
            return Outcome()
        self._settle_due(max(at, self._stream_time), purge=False)
        return self._finish(advanced=False)

    def seen_as_of(self, wall_ms: int) -> int:
        """The largest event time this partition had seen at wall time ``wall_ms``
        (:class:`~worker.windows.watermarks.SeenHistory`; before the first event, its stream
        time)."""
        if not self._ready:
            self.rebuild()
        return self._seen.as_of(wall_ms)

    def forget_seen_before(self, wall_ms: int) -> None:
        """No floor will ask :meth:`seen_as_of` about times before ``wall_ms`` any more."""
        self._seen.forget_before(wall_ms)

    def rebuild(self) -> None:
        """Reload stream time and the due index from the store (after recovery/rebalance).

        Reads every record once; decoded states fill the cache up to its size.
        """
        self._cache.clear()
        self._dirty.clear()
        opened = dict.fromkeys(RULES, 0)
        stamps = meta = NEVER
        closing: list[tuple[int, str]] = []
        purging: list[tuple[int, str]] = []
        for key, raw in self._store.items():
            if key == META_KEY:
                meta = int(orjson.loads(raw)["stream_time_ms"])
                continue
            state, stamp = KeyState.load(key, raw)
            stamps = max(stamps, stamp)
            for w in state.windows:
                opened[w.rule] += 1
            close_due = self._close_due(state)
            if close_due is not None:
                closing.append((close_due, key))
            purge_due = self._purge_due(state)
            if purge_due is not None:
                purging.append((purge_due, key))
            if len(self._cache) < self._cache_size:
                self._cache[key] = state
        self._closing.reset(closing)
        self._purging.reset(purging)
        self._stream_time = self._seen_max = meta if meta != NEVER else stamps
        self._transitions.stream_time = self._stream_time
        self._transitions.open = opened
        self._seen = SeenHistory(self._seen_max)
        self._meta_stream_time = meta
        self._last_event_wall_ms = self._clock.now_ms()
        self._ready = True

    # ------------------------------------------------------------------ steps

    def _load(self, key: str) -> KeyState:
        state = self._cache.get(key)
        if state is not None:
            self._cache.move_to_end(key)
            return state
        raw = self._store.get(key)
        state = KeyState.load(key, raw)[0] if raw is not None else KeyState()
        self._cache[key] = state
        return state

    def _advance(self) -> bool:
        """Move stream time up to the largest event time seen, within the floor; settle what
        that makes due.  True if it moved."""
        target = self._seen_max if self._floor is None else min(self._seen_max, self._floor)
        if target <= self._stream_time:
            return False
        self._stream_time = self._transitions.stream_time = target
        self._settle_due(target)
        return True

    def _settle_due(self, horizon_ms: int, *, purge: bool = True) -> None:
        if self._closing.next_due_before(horizon_ms):
            for key in self._closing.pop_due(horizon_ms):
                state = self._load(key)
                self._dirty[key] = state
                self._transitions.settle(key, state, horizon_ms)
        if purge and self._purging.next_due_before(self._stream_time):
            for key in self._purging.pop_due(self._stream_time):
                state = self._load(key)
                self._dirty[key] = state
                self._transitions.purge(state)

    def _finish(self, *, advanced: bool) -> Outcome:
        store = self._store
        for key, state in self._dirty.items():
            if state.is_empty():
                if state.persisted:
                    store.delete(key)
                    state.persisted = False
                self._cache.pop(key, None)
                continue
            store.put(key, state.dump(self._stream_time))
            state.persisted = True
            self._closing.schedule(key, self._close_due(state))
            if state.tombs:
                self._purging.schedule(key, self._purge_due(state))
        self._dirty.clear()
        if self._meta_stream_time < self._stream_time:
            store.put(META_KEY, orjson.dumps({"stream_time_ms": self._stream_time}))
            self._meta_stream_time = self._stream_time
        cache = self._cache
        while len(cache) > self._cache_size:
            cache.popitem(last=False)
        return self._transitions.take()

    def _close_due(self, state: KeyState) -> int | None:
        """When the key next needs settling: grace after a window's end or a parked event's time."""
        first: int | None = None
        for w in state.windows:
            end = w.end
            if first is None or end < first:
                first = end
        for h in state.parked:
            t = h.signal.time_ms
            if first is None or t < first:
                first = t
        return None if first is None else first + self._grace

    @staticmethod
    def _purge_due(state: KeyState) -> int | None:
        return min(tomb.purge_at_ms for tomb in state.tombs) if state.tombs else None

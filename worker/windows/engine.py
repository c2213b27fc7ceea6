"""The event-time window engine (DESIGN 4): pure, synchronous, storage-agnostic.

One :class:`WindowEngine` per input partition.  The Faust adapter hands it each accepted event
(:meth:`WindowEngine.process`) and calls :meth:`WindowEngine.tick` on a timer; both *return*
what happened (an :class:`Outcome`: decisions for the outbox, late events for the late topic)
and the adapter sends it.  State lives in a :class:`WindowStore` (a changelogged table in
production, a dict in tests) under the routing key; the wall clock enters only through the
injected :class:`~worker.clock.Clock`.

How one event is handled, in order::

    1. dedupe        an event id already in the key's state is ignored (Outcome.duplicates)
    2. stream time   the largest event time seen on the partition; if this event moves it,
                     every window, held signal and tombstone that became due is settled
                     *before* the event is applied (via the due index, not a scan)
    3. apply         by the rule that consumes the event's type (worker.rules):
                     window opener   opens a window [t, t + length], claiming held signals
                     window signal   joins the open window whose range covers its time
                     instant         a decision at once (explicit, session feedback)
                     forwarded       held for grace, then merged into covering windows
                                     or decided alone (score_reported)
    4. write through the key's state is re-encoded (orjson) and put, or deleted when empty

Semantics the DESIGN leaves open, as decided here:

* **Closing.**  A window closes when stream time > end + grace, or, after ``idle_close_ms``
  of wall clock without events, when the wall clock > end + grace.  An early close (a
  decisive signal: a correction, a code action) *moves the window's end* to that signal's
  event time; the decision is still made after grace, so an earlier decisive signal that
  arrives out of order within grace still wins, and the decision does not depend on arrival
  order (DESIGN's "closes at once" is read as "ends at once").  Signals after the new end
  do not count; they are reported late (``after_close``).  An idle close also settles held
  events by the wall clock, as if stream time had reached it.
* **Signals before their opener** are held per key (capped at ``max_signals``) until stream
  time passes their time + grace, the latest moment an opener that could claim them may
  still arrive within grace.  An opener claims held signals inside its window.  Unclaimed
  ones are reported as late events with reason ``no_window`` rather than dropped, so nothing
  valid disappears silently.
* **A second opener** of the same rule for the same request whose time falls inside an open
  window is absorbed as evidence (one decision per request and rule: Helicone keeps one
  rating per request).  An opener *earlier* than an open window's start but within one
  window length re-anchors that window at the earlier time, so shuffled input gives the same
  window as sorted input.  An opener after the window's range opens a new window.
* **Explicit wins.**  A ``feedback_given`` at time e suppresses the rating of every window of
  the request that has not closed, ends at or after e and starts no later than
  e + ``retention_ms``; such windows still emit their scores.  The conditions are on event
  time, not arrival, so the outcome is order-independent within grace: the explicit
  decision's tombstone (which carries e) lives until stream time passes
  e + grace + ``retention_ms``, so every opener that could be overridden and arrives within
  grace still finds it.  A window opened more than ``retention_ms`` after the explicit
  rating is treated as a new interaction and rated normally.
* **Instant decisions** (explicit, session feedback) are made in the step that processes the
  event; their window is the event's instant, so two different events of one key at the same
  millisecond would share a decision id: the second is reported late (``window_closed``).
  Score reports are held for grace like early signals (see :mod:`worker.rules.scores`).
* **Late events.**  An event for a closed window, an opener whose whole window (+ grace) is
  behind stream time, a signal after its window's decisive signal, a signal no window
  claimed and held signals over the cap are returned as :class:`LateEvent` (reasons in
  :data:`LateReason`); a closed window never reopens.
* **Tombstones.**  A closed window leaves ``[rule, start, nominal end, purge time, ids]``
  until stream time passes nominal end + grace + max(window length, ``retention_ms``).  By
  then stream time alone proves that any opener or signal inside the old range is late, so
  dropping the tombstone cannot reopen the window; the ids in it keep dedupe exact until
  then.  Tombstones are purged by stream time only (never by the idle wall clock, which
  does not advance stream time), and not written at all when stream time is already past
  their purge time.
* **Dedupe** is exact for every event that changed state (its id is kept in the state that
  holds it: window, held signal, tombstone).  Ids of events that changed nothing (late,
  over the cap) are kept in a per-key list capped at ``max_signals``; a request with more
  such events than that may see an old one re-reported.  Once a key's state is empty it is
  deleted, and with it its ids.
* **Caps.**  A window keeps at most ``max_signals`` signals besides its anchor: the earliest
  ones by (event time, event id), so which ones are kept does not depend on arrival order;
  the decisive signal and forwarded scores are never the ones dropped.  Dropped signals are
  counted and listed as a ``signals_dropped`` evidence entry of the decision.
* **Stream time** is persisted in the reserved key :data:`META_KEY`, written whenever it
  advanced (coalesced with the rest of a flush by the adapter, which writes it *last*: a
  flush cut short, by a crash or a revocation, must never leave a stream time in the
  changelog that the key records before it do not justify, or the replayed inputs would be
  judged late).  Key records also carry the stream time at their write; rebuild uses those
  only for state written before :data:`META_KEY` was always kept.

The state of one key and its wire format: :mod:`worker.windows.state`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from worker.events import UI_EVENT_ADAPTER, Decision, Evidence, decision_id_for
from worker.ingest import Accepted
from worker.rules import RULE_FOR_TYPE, RULES, RuleConfig, RuleSpec, Signal, cite, evaluate, utc
from worker.rules import scores as scores_rule
from worker.windows.due import DueIndex
from worker.windows.state import FORMAT, Held, KeyState, StateFormatError, Tomb, Window
from worker.windows.watermarks import SeenHistory

if TYPE_CHECKING:
    from datetime import datetime

    from worker.clock import Clock

__all__ = [
    "FORMAT",
    "META_KEY",
    "SESSION_KEY_PREFIX",
    "LateEvent",
    "LateReason",
    "Outcome",
    "StateFormatError",
    "WindowEngine",
    "WindowStore",
]

#: Reserved store key for the partition's stream time (request ids are UUIDs and session
#: keys carry :data:`SESSION_KEY_PREFIX`, so neither can collide with it).
META_KEY = "\x00meta"
#: Store keys of session-keyed state are prefixed so a session id can never alias a request.
SESSION_KEY_PREFIX = "session:"

_NEVER = -(2**62)  # stream time before the first event

LateReason = Literal[
    "window_closed",  # its window already closed (or would have, by stream time)
    "after_close",  # after the decisive signal that ended its window early
    "no_window",  # a signal no window claimed before its grace ran out
    "capped",  # held signals over the per-key cap
]


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


@dataclass(frozen=True, slots=True)
class LateEvent:
    """A valid event that no window counted, for the late topic.

    ``accepted`` is the full event whenever the engine has it: always for an event reported
    on arrival and for a held signal.  It is None for a held score report (their JSON is not
    kept, to keep the common path cheap) and for a signal that had been stored
    in a window and was pushed out afterwards by an earlier decisive signal or opener that
    arrived out of order; the compact fields say which event that was.
    """

    key: str
    event_id: str
    type: str
    event_time_ms: int
    reason: LateReason
    accepted: Accepted | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one call to the engine produced, for the adapter to send."""

    decisions: list[Decision] = field(default_factory=list)
    late: list[LateEvent] = field(default_factory=list)
    #: Events ignored as duplicates of an event id already in the key's state.
    duplicates: int = 0


# --------------------------------------------------------------------------- the engine


class WindowEngine:
    """Event-time windows of one partition (module docstring).

    ``grace_ms``: how late (in stream time) an event may arrive and still count.
    ``idle_close_ms``: wall-clock silence after which windows close by the wall clock.
    ``max_signals``: cap on stored signals per window, on held signals per key and on the
    per-key list of ids of events that changed nothing.
    ``retention_ms``: minimum time tombstones outlive their window (see the docstring).
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
        self._cfg = config
        self._grace = grace_ms
        self._idle_close = idle_close_ms
        self._max_signals = max_signals
        self._clock = clock
        self._retention = retention_ms
        self._cache_size = cache_size
        self._length = {name: spec.window_ms(config) for name, spec in RULES.items()}
        self._rule_for_type: dict[str, RuleSpec[Any]] = dict(RULE_FOR_TYPE)
        #: Event types of rules that attach to open windows, and names of rules whose
        #: decisions override ratings (the capabilities of worker.rules.RuleSpec).
        self._attached: frozenset[str] = frozenset(
            t for spec in RULES.values() if spec.attaches_to_open_windows for t in spec.event_types
        )
        self._overriding: frozenset[str] = frozenset(
            name for name, spec in RULES.items() if spec.overrides_ratings
        )
        self._cache: OrderedDict[str, KeyState] = OrderedDict()
        self._closing = DueIndex()  # windows to close and held events to settle
        self._purging = DueIndex()  # tombstones to drop (by stream time only)
        self._open: dict[str, int] = dict.fromkeys(RULES, 0)
        #: Stream time: what closing, lateness and purging are judged by.  It follows the
        #: largest event time seen, except that it does not pass the floor (see :meth:`align`).
        self._stream_time = _NEVER
        self._seen_max = _NEVER  # the largest event time seen
        #: ...and when it was seen, for the floor (worker.windows.watermarks).
        self._seen = SeenHistory(_NEVER)
        self._floor: int | None = None
        self._meta_stream_time = _NEVER
        self._last_event_wall_ms = clock.now_ms()
        self._ready = False
        # per step
        self._dirty: dict[str, KeyState] = {}
        self._decisions: list[Decision] = []
        self._late: list[LateEvent] = []
        self._now_ms = 0
        self._overdue = False  # set when a window's end moved behind stream time - grace
        self._now_dt = (_NEVER, utc(0))  # decided_at of this step, converted once

    # ------------------------------------------------------------------ public

    @property
    def stream_time_ms(self) -> int | None:
        """The largest event time seen on this partition (None before the first event)."""
        return None if self._stream_time == _NEVER else self._stream_time

    @property
    def windows_open(self) -> dict[str, int]:
        """Open windows per rule (for the ``feedback_windows_open`` gauge)."""
        return {rule: n for rule, n in self._open.items() if RULES[rule].kind == "window"}

    def process(self, accepted: Accepted) -> Outcome:
        """Apply one valid, skew-corrected event; return the decisions and late events due."""
        if not self._ready:
            self.rebuild()
        event = accepted.event
        spec = self._rule_for_type.get(event.type)
        self._now_ms = now = self._clock.now_ms()
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
        if spec.kind == "window":
            if event.type == spec.opener:
                self._open_window(key, state, spec, accepted)
            else:
                self._add_to_window(key, state, spec, accepted)
        elif spec.kind == "instant":
            self._decide_at_once(key, state, spec, accepted)
        else:
            self._hold_forwarded(key, state, spec, accepted)
        if self._overdue:  # a window was cut short by a decisive signal beyond its grace
            self._overdue = False
            self._settle(key, state, self._stream_time)
        return self._finish(advanced=advanced)

    def align(self, floor_ms: int | None) -> Outcome:
        """Hold stream time at or below ``floor_ms`` (None: no limit); return what closes.

        Events that reach this partition by another path than its own input (forwarded from
        the partitions their producer chose) may still be on their way while the events
        that arrive directly move stream time on.  The adapter passes the floor that keeps
        stream time from passing them (:func:`worker.windows.watermarks.partition_floor`).  Stream
        time never moves back: a floor below it holds it where it is, and a window once
        closed stays closed.
        """
        if not self._ready:
            self.rebuild()
        self._floor = floor_ms
        self._now_ms = self._clock.now_ms()
        if not self._advance():
            return Outcome()
        return self._finish(advanced=True)

    def tick(self, *, caught_up: bool = True, until_ms: int | None = None) -> Outcome:
        """Wall-clock check: after ``idle_close_ms`` without events, close by the wall clock.

        ``caught_up`` says nothing is left to read that may reach this partition (its own
        input, and sources that are behind): silence is not idleness while events wait
        unprocessed (after a restart, or while the worker lags), and closing then would send
        the backlog's on-time events to the late topic.  ``until_ms`` limits the wall clock
        to a time before which everything read has arrived (worker.windows.watermarks: idle close).
        """
        if not self._ready:
            self.rebuild()
        self._now_ms = now = self._clock.now_ms()
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
        self._open = dict.fromkeys(RULES, 0)
        stamps = meta = _NEVER
        closing: list[tuple[int, str]] = []
        purging: list[tuple[int, str]] = []
        for key, raw in self._store.items():
            if key == META_KEY:
                meta = int(orjson.loads(raw)["stream_time_ms"])
                continue
            state, stamp = KeyState.load(key, raw)
            stamps = max(stamps, stamp)
            for w in state.windows:
                self._open[w.rule] += 1
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
        self._stream_time = self._seen_max = meta if meta != _NEVER else stamps
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
        self._stream_time = target
        self._settle_due(target)
        return True

    def _settle_due(self, horizon_ms: int, *, purge: bool = True) -> None:
        if self._closing.next_due_before(horizon_ms):
            for key in self._closing.pop_due(horizon_ms):
                state = self._load(key)
                self._dirty[key] = state
                self._settle(key, state, horizon_ms)
        if purge and self._purging.next_due_before(self._stream_time):
            for key in self._purging.pop_due(self._stream_time):
                state = self._load(key)
                self._dirty[key] = state
                self._purge(state)

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
        outcome = Outcome(self._decisions, self._late)
        self._decisions = []
        self._late = []
        return outcome

    def _close_due(self, state: KeyState) -> int | None:
        """When the key next needs settling: a window's end + grace or a hold's time + grace."""
        first: int | None = None
        for w in state.windows:
            end = w.end
            if first is None or end < first:
                first = end
        for h in state.held:
            t = h.signal.time_ms
            if first is None or t < first:
                first = t
        return None if first is None else first + self._grace

    @staticmethod
    def _purge_due(state: KeyState) -> int | None:
        return min(tomb.purge_at_ms for tomb in state.tombs) if state.tombs else None

    # ------------------------------------------------------------------ apply

    def _open_window(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        t = accepted.event_time_ms
        rule = spec.name
        length = self._length[rule]
        signal = self._signal(spec, accepted)
        for w in state.windows:
            if w.rule == rule and w.start <= t <= w.nominal_end:
                self._join(key, state, w, spec, signal, accepted)  # a repeated opener
                return
        for tomb in state.tombs:
            if tomb.overlaps(rule, t, t + length):
                self._report(key, state, accepted, "window_closed")
                return
        if t + length + self._grace < self._stream_time:
            self._report(key, state, accepted, "window_closed")
            return
        event = accepted.event
        for w in state.windows:
            if w.rule == rule and t < w.start <= t + length:  # re-anchor at the earlier opener
                w.signals.append(w.anchor)
                w.anchor = signal
                w.start = t
                w.nominal_end = t + length
                w.session_id = event.session_id
                self._reshape(key, state, w, spec)
                return
        window = Window(rule, t, t + length, None, signal, event.session_id, [], 0)
        state.windows.append(window)
        self._open[rule] += 1
        self._reshape(key, state, window, spec)

    def _add_to_window(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        t = accepted.event_time_ms
        rule = spec.name
        for w in state.windows:
            if w.rule == rule and w.start <= t <= w.nominal_end:
                self._join(key, state, w, spec, self._signal(spec, accepted), accepted)
                return
        for tomb in state.tombs:
            if tomb.covers(rule, t):
                self._report(key, state, accepted, "window_closed")
                return
        if t + self._grace < self._stream_time:
            self._report(key, state, accepted, "no_window")
            return
        self._hold(key, state, spec, accepted)

    def _join(
        self,
        key: str,
        state: KeyState,
        w: Window,
        spec: RuleSpec[Any],
        signal: Signal,
        accepted: Accepted,
    ) -> None:
        t = signal.time_ms
        if t > w.end:
            self._report(key, state, accepted, "after_close")
            return
        w.signals.append(signal)
        if spec.closes_early(signal) and (w.cut is None or t < w.cut):
            w.cut = t
            self._evict(key, state, w, lambda s: s.time_ms > t, "after_close")
            self._overdue = self._overdue or t + self._grace < self._stream_time
        if len(w.signals) > self._max_signals:
            self._cap(state, w, spec)

    def _reshape(self, key: str, state: KeyState, w: Window, spec: RuleSpec[Any]) -> None:
        """After a window opened or moved: fit its signals to its range, claim held ones."""
        if not (w.signals or state.held or state.tombs):
            return  # the common case: a fresh window with nothing to fit or claim
        start, nominal_end = w.start, w.nominal_end
        for tomb in state.tombs:
            if tomb.rule in self._overriding and start <= tomb.start + self._retention:
                e = tomb.start
                w.explicit_ms = e if w.explicit_ms is None else min(w.explicit_ms, e)
        if w.signals:
            self._evict(key, state, w, lambda s: s.time_ms > nominal_end, "no_window")
        claimed: list[Held] = []
        if state.held:
            types = spec.event_types
            keep: list[Held] = []
            for h in state.held:
                if h.signal.type in types and start <= h.signal.time_ms <= nominal_end:
                    claimed.append(h)
                else:
                    keep.append(h)
            state.held = keep
        candidates = (*w.signals, *(h.signal for h in claimed))
        decisive = [s.time_ms for s in candidates if spec.closes_early(s)]
        cut = w.cut = min(decisive) if decisive else None
        for h in claimed:
            if cut is not None and h.signal.time_ms > cut:
                self._late_held(key, state, h, "after_close")
            else:
                w.signals.append(h.signal)
        if cut is not None:
            self._evict(key, state, w, lambda s: s.time_ms > cut, "after_close")
            self._overdue = self._overdue or w.end + self._grace < self._stream_time
        if len(w.signals) > self._max_signals:
            self._cap(state, w, spec)

    def _evict(
        self,
        key: str,
        state: KeyState,
        w: Window,
        outside: Callable[[Signal], bool],
        reason: LateReason,
    ) -> None:
        """Push out stored signals for which ``outside(signal)``; forwarded scores stay."""
        keep: list[Signal] = []
        for s in w.signals:
            if s.type not in self._attached and outside(s):
                routing = self._routing(key)
                self._late.append(LateEvent(routing, s.event_id, s.type, s.time_ms, reason))
                self._remember(state, s.event_id)
            else:
                keep.append(s)
        w.signals = keep

    def _cap(self, state: KeyState, w: Window, spec: RuleSpec[Any]) -> None:
        """Keep the earliest ``max_signals`` signals; never the decisive one or scores."""
        signals = w.signals
        cut = w.cut
        attached = self._attached

        def pinned(s: Signal) -> bool:
            return s.type in attached or (s.time_ms == cut and spec.closes_early(s))

        while len(signals) > self._max_signals:
            candidates = [i for i, s in enumerate(signals) if not pinned(s)] or list(
                range(len(signals))
            )
            victim = max(candidates, key=lambda i: signals[i].order)
            self._remember(state, signals.pop(victim).event_id)
            w.overflow += 1

    def _hold(self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted) -> None:
        event = accepted.event
        signal = self._signal(spec, accepted)
        # a held signal keeps its event's JSON so that, if no window claims it, the late topic
        # gets the whole event; a score report is (almost) never late, so it skips that cost
        raw = None if spec.kind == "forwarded" else event.model_dump_json()
        state.held.append(Held(signal, raw, event.session_id))
        if len(state.held) > self._max_signals:
            victim = max(range(len(state.held)), key=lambda i: state.held[i].signal.order)
            self._late_held(key, state, state.held.pop(victim), "capped")

    def _hold_forwarded(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        if accepted.event_time_ms + self._grace < self._stream_time:  # too late to hold
            held = Held(self._signal(spec, accepted), None, accepted.event.session_id)
            self._forward(key, state, spec, [held], {held.signal.event_id: accepted})
        else:
            self._hold(key, state, spec, accepted)

    def _decide_at_once(
        self, key: str, state: KeyState, spec: RuleSpec[Any], accepted: Accepted
    ) -> None:
        t = accepted.event_time_ms
        rule = spec.name
        if any(tomb.starts_at(rule, t) for tomb in state.tombs):
            self._report(key, state, accepted, "window_closed")  # same instant, same id
            return
        signal = self._signal(spec, accepted)
        verdict = evaluate(spec, signal, (), closed_at_ms=t, config=self._cfg)
        event = accepted.event
        if verdict is not None:
            self._emit(
                spec,
                key,
                start=t,
                end=t,
                rating=verdict.rating,
                scores=dict(verdict.scores),
                evidence=list(verdict.evidence),
                session_id=event.session_id,
                request_id=event.request_id,
            )
        self._entomb(state, rule, t, t, [accepted.event.event_id])
        if spec.overrides_ratings:  # explicit wins (module docstring)
            for w in state.windows:
                if w.start <= t + self._retention:
                    w.explicit_ms = t if w.explicit_ms is None else min(w.explicit_ms, t)

    # ------------------------------------------------------------------ settle

    def _settle(self, key: str, state: KeyState, horizon_ms: int) -> None:
        """Expire holds and close windows of one key that are due before ``horizon_ms``."""
        grace = self._grace
        if state.held:
            expired = [h for h in state.held if h.signal.time_ms + grace < horizon_ms]
            if expired:
                state.held = [h for h in state.held if h.signal.time_ms + grace >= horizon_ms]
                forwarded: dict[str, list[Held]] = {}
                for h in expired:
                    spec = self._rule_for_type[h.signal.type]
                    if spec.kind == "forwarded":
                        forwarded.setdefault(spec.name, []).append(h)
                    else:
                        self._late_held(key, state, h, "no_window")
                for name, reports in forwarded.items():
                    self._forward(key, state, RULES[name], reports, {})
        closing = [w for w in state.windows if w.end + grace < horizon_ms]
        for w in sorted(closing, key=lambda w: (w.end, w.rule)):
            self._close(key, state, w)

    def _forward(
        self,
        key: str,
        state: KeyState,
        spec: RuleSpec[Any],
        reports: list[Held],
        arrived: dict[str, Accepted],
    ) -> None:
        """Attach ``spec``'s reports to the open windows covering them (if the rule attaches
        to open windows), or decide them alone, one decision per event time."""
        attaches = spec.attaches_to_open_windows
        alone: dict[int, list[Held]] = {}
        for report in reports:
            t = report.signal.time_ms
            covering = [w for w in state.windows if w.start <= t <= w.end] if attaches else []
            for w in covering:
                w.signals.append(report.signal)
            if not covering:
                alone.setdefault(t, []).append(report)
        for t, group in sorted(alone.items()):
            if any(tomb.starts_at(spec.name, t) for tomb in state.tombs):
                for report in group:
                    if report.signal.event_id in arrived:
                        self._report(key, state, arrived[report.signal.event_id], "window_closed")
                    else:
                        self._late_held(key, state, report, "window_closed")
                continue
            signals = sorted((r.signal for r in group), key=lambda s: s.order)
            verdict = evaluate(spec, signals[0], signals[1:], closed_at_ms=t, config=self._cfg)
            if verdict is not None:
                self._emit(
                    spec,
                    key,
                    start=t,
                    end=t,
                    rating=None,
                    scores=dict(verdict.scores),
                    evidence=list(verdict.evidence),
                    session_id=group[0].session_id,
                    request_id=key,
                )
            self._entomb(state, spec.name, t, t, [r.signal.event_id for r in group])

    def _close(self, key: str, state: KeyState, w: Window) -> None:
        spec = RULES[w.rule]
        own = [s for s in w.signals if s.type not in self._attached]
        forwarded = [s for s in w.signals if s.type in self._attached]
        anchor = w.anchor
        end = w.end
        verdict = evaluate(spec, anchor, own, closed_at_ms=end, config=self._cfg)
        suppressed = w.explicit_ms is not None and w.explicit_ms <= end
        rating = None if verdict is None or suppressed else verdict.rating
        scores, forwarded_evidence = scores_rule.merge(
            verdict.scores if verdict is not None else {}, forwarded
        )
        if (verdict is not None or forwarded) and (rating is not None or scores):
            evidence = (
                list(verdict.evidence)
                if verdict is not None
                else [cite(s) for s in sorted([anchor, *own], key=lambda s: s.order)]
            )
            if forwarded_evidence:
                evidence.extend(forwarded_evidence)
                evidence.sort(key=lambda e: (e.event_time, e.event_id))
            if w.overflow:
                evidence.append(
                    Evidence(
                        event_id="",
                        type="signals_dropped",
                        event_time=utc(end),
                        detail=f"{w.overflow} signals over the cap of {self._max_signals} "
                        "were not stored",
                    )
                )
            self._emit(
                spec,
                key,
                start=w.start,
                end=end,
                rating=rating,
                scores=scores,
                evidence=evidence,
                session_id=w.session_id,
                request_id=key,
            )
        ids = [w.anchor.event_id, *(s.event_id for s in w.signals)]
        self._entomb(state, w.rule, w.start, w.nominal_end, ids)
        state.windows.remove(w)
        self._open[w.rule] -= 1

    def _purge(self, state: KeyState) -> None:
        horizon = self._stream_time
        kept = [tomb for tomb in state.tombs if tomb.purge_at_ms >= horizon]
        if len(kept) != len(state.tombs):
            state.tombs = kept
            state.ids = state.collect_ids()

    # ------------------------------------------------------------------ helpers

    def _signal(self, spec: RuleSpec[Any], accepted: Accepted) -> Signal:
        event = accepted.event
        data = spec.extract(event, self._cfg)
        return Signal(accepted.event_time_ms, event.event_id, event.type, data)

    def _entomb(
        self, state: KeyState, rule: str, start: int, nominal_end: int, ids: list[str]
    ) -> None:
        purge_at = nominal_end + self._grace + max(self._length[rule], self._retention)
        if purge_at >= self._stream_time:  # else stream time alone already proves lateness
            state.tombs.append(Tomb(rule, start, nominal_end, purge_at, ids))

    def _remember(self, state: KeyState, event_id: str) -> None:
        """Keep the id of an event that left no other trace (capped, oldest dropped)."""
        state.other.append(event_id)
        if len(state.other) > self._max_signals:
            del state.other[0]
            state.ids = state.collect_ids()

    def _late_held(self, key: str, state: KeyState, held: Held, reason: LateReason) -> None:
        """Report a held entry; its event is rebuilt from the JSON kept with it, if any."""
        s = held.signal
        raw = held.event_json
        accepted = Accepted(UI_EVENT_ADAPTER.validate_json(raw), s.time_ms) if raw else None
        self._late.append(
            LateEvent(self._routing(key), s.event_id, s.type, s.time_ms, reason, accepted)
        )
        self._remember(state, s.event_id)

    def _report(self, key: str, state: KeyState, accepted: Accepted, reason: LateReason) -> None:
        event = accepted.event
        self._late.append(
            LateEvent(
                accepted.key, event.event_id, event.type, accepted.event_time_ms, reason, accepted
            )
        )
        self._remember(state, event.event_id)

    def _decided_at(self) -> datetime:
        if self._now_dt[0] != self._now_ms:
            self._now_dt = (self._now_ms, utc(self._now_ms))
        return self._now_dt[1]

    @staticmethod
    def _routing(key: str) -> str:
        return key.removeprefix(SESSION_KEY_PREFIX)

    def _emit(
        self,
        spec: RuleSpec[Any],
        key: str,
        *,
        start: int,
        end: int,
        rating: bool | None,
        scores: dict[str, int],
        evidence: list[Evidence],
        session_id: str | None,
        request_id: str | None,
    ) -> None:
        target_id = self._routing(key)
        self._decisions.append(
            Decision(
                decision_id=decision_id_for(target_id, spec.name, start),
                target=spec.target,
                request_id=request_id,
                session_id=target_id if spec.target == "session" else session_id,
                rule=spec.name,
                rating=rating,
                scores=scores,
                window_start=utc(start),
                window_end=utc(end),
                decided_at=self._decided_at(),
                signals=evidence,
                rule_version=spec.version,
            )
        )

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
                     every window, parked signal and tombstone that became due is settled
                     *before* the event is applied (via the due index, not a scan)
    3. apply         by the rule that consumes the event's type (worker.rules):
                     window opener   opens a window [t, t + length], claiming parked signals
                     window signal   joins the open window whose range covers its time
                     instant         a decision at once (explicit, session feedback)
                     carried         parked for grace, then carried by the windows covering
                                     it (a rule that attaches_to_open_windows) or
                                     decided alone (score_reported)
    4. write through the key's state is re-encoded (orjson) and put, or deleted when empty

Semantics the DESIGN leaves open, as decided here:

* **Closing.**  A window closes when stream time > end + grace, or, after ``idle_close_ms``
  of wall clock without events, when the wall clock > end + grace.  An early close (a
  decisive signal: a correction, a code action) *moves the window's end* to that signal's
  event time; the decision is still made after grace, so an earlier decisive signal that
  arrives out of order within grace still wins, and the decision does not depend on arrival
  order (DESIGN's "closes at once" is read as "ends at once").  Signals after the new end
  do not count; they are reported late (``after_close``).  An idle close also settles parked
  events by the wall clock, as if stream time had reached it.
* **Signals before their opener** are parked per key (capped at ``max_signals``) until stream
  time passes their time + grace, the latest moment an opener that could claim them may
  still arrive within grace.  An opener claims parked signals inside its window.  Unclaimed
  ones are reported as late events with reason ``no_window`` rather than dropped, so nothing
  valid disappears silently.
* **A second opener** of the same rule for the same request whose time falls inside an open
  window is absorbed as evidence (one decision per request and rule: Helicone keeps one
  rating per request).  An opener *earlier* than an open window's start but within one
  window length re-anchors that window at the earlier time, so shuffled input gives the same
  window as sorted input.  An opener after the window's range opens a new window.
* **Explicit wins.**  A decision at time e of a rule that ``overrides_ratings`` (explicit:
  ``feedback_given``) suppresses the rating of every window of the request that has not
  closed, ends at or after e and starts no later than e + ``retention_ms``; such windows
  still emit their scores.  The conditions are on event
  time, not arrival, so the outcome is order-independent within grace: the explicit
  decision's tombstone (which carries e) lives until stream time passes
  e + grace + ``retention_ms``, so every opener that could be overridden and arrives within
  grace still finds it.  A window opened more than ``retention_ms`` after the explicit
  rating is treated as a new interaction and rated normally.  A suppressed rating is not
  lost: the window's decision carries it as ``shadow_rating`` (rating null), which
  calibration compares with the explicit one and delivery never posts.
* **Instant decisions** (explicit, session feedback) are made in the step that processes the
  event; their window is the event's instant, so two different events of one key at the same
  millisecond would share a decision id: the second is reported late (``window_closed``).
  Score reports are parked for grace like early signals (see :mod:`worker.rules.scores`).
* **Late events.**  An event for a closed window, an opener whose whole window (+ grace) is
  behind stream time, a signal after its window's decisive signal, a signal no window
  claimed and parked signals over the cap are returned as :class:`LateEvent` (reasons in
  :data:`LateReason`); a closed window never reopens.
* **Tombstones.**  A closed window leaves ``[rule, start, nominal end, purge time, ids]``
  until stream time passes nominal end + grace + max(window length, ``retention_ms``).  By
  then stream time alone proves that any opener or signal inside the old range is late, so
  dropping the tombstone cannot reopen the window; the ids in it keep dedupe exact until
  then.  Tombstones are purged by stream time only (never by the idle wall clock, which
  does not advance stream time), and not written at all when stream time is already past
  their purge time.
* **Dedupe** is exact for every event that changed state (its id is kept in the state that
  holds it: window, parked signal, tombstone).  Ids of events that changed nothing (late,
  over the cap) are kept in a per-key list capped at ``max_signals``; a request with more
  such events than that may see an old one re-reported.  Once a key's state is empty it is
  deleted, and with it its ids.
* **Caps.**  A window keeps at most ``max_signals`` signals besides its anchor: the earliest
  ones by (event time, event id), so which ones are kept does not depend on arrival order;
  the decisive signal and carried scores are never the ones dropped.  Dropped signals are
  counted and listed as a ``signals_dropped`` evidence entry of the decision.
* **Stream time** is persisted in the reserved key :data:`META_KEY`, written whenever it
  advanced (coalesced with the rest of a flush by the adapter, which writes it *last*: a
  flush cut short, by a crash or a revocation, must never leave a stream time in the
  changelog that the key records before it do not justify, or the replayed inputs would be
  judged late).  Key records also carry the stream time at their write; rebuild uses those
  only for state written before :data:`META_KEY` was always kept.

Map of the package::

    engine.py       WindowEngine: one partition's store, cache, stream time and due keys
    transitions.py  what an event or the passing of time does to one key's state
    state.py        the per-key state (Window, Parked, Tomb, KeyState) and its wire format
    outcome.py      Outcome and LateEvent: what each call returns for the adapter to send
    due.py          DueIndex: which keys need settling before a given time
    watermarks.py   stream time and the detour: the pure functions behind a partition's floor

The public names are re-exported here (``from worker.windows import WindowEngine``).
"""

from __future__ import annotations

from worker.windows.engine import META_KEY, DictStore, WindowEngine, WindowStore
from worker.windows.outcome import LateEvent, LateReason, Outcome
from worker.windows.state import FORMAT, SESSION_KEY_PREFIX, StateFormatError

__all__ = [
    "FORMAT",
    "META_KEY",
    "SESSION_KEY_PREFIX",
    "DictStore",
    "LateEvent",
    "LateReason",
    "Outcome",
    "StateFormatError",
    "WindowEngine",
    "WindowStore",
]

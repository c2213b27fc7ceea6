"""What the engine returns from each call: decisions for the outbox, late events for the late
topic.  The engine never sends anything itself; its adapter does (worker.agents.windows)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from worker.events import Decision
from worker.validation import Accepted

__all__ = ["LateEvent", "LateReason", "Outcome"]

LateReason = Literal[
    "window_closed",  # its window already closed (or would have, by stream time)
    "after_close",  # after the decisive signal that ended its window early
    "no_window",  # a signal no window claimed before its grace ran out
    "capped",  # parked signals over the per-key cap
]


@dataclass(frozen=True, slots=True)
class LateEvent:
    """A valid event that no window counted, for the late topic.

    ``accepted`` is the full event whenever the engine has it: always for an event reported
    on arrival and for a parked signal.  It is None for a parked event of a carried rule (a
    score report: their JSON is not kept, to keep the common path cheap) and for a signal
    that had been stored in a window and was pushed out afterwards by an earlier decisive
    signal or opener that arrived out of order; the compact fields say which event that was.
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

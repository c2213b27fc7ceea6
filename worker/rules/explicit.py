"""Explicit feedback (DESIGN 4): a thumbs up or down, decided at once.

``feedback_given`` becomes a decision the moment it is processed; its window is the event's
own instant (``window_start == window_end``).  An explicit rating wins: the engine keeps the
request's earliest explicit time, and an implicit window of the request whose (event-time)
end is not before it emits no rating, only its scores if it has any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.rules._base import RuleSpec, Signal, Verdict, cite

if TYPE_CHECKING:
    from worker.events import UIEvent
    from worker.rules.config import RuleConfig

__all__ = ["NAME", "OPENER", "RULE", "RULE_VERSION", "RatingState", "decide", "extract", "observe"]

NAME = "explicit"
RULE_VERSION = 1
OPENER = "feedback_given"


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    """The rating (bool)."""
    if event.type in ("feedback_given", "session_feedback_given"):
        return event.properties.rating
    return None


@dataclass(frozen=True, slots=True)
class RatingState:
    rating: bool | None = None
    seen: tuple[Signal, ...] = ()


INITIAL = RatingState()


def observe(state: RatingState, signal: Signal) -> RatingState:
    """The last rating in event-time order wins (there is normally exactly one)."""
    return RatingState(rating=bool(signal.data), seen=(*state.seen, signal))


def decide(state: RatingState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    if state.rating is None:
        return None
    evidence = tuple(cite(s, "thumbs up" if s.data else "thumbs down") for s in state.seen)
    return Verdict(rating=state.rating, evidence=evidence)


RULE: RuleSpec[RatingState] = RuleSpec(
    name="explicit",
    version=RULE_VERSION,
    kind="instant",
    target="request",
    opener=OPENER,
    signals=frozenset(),
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
    overrides_ratings=True,
)

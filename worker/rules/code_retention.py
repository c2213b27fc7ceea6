"""Code retention: how much of an accepted suggestion survived (issue 16, part 5).

The application sends ``suggestion_retained`` (``retained_chars``, ``suggested_chars``) some
seconds after a suggestion was accepted or kept after an edit.  Acceptance alone rewards
short, trivial suggestions; what is still there later is the better signal (GitHub measures
Copilot by accepted-and-retained characters).

Why an instant rule and not part of the code window: the code window ends at the first
action (the accept), so an event sent N seconds later is always after that window's end and
would be reported late.  The retention event is decided on its own, at its own instant, into
the score ``retained_pct`` = round(100 x retained / suggested), capped at 100.  Delivery merges
it into the request's state like any other decision, so it reaches Helicone next to the code
rule's rating whatever order the two decisions arrive in.

The optional rating (``CODE_RETAINED_MIN_PCT``, off by default): when set, a retention below
it rates the request false ("accepted, then mostly deleted"); at or above it, no rating.  It
never rates true, because the accept already did.  Why this is right under disorder: delivery
ranks implicit ratings by window end in event time (:func:`worker.delivery_state.rating_rank`),
and the retention event happens after the accept, so its false outranks the accept's true in
whatever order the two decisions are merged; an explicit rating still outranks both.  A
retention event whose event time is before the accept's (a broken client clock) ranks below
it and its rating loses; its score still counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from worker.rules._base import RuleSpec, Signal, Verdict, cite

if TYPE_CHECKING:
    from worker.events import UIEvent
    from worker.rules.config import RuleConfig

__all__ = [
    "NAME",
    "OPENER",
    "RULE",
    "RULE_VERSION",
    "SCORE",
    "RetentionState",
    "decide",
    "extract",
    "observe",
    "retained_pct",
]

NAME = "code_retention"
RULE_VERSION = 1
OPENER = "suggestion_retained"
#: The score name the retention is posted as.
SCORE = "retained_pct"


def retained_pct(retained_chars: int, suggested_chars: int) -> int:
    """round(100 x retained / suggested), in [0, 100]; half rounds up (integers only, exact)."""
    if suggested_chars < 1 or retained_chars < 0:
        raise ValueError("need suggested_chars >= 1 and retained_chars >= 0")
    return min(100, (200 * retained_chars + suggested_chars) // (2 * suggested_chars))


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    """``[retained_chars, suggested_chars]`` (a JSON-friendly pair for the window state)."""
    if event.type == "suggestion_retained":
        props = event.properties
        return [props.retained_chars, props.suggested_chars]
    return None


@dataclass(frozen=True, slots=True)
class RetentionState:
    #: The retained percentage of the latest report in event-time order.
    pct: int | None = None
    seen: tuple[Signal, ...] = ()


INITIAL = RetentionState()


def observe(state: RetentionState, signal: Signal) -> RetentionState:
    retained, suggested = signal.data
    return RetentionState(pct=retained_pct(retained, suggested), seen=(*state.seen, signal))


def decide(state: RetentionState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    if state.pct is None:
        return None
    threshold = cfg.code_retained_min_pct
    rating = False if threshold is not None and state.pct < threshold else None
    detail = f"{SCORE}={state.pct}" + (f" below {threshold}" if rating is False else "")
    return Verdict(
        rating=rating,
        scores={SCORE: state.pct},
        evidence=tuple(cite(s, detail) for s in state.seen),
    )


RULE: RuleSpec[RetentionState] = RuleSpec(
    name="code_retention",
    version=RULE_VERSION,
    kind="instant",
    target="request",
    opener=OPENER,
    signals=frozenset(),
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
)

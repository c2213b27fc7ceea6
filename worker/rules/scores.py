"""Reported scores (DESIGN 4): ``score_reported`` carries scores computed elsewhere.

Booleans become 1/0 (Helicone takes integers only).  A report is parked for the grace period
of stream time, like any early signal, and then:

* every implicit window of the request whose event-time range covers the report's time
  carries the scores in its decision (merged as below), or
* when none does, the report becomes a decision of its own, rule ``scores``, rating null,
  at the report's instant (reports of one request at the same millisecond form one).

Parking for grace is what makes the choice independent of arrival order: a window that
covers the report must have been opened by then if its opener came within grace.

Merge (deterministic): carried reports are applied in event-time order (ties by event id),
a later report overriding an earlier one per score name, as Helicone itself keeps the last
write per name; then the window rule's own scores (``time_spent_s``,
``click_through_rate``) override carried ones of the same name, so the worker's
documented scores always mean what the rule says.  The overridden value stays visible in
the evidence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from worker.rules._base import RuleSpec, Signal, Verdict, cite

if TYPE_CHECKING:
    from worker.events import Evidence, UIEvent
    from worker.rules.config import RuleConfig

__all__ = [
    "NAME",
    "OPENER",
    "RULE",
    "RULE_VERSION",
    "ScoresState",
    "decide",
    "extract",
    "merge",
    "observe",
]

NAME = "scores"
RULE_VERSION = 1
OPENER = "score_reported"


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    """The reported scores as ``{name: int}`` (booleans as 1/0)."""
    if event.type == "score_reported":
        return {name: int(value) for name, value in event.properties.scores.items()}
    return None


@dataclass(frozen=True, slots=True)
class ScoresState:
    scores: Mapping[str, int] = field(default_factory=dict)
    seen: tuple[Signal, ...] = ()


INITIAL = ScoresState()


def observe(state: ScoresState, signal: Signal) -> ScoresState:
    return ScoresState(scores={**state.scores, **signal.data}, seen=(*state.seen, signal))


def _detail(signal: Signal) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(signal.data.items()))


def decide(state: ScoresState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    if not state.scores:
        return None
    return Verdict(
        rating=None,
        scores=dict(state.scores),
        evidence=tuple(cite(s, _detail(s)) for s in state.seen),
    )


def merge(
    own: Mapping[str, int], carried: Sequence[Signal]
) -> tuple[dict[str, int], tuple[Evidence, ...]]:
    """A window's own scores merged with the reports it carries (module docstring).

    Returns the merged scores and the evidence of the carried reports.
    """
    if not carried:
        return dict(own), ()
    state = INITIAL
    for signal in sorted(carried, key=lambda s: (s.time_ms, s.event_id)):
        state = observe(state, signal)
    return {**state.scores, **own}, tuple(cite(s, _detail(s)) for s in state.seen)


RULE: RuleSpec[ScoresState] = RuleSpec(
    name="scores",
    version=RULE_VERSION,
    kind="carried",
    target="request",
    opener=OPENER,
    signals=frozenset(),
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
    attaches_to_open_windows=True,
)

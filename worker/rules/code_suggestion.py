"""Code suggestion (DESIGN 4): was the suggestion taken?

Window: ``suggestion_shown`` + 30 s.  The first action in event time decides and ends the
window at its own event time: ``suggestion_accepted`` or ``suggestion_modified`` (edited, then
kept) gives true, ``suggestion_rejected`` false.  No action within the window: no decision.
Actions after the first one are outside the (shortened) window, so they never count.
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
    "SIGNALS",
    "CodeState",
    "closes_early",
    "decide",
    "extract",
    "observe",
]

NAME = "code_suggestion"
RULE_VERSION = 1
OPENER = "suggestion_shown"
_RATING_OF_ACTION = {
    "suggestion_accepted": True,
    "suggestion_modified": True,
    "suggestion_rejected": False,
}
SIGNALS = frozenset(_RATING_OF_ACTION)


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    return None


def closes_early(signal: Signal) -> bool:
    """Every action is decisive: the window ends at the first one."""
    return signal.type in _RATING_OF_ACTION


@dataclass(frozen=True, slots=True)
class CodeState:
    #: The event type of the first action (in event-time order), if any.
    first_action: str | None = None
    seen: tuple[Signal, ...] = ()


INITIAL = CodeState()


def observe(state: CodeState, signal: Signal) -> CodeState:
    first = state.first_action
    if first is None and signal.type in _RATING_OF_ACTION:
        first = signal.type
    return CodeState(first, (*state.seen, signal))


def decide(state: CodeState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    if state.first_action is None:
        return None  # no action in the window: no decision (DESIGN 4)
    evidence = tuple(
        cite(s, "first action" if s.type == state.first_action else None) for s in state.seen
    )
    return Verdict(rating=_RATING_OF_ACTION[state.first_action], evidence=evidence)


RULE: RuleSpec[CodeState] = RuleSpec(
    name="code_suggestion",
    version=RULE_VERSION,
    kind="window",
    target="request",
    opener=OPENER,
    signals=SIGNALS,
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
    closes_early=closes_early,
    window_ms=lambda cfg: cfg.code_window_ms,
)

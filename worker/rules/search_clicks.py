"""Search clicks (DESIGN 4): did anyone click a result?

Window: ``results_shown`` + 5 min.  Rating: at least one ``result_clicked``.  Score
``click_through_rate`` = round(100 x distinct clicked results / ``result_count``), rounded
half up and capped at 100.  A click is identified by its ``result_id``, else its
``position``, else its event id (so two anonymous clicks count as two results).  The
``result_count`` is that of the anchoring (earliest) ``results_shown``; a repeated
``results_shown`` for the same request is evidence only.
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
    "ClicksState",
    "decide",
    "extract",
    "observe",
]

NAME = "search_clicks"
RULE_VERSION = 1
OPENER = "results_shown"
SIGNALS = frozenset({"result_clicked"})


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    """``results_shown``: its ``result_count``.  ``result_clicked``: ``"id:<result_id>"``,
    ``"pos:<position>"``, or None when the click names neither."""
    if event.type == "results_shown":
        return event.properties.result_count
    if event.type == "result_clicked":
        if event.properties.result_id is not None:
            return f"id:{event.properties.result_id}"
        if event.properties.position is not None:
            return f"pos:{event.properties.position}"
    return None


@dataclass(frozen=True, slots=True)
class ClicksState:
    result_count: int | None = None
    clicked: frozenset[str] = frozenset()
    seen: tuple[Signal, ...] = ()


INITIAL = ClicksState()


def observe(state: ClicksState, signal: Signal) -> ClicksState:
    count, clicked = state.result_count, state.clicked
    if signal.type == "results_shown" and count is None:
        count = signal.data
    elif signal.type == "result_clicked":
        identity = signal.data if signal.data is not None else f"event:{signal.event_id}"
        clicked = clicked | {identity}
    return ClicksState(count, clicked, (*state.seen, signal))


def _detail(signal: Signal) -> str | None:
    if signal.type == "results_shown":
        return "shown_again"
    return signal.data if isinstance(signal.data, str) else None


def decide(state: ClicksState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    count = max(1, state.result_count or 1)
    clicked = len(state.clicked)
    rate = min(100, (200 * clicked + count) // (2 * count))  # round half up, integers only
    evidence = tuple(
        cite(s, f"{clicked} of {count} results clicked" if i == 0 else _detail(s))
        for i, s in enumerate(state.seen)
    )
    return Verdict(rating=clicked > 0, scores={"click_through_rate": rate}, evidence=evidence)


RULE: RuleSpec[ClicksState] = RuleSpec(
    name="search_clicks",
    version=RULE_VERSION,
    kind="window",
    target="request",
    opener=OPENER,
    signals=SIGNALS,
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
    window_ms=lambda cfg: cfg.clicks_window_ms,
)

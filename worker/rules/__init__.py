"""The decision rules (DESIGN 4): pure functions, no I/O, no Faust.

Map of the package::

    config.py             RuleConfig: window lengths and thresholds (milliseconds)
    _base.py              Signal, Verdict, RuleSpec and evaluate(): the shape of every rule
    engagement.py         response_shown + 60 s: positive and negative kinds, corrections
    code_suggestion.py    suggestion_shown + 30 s: the first action decides
    code_retention.py     suggestion_retained: at once; retained_pct, optionally false
    search_clicks.py      results_shown + 5 min: any click; click-through rate
    ticket_resolution.py  ticket_opened + 24 h: resolved and not reopened
    explicit.py           feedback_given: at once; wins over implicit ratings
    session_feedback.py   session_feedback_given: at once, for the session
    scores.py             score_reported: carried, merged into covering windows

Each rule module has a ``RULE_VERSION`` that goes into its decisions, and a ``RULE``
(:class:`RuleSpec`) listed in :data:`RULES`.  :data:`RULE_FOR_TYPE` says which rule consumes
each event type; every type in :data:`worker.events.EVENT_TYPES` is either there or in
:data:`IGNORED_TYPES` (a test keeps that true).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from worker.rules import (
    code_retention,
    code_suggestion,
    engagement,
    explicit,
    scores,
    search_clicks,
    session_feedback,
    ticket_resolution,
)
from worker.rules._base import (
    RuleKind,
    RuleSpec,
    Signal,
    Target,
    Verdict,
    cite,
    evaluate,
    utc,
)
from worker.rules.config import DEFAULT_CORRECTION_PHRASES, RuleConfig

__all__ = [
    "DEFAULT_CORRECTION_PHRASES",
    "IGNORED_TYPES",
    "RULES",
    "RULE_FOR_TYPE",
    "RuleConfig",
    "RuleKind",
    "RuleSpec",
    "Signal",
    "Target",
    "Verdict",
    "cite",
    "evaluate",
    "rule_for",
    "utc",
]

#: Every rule, by name, in a fixed order (the order decisions of one step are listed in).
RULES: Mapping[str, RuleSpec[Any]] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            engagement.RULE,
            code_suggestion.RULE,
            code_retention.RULE,
            search_clicks.RULE,
            ticket_resolution.RULE,
            explicit.RULE,
            session_feedback.RULE,
            scores.RULE,
        )
    }
)


def _by_type() -> dict[str, RuleSpec[Any]]:
    table: dict[str, RuleSpec[Any]] = {}
    for spec in RULES.values():
        for event_type in spec.event_types:
            if event_type in table:  # pragma: no cover - a programming error, caught at import
                raise RuntimeError(f"{event_type} is claimed by {table[event_type].name} too")
            table[event_type] = spec
    return table


#: The one rule that consumes each event type.
RULE_FOR_TYPE: Mapping[str, RuleSpec[Any]] = MappingProxyType(_by_type())

#: Event types no rule consumes, on purpose.  Empty today: every type feeds a rule.
IGNORED_TYPES: frozenset[str] = frozenset()


def rule_for(event_type: str) -> RuleSpec[Any] | None:
    """The rule that consumes ``event_type``, or None for an ignored type."""
    return RULE_FOR_TYPE.get(event_type)

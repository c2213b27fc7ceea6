"""Session feedback (DESIGN 4): a rating of a whole session, decided at once.

``session_feedback_given`` is the one event keyed by ``session_id``; its decision targets the
session (``/v1/session/{id}/feedback``).  It has no window: ``window_start == window_end`` is
the event time.  It does not override request ratings (it rates something else).
"""

from __future__ import annotations

from worker.rules._base import RuleSpec
from worker.rules.explicit import INITIAL, RatingState, decide, extract, observe

__all__ = ["NAME", "OPENER", "RULE", "RULE_VERSION"]

NAME = "session_feedback"
RULE_VERSION = 1
OPENER = "session_feedback_given"

RULE: RuleSpec[RatingState] = RuleSpec(
    name="session_feedback",
    version=RULE_VERSION,
    kind="instant",
    target="session",
    opener=OPENER,
    signals=frozenset(),
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
)

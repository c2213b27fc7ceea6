"""How far to trust each implicit rule: its ratings against the users' explicit thumbs.

Pure statistics over outbox decisions (no Kafka here; ``feedback-worker calibrate`` reads
the topic and prints what :func:`calibrate` returns).

The join, per request (decisions deduplicated by ``decision_id``, the outbox being
at-least-once):

* the **explicit** rating is that of the request's highest-ranked explicit decision
  (:func:`worker.delivery_state.rating_rank`: what delivery posts);
* each implicit rule's rating is that of its highest-ranked decision that has one, either
  the rating it posted (it closed before the thumbs came) or the ``shadow_rating`` it kept
  under the thumbs (:func:`worker.delivery_state.implicit_rating`).  So both orders count.

Per rule, over the decisions selected:

* ``decisions``: the rule's decisions; ``undecided``: those with neither a rating nor a
  shadow, whatever their scores: abstentions (a window the rule decided nothing for: an
  engagement tie, a code suggestion nobody acted on), a retention above its threshold, a
  window that only carried reported scores.  Abstentions reach the outbox only while
  ``OUTBOX_ABSTENTIONS`` is on (the default); with it off those windows write nothing and
  ``undecided`` undercounts them, which is said where this is shown;
* ``paired``: requests with both an explicit and this rule's rating; ``agreed``: of those,
  the ones where both are the same;
* precision of the rule's positive ratings (explicit true among the rule's true) and of
  its negative ones (explicit false among the rule's false), each with a 95 % Wilson score
  interval, which stays inside [0, 1] and is honest for small counts, unlike p +- 1.96 SE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from worker.delivery_state import Rank, implicit_rating, rating_rank
from worker.events import Decision
from worker.rules import RULES

__all__ = [
    "IMPLICIT_RULES",
    "Proportion",
    "RuleCalibration",
    "calibrate",
    "wilson_interval",
]

#: z for a two-sided 95 % interval.
Z_95 = 1.959963984540054

#: The rules calibrated: those that rate requests from behaviour.
IMPLICIT_RULES: tuple[str, ...] = tuple(
    name
    for name, spec in RULES.items()
    if spec.target == "request" and not spec.overrides_ratings and name != "scores"
)


def wilson_interval(successes: int, trials: int, *, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of ``successes`` out of ``trials`` (0 <= low <= high <= 1).

    (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n).  Needs ``trials`` >= 1.
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError("need 0 <= successes <= trials and trials >= 1")
    n = trials
    p = successes / n
    z2 = z * z
    denominator = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)  # exact at the ends
    return low, high


@dataclass(frozen=True, slots=True)
class Proportion:
    """``successes`` out of ``trials``, with its point estimate and 95 % Wilson interval."""

    successes: int
    trials: int

    @property
    def value(self) -> float | None:
        return self.successes / self.trials if self.trials else None

    @property
    def interval(self) -> tuple[float, float] | None:
        return wilson_interval(self.successes, self.trials) if self.trials else None

    def as_dict(self) -> dict[str, Any]:
        interval = self.interval
        return {
            "successes": self.successes,
            "trials": self.trials,
            "value": self.value,
            "ci95": list(interval) if interval is not None else None,
        }


@dataclass(frozen=True, slots=True)
class RuleCalibration:
    """One rule's record against the explicit ratings (module docstring)."""

    rule: str
    decisions: int = 0
    undecided: int = 0
    #: (implicit, explicit) -> requests
    table: dict[tuple[bool, bool], int] = field(default_factory=dict)

    @property
    def paired(self) -> int:
        return sum(self.table.values())

    @property
    def agreement(self) -> Proportion:
        agreed = self.table.get((True, True), 0) + self.table.get((False, False), 0)
        return Proportion(agreed, self.paired)

    @property
    def positive_precision(self) -> Proportion:
        hits = self.table.get((True, True), 0)
        return Proportion(hits, hits + self.table.get((True, False), 0))

    @property
    def negative_precision(self) -> Proportion:
        hits = self.table.get((False, False), 0)
        return Proportion(hits, hits + self.table.get((False, True), 0))

    @property
    def undecided_share(self) -> Proportion:
        return Proportion(self.undecided, self.decisions)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "decisions": self.decisions,
            "undecided": self.undecided_share.as_dict(),
            "paired": self.paired,
            "agreement": self.agreement.as_dict(),
            "positive_precision": self.positive_precision.as_dict(),
            "negative_precision": self.negative_precision.as_dict(),
            "table": {
                f"implicit={str(i).lower()},explicit={str(e).lower()}": n
                for (i, e), n in sorted(self.table.items())
            },
        }


def calibrate(
    decisions: Iterable[Decision], *, since: datetime | None = None
) -> list[RuleCalibration]:
    """Every implicit rule's calibration over ``decisions`` decided at or after ``since``.

    Order-independent and idempotent in its input: duplicates (same ``decision_id``) count
    once, and the join picks decisions by rank, not by position.
    """
    unique: dict[str, Decision] = {}
    for d in decisions:
        if since is None or d.decided_at >= since:
            unique.setdefault(d.decision_id, d)
    counts = {rule: [0, 0] for rule in IMPLICIT_RULES}  # rule -> [decisions, undecided]
    explicit: dict[str, tuple[Rank, bool]] = {}
    implicit: dict[tuple[str, str], tuple[Rank, bool]] = {}
    for d in unique.values():
        if d.target != "request" or d.request_id is None:
            continue
        rank = rating_rank(d)
        if RULES[d.rule].overrides_ratings:
            if d.rating is not None:
                _keep_highest(explicit, d.request_id, rank, d.rating)
            continue
        if d.rule not in counts:
            continue  # reported scores: not a rule that rates
        counts[d.rule][0] += 1
        value = implicit_rating(d)
        if value is None:
            counts[d.rule][1] += 1
        else:
            _keep_highest(implicit, (d.request_id, d.rule), rank, value)
    tables: dict[str, dict[tuple[bool, bool], int]] = {rule: {} for rule in IMPLICIT_RULES}
    for (request_id, rule), (_, value) in implicit.items():
        thumbs = explicit.get(request_id)
        if thumbs is not None:
            cell = (value, thumbs[1])
            tables[rule][cell] = tables[rule].get(cell, 0) + 1
    return [
        RuleCalibration(rule, counts[rule][0], counts[rule][1], tables[rule])
        for rule in IMPLICIT_RULES
    ]


K = TypeVar("K")


def _keep_highest(table: dict[K, tuple[Rank, bool]], key: K, rank: Rank, value: bool) -> None:
    kept = table.get(key)
    if kept is None or rank > kept[0]:
        table[key] = (rank, value)

"""Datasets from decisions: which requests go into a Helicone dataset, and in what batches.

The pure half of ``feedback-worker dataset`` (issue 16, part 2).  It imports no Kafka, HTTP or
Faust: decisions come in as values, time comes in as ``now_ms``, and what comes out is data
the adapter (:mod:`worker.commands.dataset`, :mod:`worker.helicone_datasets`) acts on.

Map of the module::

    Criteria              what the user asked for: --rating, --rule, --min-score, --since
    parse_min_score       "k=v" -> ("k", v)            (--min-score)
    parse_duration_s      "7d" -> 604800.0             (--since)
    check_dataset_name    a dataset name we are willing to send
    RequestOutcome        one request's effective feedback, folded from all its decisions
    fold_decisions        decisions -> outcomes per request, plus what was skipped and why
    select                outcomes + criteria + now -> the chosen requests, in a stable order
    plan_batches          chosen ids minus those the dataset holds, cut into batches
    selection_line        one ``--jsonl`` object (fields documented in docs/datasets.md)

What holds, and why:

* **The fold agrees with delivery.**  A request's rating is the one of its decision with the
  highest :func:`~worker.delivery_state.rating_rank` (any explicit rating beats any implicit
  one, then the later window: DESIGN 5), and each score keeps the value of its highest
  :func:`~worker.delivery_state.score_rank`.  Both ranks are total orders computed from the
  decision alone, so the fold is independent of the order decisions are read in and of
  duplicates (the outbox is at-least-once; redriven decisions come back with the same id):
  the dataset holds what delivery sent Helicone as the request's feedback.  An abstention
  (``Decision.is_abstention``) sets nothing, as in delivery, and its window does not make
  the request look recent to ``--since``; a request with nothing else is ``empty``.
* **--since looks at the request, not at single decisions.**  Dropping old decisions before
  the fold could let a newer implicit rating overrule an older explicit one; so the fold sees
  everything and ``--since`` keeps requests whose *latest* window ended within the span.
* **Batches never repeat a request and never hold one the dataset has.**  Helicone's mutate
  inserts a row per id it is given, with no check for rows it already holds, so a request
  sent twice is in the dataset twice.  :func:`plan_batches` is the only place that decides
  what to send, and it drops ids already present and repeats.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal

from worker.delivery_state import Rank, rating_rank, score_rank
from worker.events import Decision, is_helicone_request_id

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "MAX_BATCH_SIZE",
    "Criteria",
    "Excluded",
    "Folded",
    "RequestOutcome",
    "Selection",
    "Skipped",
    "check_dataset_name",
    "fold_decisions",
    "parse_duration_s",
    "parse_min_score",
    "plan_batches",
    "select",
    "selection_line",
]

#: Requests per mutate call.  Helicone inserts a batch in one SQL statement and then copies
#: each request's stored bodies one by one, all before it answers; 100 keeps a call well
#: inside its 10 s route timeout.
DEFAULT_BATCH_SIZE: Final = 100
#: A bound on ``--batch-size``: one statement takes a parameter per id (Postgres allows 65,535).
MAX_BATCH_SIZE: Final = 1_000
#: Longest dataset name accepted (Helicone stores any text; a bound keeps logs and files sane).
MAX_NAME_CHARS: Final = 200

#: Why a decision on the outbox was not folded into any request.
#:   session             a session decision: datasets hold requests
#:   invalid_request_id  not a UUID v1-v5, which Helicone refuses (DESIGN 6)
Skipped = Literal["session", "invalid_request_id"]
#: Why a folded request was not selected.
#:   empty    neither a rating nor a score was decided for it
#:   rating   its rating is not the one asked for (or it has none)
#:   rule     no decision of the asked rule set its rating or a score
#:   score    a --min-score condition does not hold (the score is missing or lower)
#:   since    its latest window ended before the --since span
Excluded = Literal["empty", "rating", "rule", "score", "since"]


# --------------------------------------------------------------------------- arguments


_MIN_SCORE: Final = re.compile(r"^\s*([^=\s][^=]*?)\s*=\s*(-?\d+)\s*$")
_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}


def parse_min_score(text: str) -> tuple[str, int]:
    """``"k=v"`` -> ``("k", v)``: ``--min-score k=v`` keeps requests whose score ``k`` >= v.

    Scores are integers (DESIGN 5), so the bound is one too; a bound like ``0.5`` is refused
    rather than rounded, because either rounding would silently change what is selected.
    """
    match = _MIN_SCORE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not NAME=INTEGER (e.g. time_spent_s=30)")
    return match[1], int(match[2])


def parse_duration_s(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``7d`` or ``2w`` as seconds (> 0)."""
    match = _DURATION.match(text)
    seconds = float(match[1]) * _UNITS[match[2]] if match is not None else math.nan
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError(f"{text!r} is not a duration like 90s, 15m, 2h or 7d")
    return seconds


def check_dataset_name(name: str) -> str:
    """The name, stripped; ``ValueError`` when empty, too long or holding control characters."""
    stripped = name.strip()
    if not 1 <= len(stripped) <= MAX_NAME_CHARS:
        raise ValueError(f"a dataset name has 1 to {MAX_NAME_CHARS} characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in stripped):
        raise ValueError("a dataset name may not hold control characters")
    return stripped


@dataclass(frozen=True, slots=True, kw_only=True)
class Criteria:
    """What ``dataset`` selects.  Every field set narrows the selection; none set keeps every
    request with a rating or a score."""

    #: Only requests whose effective rating is this (None: any, or none).
    rating: bool | None = None
    #: Only requests where this rule decided the rating or one of the scores.
    rule: str | None = None
    #: Every (name, bound): the request's score ``name`` exists and is >= bound.
    min_scores: tuple[tuple[str, int], ...] = ()
    #: Only requests whose latest window ended at most this long before ``now``.
    since_s: float | None = None

    def __post_init__(self) -> None:
        if self.since_s is not None and not self.since_s > 0:
            raise ValueError("since_s must be > 0")


# --------------------------------------------------------------------------- the fold


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestOutcome:
    """One request's effective feedback, as delivery would send it, plus where it came from."""

    request_id: str
    rating: bool | None
    #: The rule whose decision set the rating (None when no decision rated the request).
    rating_rule: str | None
    scores: Mapping[str, int]
    #: Rules that set the rating or a kept score (what --rule matches).
    rules: frozenset[str]
    #: End of the latest window of any of its decisions (event time, ms since the epoch).
    last_window_end_ms: int
    #: Every distinct decision folded in, sorted (for audits: find them on the outbox).
    decision_ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Folded:
    """The fold of a whole outbox: outcomes by request id, and decisions left out, by why."""

    outcomes: Mapping[str, RequestOutcome]
    skipped: Mapping[Skipped, int]


@dataclass(slots=True)
class _Acc:
    rating: tuple[Rank, bool, str] | None = None
    scores: dict[str, tuple[Rank, int, str]] = field(default_factory=dict)
    last_end_ms: int = 0
    ids: set[str] = field(default_factory=set)


def fold_decisions(decisions: Iterable[Decision]) -> Folded:
    """Each request's effective rating and scores (module docstring: order-free, dup-free)."""
    accs: dict[str, _Acc] = {}
    skipped: Counter[Skipped] = Counter()
    for decision in decisions:
        if decision.target != "request" or decision.request_id is None:
            skipped["session"] += 1
            continue
        if not is_helicone_request_id(decision.request_id):
            skipped["invalid_request_id"] += 1
            continue
        # Canonical form: Helicone ids are case-insensitive, and a set must not hold both.
        acc = accs.setdefault(decision.request_id.lower(), _Acc())
        acc.ids.add(decision.decision_id)
        if decision.is_abstention:
            continue  # sets nothing, not even the latest window (module docstring)
        acc.last_end_ms = max(acc.last_end_ms, _ms(decision.window_end))
        if decision.rating is not None:
            rank = rating_rank(decision)
            if acc.rating is None or acc.rating[0] < rank:
                acc.rating = (rank, decision.rating, decision.rule)
        if decision.scores:
            rank = score_rank(decision)
            for name, value in decision.scores.items():
                kept = acc.scores.get(name)
                if kept is None or kept[0] < rank:
                    acc.scores[name] = (rank, value, decision.rule)
    return Folded({rid: _outcome(rid, acc) for rid, acc in accs.items()}, dict(skipped))


def _outcome(request_id: str, acc: _Acc) -> RequestOutcome:
    rules = {rule for _, _, rule in acc.scores.values()}
    if acc.rating is not None:
        rules.add(acc.rating[2])
    return RequestOutcome(
        request_id=request_id,
        rating=None if acc.rating is None else acc.rating[1],
        rating_rule=None if acc.rating is None else acc.rating[2],
        scores={name: value for name, (_, value, _) in sorted(acc.scores.items())},
        rules=frozenset(rules),
        last_window_end_ms=acc.last_end_ms,
        decision_ids=tuple(sorted(acc.ids)),
    )


def _ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# --------------------------------------------------------------------------- selecting


@dataclass(frozen=True, slots=True)
class Selection:
    """The chosen requests, oldest latest window first (ties by id), and the others, by why."""

    chosen: tuple[RequestOutcome, ...]
    excluded: Mapping[Excluded, int]

    @property
    def request_ids(self) -> list[str]:
        return [outcome.request_id for outcome in self.chosen]


def select(outcomes: Iterable[RequestOutcome], criteria: Criteria, *, now_ms: int) -> Selection:
    """The outcomes that meet every criterion, in a stable order.

    The order (latest window end, then request id) depends on the outcomes only, so two runs
    over the same outbox plan the same batches, and a resumed run sends the rest in the order
    the first one would have.
    """
    chosen: list[RequestOutcome] = []
    excluded: Counter[Excluded] = Counter()
    for outcome in outcomes:
        reason = _why_not(outcome, criteria, now_ms)
        if reason is None:
            chosen.append(outcome)
        else:
            excluded[reason] += 1
    chosen.sort(key=lambda o: (o.last_window_end_ms, o.request_id))
    return Selection(tuple(chosen), dict(excluded))


def _why_not(outcome: RequestOutcome, criteria: Criteria, now_ms: int) -> Excluded | None:
    if outcome.rating is None and not outcome.scores:
        return "empty"
    if criteria.rating is not None and outcome.rating is not criteria.rating:
        return "rating"
    if criteria.rule is not None and criteria.rule not in outcome.rules:
        return "rule"
    for name, bound in criteria.min_scores:
        value = outcome.scores.get(name)
        if value is None or value < bound:
            return "score"
    if criteria.since_s is not None and (
        outcome.last_window_end_ms < now_ms - criteria.since_s * 1000
    ):
        return "since"
    return None


def plan_batches(
    request_ids: Sequence[str], present: Iterable[str], *, batch_size: int
) -> list[list[str]]:
    """``request_ids`` not in ``present``, first occurrence only, in order, cut in batches.

    Every id of the result is distinct and absent from ``present``; joined, the batches are
    exactly the wanted ids in their order; each batch holds 1 to ``batch_size`` ids.
    """
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be 1 to {MAX_BATCH_SIZE}")
    seen = {rid.lower() for rid in present}
    todo: list[str] = []
    for rid in request_ids:
        key = rid.lower()
        if key not in seen:
            seen.add(key)
            todo.append(rid)
    return [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]


def selection_line(outcome: RequestOutcome) -> dict[str, Any]:
    """One ``--jsonl`` object; the fields are a contract (docs/datasets.md)."""
    return {
        "request_id": outcome.request_id,
        "rating": outcome.rating,
        "rating_rule": outcome.rating_rule,
        "scores": dict(outcome.scores),
        "rules": sorted(outcome.rules),
        "last_window_end": datetime.fromtimestamp(outcome.last_window_end_ms / 1000, UTC)
        .isoformat()
        .replace("+00:00", "Z"),
        "decision_ids": list(outcome.decision_ids),
    }

"""Where did every input record go?  The bookkeeping behind the fuzz invariants.

Given the records that were sent (with their partition, offset and record timestamp) and what
came out (the invalid topic, the late topic, the outbox), :func:`account` classifies each
record the way the worker must have, using the worker's own pure validation
(:func:`worker.validation.inspect_record`) as the reference, and lists every record it cannot
account for.  Paths, exactly as checked:

* **invalid**: ``inspect_record`` rejects it -> exactly one invalid-topic record whose source
  is its (topic, partition, offset), with the same reason;
* **duplicate**: accepted, but an accepted record with the same (canonical) event id is
  processed instead -> only counted (``feedback_events_duplicate_total``);
* **decided**: its event id is cited in the ``signals`` (evidence) of an outbox decision;
* **late**: its event id is on the late topic;
* **no decision**: no decision of the event's rule for its request covers the event's time
  (or the covering decision says signals over the cap were dropped), and the rule can end a
  window that way (worker/rules/, worker/windows/transitions.py ``_close``).  With
  ``OUTBOX_ABSTENTIONS`` on (the default) such a window writes an abstention that cites its
  events, so they count as decided; this path is for workers that run with it off:

  - engagement: equal positive and negative signals give no verdict, hence no decision;
  - code suggestion: a ``suggestion_shown`` with no action (an action under an explicit
    rating still makes a decision: the suppressed rating is kept as its ``shadow_rating``);
  - ticket resolution: never (it always rates, under an explicit rating as a shadow);
  - search clicks: never (its ``click_through_rate`` score always makes a decision);
  - instant and carried rules (explicit, session feedback, scores): never.

For a group of records sharing an event id, one member is processed and the others are
duplicates; which one depends on the interleaving of partitions, so the group is accounted
for when its id is decided or late, or when any member qualifies for "no decision".
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from worker.events import Decision
from worker.rules import RULE_FOR_TYPE
from worker.validation import Accepted, Invalid, ValidationLimits, inspect_record


@dataclass(frozen=True)
class SentRecord:
    """One record as the broker stored it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    kind: str = ""


@dataclass
class Ledger:
    """The outcome of :func:`account`: expected counts, and what could not be accounted for."""

    records: int = 0
    invalid: dict[str, int] = field(default_factory=dict)  # by reason
    processed: int = 0  # distinct accepted event ids
    duplicates: int = 0  # accepted records beyond the first of their event id
    decided: int = 0
    late: int = 0
    no_decision: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def invalid_total(self) -> int:
        return sum(self.invalid.values())


def _target(accepted: Accepted) -> tuple[str, str]:
    event = accepted.event
    spec = RULE_FOR_TYPE[event.type]
    return spec.name, accepted.key


def account(
    sent: Iterable[SentRecord],
    *,
    input_topic: str,
    now_ms: int,
    limits: ValidationLimits,
    invalid_docs: Iterable[Mapping[str, Any]],
    late_docs: Iterable[Mapping[str, Any]],
    decisions: Iterable[Decision],
) -> Ledger:
    ledger = Ledger()
    decisions = list(decisions)
    invalid_by_source: dict[tuple[int, int], list[Mapping[str, Any]]] = defaultdict(list)
    for doc in invalid_docs:
        source = doc["source"]
        if source["topic"] != input_topic:
            ledger.problems.append(f"invalid record from another topic: {source}")
            continue
        invalid_by_source[source["partition"], source["offset"]].append(doc)
    late_ids: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for doc in late_docs:
        late_ids[doc["event_id"]].append(doc)
    cited: dict[str, list[Decision]] = defaultdict(list)
    covering: dict[tuple[str, str], list[Decision]] = defaultdict(list)
    for decision in decisions:
        for evidence in decision.signals:
            if evidence.event_id:
                cited[evidence.event_id].append(decision)
        covering[decision.rule, decision.target_id].append(decision)

    groups: dict[str, list[tuple[SentRecord, Accepted]]] = defaultdict(list)
    seen_sources: set[tuple[int, int]] = set()
    for record in sent:
        ledger.records += 1
        seen_sources.add((record.partition, record.offset))
        result = inspect_record(
            record.value, record_ts_ms=record.timestamp_ms, now_ms=now_ms, limits=limits
        )
        on_invalid = invalid_by_source.get((record.partition, record.offset), [])
        if isinstance(result, Invalid):
            ledger.invalid[result.reason] = ledger.invalid.get(result.reason, 0) + 1
            if len(on_invalid) != 1:
                ledger.problems.append(
                    f"{record.kind} record at {record.partition}@{record.offset} is invalid "
                    f"({result.reason}) but on the invalid topic {len(on_invalid)} times"
                )
            elif on_invalid[0]["reason"] != result.reason:
                ledger.problems.append(
                    f"{record.kind} record at {record.partition}@{record.offset}: reason "
                    f"{on_invalid[0]['reason']!r} on the invalid topic, expected "
                    f"{result.reason!r}"
                )
            continue
        if on_invalid:
            ledger.problems.append(
                f"valid {record.kind} record at {record.partition}@{record.offset} is on the "
                f"invalid topic ({on_invalid[0]['reason']})"
            )
        groups[result.event.event_id].append((record, result))
    stray = set(invalid_by_source) - seen_sources
    if stray:
        ledger.problems.append(f"invalid-topic records for offsets never sent: {sorted(stray)}")

    for event_id, members in groups.items():
        ledger.processed += 1
        ledger.duplicates += len(members) - 1
        is_late, is_cited = event_id in late_ids, event_id in cited
        if is_late and is_cited:
            ledger.problems.append(
                f"event {event_id} is both on the late topic and cited by a decision"
            )
        if len(late_ids.get(event_id, ())) > 1:
            ledger.problems.append(f"event {event_id} is on the late topic more than once")
        if is_cited:
            ledger.decided += 1
            continue
        if is_late:
            ledger.late += 1
            continue
        if any(
            _may_end_undecided(accepted) and _no_decision_covers(accepted, covering)
            for _, accepted in members
        ):
            ledger.no_decision += 1
            continue
        record, accepted = members[0]
        rule, target = _target(accepted)
        windows = [
            (d.window_start.isoformat(), d.window_end.isoformat())
            for d in covering.get((rule, target), [])
        ]
        ledger.problems.append(
            f"event {event_id} ({accepted.event.type}, {rule} of {target}, event time "
            f"{accepted.event_time_ms}, {len(members)} record(s), first at "
            f"{record.partition}@{record.offset}) is neither decided, late nor in a window "
            f"that ended without a decision; decisions of that rule and target: {windows}"
        )

    ids = set(groups)
    phantom_late = set(late_ids) - ids
    if phantom_late:
        ledger.problems.append(f"late records for events never sent: {sorted(phantom_late)[:5]}")
    phantom_cited = set(cited) - ids
    if phantom_cited:
        ledger.problems.append(f"decisions cite events never sent: {sorted(phantom_cited)[:5]}")
    return ledger


def _may_end_undecided(accepted: Accepted) -> bool:
    """Whether the event's rule can close a window holding it without any decision."""
    event = accepted.event
    rule = RULE_FOR_TYPE[event.type].name
    if rule == "engagement":
        return True
    if rule == "code_suggestion":
        return event.type == "suggestion_shown"
    return False


def _no_decision_covers(
    accepted: Accepted, covering: Mapping[tuple[str, str], list[Decision]]
) -> bool:
    spec = RULE_FOR_TYPE[accepted.event.type]
    t_ms = accepted.event_time_ms
    for decision in covering.get((spec.name, accepted.key), ()):
        start_ms = round(decision.window_start.timestamp() * 1000)
        end_ms = round(decision.window_end.timestamp() * 1000)
        if start_ms <= t_ms <= end_ms and not any(
            e.type == "signals_dropped" for e in decision.signals
        ):
            return False
    return True

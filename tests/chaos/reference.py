"""What a chaos scenario *should* have produced, computed by the pure core over the same input.

The worker is a distributed, crash-prone way of running :class:`~worker.windows.WindowEngine`
(one per partition) over the input topic and delivering what the decisions imply to Helicone.
The reference runs the same pure engine in-process, over the records that are actually on
the input topic (read back after the scenario, so partition, order and record timestamps
are the real ones), with a :class:`~worker.clock.FakeClock` that follows the record timestamps
and never idles mid-stream; at the end every window is closed on the idle timer.

Two things come out:

* :func:`expected_decisions`: decision id -> :class:`Decision` (ids are deterministic:
  :func:`~worker.events.decision_id_for`), the decisions the input implies;
* :func:`expected_stored`: what Helicone should end up storing for them (rating and scores
  per request, rating per session), to compare with what the receiver stored.

The reference is only the ideal run when no partition's stream pauses for ``IDLE_CLOSE_S`` of
wall clock in the middle of the input (then the worker would rightly close windows early on
the wall clock); the scenarios keep the load steady and ``IDLE_CLOSE_S`` well above any pause
(a restart rebuilds the engine, which restarts its idle timer).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from worker.app import rule_config
from worker.clock import FakeClock
from worker.config import Settings
from worker.events import Decision
from worker.partitioner import partition_for
from worker.validation import Accepted, ValidationLimits, inspect_record
from worker.windows import DictStore, WindowEngine

__all__ = [
    "Call",
    "InputRecord",
    "Reference",
    "Stored",
    "expected_decisions",
    "expected_stored",
    "settings_from_env",
]

#: One HTTP call as the receiver records it: (path, body as canonical JSON).
Call = tuple[str, bytes]
#: The score key Helicone stores feedback under.
FEEDBACK_KEY = "helicone-score-feedback"


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of the input topic, as the worker's ingest sees it."""

    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None


@dataclass
class Reference:
    """The result of one reference run."""

    decisions: dict[str, Decision] = field(default_factory=dict)
    #: Valid events whose request is owned by another partition than the one they are on
    #: (the worker rekeys them, which can reorder them: the reference is then approximate).
    misplaced: int = 0
    invalid: int = 0
    #: Event ids the engine reports late (none for input sorted by event time).
    late_ids: list[str] = field(default_factory=list)

    @property
    def late(self) -> int:
        return len(self.late_ids)


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The :class:`Settings` a worker started with ``env`` reads (no .env file)."""
    fields: dict[str, Any] = {
        k.lower(): v for k, v in env.items() if k.lower() in Settings.model_fields
    }
    return Settings(_env_file=None, **fields)


def expected_decisions(records: Iterable[InputRecord], settings: Settings) -> Reference:
    """Run the pure engine over ``records`` (each partition in offset order)."""
    limits = ValidationLimits(
        max_event_bytes=settings.max_event_bytes,
        tolerance_ms=int(settings.clock_skew_tolerance_s * 1000),
        max_future_ms=int(settings.event_max_future_s * 1000),
        max_age_ms=int(settings.event_max_age_s * 1000),
    )
    partitions = settings.topic_partitions
    config = rule_config(settings)
    by_partition: dict[int, list[InputRecord]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record)

    result = Reference()
    owned: dict[int, list[Accepted]] = {}
    for partition, part in sorted(by_partition.items()):
        for record in sorted(part, key=lambda r: r.offset):
            accepted = inspect_record(
                record.value,
                record_ts_ms=record.timestamp_ms,
                now_ms=record.timestamp_ms,
                limits=limits,
            )
            if not isinstance(accepted, Accepted):
                result.invalid += 1
                continue
            owner = partition_for(accepted.key.encode(), partitions)
            if owner != partition:
                result.misplaced += 1
            owned.setdefault(owner, []).append(accepted)

    last_ms = max((r.timestamp_ms for part in by_partition.values() for r in part), default=0)
    for events in owned.values():
        clock = FakeClock(t_ms=0)
        engine = WindowEngine(
            DictStore(),
            config=config,
            grace_ms=int(settings.window_grace_s * 1000),
            idle_close_ms=int(settings.idle_close_s * 1000),
            max_signals=settings.max_signals_per_window,
            clock=clock,
        )
        outcomes = []
        for accepted in events:
            clock.t_ms = max(clock.t_ms, accepted.event_time_ms)
            outcomes.append(engine.process(accepted))
        # The end of the input: the partition idles and every window closes on the wall clock.
        clock.t_ms = max(last_ms, clock.t_ms) + 10 * 86_400_000
        outcomes.append(engine.tick())
        for outcome in outcomes:
            result.late_ids.extend(late.event_id for late in outcome.late)
            for decision in outcome.decisions:
                assert decision.decision_id not in result.decisions, decision
                result.decisions[decision.decision_id] = decision
    return result


@dataclass
class Stored:
    """What Helicone should end up storing for a set of decisions (DESIGN 5 and 6).

    Written independently of :mod:`worker.delivery_state`, from the rules as DESIGN states
    them: per request, the explicit rating if there is one, else the rating of the latest
    window (by its end, then start, then decision id); each score as the latest window set it;
    the rating stored as the score ``helicone-score-feedback`` 1/0.  Per session, the latest
    session rating.
    """

    requests: dict[str, tuple[bool | None, dict[str, int]]] = field(default_factory=dict)
    sessions: dict[str, bool] = field(default_factory=dict)
    #: decisions per target id: each one is at most one change, hence at most one call
    decisions_per_target: Counter[str] = field(default_factory=Counter)


def expected_stored(decisions: Iterable[Decision]) -> Stored:
    def order(d: Decision) -> tuple[datetime, datetime, str]:
        return (d.window_end, d.window_start, d.decision_id)

    by_target: dict[str, list[Decision]] = {}
    for decision in decisions:
        by_target.setdefault(decision.target_id, []).append(decision)
    stored = Stored()
    for target_id, group in by_target.items():
        stored.decisions_per_target[target_id] = len(group)
        group.sort(key=order)
        rated = [d for d in group if d.rating is not None]
        if group[0].target == "session":
            if rated:
                stored.sessions[target_id] = bool(rated[-1].rating)
            continue
        explicit = [d for d in rated if d.rule == "explicit"]
        chosen = (explicit or rated)[-1] if rated else None
        scores: dict[str, int] = {}
        for d in group:  # later windows overwrite earlier ones, key by key
            scores.update({k: v for k, v in d.scores.items() if k != FEEDBACK_KEY})
        rating = chosen.rating if chosen is not None else None
        if rating is not None:
            scores[FEEDBACK_KEY] = 1 if rating else 0
        if scores:
            stored.requests[target_id] = (rating, scores)
    return stored


def canonical(body: Any) -> bytes:
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)

"""Builders shared by the rule and window tests: valid events, an engine on a dict store.

Events go through the real validator (``UI_EVENT_ADAPTER.validate_json``), so a test can
never feed the engine something validation would have refused.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

from worker.clock import FakeClock
from worker.events import UI_EVENT_ADAPTER, Decision
from worker.rules import RuleConfig
from worker.validation import Accepted
from worker.windows import DictStore, Outcome, WindowEngine

#: 2026-11-22T12:00:00Z, the base of every test's event times.
T0 = 1_795_348_800_000
REQUEST = "5f2b8c1e-3d4a-4b6c-9e7f-1a2b3c4d5e6f"
OTHER_REQUEST = "7c9d8e1f-2a3b-4c5d-8e6f-0a1b2c3d4e5f"
DRAIN_REQUEST = "0d0d0d0d-0d0d-4d0d-8d0d-0d0d0d0d0d0d"
SESSION = "chat-session-42"
GRACE_MS = 5_000

_counter = iter(range(1, 10**9))


def new_id() -> str:
    return str(uuid.UUID(int=next(_counter), version=4))


def ev(
    type_: str,
    at_ms: int,
    *,
    request_id: str | None = REQUEST,
    event_id: str | None = None,
    session_id: str | None = SESSION,
    **properties: Any,
) -> Accepted:
    """A validated event of ``type_`` at event time ``T0 + at_ms``."""
    t = T0 + at_ms
    document: dict[str, Any] = {
        "event_id": event_id or new_id(),
        "type": type_,
        "occurred_at": datetime.fromtimestamp(t / 1000, UTC).isoformat(),
    }
    if request_id is not None:
        document["request_id"] = request_id
    if session_id is not None:
        document["session_id"] = session_id
    if properties:
        document["properties"] = properties
    return Accepted(UI_EVENT_ADAPTER.validate_json(orjson.dumps(document)), t)


def engine(
    store: DictStore | None = None,
    *,
    clock: FakeClock | None = None,
    config: RuleConfig | None = None,
    grace_ms: int = GRACE_MS,
    idle_close_ms: int = 30_000,
    max_signals: int = 200,
    **kwargs: Any,
) -> WindowEngine:
    return WindowEngine(
        store if store is not None else DictStore(),
        config=config or RuleConfig(),
        grace_ms=grace_ms,
        idle_close_ms=idle_close_ms,
        max_signals=max_signals,
        clock=clock or FakeClock(T0),
        **kwargs,
    )


class Run:
    """Everything an engine returned over a sequence of calls."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self.late: list[Any] = []
        self.duplicates = 0

    def add(self, outcome: Outcome) -> Outcome:
        self.decisions.extend(outcome.decisions)
        self.late.extend(outcome.late)
        self.duplicates += outcome.duplicates
        return outcome

    def by_rule(self, rule: str) -> list[Decision]:
        return [d for d in self.decisions if d.rule == rule]

    def one(self, rule: str) -> Decision:
        found = self.by_rule(rule)
        assert len(found) == 1, f"expected one {rule} decision, got {found}"
        return found[0]


def feed(eng: WindowEngine, events: Iterable[Accepted], run: Run | None = None) -> Run:
    run = run or Run()
    for accepted in events:
        run.add(eng.process(accepted))
    return run


def drain(eng: WindowEngine, run: Run, *, after_ms: int = 10 * 86_400_000) -> Run:
    """Push stream time far ahead (an unrelated page_left) so every window closes."""
    run.add(eng.process(ev("page_left", after_ms, request_id=DRAIN_REQUEST)))
    run.late = [le for le in run.late if le.key != DRAIN_REQUEST]
    return run


def comparable(decisions: Iterable[Decision]) -> list[dict[str, Any]]:
    """Decisions as sorted plain data, without ``decided_at`` (the only wall-clock field)."""
    return sorted(
        (d.model_dump(mode="json", exclude={"decided_at"}) for d in decisions),
        key=lambda d: (d["rule"], d["decision_id"]),
    )

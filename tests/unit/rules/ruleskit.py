"""Running one rule over hand-made signals, without the engine."""

from __future__ import annotations

from typing import Any

from tests.unit.rules.eventkit import T0, ev
from worker.rules import RULE_FOR_TYPE, RULES, RuleConfig, Signal, Verdict, evaluate

T = T0  # event time of every anchor


def sig(type_: str, at_ms: int, data: Any = None, *, event_id: str | None = None) -> Signal:
    return Signal(T + at_ms, event_id or f"{type_}-{at_ms}", type_, data)


def verdict(
    rule: str,
    anchor: Signal,
    *signals: Signal,
    end_ms: int | None = None,
    config: RuleConfig | None = None,
) -> Verdict | None:
    """Fold ``signals`` after ``anchor`` and decide at ``T + end_ms`` (default: window end)."""
    cfg = config or RuleConfig()
    spec = RULES[rule]
    end = T + (end_ms if end_ms is not None else spec.window_ms(cfg))
    return evaluate(spec, anchor, signals, closed_at_ms=end, config=cfg)


def signal_of(type_: str, at_ms: int, *, config: RuleConfig | None = None, **props: Any) -> Signal:
    """A signal made the way the engine makes it: a validated event through ``extract``."""
    accepted = ev(type_, at_ms, **props)
    spec = RULE_FOR_TYPE[type_]
    data = spec.extract(accepted.event, config or RuleConfig())
    return Signal(accepted.event_time_ms, accepted.event.event_id, type_, data)

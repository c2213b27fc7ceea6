"""What every rule is made of, and the one function that runs a rule over a window.

A rule (STYLE 4.2) is data plus three pure functions, bundled in a :class:`RuleSpec`::

    extract(event, cfg)          -> data      the compact, JSON-serialisable part of an event
                                              the rule needs; the engine stores it in a Signal
    observe(state, signal)       -> state     a fold step over one signal (frozen states)
    decide(state, closed_at_ms, cfg) -> Verdict | None

:func:`evaluate` folds a window's signals in *event-time order* (ties by event id), anchor
first, so a rule may rely on order ("the first action wins") and still give the same verdict
for any arrival order: the engine stores signals, not folded state, and folds at close.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from worker.events import Evidence

if TYPE_CHECKING:
    from worker.events import RuleName, UIEvent
    from worker.rules.config import RuleConfig

__all__ = [
    "RuleKind",
    "RuleSpec",
    "Signal",
    "Target",
    "Verdict",
    "cite",
    "evaluate",
    "utc",
]

RuleKind = Literal[
    "window",  # opened by an event, collects signals for a while, decided at close
    "instant",  # decided from the one event that triggers it (explicit ratings)
    "carried",  # parked for grace, then carried by the windows that cover it
    # (attaches_to_open_windows) or decided alone (scores)
]
Target = Literal["request", "session"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FLOAT_EXACT_BELOW_MS = 2**33 * 1000  # seconds below 2**33: float ulp/2 < 0.5 us


def utc(ms: int) -> datetime:
    """Epoch milliseconds as an aware UTC datetime, exactly.

    ``fromtimestamp`` (C, about twice as fast as the timedelta sum) is exact here: the float
    ``ms / 1000`` is within 0.12 us of the true value for any time before the year 2242, and
    it rounds to whole microseconds.  Other times take the always-exact timedelta path.
    """
    if 0 <= ms < _FLOAT_EXACT_BELOW_MS:
        return datetime.fromtimestamp(ms / 1000, UTC)
    return _EPOCH + timedelta(milliseconds=ms)


@dataclass(frozen=True, slots=True)
class Signal:
    """One event as a rule sees it: when, which, what type, and the rule's extracted data."""

    time_ms: int
    event_id: str
    type: str
    data: Any = None

    @property
    def order(self) -> tuple[int, str]:
        """The total order rules fold in: event time, then event id."""
        return (self.time_ms, self.event_id)


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a rule decided for one window: a rating (or none), integer scores, the evidence."""

    rating: bool | None
    scores: Mapping[str, int] = field(default_factory=dict)
    evidence: tuple[Evidence, ...] = ()


def cite(signal: Signal, detail: str | None = None) -> Evidence:
    """The audit record of one signal."""
    return Evidence(
        event_id=signal.event_id, type=signal.type, event_time=utc(signal.time_ms), detail=detail
    )


S = TypeVar("S")


def _never(signal: Signal) -> bool:
    return False


def _no_window(cfg: RuleConfig) -> int:
    return 0


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSpec(Generic[S]):
    """One rule: its identity, which events it takes, and its pure functions."""

    #: Rule name, as written in the outbox decision.
    name: RuleName
    #: Goes into every decision; bump it when what the rule decides changes meaning.
    version: int
    kind: RuleKind
    #: Whether decisions are posted to a request or to a session.
    target: Target
    #: The event type that opens a window (or, for instant/carried rules, that triggers it).
    opener: str
    #: Event types attributed to an open window of this rule, besides further openers.
    signals: frozenset[str]
    #: The fold's starting state.
    initial: S
    extract: Callable[[UIEvent, RuleConfig], Any]
    observe: Callable[[S, Signal], S]
    decide: Callable[[S, int, RuleConfig], Verdict | None]
    #: True for a signal that ends its window at its own event time (early close).
    closes_early: Callable[[Signal], bool] = _never
    #: The window length; 0 for instant and carried rules.
    window_ms: Callable[[RuleConfig], int] = _no_window
    #: An instant rule whose decision wins over implicit ratings: a window of the same key
    #: that has not closed, ends at or after the decision's event time and starts no later
    #: than the engine's ``retention_ms`` after it emits no rating, only its scores.
    overrides_ratings: bool = False
    #: A carried rule whose events, once parked for grace, join every window of the same
    #: key that covers their event time and is still open (its decision carries them); an
    #: event no window covers is decided alone.  Such events are never the ones a window
    #: drops for its cap or for a decisive signal.
    attaches_to_open_windows: bool = False

    def __post_init__(self) -> None:
        if self.overrides_ratings and self.kind != "instant":
            raise ValueError(f"rule {self.name}: only an instant rule can override ratings")
        if self.attaches_to_open_windows and self.kind != "carried":
            raise ValueError(f"rule {self.name}: only a carried rule can attach to windows")

    @property
    def event_types(self) -> frozenset[str]:
        """Every event type this rule consumes."""
        return self.signals | {self.opener}


def evaluate(
    spec: RuleSpec[S],
    anchor: Signal,
    signals: Iterable[Signal],
    *,
    closed_at_ms: int,
    config: RuleConfig,
) -> Verdict | None:
    """Fold ``anchor`` then ``signals`` in event-time order and decide.

    ``closed_at_ms`` is the event time the window ended at: its nominal end, or the time of
    the signal that closed it early.
    """
    state = spec.observe(spec.initial, anchor)
    for signal in sorted(signals, key=_order):
        state = spec.observe(state, signal)
    return spec.decide(state, closed_at_ms, config)


def _order(signal: Signal) -> tuple[int, str]:
    return (signal.time_ms, signal.event_id)

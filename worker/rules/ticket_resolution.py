"""Ticket resolution (DESIGN 4): was the support ticket this answer became resolved, and did
it stay resolved?

Window: ``ticket_opened`` + 24 h.  Ticket events match by ``ticket_id``: the window tracks the
set of tickets opened for the request within it (normally one), and a resolution or reopening
counts only for a ticket in that set.  Per ticket, the last of its resolved/reopened events
in event-time order is its state.  Rating at close: true when every opened ticket is resolved
and not reopened after its last resolution; an unresolved (or reopened) ticket gives false.

A request has one ticket window at a time (one decision per request, as Helicone keeps one
rating per request); a second ticket opened within 24 h joins the first one's window.
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
    "TicketState",
    "decide",
    "extract",
    "observe",
]

NAME = "ticket_resolution"
RULE_VERSION = 1
OPENER = "ticket_opened"
SIGNALS = frozenset({"ticket_resolved", "ticket_reopened"})


def extract(event: UIEvent, cfg: RuleConfig) -> Any:
    """The event's ``ticket_id``."""
    if event.type in ("ticket_opened", "ticket_resolved", "ticket_reopened"):
        return event.properties.ticket_id
    return None


@dataclass(frozen=True, slots=True)
class TicketState:
    opened: frozenset[str] = frozenset()
    #: Tickets whose latest resolved/reopened event so far is a resolution.
    resolved: frozenset[str] = frozenset()
    seen: tuple[Signal, ...] = ()


INITIAL = TicketState()


def observe(state: TicketState, signal: Signal) -> TicketState:
    opened, resolved, ticket = state.opened, state.resolved, signal.data
    match signal.type:
        case "ticket_opened":
            opened = opened | {ticket}
        case "ticket_resolved":
            resolved = resolved | {ticket}
        case "ticket_reopened":
            resolved = resolved - {ticket}
    return TicketState(opened, resolved, (*state.seen, signal))


def decide(state: TicketState, closed_at_ms: int, cfg: RuleConfig) -> Verdict | None:
    def detail(signal: Signal) -> str:
        known = signal.data in state.opened
        return f"ticket {signal.data}" + ("" if known else " (not opened in this window)")

    evidence = tuple(cite(s, detail(s)) for s in state.seen)
    resolved = bool(state.opened) and state.opened <= state.resolved
    return Verdict(rating=resolved, evidence=evidence)


RULE: RuleSpec[TicketState] = RuleSpec(
    name="ticket_resolution",
    version=RULE_VERSION,
    kind="window",
    target="request",
    opener=OPENER,
    signals=SIGNALS,
    initial=INITIAL,
    extract=extract,
    observe=observe,
    decide=decide,
    window_ms=lambda cfg: cfg.ticket_window_ms,
)

"""Ticket resolution: resolved and not reopened after its last resolution (DESIGN 4)."""

from __future__ import annotations

from tests.unit.rules.ruleskit import signal_of, verdict
from worker.rules import Signal

HOUR = 3_600_000


def opened(ticket: str = "T-1", at: int = 0) -> Signal:
    return signal_of("ticket_opened", at, ticket_id=ticket)


def test_unresolved_is_false() -> None:
    result = verdict("ticket_resolution", opened())
    assert result is not None and result.rating is False


def test_resolved_is_true() -> None:
    result = verdict(
        "ticket_resolution", opened(), signal_of("ticket_resolved", HOUR, ticket_id="T-1")
    )
    assert result is not None and result.rating is True


def test_reopened_after_last_resolution_is_false() -> None:
    events = [
        signal_of("ticket_resolved", HOUR, ticket_id="T-1"),
        signal_of("ticket_reopened", 2 * HOUR, ticket_id="T-1"),
    ]
    result = verdict("ticket_resolution", opened(), *events)
    assert result is not None and result.rating is False
    resolved_again = signal_of("ticket_resolved", 3 * HOUR, ticket_id="T-1")
    result = verdict("ticket_resolution", opened(), *reversed([*events, resolved_again]))
    assert result is not None and result.rating is True


def test_events_match_by_ticket_id() -> None:
    other = signal_of("ticket_resolved", HOUR, ticket_id="T-2")
    result = verdict("ticket_resolution", opened(), other)
    assert result is not None and result.rating is False
    assert "not opened in this window" in (result.evidence[1].detail or "")


def test_every_opened_ticket_must_be_resolved() -> None:
    second = signal_of("ticket_opened", HOUR, ticket_id="T-2")
    first_resolved = signal_of("ticket_resolved", 2 * HOUR, ticket_id="T-1")
    result = verdict("ticket_resolution", opened(), second, first_resolved)
    assert result is not None and result.rating is False
    both = signal_of("ticket_resolved", 3 * HOUR, ticket_id="T-2")
    result = verdict("ticket_resolution", opened(), second, first_resolved, both)
    assert result is not None and result.rating is True

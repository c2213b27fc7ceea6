"""The pure parts of ``feedback-worker dlq``: which records are still open, filters, durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import click
import pytest

from worker.commands.dlq import DeadLetter, _Duration, _Marker, _select, open_dead_letters
from worker.delivery import RetryState
from worker.envelopes import dead_letter_record

NOW = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def letter(
    offset: int, decision_id: str | None, *, reason: str = "rejected", age: timedelta = timedelta()
) -> DeadLetter:
    document: dict[str, Any] = {
        "decision_id": decision_id,
        "reason": reason,
        "dead_lettered_at": (NOW - age).isoformat(),
        "decision": None if decision_id is None else {"target": "request", "request_id": "r"},
    }
    return DeadLetter(partition=0, offset=offset, key=b"r", document=document)


def test_a_redriven_decision_is_closed_until_it_is_dead_lettered_again() -> None:
    letters = [letter(0, "a"), letter(1, "b"), letter(3, "a", reason="max_attempts")]
    markers = [_Marker(0, 2, "a"), _Marker(0, 4, "b")]
    open_ = open_dead_letters(letters, markers)
    # a: dead-lettered (0), redriven (2), dead-lettered again (3) -> open, newest record.
    # b: dead-lettered (1), redriven (4) -> closed.
    assert [(x.decision_id, x.offset, x.reason) for x in open_] == [("a", 3, "max_attempts")]


def test_records_without_a_decision_are_always_listed() -> None:
    letters = [letter(0, None), letter(1, None, reason="invalid")]
    assert len(open_dead_letters(letters, [])) == 2


def test_filters_by_reason_and_age() -> None:
    letters = [
        letter(0, "old", age=timedelta(hours=3)),
        letter(1, "new", age=timedelta(minutes=5)),
        letter(2, "other", reason="invalid", age=timedelta(hours=3)),
    ]
    def pick(**options: Any) -> list[str | None]:
        chosen = _select(
            letters,
            reasons=options.get("reasons", ()),
            older_than=options.get("older_than"),
            newer_than=options.get("newer_than"),
            now=NOW,
        )
        return [x.decision_id for x in chosen]

    assert pick() == ["old", "new", "other"]
    assert pick(reasons=("rejected",)) == ["old", "new"]
    assert pick(older_than=timedelta(hours=1)) == ["old", "other"]
    assert pick(newer_than=timedelta(hours=1), reasons=("rejected",)) == ["new"]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90), ("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1.5h", 5400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert _Duration().convert(text, None, None) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "h", "2 weeks", "-1s", "1y"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(click.BadParameter):
        _Duration().convert(text, None, None)


def test_dead_letter_record_cuts_the_body_and_keeps_the_decision() -> None:
    state = RetryState(
        attempts=3, last_status=503, last_body="é" * 3000, done=("request_feedback",)
    )
    record = dead_letter_record(
        decision_id="d",
        decision={"decision_id": "d"},
        reason="max_attempts",
        message="x" * 5000,
        state=state,
        now_ms=1_800_000_000_000,
    )
    assert len(record["last_body"].encode()) <= 2048
    assert record["last_body"] == "é" * 1024  # cut on a character boundary
    assert len(record["message"]) == 1000
    assert record["calls_done"] == ["request_feedback"] and record["attempts"] == 3
    assert record["dead_lettered_at"].startswith("2027-01-15T08:00:00")
    assert "value_b64" not in record

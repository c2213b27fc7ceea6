"""worker.validation: classification of bad records and the skew-corrected event time."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.envelopes import invalid_record
from worker.schemas import EXAMPLES
from worker.validation import (
    Accepted,
    Invalid,
    InvalidReason,
    RecentIds,
    ValidationLimits,
    inspect_record,
)

LIMITS = ValidationLimits(
    max_event_bytes=4096, tolerance_ms=2_000, max_future_ms=300_000, max_age_ms=86_400_000
)
RECORD_TS = int(datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp() * 1000)


def inspect(document: Any, *, record_ts_ms: int = RECORD_TS, now_ms: int | None = None) -> Any:
    raw = document if isinstance(document, bytes) else orjson.dumps(document)
    return inspect_record(
        raw, record_ts_ms=record_ts_ms, now_ms=now_ms or record_ts_ms, limits=LIMITS
    )


def at(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def event(**changes: Any) -> dict[str, Any]:
    document = dict(EXAMPLES["page_left"])
    document.pop("sent_at")
    document["occurred_at"] = at(RECORD_TS - 1_000)
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def test_reasons() -> None:
    assert inspect(b"").reason == "not_json"
    assert inspect(b"{").reason == "not_json"
    assert inspect(b"\xff\xfe{}").reason == "not_json"
    assert inspect(b"[" * 300 + b"]" * 300).reason == "not_json"
    assert inspect(b"x" * 5000).reason == "too_large"
    assert inspect([1]).reason == "schema_violation"
    assert inspect(event(request_id="018f6f5e-4e8c-7b8a-9a51-8a5d8c1f2e3a")).reason == (
        "invalid_request_id"
    )
    missing = event()
    del missing["request_id"]
    assert inspect(missing).reason == "schema_violation", "missing is a schema problem"


@pytest.mark.parametrize("session_id", ["a\nb", "\x00", "tab\there", "del\x7f", "\x1b[31m"])
def test_a_session_id_no_helicone_session_can_hold_is_its_own_reason(session_id: str) -> None:
    """Helicone learns session ids from a header, which cannot carry control characters."""
    result = inspect(event(session_id=session_id))
    assert isinstance(result, Invalid) and result.reason == "invalid_session_id"
    assert [e.path for e in result.errors] == ["session_id"]
    rating = {**EXAMPLES["session_feedback_given"], "session_id": session_id}
    assert inspect(rating).reason == "invalid_session_id"


@pytest.mark.parametrize("session_id", ["s-1", "Sitzung ü 日本 🙂", " spaced ", "x" * 128])
def test_other_session_ids_within_the_length_are_accepted(session_id: str) -> None:
    assert not isinstance(inspect(event(session_id=session_id)), Invalid)
    assert inspect(event(session_id="x" * 129)).reason == "schema_violation"


def test_schema_violation_names_fields_without_union_tags() -> None:
    result = inspect(
        {**EXAMPLES["feedback_given"], "properties": {"rating": "yes"}, "user_id": 3}
    )
    assert isinstance(result, Invalid)
    assert {e.path for e in result.errors} == {"properties.rating", "user_id"}
    unknown = inspect(event(type="nope"))
    assert [e.path for e in unknown.errors] == ["type"]


def test_event_time_without_sent_at_is_clamped_to_the_record_time() -> None:
    assert inspect(event(occurred_at=at(RECORD_TS - 5_000))).event_time_ms == RECORD_TS - 5_000
    ahead = inspect(event(occurred_at=at(RECORD_TS + 60_000)))
    assert ahead.event_time_ms == RECORD_TS + LIMITS.tolerance_ms
    assert inspect(event(occurred_at=at(RECORD_TS + 400_000))).reason == (
        "timestamp_out_of_range"
    )
    assert inspect(event(occurred_at=at(RECORD_TS - 90_000_000))).reason == (
        "timestamp_out_of_range"
    )


def test_event_time_with_sent_at_corrects_a_skewed_device_clock() -> None:
    # The device clock is 3 hours slow; it sent 4 s after the event.
    skew = -3 * 3_600_000
    result = inspect(
        event(occurred_at=at(RECORD_TS + skew - 4_000), sent_at=at(RECORD_TS + skew))
    )
    assert result.event_time_ms == RECORD_TS - 4_000


def test_record_timestamps_from_the_future_are_refused() -> None:
    result = inspect(event(), record_ts_ms=RECORD_TS + 3_600_000, now_ms=RECORD_TS)
    assert result.reason == "timestamp_out_of_range"


@given(
    skew_ms=st.integers(-10**10, 10**10),
    delay_ms=st.integers(-LIMITS.max_future_ms, LIMITS.max_age_ms),
)
def test_event_time_never_passes_the_record_time(skew_ms: int, delay_ms: int) -> None:
    occurred = RECORD_TS + skew_ms
    result = inspect(event(occurred_at=at(occurred), sent_at=at(occurred + delay_ms)))
    assert isinstance(result, Accepted)
    assert result.event_time_ms <= RECORD_TS
    assert result.event_time_ms == RECORD_TS - max(delay_ms, 0)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_invalid_and_kept_for_evidence(raw: bytes) -> None:
    """Random bytes are never an event (one needs a type, ids and times), so each is refused
    with a reason and a message, and its invalid-topic document keeps the bytes as sent."""
    result = inspect(raw)
    assert isinstance(result, Invalid), result
    assert result.reason in get_args(InvalidReason) and result.message
    payload = orjson.loads(
        invalid_record(result, value=raw, key=None, topic="ui-events", partition=0, offset=0,
                       record_ts_ms=RECORD_TS, max_value_bytes=4096)
    )
    assert base64.b64decode(payload["value_b64"]) == raw
    assert payload["reason"] == result.reason


def test_invalid_record_keeps_the_original_bytes_and_source() -> None:
    value = b"\x00not json\xff"
    payload = orjson.loads(
        invalid_record(
            Invalid("not_json", "bad"), value=value, key=b"k", topic="ui-events",
            partition=3, offset=42, record_ts_ms=RECORD_TS, max_value_bytes=4096,
        )
    )
    assert base64.b64decode(payload["value_b64"]) == value
    assert payload["source"] == {
        "topic": "ui-events", "partition": 3, "offset": 42, "timestamp_ms": RECORD_TS
    }
    assert payload["reason"] == "not_json" and not payload["value_truncated"]


def test_recent_ids_is_bounded() -> None:
    recent = RecentIds(3)
    assert [recent.seen(x) for x in "abca"] == [False, False, False, True]
    for x in "defg":
        recent.seen(x)
    assert len(recent) == 3
    assert not recent.seen("a"), "evicted ids are forgotten"

"""The collector's pure core (worker/collector/batch.py): a body in, records or a refusal out."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.collector.batch import STATUS, Batch, BatchLimits, Refusal, parse_batch
from worker.events import UI_EVENT_ADAPTER
from worker.validation import Accepted, ValidationLimits, inspect_record

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
LIMITS = BatchLimits(max_events=5, validation=ValidationLimits(max_event_bytes=2_048))


def event(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "type": "response_copied",
        "request_id": str(uuid.uuid4()),
        "occurred_at": (NOW - timedelta(seconds=3)).isoformat(),
    }
    document.update(changes)
    return {k: v for k, v in document.items() if v is not None}


def parse(document: Any) -> Batch | Refusal:
    # The stdlib encoder: it writes integers of any size, as a hostile client may.
    body = json.dumps(document).encode()
    return parse_batch(body, received_at_ms=NOW_MS, limits=LIMITS)


def accepted(document: Any) -> Batch:
    result = parse(document)
    assert isinstance(result, Batch), result
    return result


# --------------------------------------------------------------------------- valid and invalid


def test_valid_events_are_keyed_by_request_id_and_session_id_for_session_feedback() -> None:
    copied = event()
    session = event(
        type="session_feedback_given",
        request_id=None,
        session_id="sess-42",
        properties={"rating": True},
    )
    batch = accepted({"events": [copied, session]})
    assert (batch.accepted, batch.invalid) == (2, 0)
    assert [r.valid for r in batch.records] == [True, True]
    assert [r.key for r in batch.records] == [copied["request_id"].encode(), b"sess-42"]
    assert orjson.loads(batch.records[0].value) == copied


def test_batch_sent_at_is_applied_to_events_without_one_and_only_to_them() -> None:
    sent_at = (NOW - timedelta(seconds=1)).isoformat()
    own = (NOW - timedelta(seconds=2)).isoformat()
    bare, stamped = event(), event(sent_at=own)
    batch = accepted({"sent_at": sent_at, "events": [bare, stamped]})
    values = [orjson.loads(r.value) for r in batch.records]
    assert values[0]["sent_at"] == sent_at
    assert values[1]["sent_at"] == own
    # The bytes written are the ones validated: validation reads the same event back.
    for record in batch.records:
        assert UI_EVENT_ADAPTER.validate_json(record.value, strict=True).sent_at is not None


def test_sent_at_changes_the_event_time_ingest_will_compute() -> None:
    """Why sent_at matters: a device clock an hour behind still lands at receive time."""
    skewed = NOW - timedelta(hours=1)
    document = event(occurred_at=(skewed - timedelta(seconds=5)).isoformat())
    batch = accepted({"sent_at": skewed.isoformat(), "events": [document]})
    result = inspect_record(
        batch.records[0].value, record_ts_ms=NOW_MS, now_ms=NOW_MS, limits=LIMITS.validation
    )
    assert isinstance(result, Accepted)
    assert result.event_time_ms == NOW_MS - 5_000


@pytest.mark.parametrize(
    ("name", "bad", "reason"),
    [
        ("not an object", 42, "schema_violation"),
        ("unknown type", event(type="response_liked"), "schema_violation"),
        ("missing event_id", event(event_id=None), "schema_violation"),
        ("uuid v7 request id", event(request_id="018f6f5e-4e8c-7b8a-9a51-8a5d8c1f2e3a"),
         "invalid_request_id"),
        ("too large", event(type="message_sent", properties={"text": "x" * 4_000}), "too_large"),
        ("far future", event(occurred_at=(NOW + timedelta(days=2)).isoformat()),
         "timestamp_out_of_range"),
    ],
)
def test_invalid_events_get_ingests_reason_and_the_collector_as_source(
    name: str, bad: Any, reason: str
) -> None:
    good = event()
    batch = accepted({"events": [good, bad]})
    assert (batch.accepted, batch.invalid) == (1, 1), name
    assert batch.invalid_reasons == (reason,)
    record = batch.records[1]
    assert not record.valid and record.key is None
    document = orjson.loads(record.value)
    assert document["reason"] == reason
    assert document["source"] == {"collector": True, "timestamp_ms": NOW_MS}
    assert "address" not in record.value.decode() and "remote" not in record.value.decode()
    kept = base64.b64decode(document["value_b64"])
    assert kept == orjson.dumps(bad)[: LIMITS.validation.max_event_bytes]
    # The reason is the one validation itself gives those bytes.
    verdict = inspect_record(
        orjson.dumps(bad), record_ts_ms=NOW_MS, now_ms=NOW_MS, limits=LIMITS.validation
    )
    assert not isinstance(verdict, Accepted) and verdict.reason == reason


def test_integers_beyond_64_bits_are_invalid_events_not_crashes() -> None:
    scores = event(type="score_reported", properties={"scores": {"quality": 2**70}})
    batch = accepted({"events": [scores, -(2**63) - 1]})
    assert batch.invalid_reasons == ("schema_violation", "schema_violation")


def test_an_empty_batch_is_accepted_with_nothing_to_write() -> None:
    batch = accepted({"events": []})
    assert batch.records == () and (batch.accepted, batch.invalid) == (0, 0)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"", "not_json"),
        (b"hello", "not_json"),
        (b"\xff\xfe{}", "not_json"),
        (b"[" * 2_000 + b"]" * 2_000, "not_json"),
        (b"[]", "not_a_batch"),
        (b'"events"', "not_a_batch"),
        (b"{}", "not_a_batch"),
        (b'{"events": {}}', "not_a_batch"),
        (b'{"events": null}', "not_a_batch"),
        (b'{"events": [], "sent_at": "yesterday"}', "not_a_batch"),
        (b'{"events": [], "sent_at": "2026-12-02T12:00:00"}', "not_a_batch"),  # no offset
        (b'{"events": [], "sent_at": 1796000000}', "not_a_batch"),
        (orjson.dumps({"events": [{}] * 6}), "too_many_events"),
    ],
)
def test_bodies_that_are_not_batches_are_refused_whole(body: bytes, error: str) -> None:
    result = parse_batch(body, received_at_ms=NOW_MS, limits=LIMITS)
    assert isinstance(result, Refusal)
    assert result.error == error
    assert result.status == {"not_json": 400, "not_a_batch": 400, "too_many_events": 413}[error]


def _nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _nested_objects(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("nest", [_nested_arrays, _nested_objects])
@pytest.mark.parametrize("depth", [100, 255, 256, 1024, 100_000])
def test_deep_nesting_in_an_event_is_not_json_or_an_invalid_event_never_a_crash(
    nest: Any, depth: int
) -> None:
    """orjson reads 1,024 levels but writes back only 254, and every event is written back:
    an event nested 255 levels or more refuses the whole body as ``not_json`` (it used to
    raise out of parse_batch, a 500); at 100 levels the event is one invalid event."""
    body = b'{"events": [' + orjson.dumps(event()) + b", " + nest(depth) + b"]}"
    result = parse_batch(body, received_at_ms=NOW_MS, limits=LIMITS)
    if depth == 100:
        assert isinstance(result, Batch)
        assert (result.accepted, result.invalid_reasons) == (1, ("schema_violation",))
    else:
        assert isinstance(result, Refusal)
        assert (result.error, result.status) == ("not_json", 400)


@pytest.mark.parametrize("depth", [100, 255, 256, 1024, 100_000])
def test_deep_nesting_outside_the_events_gets_a_typed_refusal(depth: int) -> None:
    """Nested past the parser's 1,024 levels is ``not_json``; a shallower document that is
    not a batch (an array at the top, a nested ``sent_at``) is ``not_a_batch``."""
    top = _nested_arrays(depth)  # the body nests `depth` levels
    sent_at = b'{"events": [], "sent_at": ' + _nested_arrays(depth) + b"}"  # depth + 1
    for body, levels in ((top, depth), (sent_at, depth + 1)):
        result = parse_batch(body, received_at_ms=NOW_MS, limits=LIMITS)
        assert isinstance(result, Refusal)
        assert result.error == ("not_json" if levels > 1_024 else "not_a_batch"), levels


def test_every_error_code_has_a_status() -> None:
    assert set(STATUS.values()) == {400, 401, 403, 408, 413, 429, 503}


# --------------------------------------------------------------------------- hostile bodies

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_event_like = st.fixed_dictionaries(
    {},
    optional={
        "event_id": st.sampled_from([str(uuid.uuid4()), "nope", 7]),
        "type": st.sampled_from(["response_copied", "feedback_given", "bogus", None]),
        "request_id": st.sampled_from([str(uuid.uuid4()), "", None, 1.5]),
        "occurred_at": st.sampled_from([NOW.isoformat(), "2026-13-40T99:00:00Z", 0]),
        "sent_at": _json_values,
        "properties": _json_values,
    },
)


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=300))
def test_any_bytes_get_a_typed_answer(body: bytes) -> None:
    result = parse_batch(body, received_at_ms=NOW_MS, limits=LIMITS)
    assert isinstance(result, Batch | Refusal)
    if isinstance(result, Refusal):
        assert result.error in STATUS


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(_event_like | _json_values, max_size=7),
    sent_at=st.none() | st.sampled_from([NOW.isoformat(), "bad"]),
)
def test_batches_of_hostile_events_never_crash_and_account_for_every_event(
    events: list[Any], sent_at: str | None
) -> None:
    document: dict[str, Any] = {"events": events}
    if sent_at is not None:
        document["sent_at"] = sent_at
    result = parse(document)
    if isinstance(result, Refusal):
        assert result.error in {"too_many_events", "not_a_batch"}
        return
    assert len(result.records) == len(events) == result.accepted + result.invalid
    for record in result.records:
        if record.valid:
            UI_EVENT_ADAPTER.validate_json(record.value, strict=True)  # ingest accepts it
        else:
            assert orjson.loads(record.value)["reason"] in {
                "not_json", "schema_violation", "too_large", "invalid_request_id",
                "invalid_session_id", "timestamp_out_of_range",
            }

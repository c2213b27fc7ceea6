"""worker.validation under generated input: every record is an accepted event or a typed
rejection, never an exception, and the generated "valid" events are accepted.

Builds on tests/unit/test_validation.py (which fuzzes arbitrary short bytes): here the input is
shaped like real traffic, from the JSON Schemas in ``schemas/`` (tests/fuzz/strategies.py),
then damaged.
"""

from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from typing import Any, get_args

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz import strategies as fz
from worker.envelopes import invalid_record
from worker.events import UI_EVENT_ADAPTER, is_helicone_request_id
from worker.validation import Accepted, Invalid, InvalidReason, ValidationLimits, inspect_record

LIMITS = ValidationLimits()  # the worker's defaults, which the generators are built around
BASE_MS = int(datetime(2026, 11, 22, 12, 0, tzinfo=UTC).timestamp() * 1000)
CLOCKS = fz.Clocks(base_ms=BASE_MS)
POOL = ["8f0a6a4e-2b5c-4d1e-9f3a-1c2b3d4e5f60", "0b1e6a4e-2b5c-1d1e-8f3a-1c2b3d4e5f61"]
SESSIONS = ["s-1", "séance ✓"]
REASONS = set(get_args(InvalidReason))

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=fz.DERANDOMIZE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def inspect(raw: bytes | None, record_ts_ms: int, now_ms: int | None = None) -> Any:
    return inspect_record(
        raw, record_ts_ms=record_ts_ms, now_ms=now_ms or BASE_MS + 30_000, limits=LIMITS
    )


def check_outcome(raw: bytes | None, record_ts_ms: int, result: Any) -> None:
    """What holds for any record: a typed outcome, consistent with the bytes."""
    assert isinstance(result, Accepted | Invalid), result
    if isinstance(result, Invalid):
        assert result.reason in REASONS
        assert result.message
        if result.reason == "schema_violation":
            assert result.errors, "a schema violation names its fields"
        # the invalid-topic document can always be written, and keeps the bytes
        doc = orjson.loads(
            invalid_record(
                result, value=raw, key=b"k", topic="t", partition=0, offset=0,
                record_ts_ms=record_ts_ms, max_value_bytes=LIMITS.max_event_bytes,
            )
        )
        assert doc["reason"] == result.reason
        assert (raw or b"").startswith(base64.b64decode(doc["value_b64"]))
        return
    assert raw is not None and len(raw) <= LIMITS.max_event_bytes
    raw.decode("utf-8")  # accepted bytes are UTF-8 (else: not_json)
    event = result.event
    assert event.event_id == event.event_id.lower()
    if event.type != "session_feedback_given":
        assert event.request_id is not None and is_helicone_request_id(event.request_id)
        assert result.key == event.request_id
    else:
        assert result.key == event.session_id
    # DESIGN 3: an event never moves time into the future
    assert result.event_time_ms <= record_ts_ms + LIMITS.tolerance_ms
    assert result.event_time_ms >= record_ts_ms - LIMITS.max_age_ms


@FUZZ
@given(fz.valid_events(clocks=CLOCKS, pool=POOL, sessions=SESSIONS))
def test_generated_valid_events_are_accepted(drawn: tuple[dict[str, Any], int]) -> None:
    doc, record_ts = drawn
    raw = fz.dumps(doc)
    result = inspect(raw, record_ts)
    assert isinstance(result, Accepted), (result, doc)
    check_outcome(raw, record_ts, result)
    assert result.event.type == doc["type"]
    assert result.event.event_id == doc["event_id"].lower()


@FUZZ
@given(st.sampled_from(fz.EVENT_TYPES).flatmap(fz.schema_documents), st.integers(0, 10**13))
def test_raw_schema_documents_are_typed_either_way(doc: dict[str, Any], record_ts: int) -> None:
    """Straight from the schema (any clock, any ids the patterns allow): accepted, or a
    typed reason; when rejected while the JSON is schema-valid, it is for its clock."""
    raw = fz.dumps(doc)
    result = inspect(raw, record_ts, now_ms=record_ts)
    check_outcome(raw, record_ts, result)
    if isinstance(result, Invalid) and len(raw) <= LIMITS.max_event_bytes:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError:
            assert result.reason == "not_json"
            return
        assert result.reason == "timestamp_out_of_range", (result, doc)


@FUZZ
@given(fz.clock_hostile_events(clocks=CLOCKS, pool=POOL, sessions=SESSIONS))
def test_hostile_clocks_are_refused_with_their_reason(
    drawn: tuple[dict[str, Any], int, str | None],
) -> None:
    doc, record_ts, expected = drawn
    raw = fz.dumps(doc)
    result = inspect(raw, record_ts)
    check_outcome(raw, record_ts, result)
    if expected is None:
        assert isinstance(result, Accepted), (result, doc)
    else:
        assert isinstance(result, Invalid) and result.reason == expected, (result, doc)


@FUZZ
@given(
    fz.valid_events(clocks=CLOCKS, pool=POOL, sessions=SESSIONS),
    st.sampled_from(sorted(fz.MUTATIONS)),
    st.randoms(use_true_random=False),
)
def test_byte_mutations_never_raise(
    drawn: tuple[dict[str, Any], int], mutation: str, rnd: random.Random
) -> None:
    doc, record_ts = drawn
    raw = fz.MUTATIONS[mutation](fz.dumps(doc), rnd)
    result = inspect(raw, record_ts)
    check_outcome(raw, record_ts, result)
    if mutation == "non_utf8":
        assert isinstance(result, Invalid) and result.reason == "not_json"


@FUZZ
@given(fz.valid_events(clocks=CLOCKS, pool=POOL, sessions=SESSIONS).flatmap(
    lambda drawn: st.tuples(fz.structural_hostile(drawn[0]), st.just(drawn[1]))
))
def test_structural_damage_never_raises(drawn: tuple[bytes, int]) -> None:
    raw, record_ts = drawn
    result = inspect(raw, record_ts)
    check_outcome(raw, record_ts, result)
    if len(raw) > LIMITS.max_event_bytes:
        assert isinstance(result, Invalid) and result.reason == "too_large"


@settings(FUZZ, max_examples=25, suppress_health_check=[*FUZZ.suppress_health_check,
                                                        HealthCheck.large_base_example])
@given(fz.streams(clocks=CLOCKS, min_records=60, max_records=120))
def test_every_record_of_a_stream_gets_a_typed_outcome(stream: fz.Stream) -> None:
    accepted = 0
    for record in stream.records:
        result = inspect(record.value, record.timestamp_ms)
        check_outcome(record.value, record.timestamp_ms, result)
        if record.kind == "valid":
            assert isinstance(result, Accepted), (result, record)
        accepted += isinstance(result, Accepted)
        if isinstance(result, Accepted):  # and it survives the rekey hop unchanged
            assert record.value is not None
            again = UI_EVENT_ADAPTER.validate_json(record.value, strict=True)
            assert again == result.event
    assert accepted >= stream.count("valid")


def test_scores_beyond_64_bits_are_schema_violations() -> None:
    """Regression (found by test_pipeline_fuzz): a score of 2**64 was accepted, and the
    window engine then crashed on every write of its request's state (orjson stops at 64
    bits), restarting the agent in a loop while /healthz said ok."""
    doc = {**fz.EXAMPLES["score_reported"], "occurred_at": fz.rfc3339(BASE_MS, 0,
                                                                      precision="seconds")}
    doc.pop("sent_at", None)
    for value, accepted in [(2**63 - 1, True), (-(2**63), True), (2**64, False),
                            (-(2**63) - 1, False)]:
        raw = orjson.dumps({**doc, "properties": {"scores": {"s": 0}}}).replace(
            b'"s":0', b'"s":' + str(value).encode()
        )
        result = inspect(raw, BASE_MS)
        if accepted:
            assert isinstance(result, Accepted), result
        else:
            assert isinstance(result, Invalid) and result.reason == "schema_violation", result
            assert all(e.path.startswith("properties.scores.s") for e in result.errors)

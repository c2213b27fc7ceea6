"""The collector's pure core: a request body in, the records to write (or a refusal) out.

No HTTP and no Kafka here: :func:`parse_batch` takes the body bytes, the time it was received
and the limits, and returns either

* a :class:`Batch`: every record to write, valid events for the input topic and invalid ones
  for the invalid topic, plus the counts the ``202`` answer reports; or
* a :class:`Refusal`: a typed error (:data:`ErrorCode`) with its HTTP status, meaning that
  **nothing** of the body may be written.

Each event is checked by :func:`worker.validation.inspect_record`, the very function the ingest
agent runs on every record, with the record timestamp the collector will give it, so an event
the collector accepts is one the worker accepts, and an event it refuses carries the reason
validation gives it in the worker (DESIGN 3, 11).  Invariants:

* the whole body is judged before anything is written, so a refusal never leaves half a
  batch on the broker;
* a batch-level ``sent_at`` is copied into each event that has none (the worker's clock-skew
  correction needs it), and the bytes written are those that were validated;
* whatever the body, the result is one of the two types: hostile input never raises
  (deep nesting included: an event nested deeper than the collector can write back makes
  the whole body ``not_json``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple

import orjson
from pydantic import AwareDatetime, TypeAdapter, ValidationError

from worker.envelopes import collector_invalid_record
from worker.validation import Accepted, InvalidReason, ValidationLimits, inspect_record

__all__ = [
    "STATUS",
    "Batch",
    "BatchLimits",
    "ErrorCode",
    "OutRecord",
    "Refusal",
    "parse_batch",
    "refusal",
]

ErrorCode = Literal[
    "not_json",  # not UTF-8 JSON, or nested deeper than the collector parses or writes back
    "not_a_batch",  # JSON, but not {"events": [...], "sent_at"?: RFC 3339}
    "missing_write_key",  # neither ?key= nor Authorization: Bearer
    "unknown_write_key",  # a key that is not one of COLLECTOR_WRITE_KEYS
    "origin_not_allowed",  # an Origin header outside COLLECTOR_ALLOWED_ORIGINS
    "body_timeout",  # the body did not arrive within COLLECTOR_BODY_TIMEOUT_S
    "body_too_large",  # more than COLLECTOR_MAX_BODY_BYTES
    "too_many_events",  # more than COLLECTOR_MAX_EVENTS events in one batch
    "rate_limited",  # this client address is over COLLECTOR_RATE_PER_S
    "broker_unavailable",  # not connected, or the broker did not acknowledge every record
    "missing_audience",  # GET /v1/prompts without a user_id or session_id (1-128 chars)
]

#: The HTTP status of each error (DESIGN 11); the one place the mapping lives.
STATUS: Final[dict[ErrorCode, int]] = {
    "not_json": 400,
    "not_a_batch": 400,
    "missing_write_key": 401,
    "unknown_write_key": 401,
    "origin_not_allowed": 403,
    "body_timeout": 408,
    "body_too_large": 413,
    "too_many_events": 413,
    "rate_limited": 429,
    "broker_unavailable": 503,
    "missing_audience": 400,
}


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is refused; nothing of its batch is written.

    ``message`` is for people and never contains a write key or a client address.
    ``retry_after_s`` is set for the statuses a client should retry later (429, 503); a 408
    may be retried at once, on a new connection.
    """

    error: ErrorCode
    message: str
    retry_after_s: int | None = None

    @property
    def status(self) -> int:
        return STATUS[self.error]


def refusal(error: ErrorCode, message: str, *, retry_after_s: int | None = None) -> Refusal:
    """A :class:`Refusal` (keyword form, for the adapters)."""
    return Refusal(error, message, retry_after_s)


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """What one batch may hold: ``COLLECTOR_MAX_EVENTS`` and validation's per-event limits."""

    max_events: int = 500
    validation: ValidationLimits = field(default_factory=ValidationLimits)


class OutRecord(NamedTuple):
    """One record to write.  ``valid`` records go to the input topic keyed by the event's
    routing key (request id, or session id for session feedback); the others go to the
    invalid topic, unkeyed, as the document :func:`collector_invalid_record` builds.

    A named tuple, not a frozen dataclass: one is built per event on the hot path, and a
    frozen dataclass's ``__init__`` costs several times a tuple's construction."""

    valid: bool
    key: bytes | None
    value: bytes


@dataclass(frozen=True, slots=True)
class Batch:
    """An accepted body: the records in the order of the events, and what they were."""

    records: tuple[OutRecord, ...]
    #: The reason of every invalid event, in order (for the metrics).
    invalid_reasons: tuple[InvalidReason, ...]

    @property
    def accepted(self) -> int:
        return len(self.records) - len(self.invalid_reasons)

    @property
    def invalid(self) -> int:
        return len(self.invalid_reasons)


_TIMESTAMP: TypeAdapter[Any] = TypeAdapter(AwareDatetime)

#: The message of a body refused for its nesting.  The limit is orjson's: it reads 1,024
#: levels and writes 254, and each event is written back, so an event may nest 254 levels
#: (validation's own parser refuses events past about 200 as ``not_json`` per event; below that
#: limit they are invalid events in an accepted batch, past it the whole body is refused).
_TOO_DEEP = "the body nests too deeply (an event may nest at most 254 levels)"


def parse_batch(body: bytes, *, received_at_ms: int, limits: BatchLimits) -> Batch | Refusal:
    """Judge a whole request body (module docstring).

    ``received_at_ms`` is the collector's wall clock; it becomes each record's Kafka
    timestamp, so it is also the record time validation's checks are run with here.
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Refusal("not_json", f"the body is not JSON: {exc}")
    if not isinstance(document, dict):
        return Refusal("not_a_batch", 'expected an object {"events": [...]}')
    events = document.get("events")
    if not isinstance(events, list):
        return Refusal("not_a_batch", '"events" must be a list of events')
    if len(events) > limits.max_events:
        return Refusal(
            "too_many_events",
            f"{len(events)} events in one batch; at most {limits.max_events} (split it)",
        )
    sent_at = document.get("sent_at")
    if sent_at is not None and not _is_timestamp(sent_at):
        return Refusal("not_a_batch", '"sent_at" must be an RFC 3339 timestamp with an offset')

    records: list[OutRecord] = []
    reasons: list[InvalidReason] = []
    for event in events:
        if sent_at is not None and isinstance(event, dict) and event.get("sent_at") is None:
            event["sent_at"] = sent_at  # the document is this call's own: no copy needed
        try:
            value = orjson.dumps(event)
        except orjson.JSONEncodeError:
            # orjson reads 1,024 levels but writes only 254: an event nested deeper than that
            # parsed above yet cannot be written back.  Refused whole, like a body nested
            # past the parser, because there are no bytes of it to validate or to keep.
            return Refusal("not_json", _TOO_DEEP)
        result = inspect_record(
            value, record_ts_ms=received_at_ms, now_ms=received_at_ms, limits=limits.validation
        )
        if isinstance(result, Accepted):
            records.append(OutRecord(True, result.key.encode(), value))
            continue
        reasons.append(result.reason)
        payload = collector_invalid_record(
            result,
            value=value,
            received_at_ms=received_at_ms,
            max_value_bytes=limits.validation.max_event_bytes,
        )
        records.append(OutRecord(False, None, payload))
    return Batch(tuple(records), tuple(reasons))


def _is_timestamp(value: Any) -> bool:
    """True for an RFC 3339 string with an offset, judged as the event models judge it."""
    if not isinstance(value, str):
        return False
    try:
        _TIMESTAMP.validate_json(orjson.dumps(value), strict=True)
    except ValidationError:
        return False
    return True

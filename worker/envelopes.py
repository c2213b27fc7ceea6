"""Every envelope and header the worker writes, in one place.

What holds: each record the worker writes besides a decision has its shape defined here and
nowhere else, and every header name it sets or reads is one of the constants below (all start
with ``fw-``, so they never clash with a producer's own headers).  Tools that read these
topics (``feedback-worker dlq``, dashboards, people debugging producers) and the worker's own
readers therefore agree by construction, and a change of shape shows in one diff.

=========================  ==========================================================
topic                      envelope
=========================  ==========================================================
``ui-events-invalid``      :func:`invalid_record`, :func:`collector_invalid_record`
``ui-events-late``         :func:`late_record`
``feedback-dlq``           :func:`dead_letter_record` (header :data:`DLQ_REASON_HEADER`)
rekeyed topic              forwarded events (:data:`EVENT_TIME_HEADER`,
                           :data:`READ_TIME_HEADER`), ticks (:data:`TICK_HEADER`,
                           :data:`CAUGHT_UP_HEADER`), watermarks (:data:`WATERMARK_HEADER`)
delivery retry topic       forward, result and sweep records (:data:`KIND_HEADER`)
``feedback-outbox``        redriven decisions (:data:`REDRIVE_HEADER`) and the marker
                           after them (:data:`REDRIVEN_HEADER`)
=========================  ==========================================================

The values of the invalid and dead-letter envelopes carry the original bytes base64-encoded
and cut to a bound, so a hostile 10 MiB record never becomes a record over the broker's
limit, and nothing is lost silently: the size and a hash say what was cut.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from worker.delivery import DeadLetterReason, RetryState
    from worker.validation import Invalid
    from worker.windows import LateEvent

__all__ = [
    "CAUGHT_UP_HEADER",
    "DLQ_REASON_HEADER",
    "EVENT_TIME_HEADER",
    "KIND_HEADER",
    "READ_TIME_HEADER",
    "REDRIVEN_HEADER",
    "REDRIVE_HEADER",
    "TICK_HEADER",
    "WATERMARK_HEADER",
    "collector_invalid_record",
    "dead_letter_record",
    "has_header",
    "header",
    "invalid_record",
    "late_record",
]

# --------------------------------------------------------------------------- headers

#: Header carrying the skew-corrected event time across the rekey hop, so the second hop
#: does not recompute it from a record timestamp that is now the forwarder's.
EVENT_TIME_HEADER = "fw-event-time-ms"
#: Header carrying the wall clock (ms) when the source read a forwarded event, so the owner
#: can check that its stream time did not pass the event on its way (worker.windows.watermarks).
READ_TIME_HEADER = "fw-read-ms"
#: Header marking a tick record on the rekeyed topic (value: the sender's wall clock, ms).
TICK_HEADER = "fw-tick"
#: Tick header: b"1" if the partition's input had no backlog when the tick was sent.
CAUGHT_UP_HEADER = "fw-caught-up"
#: Header marking a watermark record on the rekeyed topic; its value holds one
#: :class:`~worker.windows.watermarks.SourceMark` per input partition of the sending worker
#: (:func:`worker.windows.watermarks.encode_marks`).
WATERMARK_HEADER = "fw-watermark"
#: Header naming what a retry-topic record is: ``forward``, ``result`` or ``sweep``.
KIND_HEADER = "fw-delivery"
#: Header on outbox records written by ``feedback-worker dlq redrive``: the decision's state
#: is sent again even if merging it changes nothing.
REDRIVE_HEADER = "fw-redrive"
#: Header on dead-letter records: the reason, so tools can filter without parsing.
DLQ_REASON_HEADER = "fw-dlq-reason"
#: Header of the marker ``redrive`` appends after putting a decision back on the outbox.
REDRIVEN_HEADER = "fw-dlq-redriven"


def header(headers: list[tuple[str, bytes]] | None, name: str) -> bytes | None:
    """The value of the first header called ``name``, or None."""
    for key, value in headers or ():
        if key == name:
            return value
    return None


def has_header(headers: list[tuple[str, bytes]] | None, name: str) -> bool:
    return header(headers, name) is not None


# --------------------------------------------------------------------------- envelopes

#: Raw bytes of an undecodable outbox record kept in its dead-letter record.
_MAX_DLQ_VALUE_BYTES = 65_536
_MAX_MESSAGE_CHARS = 1_000


def invalid_record(
    invalid: Invalid,
    *,
    value: bytes | None,
    key: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    record_ts_ms: int,
    max_value_bytes: int,
) -> bytes:
    """The JSON written to the invalid topic for one rejected record.

    The original bytes travel base64-encoded.  For ``too_large`` only the first
    ``max_value_bytes`` are kept (with the full size and a SHA-256), since copying a 10 MiB
    value would exceed the broker's message limit; the source offset points at the rest.
    """
    source = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": record_ts_ms,
    }
    return _invalid_document(
        invalid, value=value, key=key, source=source, max_value_bytes=max_value_bytes
    )


def collector_invalid_record(
    invalid: Invalid, *, value: bytes, received_at_ms: int, max_value_bytes: int
) -> bytes:
    """The invalid-topic record for an event the HTTP collector refused (DESIGN 11).

    Same document as :func:`invalid_record`, with ``source`` naming the collector instead of
    a topic position.  The client address is withheld on purpose: the invalid topic is read
    by people debugging producers, and an address is personal data they do not need.
    """
    source = {"collector": True, "timestamp_ms": received_at_ms}
    return _invalid_document(
        invalid, value=value, key=None, source=source, max_value_bytes=max_value_bytes
    )


def _invalid_document(
    invalid: Invalid,
    *,
    value: bytes | None,
    key: bytes | None,
    source: dict[str, Any],
    max_value_bytes: int,
) -> bytes:
    raw = value or b""
    kept = raw[:max_value_bytes]
    return orjson.dumps(
        {
            "reason": invalid.reason,
            "message": invalid.message,
            "errors": [{"path": e.path, "message": e.message} for e in invalid.errors],
            "source": source,
            "key_b64": base64.b64encode(key).decode() if key is not None else None,
            "value_b64": base64.b64encode(kept).decode(),
            "value_size": len(raw),
            "value_truncated": len(kept) < len(raw),
            "value_sha256": hashlib.sha256(raw).hexdigest(),
        }
    )


def late_record(late: LateEvent) -> bytes:
    """The ``ui-events-late`` document: why it was late, and the event as it was accepted."""
    event = late.accepted.event.model_dump(mode="json") if late.accepted is not None else None
    return orjson.dumps(
        {
            "reason": late.reason,
            "key": late.key,
            "event_id": late.event_id,
            "type": late.type,
            "event_time_ms": late.event_time_ms,
            "event": event,
        }
    )


def dead_letter_record(
    *,
    decision_id: str | None,
    decision: Mapping[str, Any] | None,
    reason: DeadLetterReason,
    message: str,
    state: RetryState,
    now_ms: int,
    source: Mapping[str, Any] | None = None,
    value: bytes | None = None,
) -> dict[str, Any]:
    """The ``feedback-dlq`` document: what, why, how often it was tried, what Helicone said.

    ``last_body`` is the last error answer cut to 2 KiB (the client cuts it and removes any
    echo of the key).  ``decision`` is the decision as it was on the outbox, so ``dlq
    redrive`` can put it back; for a record that was not a decision at all, ``value_b64``
    keeps its bytes instead and ``source`` says where it was.
    """
    record: dict[str, Any] = {
        "decision_id": decision_id,
        "reason": reason,
        "message": message[:_MAX_MESSAGE_CHARS],
        "attempts": state.attempts,
        "last_status": state.last_status,
        "last_endpoint": state.last_endpoint,
        "last_body": state.last_body.encode("utf-8", "replace")[:2048].decode("utf-8", "ignore"),
        "calls_done": list(state.done),
        "first_attempt_at": _iso(state.first_attempt_ms),
        "dead_lettered_at": _iso(now_ms),
        "decision": dict(decision) if decision is not None else None,
    }
    if source is not None:
        record["source"] = dict(source)
    if value is not None or decision is None:
        raw = value or b""
        record["value_b64"] = base64.b64encode(raw[:_MAX_DLQ_VALUE_BYTES]).decode()
        record["value_size"] = len(raw)
    return record


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")

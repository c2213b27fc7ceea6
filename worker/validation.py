"""Validation of one raw input event: record bytes in, an accepted event or a typed rejection
out.  Pure: no Kafka here.

The ingest adapter (:mod:`worker.agents.ingest`) hands each record's value and
timestamp to :func:`inspect_record` and routes what comes back: an :class:`Accepted` event
flows on to the window engine, an :class:`Invalid` one is written to the invalid topic by
:func:`invalid_record`, with the original bytes and where they came from, so nothing is ever
dropped silently.

Event time (DESIGN 3, as Snowplow and Segment correct device clocks)::

    with sent_at:     event_time = record_ts - (sent_at - occurred_at)
    without sent_at:  event_time = min(occurred_at, record_ts + tolerance)

so a device whose clock is hours off still lands its events where they happened relative to
the broker, and no event can move stream time into the future.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import ValidationError

from worker.events import UI_EVENT_ADAPTER, UIEvent

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = [
    "Accepted",
    "FieldError",
    "Invalid",
    "InvalidReason",
    "RecentIds",
    "ValidationLimits",
    "compute_event_time_ms",
    "inspect_record",
]

InvalidReason = Literal[
    "not_json",  # not UTF-8 JSON at all (or nested deeper than the parser allows)
    "schema_violation",  # JSON, but not a valid event; ``errors`` names the fields
    "too_large",  # larger than MAX_EVENT_BYTES; not parsed
    "invalid_request_id",  # request_id is not a UUID v1-v5, which Helicone would refuse
    "invalid_session_id",  # session_id holds a control character: no Helicone session can
    "timestamp_out_of_range",  # occurred_at/sent_at/record time too far in the future or past
]


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """What validation tolerates; built from the settings (``MAX_EVENT_BYTES``, ...)."""

    max_event_bytes: int = 65_536
    tolerance_ms: int = 2_000
    max_future_ms: int = 300_000
    max_age_ms: int = 7 * 86_400_000

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationLimits:
        return cls(
            max_event_bytes=settings.max_event_bytes,
            tolerance_ms=int(settings.clock_skew_tolerance_s * 1000),
            max_future_ms=int(settings.event_max_future_s * 1000),
            max_age_ms=int(settings.event_max_age_s * 1000),
        )


@dataclass(frozen=True, slots=True)
class FieldError:
    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Accepted:
    event: UIEvent
    event_time_ms: int

    @property
    def key(self) -> str:
        """The routing key: the request id (the session id for session feedback)."""
        return self.event.routing_key


@dataclass(frozen=True, slots=True)
class Invalid:
    reason: InvalidReason
    message: str
    errors: tuple[FieldError, ...] = field(default=())


def inspect_record(
    value: bytes | None, *, record_ts_ms: int, now_ms: int, limits: ValidationLimits
) -> Accepted | Invalid:
    """Validate one record value and compute its event time.

    ``now_ms`` is the worker's wall clock, used only to refuse record timestamps from the
    future (a producer with a broken clock would otherwise push stream time ahead and close
    every open window early).
    """
    if not value:
        return Invalid("not_json", "empty record value")
    if len(value) > limits.max_event_bytes:
        return Invalid(
            "too_large", f"{len(value)} bytes exceeds the limit of {limits.max_event_bytes}"
        )
    try:
        event = UI_EVENT_ADAPTER.validate_json(value, strict=True)
    except ValidationError as exc:
        return _classify(exc)
    if record_ts_ms > now_ms + limits.max_future_ms:
        return Invalid(
            "timestamp_out_of_range",
            f"record timestamp is {(record_ts_ms - now_ms) // 1000} s ahead of the worker's clock",
        )
    return compute_event_time_ms(event, record_ts_ms=record_ts_ms, limits=limits)


def compute_event_time_ms(
    event: UIEvent, *, record_ts_ms: int, limits: ValidationLimits
) -> Accepted | Invalid:
    """The skew-corrected event time of ``event`` (module docstring), or why it is unusable."""
    occurred_ms = _epoch_ms(event.occurred_at)
    if event.sent_at is not None:
        delay_ms = _epoch_ms(event.sent_at) - occurred_ms
        if delay_ms < -limits.max_future_ms:
            return Invalid(
                "timestamp_out_of_range",
                f"occurred_at is {-delay_ms // 1000} s after sent_at",
                (FieldError("occurred_at", "after sent_at"),),
            )
        if delay_ms > limits.max_age_ms:
            return Invalid(
                "timestamp_out_of_range",
                f"occurred_at is {delay_ms // 1000} s before sent_at",
                (FieldError("occurred_at", "too long before sent_at"),),
            )
        return Accepted(event, record_ts_ms - max(delay_ms, 0))
    if occurred_ms > record_ts_ms + limits.max_future_ms:
        return Invalid(
            "timestamp_out_of_range",
            f"occurred_at is {(occurred_ms - record_ts_ms) // 1000} s in the future",
            (FieldError("occurred_at", "in the future"),),
        )
    if record_ts_ms - occurred_ms > limits.max_age_ms:
        return Invalid(
            "timestamp_out_of_range",
            f"occurred_at is {(record_ts_ms - occurred_ms) // 1000} s in the past",
            (FieldError("occurred_at", "too far in the past"),),
        )
    return Accepted(event, min(occurred_ms, record_ts_ms + limits.tolerance_ms))


def _epoch_ms(moment: Any) -> int:
    return int(moment.timestamp() * 1000)


def _classify(exc: ValidationError) -> Invalid:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    if len(errors) == 1 and errors[0]["type"] == "json_invalid":
        return Invalid("not_json", errors[0]["msg"])
    fields = tuple(FieldError(_path(e["loc"], e["type"]), e["msg"]) for e in errors[:20])
    if any(_path(e["loc"], e["type"]) == "request_id" and e["type"] != "missing" for e in errors):
        return Invalid("invalid_request_id", "request_id must be a UUID v1-v5", fields)
    if any(_path(e["loc"], e["type"]) == "session_id" and e["type"] == "string_pattern_mismatch"
           for e in errors):
        return Invalid("invalid_session_id", "session_id must not hold control characters",
                       fields)
    summary = "; ".join(f"{f.path or '(root)'}: {f.message}" for f in fields[:5])
    return Invalid("schema_violation", summary, fields)


def _path(loc: tuple[int | str, ...], error_type: str) -> str:
    """Dotted field path; the first element of a member's ``loc`` is its union tag
    (``feedback_given``), dropped so paths read as the event's own fields."""
    if error_type in {"union_tag_invalid", "union_tag_not_found"}:
        return "type"
    return ".".join(str(part) for part in loc[1:])


class RecentIds:
    """A bounded set of recently seen event ids (LRU): the first line of duplicate defence.

    Memory stays at ``capacity`` ids whatever the input.  The window engine keeps the exact,
    durable per-key dedupe; this only saves work on bursts of retried sends.  It must be
    cleared when partitions are revoked (see :meth:`clear`).
    """

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def seen(self, event_id: str) -> bool:
        """Record ``event_id``; True if it was already among the recent ones."""
        if self._capacity == 0:
            return False
        if event_id in self._ids:
            self._ids.move_to_end(event_id)
            return True
        self._ids[event_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return False

    def clear(self) -> None:
        """Forget everything: after a rebalance the records since the last commit are
        delivered again, and they are not duplicates (their effects were not kept)."""
        self._ids.clear()

    def __len__(self) -> int:
        return len(self._ids)

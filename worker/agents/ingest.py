"""The ingest adapter: one Kafka record in, one routing action out.

For each record of ``ui-events`` it asks the pure core (:func:`worker.validation.inspect_record`)
what the bytes are, then does exactly one of:

1. **invalid** -> the invalid topic, with the original bytes, source and typed reason;
2. **duplicate** ``event_id`` (recently seen here) -> counted and skipped;
3. **valid, on the partition that owns its request** -> handed to the next stage in place;
4. **valid, elsewhere** (the producer keyed or partitioned it differently) -> forwarded to the
   internal rekeyed topic on the owning partition, whose agent hands it on.

Step 3 is the fast path: producers that key by request id with Kafka's default partitioner
(aiokafka, the Java client, kafkajs) never pay for a second hop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import ValidationError

from worker.envelopes import EVENT_TIME_HEADER, READ_TIME_HEADER, invalid_record
from worker.events import UI_EVENT_ADAPTER
from worker.partitioner import partition_for
from worker.validation import Accepted, Invalid, RecentIds, ValidationLimits, inspect_record

if TYPE_CHECKING:
    from worker.clock import Clock
    from worker.metrics import Metrics
    from worker.producing import Producer

__all__ = ["Ack", "Ingest", "NextStage"]

log = logging.getLogger(__name__)

_MAX_KEY_BYTES = 1024

#: Acknowledges one input record, so its offset may be committed.
Ack = Callable[[], Awaitable[Any]]


class NextStage(Protocol):
    """The next stage (the window engine): called with the owning partition, the event and
    the record's ack, which the stage calls once the event's effects are durable; for a
    forwarded event, also when its source read it (``read_ms``)."""

    def __call__(
        self, partition: int, accepted: Accepted, ack: Ack, read_ms: int | None = None
    ) -> Awaitable[None]: ...



@dataclass
class Ingest:
    """Routes records of the input topic and of the rekeyed topic; see the module docstring."""

    limits: ValidationLimits
    partitions: int
    input_topic: str
    invalid_topic: str
    rekey_topic: str
    producer: Producer
    next_stage: NextStage
    #: Queues a record's ack behind the records of its partition that came before it: Faust
    #: may commit past an unacknowledged record when a later one is acknowledged first.
    defer_ack: Callable[[int, Ack], None]
    metrics: Metrics
    clock: Clock
    recent: RecentIds
    #: Input partition -> the largest event time of its valid records read since it was
    #: assigned: its bound on other partitions while it is behind (worker.windows.watermarks).
    source_time: dict[int, int] = field(default_factory=dict)
    #: Input partition -> when the record it is routing now was read: until that record is
    #: applied or queued, a watermark's cut must not be later (worker.windows.watermarks).
    routing: dict[int, int] = field(default_factory=dict)

    async def on_input(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
        timestamp_ms: int,
        ack: Ack,
    ) -> None:
        """Handle one record of the input topic; ``ack`` is called (here or by the next
        stage) once nothing about the record can be lost any more."""
        now_ms = self.clock.now_ms()
        self.routing[partition] = now_ms  # a watermark's cut waits for this record
        try:
            result = inspect_record(
                value, record_ts_ms=timestamp_ms, now_ms=now_ms, limits=self.limits
            )
            if isinstance(result, Invalid):
                await self._reject(
                    result, key=key, value=value, partition=partition, offset=offset,
                    timestamp_ms=timestamp_ms, topic=self.input_topic,
                )
                self.defer_ack(partition, ack)
                return
            if self.recent.seen(result.event.event_id):
                self.metrics.events_duplicate.inc()
                self.defer_ack(partition, ack)
                return
            self.metrics.events_by_type[result.event.type].inc()
            self.metrics.last_event_timestamp.set(result.event_time_ms / 1000)
            if result.event_time_ms > self.source_time.get(partition, 0):
                self.source_time[partition] = result.event_time_ms
            routing_key = result.key.encode()
            owner = partition_for(routing_key, self.partitions)
            if owner == partition:
                await self.next_stage(partition, result, ack)
                return
            self.metrics.events_rekeyed.inc()
            assert value is not None
            await self.producer.send(
                self.rekey_topic,
                routing_key,
                value,
                partition=owner,
                headers=[
                    (EVENT_TIME_HEADER, str(result.event_time_ms).encode()),
                    (READ_TIME_HEADER, str(now_ms).encode()),
                ],
            )
            self.defer_ack(partition, ack)
        finally:
            del self.routing[partition]

    async def on_rekeyed(
        self,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
        timestamp_ms: int,
        headers: list[tuple[str, bytes]] | None,
        ack: Ack,
    ) -> None:
        """Handle one forwarded event (already validated and counted on its first hop)."""
        event_time_ms = _header_int(headers, EVENT_TIME_HEADER)
        try:
            event = UI_EVENT_ADAPTER.validate_json(value or b"", strict=True)
        except ValidationError as exc:
            # Only possible if a newer worker version forwarded a shape this one rejects.
            invalid = Invalid("schema_violation", f"rekeyed record no longer valid: {exc}")
            await self._reject(
                invalid, key=key, value=value, partition=partition, offset=offset,
                timestamp_ms=timestamp_ms, topic=self.rekey_topic,
            )
            self.defer_ack(partition, ack)
            return
        accepted = Accepted(event, event_time_ms or timestamp_ms)
        await self.next_stage(partition, accepted, ack, _header_int(headers, READ_TIME_HEADER))

    async def _reject(
        self,
        invalid: Invalid,
        *,
        key: bytes | None,
        value: bytes | None,
        partition: int,
        offset: int,
        timestamp_ms: int,
        topic: str,
    ) -> None:
        self.metrics.events_invalid.labels(reason=invalid.reason).inc()
        key = key[:_MAX_KEY_BYTES] if key else key  # a hostile key must not bloat the record
        log.debug(
            "invalid record %s[%d]@%d: %s (%s)",
            topic, partition, offset, invalid.reason, invalid.message,
        )
        payload = invalid_record(
            invalid,
            value=value,
            key=key,
            topic=topic,
            partition=partition,
            offset=offset,
            record_ts_ms=timestamp_ms,
            max_value_bytes=self.limits.max_event_bytes,
        )
        await self.producer.send(self.invalid_topic, key, payload)


def _header_int(headers: list[tuple[str, bytes]] | None, name: str) -> int | None:
    for header, raw in headers or ():
        if header == name:
            try:
                return int(raw)
            except ValueError:
                return None
    return None

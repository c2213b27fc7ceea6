"""The collector's Kafka side: one producer, a batch written all-or-503.

:class:`KafkaBatchWriter` owns one :class:`~aiokafka.AIOKafkaProducer` (idempotent, acks
from all in-sync replicas).  It connects in the background, retrying with backoff, so the
HTTP side starts at once and answers ``503`` (and ``/readyz`` fails) until the broker is
there; a broker that is down at start is an outage, not a crash loop.

:meth:`KafkaBatchWriter.write` sends every record of a batch and returns only when the
broker acknowledged all of them; any failure or the send timeout raises
:class:`BrokerUnavailable`.  Some records of a failed batch may still have been written: the
client then retries the whole batch, and since every event keeps its ``event_id`` across
retries the worker's dedupe processes each once (DESIGN 3, 11).  Invalid records can repeat
on the invalid topic in that case; they are evidence, not input, so a repeat is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from aiokafka import AIOKafkaProducer

from worker.errors import TopicMismatchError
from worker.kafka import client_kwargs, ensure_topics
from worker.partitioner import partition_for

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["BatchWriter", "BrokerUnavailable", "KafkaBatchWriter", "TopicRecord"]

log = logging.getLogger(__name__)

#: (topic, key, value) of one record to write.
TopicRecord = tuple[str, bytes | None, bytes]


class BrokerUnavailable(Exception):
    """The batch was not acknowledged as a whole; the client should retry it later."""


class BatchWriter(Protocol):
    """What the HTTP handlers need from the broker side (tests pass a fake)."""

    @property
    def started(self) -> bool: ...

    async def write(self, records: Sequence[TopicRecord], *, timestamp_ms: int) -> None:
        """Write all ``records``; raise :class:`BrokerUnavailable` unless all were acked."""
        ...

    async def reachable(self) -> bool:
        """True when the broker answers a metadata request now."""
        ...


class KafkaBatchWriter:
    """:class:`BatchWriter` over one aiokafka producer; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        *,
        create_topics: bool = True,
        on_ready_change: Callable[[bool], None] | None = None,
        retry_cap_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._create_topics = create_topics
        self._on_ready_change = on_ready_change or (lambda ready: None)
        self._retry_cap_s = retry_cap_s
        self._send_timeout_s = settings.collector_send_timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._connecting: asyncio.Task[None] | None = None
        #: Set when topic set-up found a partition mismatch: retrying cannot fix it.
        self.fatal: str | None = None
        #: Set together with :attr:`fatal`, for whoever runs the collector to stop on.
        self.failed = asyncio.Event()
        self._reachable_at = 0.0

    @property
    def started(self) -> bool:
        return self._producer is not None

    def start(self) -> None:
        """Begin connecting in the background (see :meth:`_connect`)."""
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(
                self._connect(), name="collector-producer-connect"
            )

    async def wait_started(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the producer to start; True if it did."""
        deadline = time.monotonic() + timeout_s
        while not self.started and time.monotonic() < deadline:
            if self._connecting is not None and self._connecting.done():
                break
            await asyncio.sleep(0.05)
        return self.started

    async def stop(self) -> None:
        """Stop connecting, flush what is in flight and close the producer."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        producer, self._producer = self._producer, None
        if producer is not None:
            self._on_ready_change(False)
            await producer.stop()

    async def _connect(self) -> None:
        """Create the topics (if asked) and start the producer, retrying with backoff.

        A new producer object per attempt: one whose ``start`` failed is not reused.  A
        partition mismatch on the input topic (DESIGN 2) is not retried: it needs an
        operator, and ``/readyz`` says why.
        """
        settings = self._settings
        delay_s = 0.5
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                if self._create_topics:
                    await ensure_topics(
                        settings,
                        request_timeout_ms=int(self._send_timeout_s * 1000),
                        only={settings.topic_ui_events, settings.topic_invalid},
                    )
                producer = AIOKafkaProducer(
                    enable_idempotence=settings.collector_idempotent_producer,
                    acks="all",
                    linger_ms=settings.kafka_producer_linger_ms,
                    max_batch_size=settings.kafka_producer_batch_bytes,
                    request_timeout_ms=int(self._send_timeout_s * 1000),
                    **client_kwargs(settings),
                )
                await producer.start()
            except TopicMismatchError as exc:
                self.fatal = str(exc)
                self.failed.set()
                log.error("collector cannot write: %s", exc)
                return
            except asyncio.CancelledError:
                if producer is not None:
                    await producer.stop()
                raise
            except Exception as exc:
                if producer is not None:
                    await _stop_quietly(producer)
                log.warning(
                    "broker not reachable (%s); retrying in %.1f s", type(exc).__name__, delay_s
                )
                await asyncio.sleep(delay_s)
                delay_s = min(self._retry_cap_s, delay_s * 2)
                continue
            self._producer = producer
            self._on_ready_change(True)
            log.info("collector producer started (bootstrap %s)", settings.kafka_bootstrap_servers)
            return

    async def write(self, records: Sequence[TopicRecord], *, timestamp_ms: int) -> None:
        producer = self._producer
        if producer is None:
            raise BrokerUnavailable("not connected to the broker yet")
        try:
            # asyncio.timeout, not wait_for: no task per batch (3.11's wait_for makes one)
            async with asyncio.timeout(self._send_timeout_s):
                await self._send_all(producer, records, timestamp_ms)
        except TimeoutError as exc:
            log.warning(
                "a batch of %d records was not acknowledged within %g s",
                len(records), self._send_timeout_s,
            )
            raise BrokerUnavailable(
                f"the broker did not acknowledge the batch within {self._send_timeout_s:g} s"
            ) from exc
        except Exception as exc:  # KafkaError and its kin: the batch is not whole
            log.warning("a batch of %d records failed: %r", len(records), exc)
            raise BrokerUnavailable(f"the broker refused the batch ({type(exc).__name__})") from exc

    @staticmethod
    async def _send_all(
        producer: AIOKafkaProducer, records: Sequence[TopicRecord], timestamp_ms: int
    ) -> None:
        """Queue every record, then wait for every acknowledgement.

        ``send`` only queues (it may wait for metadata or buffer space); the futures it
        returns resolve when the broker acknowledged the record.  A keyed record's partition
        is computed here (:mod:`worker.partitioner`, the same placement as
        aiokafka's default partitioner, which ``partition=`` skips), from the partition
        count the producer's metadata holds at the start of the batch; a topic not in the
        metadata yet, and unkeyed records, are left to aiokafka; a key's partition is
        computed once per batch (a browser's batch holds several events of each request).
        The acknowledgements are
        awaited one after the other rather than gathered: most are done by the time the
        first is, and awaiting a done future costs nothing, where ``gather`` adds a callback
        to every one of them.  The first failure raises, like ``gather``.
        """
        cluster = producer.client.cluster
        partition_counts: dict[str, int] = {}
        placed: dict[tuple[str, bytes], int] = {}  # a batch repeats its request ids
        futures = []
        for topic, key, value in records:
            partition: int | None = None
            if key is not None:
                partition = placed.get((topic, key))
                if partition is None:
                    count = partition_counts.get(topic)
                    if count is None:
                        known = cluster.partitions_for_topic(topic)
                        count = partition_counts[topic] = len(known) if known else 0
                    if count:
                        partition = placed[topic, key] = partition_for(key, count)
            futures.append(
                await producer.send(
                    topic, value=value, key=key, partition=partition, timestamp_ms=timestamp_ms
                )
            )
        for future in futures:
            await future

    async def reachable(self) -> bool:
        """One metadata round trip, at most one a second (``/readyz`` may be polled hard)."""
        producer = self._producer
        if producer is None:
            return False
        now = time.monotonic()
        if now - self._reachable_at < 1.0:
            return True
        try:
            await asyncio.wait_for(producer.client.fetch_all_metadata(), 2.0)
        except Exception:
            return False
        self._reachable_at = now
        return True


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await producer.stop()
    except Exception:  # a producer that never connected may fail to stop; nothing to flush
        log.debug("stopping a producer that failed to start", exc_info=True)

"""A bypass: a worker topic's records taken around Faust's per-record path (the conductor) and
handed to the topic's handler task in batches.

Invariant: each handler sees exactly the records a Faust agent on its topic would see, in
the same order, and acknowledges them through Faust's own ``track_message``/``ack``, so
what is committed is decided as for any agent.  Only the path from the fetch to the handler
differs.

Why: Faust's fetch loop (``Consumer._drain_messages``) hands every record to its conductor
through ``wait_first(callback(record), suspend_flow.wait())``: four futures and an
``asyncio.wait`` per record, then a channel queue, an ``Event`` and a ``Stream`` step, which
cost more per record than the worker's own validation, windows and rules together
(``bench/pipeline.py`` measures it).

Performance only: where the copied fetch loop cannot install (:func:`install_bypass` returns
False and warns), the app consumes its topics (input, rekeyed, outbox, delivery retry) with
ordinary Faust agents, which is correct and slower.  So this patch, unlike those of
:mod:`worker.faust_compat.rebalance`, never stops the worker from starting.

What stays Faust's: the consumer, the group membership and assignment, the fetch (with
:func:`~worker.faust_compat.rebalance.keep_dropped_records`), the read offsets and gap
bookkeeping, the acknowledgements and commits (``Consumer.track_message`` and
``Consumer.ack``, which decide what is committed), the rebalance order
(:func:`~worker.faust_compat.rebalance.seek_before_fetch`), and every other topic's records,
which still go through the conductor to their agents.

Why the rekeyed topic too: Faust's conductor makes every record it dispatches wait while the
producer buffer holds over 100 messages.  A busy producer then starves the rekeyed topic,
whose watermarks and ticks are what let stream time move and windows close
(worker.windows.watermarks); off the conductor, only the producer's own backpressure applies,
to everything alike.  Each topic has its own bypass task, as each had its own agent: a flush
waiting for the producer on one does not stop the other.  The outbox and delivery's retry
topic are bypassed for the per-record cost alone: delivery reads back every decision the
windows write.

What changes: :func:`install_bypass` replaces the fetch loop with a copy that differs in one
step.  A record of a bypassed topic is appended to a batch instead of being passed to the
conductor; batches go through a bounded queue (backpressure on the fetch, as Faust's full
channel queue gives) to one task, :meth:`Bypass.run`, which calls the handler for each record
with an ack for it.  The task, not the fetch loop, runs the handler: Faust stops and restarts
the fetch loop during rebalances, and a cancelled handler would leave a record half done.

A record is handed to the handler only while the app's flow is active and the record was
fetched in the current consumer generation, the same test Faust's ``Stream`` applies: a
record fetched before a rebalance is dropped untracked, and the seek to the committed
offsets that ends the rebalance fetches it again for whoever owns it now.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

__all__ = ["Bypass", "install_bypass"]

log = logging.getLogger(__name__)

#: Records of a bypassed topic per batch handed from the fetch loop to the task.
BATCH_RECORDS = 256
#: Batches the queue holds before the fetch loop waits: with :data:`BATCH_RECORDS`, about
#: Faust's own stream buffer (``stream_buffer_maxsize``, 4096 records).
QUEUED_BATCHES = 16

#: The topics' queues of every consumer whose fetch loop is replaced (the loop reads the
#: same dict, so topics installed later join it).
_INSTALLED: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Queue[list[Any]]]] = (
    weakref.WeakKeyDictionary()
)

#: Called for each record: (Faust's consumer message, its ack).
Handler = Callable[[Any, Callable[[], Awaitable[None]]], Awaitable[None]]


@dataclass
class Bypass:
    """One topic's bypass, the task side: takes batches off the queue and calls the handler per
    record."""

    app: Any
    handler: Handler
    #: Called with the exception when the handler raised for a record (which stays
    #: unacknowledged, so its partition's commits stop there until the next rebalance or
    #: restart processes it again), the same as a crashed Faust agent.
    on_crash: Callable[[BaseException], object] = lambda exc: None
    queue: asyncio.Queue[list[Any]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=QUEUED_BATCHES)
    )

    async def run(self) -> None:
        """Process batches for as long as the app runs (started as an app task)."""
        app = self.app
        consumer = app.consumer
        flow_active = app.flow_control.is_active
        track = consumer.track_message
        handler = self.handler
        while True:
            # A queue with batches in it returns one without suspending, and a handler that
            # needs no I/O never suspends either: let the timers, the other agents and the
            # producer's sender run between batches.
            await asyncio.sleep(0)
            batch = await self.queue.get()
            for message in batch:
                if not flow_active() or message.generation_id != app.consumer_generation_id:
                    continue  # fetched before a rebalance: fetched again after its seek
                track(message)
                try:
                    await handler(message, _acker(consumer, app.sensors, message))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("input record %s[%d]@%d crashed the ingest handler",
                                  message.topic, message.partition, message.offset)
                    self.on_crash(exc)

    def clear(self) -> None:
        """Drop the queued batches (on revocation: they would be dropped one by one)."""
        while not self.queue.empty():
            self.queue.get_nowait()


def _acker(consumer: Any, sensors: Any, message: Any) -> Callable[[], Awaitable[None]]:
    async def ack() -> None:
        if consumer.ack(message):  # what a Stream's ack does once no other stream holds it
            sensors.on_message_out(message.tp, message.offset, message)

    return ack


def install_bypass(app: Any, routes: Sequence[tuple[Any, Bypass]]) -> bool:
    """Subscribe each topic of ``routes`` and send its records to its :class:`Bypass`
    (module docstring).  May be called more than once per app, each call adding its topics.

    Topics are Faust topics (with acks enabled, as topics have by default).  Each bypass
    runs as its own task (the caller starts every :meth:`Bypass.run` as an app task), so a
    handler that waits (a flush waiting for the producer) holds back only its own topics.
    Returns False, and changes nothing, where this Faust version's consumer lacks what the
    copied fetch loop uses; the caller then consumes the topics with ordinary agents
    (performance only: correct, slower; module docstring)."""
    consumer = app.consumer
    needed = ("_drain_messages", "getmany", "callback", "wait_first", "commit", "_add_gap",
              "track_message", "ack", "sleep")
    if not (
        all(hasattr(consumer, name) for name in needed)
        and hasattr(consumer, "_read_offset")
        and hasattr(consumer, "suspend_flow")
        and hasattr(app, "consumer_generation_id")
    ):
        log.warning("this faust version's fetch loop cannot be replaced; the worker's "
                    "topics go through ordinary agents")
        return False
    queues = _INSTALLED.get(consumer)
    if queues is None:  # the first call replaces the fetch loop; later calls add topics
        queues = _INSTALLED[consumer] = {}
        consumer._drain_messages = _drain_messages(consumer, queues)
    for topic, bypass in routes:
        app.topics.add(topic)  # what iterating it in an agent would do: the consumer subscribes
        queues[topic.get_topic_name()] = bypass.queue
    return True


def _drain_messages(
    consumer: Any, queues: Mapping[str, asyncio.Queue[list[Any]]]
) -> Callable[[Any], Awaitable[None]]:
    """Faust's ``Consumer._drain_messages`` (faust-streaming 0.11 to 0.15), with records of
    each topic of ``queues`` batched onto ``queue`` instead of passed to the conductor one by one.
    Everything else (the read offsets, gap detection, ``commit_every``, the yield every 100
    records, the errors it lets through) is Faust's, line for line, except its diagnostic
    "fetching" flag (``diag.set_flag``), which nothing in Faust or mode reads back."""

    async def drain_messages(fetcher: Any) -> None:
        callback = consumer.callback
        getmany = consumer.getmany
        consumer_should_stop = consumer._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = consumer._read_offset.__getitem__
        set_read_offset = consumer._read_offset.__setitem__
        commit_every = consumer._commit_every
        acks_enabled_for = consumer.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        sleep = asyncio.sleep
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                ait = getmany(timeout=1.0)
                await consumer.sleep(0)
                if consumer.should_stop:
                    continue
                batches: dict[str, list[Any]] = {}
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # Faust drops it too (already handed out)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await consumer._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    queue = queues.get(tp.topic)
                    if queue is not None:
                        batch = batches.setdefault(tp.topic, [])
                        batch.append(message)
                        if len(batch) >= BATCH_RECORDS:
                            await queue.put(batch)
                            del batches[tp.topic]
                    else:
                        await consumer.wait_first(callback(message), consumer.suspend_flow.wait())
                    set_read_offset(tp, offset)
                for topic, batch in batches.items():
                    await queues[topic].put(batch)
        except consumer.consumer_stopped_errors:
            if consumer.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if consumer.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            log.exception("Drain messages raised: %r", exc)
            raise

    return cast(Callable[[Any], Awaitable[None]], drain_messages)

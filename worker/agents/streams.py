"""The input and rekeyed streams: their handlers, where they stand, their timers and rebalances.

:func:`install_streams` connects the two topics every event passes through to the adapters
(:class:`~worker.agents.ingest.Ingest`, :class:`~worker.agents.windows.Windows`) and registers
everything that keeps them moving, so :func:`worker.app.build_app` only wires:

* the handlers (``on_input``, ``on_rekeyed``), fed in batches by
  :mod:`worker.faust_compat.bypass`, or by ordinary Faust agents when this Faust version
  cannot (then supervised, so a crash loop shows on ``/healthz``);
* :class:`InputProgress`, the one record of where each owned partition stands, from which
  the backlog, the consumer lag and the watermark marks are all read;
* the watermark timer (every partition gets this worker's input marks) and the tick timer
  (idle close needs the wall clock inside each partition's stream);
* the rebalance hooks: revoked partitions are forgotten everywhere at once, so a later owner's
  progress never mixes with ours.

Both handlers acknowledge by hand: an event's ack waits until its window state is written
(see :mod:`worker.agents.windows`), so a commit never covers state still in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import faust
from faust.types import TP

from worker.agents.ingest import Ack, Ingest
from worker.envelopes import CAUGHT_UP_HEADER, TICK_HEADER, WATERMARK_HEADER
from worker.faust_compat import (
    Bypass,
    consumer_lags,
    fetch_position,
    highwater,
    install_bypass,
    read_offset,
    rocksdb_memory,
    set_fetch_max_wait,
)
from worker.health import Liveness, supervised
from worker.kafka import input_backlog
from worker.windows.watermarks import SourceMark, decode_marks, encode_marks, source_mark

if TYPE_CHECKING:
    from worker.agents.windows import Windows
    from worker.clock import Clock
    from worker.metrics import Metrics

__all__ = ["TICK_INTERVAL_S", "WATERMARK_INTERVAL_S", "InputProgress", "install_streams"]

#: How often each owned partition gets a tick (the resolution of idle close).
TICK_INTERVAL_S = 1.0
#: How often each worker sends its input partitions' marks to every partition: stream time
#: trails the direct events by about this much more than the rekeyed topic's round trip.
WATERMARK_INTERVAL_S = 0.25


@dataclass
class InputProgress:
    """Where each owned partition's processing stands: the last record processed per
    (topic, partition), with its offset and record timestamp.

    One object answers the three questions asked of it (records still waiting, the lag
    metric, each input partition's watermark mark), so they can never disagree about a
    partition.  Entries are forgotten when their partition is revoked: a later owner moves
    it on, and a stale offset here would read as lag.
    """

    app: faust.App
    input_topic: str
    ingest: Ingest
    clock: Clock
    #: (topic, partition) -> (offset, record timestamp in s) of the last record processed.
    last: dict[tuple[str, int], tuple[int, float]] = field(default_factory=dict)

    def processed(self, message: Any) -> None:
        """``message`` is being processed now."""
        self.last[message.topic, message.partition] = (message.offset, message.timestamp)

    def backlog(self, partition: int) -> int | None:
        """Records of input partition ``partition`` waiting to be processed, as far as the
        last fetch answer tells (its high watermark); None before one."""
        tp = TP(self.input_topic, partition)
        seen = self.last.get((tp.topic, partition))
        return input_backlog(
            highwater=highwater(self.app, tp),
            processed=seen[0] if seen is not None else None,
            handed_out=read_offset(self.app, tp),
            position=fetch_position(self.app, tp),
        )

    def caught_up(self, partition: int) -> bool:
        """Whether input ``partition`` has nothing waiting to be processed."""
        return self.backlog(partition) == 0

    def marks(self) -> dict[int, SourceMark]:
        """Each owned input partition's mark for every partition (worker.windows.watermarks)."""
        now = self.clock.now_ms()
        return {
            tp.partition: source_mark(
                now_ms=now,
                routing_since_ms=self.ingest.routing.get(tp.partition),
                backlog=self.backlog(tp.partition),
                stream_time=self.ingest.source_time.get(tp.partition),
            )
            for tp in self.app.consumer.assignment()
            if tp.topic == self.input_topic
        }

    def lags(self) -> dict[tuple[str, int], tuple[int, float]]:
        """(records behind, seconds behind) of every owned partition processed so far."""
        return consumer_lags(self.app, self.last, now_s=self.clock.now_ms() / 1000)

    def forget(self, revoked: Iterable[TP]) -> None:
        """Drop what is known of ``revoked`` partitions (another worker moves them on)."""
        for tp in revoked:
            self.last.pop((tp.topic, tp.partition), None)
            if tp.topic == self.input_topic:
                self.ingest.source_time.pop(tp.partition, None)


@dataclass
class _Streams:
    """The handlers and timers of the input and rekeyed streams (see the module docstring)."""

    app: faust.App
    topics: dict[str, faust.TopicT]
    rekey_topic: str
    partitions: int
    ingest: Ingest
    windows: Windows
    metrics: Metrics
    clock: Clock
    progress: InputProgress

    async def on_input(self, message: Any, ack: Ack) -> None:
        """One record of the input topic."""
        self.progress.processed(message)
        await self.ingest.on_input(
            key=message.key,
            value=message.value,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=round(message.timestamp * 1000),
            ack=ack,
        )

    async def on_rekeyed(self, message: Any, ack: Ack) -> None:
        """One record of the rekeyed topic: a tick, a watermark or a forwarded event."""
        self.progress.processed(message)
        headers = dict(message.headers or ())
        if TICK_HEADER in headers:
            caught_up = headers.get(CAUGHT_UP_HEADER, b"1") == b"1"
            await self.windows.on_tick(message.partition, ack, caught_up=caught_up)
        elif WATERMARK_HEADER in headers:
            await self.windows.on_watermark(
                message.partition,
                decode_marks(message.value),
                ack,
                sent_ms=round(message.timestamp * 1000),
            )
        else:
            await self.ingest.on_rekeyed(
                key=message.key,
                value=message.value,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=round(message.timestamp * 1000),
                headers=list(message.headers or ()),
                ack=ack,
            )

    async def send_watermarks(self) -> None:
        """Every partition, owned here or not, gets this worker's input partitions' marks,
        behind everything they forwarded before (worker.windows.watermarks)."""
        marks = self.progress.marks()
        if not marks:
            return
        value = encode_marks(marks)
        for partition in range(self.partitions):
            await self.topics[self.rekey_topic].send(
                key=b"watermark",
                value=value,
                partition=partition,
                headers=[(WATERMARK_HEADER, b"1")],
            )

    async def tick(self) -> None:
        """Idle close needs the wall clock *inside* each partition's stream: send it a tick,
        saying whether the partition's input is caught up (only then may silence close)."""
        now = str(self.clock.now_ms()).encode()
        for tp in self.app.consumer.assignment():
            if tp.topic == self.rekey_topic:
                caught_up = b"1" if self.progress.caught_up(tp.partition) else b"0"
                await self.topics[self.rekey_topic].send(
                    key=b"tick",
                    value=b"",
                    partition=tp.partition,
                    headers=[(TICK_HEADER, now), (CAUGHT_UP_HEADER, caught_up)],
                )
        self.windows.refresh_gauges()
        self.metrics.set_rocksdb_memory(rocksdb_memory(self.app.tables.values()))
        self.metrics.set_consumer_lag(self.progress.lags())


def install_streams(
    app: faust.App,
    *,
    topics: dict[str, faust.TopicT],
    input_topic: str,
    rekey_topic: str,
    partitions: int,
    fetch_max_wait_ms: int,
    ingest: Ingest,
    windows: Windows,
    metrics: Metrics,
    liveness: Liveness,
    clock: Clock,
) -> InputProgress:
    """Register the input and rekeyed streams' handlers, timers and rebalance hooks on
    ``app`` (see the module docstring); returns their :class:`InputProgress`."""
    progress = InputProgress(app, input_topic, ingest, clock)
    streams = _Streams(
        app, topics, rekey_topic, partitions, ingest, windows, metrics, clock, progress
    )
    bypasses = consume(
        app,
        [
            (topics[input_topic], "ingest", streams.on_input),
            (topics[rekey_topic], "rekeyed", streams.on_rekeyed),
        ],
        liveness,
    )
    app.timer(interval=WATERMARK_INTERVAL_S)(streams.send_watermarks)
    app.timer(interval=TICK_INTERVAL_S)(streams.tick)

    @app.on_partitions_revoked.connect
    def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        windows.on_revoked({tp.partition for tp in revoked if tp.topic == rekey_topic})
        for bypass in bypasses:  # fetched before the rebalance: the seek after it refetches
            bypass.clear()
        progress.forget(revoked)
        ingest.recent.clear()

    @app.on_partitions_assigned.connect
    def _assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        windows.on_assigned({tp.partition for tp in assigned if tp.topic == rekey_topic})
        set_fetch_max_wait(app, fetch_max_wait_ms)

    return progress


Handler = Callable[[Any, Ack], Awaitable[None]]


def consume(
    app: faust.App, routes: list[tuple[faust.TopicT, str, Handler]], liveness: Liveness
) -> list[Bypass]:
    """Consume each topic with its handler, named ``name`` for liveness.  The topics skip
    Faust's per-record delivery (worker.faust_compat.bypass): no conductor, so their records
    never wait behind the producer buffer and cost a fraction per record.  If this Faust
    version cannot, supervised ordinary agents consume them with manual acks (and the
    returned list is empty).  Handlers must ack each record (or hold its ack) themselves."""
    bypasses = [
        Bypass(app, handler, on_crash=partial(_crashed, liveness, name))
        for _, name, handler in routes
    ]
    pairs = [(topic, bypass) for (topic, _, _), bypass in zip(routes, bypasses, strict=True)]
    if install_bypass(app, pairs):
        for bypass in bypasses:
            app.task(bypass.run)
        return bypasses
    for topic, name, handler in routes:
        app.agent(topic, name=name)(supervised(name, _agent_for(handler), liveness))
    return []


def _crashed(liveness: Liveness, name: str, exc: BaseException) -> None:
    liveness.crashed(name)


def _agent_for(handler: Handler) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
    """A Faust agent that hands each record to ``handler`` with a manual ack."""

    async def agent(agent_stream: faust.StreamT[bytes]) -> None:
        manual = cast(faust.Stream[bytes], agent_stream).noack()
        async for event in manual.events():
            await handler(event.message, partial(manual.ack, event))

    return agent

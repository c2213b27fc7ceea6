"""The Faust application: topics, agents and web routes, wired from one :class:`Settings`.

:func:`build_app` has no side effects at import time and builds everything from the settings it
is given, so tests and the command line build apps the same way.  The consumers are thin: the
input and rekeyed topics' records come in batches from :mod:`worker.faust_compat.intake` (off
Faust's per-record delivery), the outbox's through a Faust agent, and each is handed to an
adapter (:class:`~worker.agents.ingest.Ingest`, :class:`~worker.agents.windows.Windows`) that
calls the pure core.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import faust
from aiohttp import web
from faust.tables.base import Collection
from faust.types import TP
from faust.web import Request, Response, View

from worker.agents.deliver import install_delivery
from worker.agents.ingest import Ack, Ingest
from worker.agents.prompts import register_prompts
from worker.agents.windows import Windows
from worker.clock import Clock, SystemClock
from worker.envelopes import CAUGHT_UP_HEADER, TICK_HEADER, WATERMARK_HEADER
from worker.faust_compat import (
    Intake,
    TableIO,
    consumer_lags,
    count_gaps,
    fetch_position,
    highwater,
    honour_rocksdb_options,
    install_intake,
    keep_dropped_records,
    read_offset,
    recovery_completed,
    report_lost_changelogs,
    rocksdb_memory,
    seek_before_fetch,
    set_fetch_max_wait,
)
from worker.health import Liveness, Readiness, healthz, readyz, supervised
from worker.ingest import IngestLimits, RecentIds
from worker.kafka import (
    WINDOWS_TABLE,
    ensure_topics,
    input_backlog,
    rekey_topic_name,
    ssl_context,
)
from worker.metrics import CONTENT_TYPE_LATEST, Metrics
from worker.rules import RuleConfig
from worker.windows.watermarks import SourceMark, decode_marks, encode_marks, source_mark

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["FeedbackApp", "build_app", "rule_config"]

log = logging.getLogger(__name__)

#: How often each owned partition gets a tick (the resolution of idle close).
TICK_INTERVAL_S = 1.0
#: How often each worker sends its input partitions' marks to every partition: stream time
#: trails the direct events by about this much more than the rekeyed topic's round trip.
WATERMARK_INTERVAL_S = 0.25


def rule_config(settings: Settings) -> RuleConfig:
    """The rules' thresholds from the settings (seconds -> the core's milliseconds)."""
    return RuleConfig(
        engagement_window_ms=int(settings.engagement_window_s * 1000),
        code_window_ms=int(settings.code_window_s * 1000),
        clicks_window_ms=int(settings.clicks_window_s * 1000),
        ticket_window_ms=int(settings.ticket_window_s * 1000),
        long_read_ms=int(settings.engagement_long_read_s * 1000),
        short_read_ms=int(settings.engagement_short_read_s * 1000),
        quick_exit_ms=int(settings.engagement_quick_exit_s * 1000),
        correction_phrases=tuple(settings.correction_phrases),
        code_retained_min_pct=settings.code_retained_min_pct,
        outbox_abstentions=settings.outbox_abstentions,
    )


@dataclass
class FeedbackApp:
    """The assembled worker: the Faust app and the parts tests and commands reach into."""

    faust_app: faust.App
    settings: Settings
    metrics: Metrics
    ingest: Ingest
    windows: Windows
    readiness: Readiness
    topics: dict[str, faust.TopicT] = field(default_factory=dict)


def _faust_app(settings: Settings) -> faust.App:
    """The Faust app and how it talks to Kafka, its stores and its web server."""
    return faust.App(
        settings.worker_group_id,
        broker=[f"kafka://{server}" for server in settings.bootstrap_servers],
        broker_credentials=_credentials(settings),
        store="rocksdb://",
        datadir=settings.state_dir,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication_factor,
        topic_allow_declare=True,
        broker_rebalance_timeout=settings.kafka_rebalance_timeout_s,
        broker_session_timeout=settings.kafka_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.kafka_session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        # Records whose window state is still buffered are not acked yet; on a rebalance they
        # are simply processed again by the new owner, so do not wait for them.
        stream_wait_empty=False,
        # A changelog shorter than the local store stops the worker in Faust's check; the
        # worker keeps its state and reports it instead (worker.faust_compat.recovery).
        recovery_consistency_check=False,
        producer_max_batch_size=settings.kafka_producer_batch_bytes,
        # A few ms of linger turns a produce request per handful of events into one per batch:
        # about a fifth of the worker's CPU per event in bench/pipeline.py.
        producer_linger=settings.kafka_producer_linger_ms / 1000,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        web_in_thread=False,
        autodiscover=False,
    )


def build_app(settings: Settings, *, clock: Clock | None = None) -> FeedbackApp:
    """Build the worker's Faust app from ``settings`` (nothing connects until it starts)."""
    clock = clock or SystemClock()
    app = _faust_app(settings)
    metrics = Metrics()
    readiness = Readiness()
    topics = {
        name: app.topic(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.topic_partitions,
            internal=False,
        )
        for name in (
            settings.topic_ui_events,
            rekey_topic_name(settings),
            settings.topic_invalid,
            settings.topic_late,
            settings.topic_outbox,
            settings.topic_dlq,
        )
    }

    async def send(
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> Any:
        # force: queued now, never attached to a Faust event and sent when it is acked,
        # so a watermark sent after it is behind it (worker.windows.watermarks).
        return await topics[topic].send(
            key=key, value=value, partition=partition, headers=headers, force=True
        )

    async def produce(
        topic: str, key: bytes | None, value: bytes | None, partition: int | None, *_: Any
    ) -> Any:
        return await app.producer.send(topic, key, value, partition, None, None)

    async def send_record(topic: str, key: bytes, value: bytes) -> Any:
        """Queue a record with the producer itself (Faust's Topic.send costs several times
        more per record); returns the delivery future, which the windows adapter awaits
        before it acknowledges the inputs."""
        return await produce(topic, key, value, None)

    table = app.Table(
        WINDOWS_TABLE,
        default=None,
        partitions=settings.topic_partitions,
        key_type=str,
        value_type=bytes,
        options=settings.rocksdb_options,
    )
    # Faust picks a table's serializers from its key/value types and falls back to JSON; the
    # engine stores bytes it encoded itself, so the values must pass through untouched (in the
    # changelog, in RocksDB and when restored).
    collection = cast(Collection, table)
    collection.key_serializer, collection.value_serializer = "json", "raw"
    windows = Windows(
        io=TableIO(table, produce),
        config=rule_config(settings),
        grace_ms=int(settings.window_grace_s * 1000),
        idle_close_ms=int(settings.idle_close_s * 1000),
        max_signals=settings.max_signals_per_window,
        cache_keys=settings.window_cache_keys,
        clock=clock,
        metrics=metrics,
        send=send_record,
        outbox_topic=settings.topic_outbox,
        sources=settings.topic_partitions,
        late_topic=settings.topic_late,
        on_failure=lambda exc: asyncio.ensure_future(app.crash(exc)),
    )

    liveness = Liveness(clock=clock, on_crash=metrics.agent_crashed)
    next_stage = register_prompts(
        app,
        windows.on_event,
        settings=settings,
        rules=rule_config(settings),
        metrics=metrics.prompts,
        clock=clock,
        supervise=lambda name, agent: supervised(name, agent, liveness),
    )
    ingest = Ingest(
        limits=IngestLimits.from_settings(settings),
        partitions=settings.topic_partitions,
        input_topic=settings.topic_ui_events,
        invalid_topic=settings.topic_invalid,
        rekey_topic=rekey_topic_name(settings),
        send=send,
        next_stage=next_stage,
        defer_ack=windows.hold,
        metrics=metrics,
        clock=clock,
        recent=RecentIds(settings.dedupe_cache_size),
    )

    # The input's handler and the rekeyed agent acknowledge by hand: an event's ack waits
    # until its window state is written (see worker.agents.windows), so a commit never
    # covers state still in memory.
    #: (topic, partition) -> (offset, record timestamp in s) of the last record processed.
    progress: dict[tuple[str, int], tuple[int, float]] = {}

    async def on_input(message: Any, ack: Ack) -> None:
        progress[message.topic, message.partition] = (message.offset, message.timestamp)
        await ingest.on_input(
            key=message.key,
            value=message.value,
            partition=message.partition,
            offset=message.offset,
            timestamp_ms=round(message.timestamp * 1000),
            ack=ack,
        )

    rekey_topic = rekey_topic_name(settings)

    async def on_rekeyed(message: Any, ack: Ack) -> None:
        """One record of the rekeyed topic: a tick, a watermark or a forwarded event."""
        progress[message.topic, message.partition] = (message.offset, message.timestamp)
        headers = dict(message.headers or ())
        if TICK_HEADER in headers:
            caught_up = headers.get(CAUGHT_UP_HEADER, b"1") == b"1"
            await windows.on_tick(message.partition, ack, caught_up=caught_up)
        elif WATERMARK_HEADER in headers:
            await windows.on_watermark(
                message.partition,
                decode_marks(message.value),
                ack,
                sent_ms=round(message.timestamp * 1000),
            )
        else:
            await ingest.on_rekeyed(
                key=message.key,
                value=message.value,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=round(message.timestamp * 1000),
                headers=list(message.headers or ()),
                ack=ack,
            )

    # The input and rekeyed topics skip Faust's per-record delivery
    # (worker.faust_compat.intake): no conductor, so their records never wait behind the
    # producer buffer that other tables' writes fill (delivery must not hold stream time
    # back).  If this Faust version cannot, ordinary agents consume them.
    intake = Intake(app, on_input, on_crash=lambda exc: liveness.crashed("ingest"))
    rekeyed = Intake(app, on_rekeyed, on_crash=lambda exc: liveness.crashed("rekeyed"))
    routes = [(topics[settings.topic_ui_events], intake), (topics[rekey_topic], rekeyed)]
    if install_intake(app, routes):
        app.task(intake.run)
        app.task(rekeyed.run)
    else:
        def agent_for(
            handler: Callable[[Any, Ack], Awaitable[None]],
        ) -> Callable[[faust.StreamT[bytes]], Awaitable[None]]:
            async def agent(agent_stream: faust.StreamT[bytes]) -> None:
                manual = cast(faust.Stream[bytes], agent_stream).noack()
                async for event in manual.events():
                    await handler(event.message, partial(manual.ack, event))

            return agent

        app.agent(topics[settings.topic_ui_events], name="ingest")(
            supervised("ingest", agent_for(on_input), liveness)
        )
        app.agent(topics[rekey_topic], name="rekeyed")(
            supervised("rekeyed", agent_for(on_rekeyed), liveness)
        )


    def _backlog(partition: int) -> int | None:
        """Records of input partition ``partition`` waiting to be processed, as far as the
        last fetch answer tells (its high watermark); None before one."""
        tp = TP(settings.topic_ui_events, partition)
        seen = progress.get((tp.topic, partition))
        return input_backlog(
            highwater=highwater(app, tp),
            processed=seen[0] if seen is not None else None,
            handed_out=read_offset(app, tp),
            position=fetch_position(app, tp),
        )

    def _caught_up(partition: int) -> bool:
        """Whether ``ui-events`` ``partition`` has nothing waiting to be processed."""
        return _backlog(partition) == 0

    def _marks() -> dict[int, SourceMark]:
        """Each owned input partition's mark for every partition (worker.windows.watermarks)."""
        now = clock.now_ms()
        return {
            tp.partition: source_mark(
                now_ms=now,
                routing_since_ms=ingest.routing.get(tp.partition),
                backlog=_backlog(tp.partition),
                stream_time=ingest.source_time.get(tp.partition),
            )
            for tp in app.consumer.assignment()
            if tp.topic == settings.topic_ui_events
        }

    async def _send_watermarks() -> None:
        """Every partition, owned here or not, gets this worker's input partitions' marks,
        behind everything they forwarded before (worker.windows.watermarks)."""
        marks = _marks()
        if not marks:
            return
        value = encode_marks(marks)
        for partition in range(settings.topic_partitions):
            await topics[rekey_topic].send(
                key=b"watermark",
                value=value,
                partition=partition,
                headers=[(WATERMARK_HEADER, b"1")],
            )

    app.timer(interval=WATERMARK_INTERVAL_S)(_send_watermarks)

    async def _tick() -> None:
        """Idle close needs the wall clock *inside* each partition's stream: send it a tick,
        saying whether the partition's input is caught up (only then may silence close)."""
        now = str(clock.now_ms()).encode()
        for tp in app.consumer.assignment():
            if tp.topic == rekey_topic:
                caught_up = b"1" if _caught_up(tp.partition) else b"0"
                await topics[rekey_topic].send(
                    key=b"tick",
                    value=b"",
                    partition=tp.partition,
                    headers=[(TICK_HEADER, now), (CAUGHT_UP_HEADER, caught_up)],
                )
        windows.refresh_gauges()
        metrics.set_rocksdb_memory(rocksdb_memory(app.tables.values()))
        metrics.set_consumer_lag(consumer_lags(app, progress, now_s=clock.now_ms() / 1000))

    app.timer(interval=TICK_INTERVAL_S)(_tick)

    @app.on_partitions_revoked.connect
    def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        windows.on_revoked({tp.partition for tp in revoked if tp.topic == rekey_topic})
        intake.clear()  # fetched before the rebalance: the seek after it fetches them again
        rekeyed.clear()
        for tp in revoked:  # a later owner moves them on; stale offsets would look like lag
            progress.pop((tp.topic, tp.partition), None)
            if tp.topic == settings.topic_ui_events:
                ingest.source_time.pop(tp.partition, None)
        ingest.recent.clear()

    async def _recreate_lost_topics() -> None:
        """A broker that lost its data (or topics deleted under a running worker) no longer
        has the worker's topics; the group rebalances when it comes back, so check then and
        create them again, as at start (a worker that only produced to them would wait)."""
        try:
            created = await ensure_topics(settings, request_timeout_ms=10_000)
        except Exception as exc:  # the next rebalance checks again
            log.warning("could not check the worker's topics after a rebalance: %s", exc)
            return
        if created:
            log.warning("topics were missing after a rebalance and are created again: %s",
                        ", ".join(created))

    topic_checks: set[asyncio.Future[None]] = set()  # referenced until done

    @app.on_partitions_assigned.connect
    def _assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        check = asyncio.ensure_future(_recreate_lost_topics())
        topic_checks.add(check)
        check.add_done_callback(topic_checks.discard)
        windows.on_assigned({tp.partition for tp in assigned if tp.topic == rekey_topic})
        set_fetch_max_wait(app, settings.kafka_fetch_max_wait_ms)

    @app.on_rebalance_complete.connect
    def _joined(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        readiness.joined = True

    # Before the first rebalance: Faust's own order lets commits skip records (the module).
    seek_before_fetch(app)
    keep_dropped_records(app)
    count_gaps(app, lambda topic, missing: metrics.offsets_skipped.labels(topic=topic).inc(missing))
    report_lost_changelogs(app, lambda *_: metrics.changelog_behind_store.inc())
    honour_rocksdb_options()

    install_delivery(
        app,
        settings=settings,
        metrics=metrics,
        topics=topics,
        readiness_checks=readiness.checks,
        clock=clock,
        supervise=lambda name, agent: supervised(name, agent, liveness),
    )
    _add_routes(app, metrics, readiness, liveness)
    return FeedbackApp(app, settings, metrics, ingest, windows, readiness, topics)


def _add_routes(
    app: faust.App, metrics: Metrics, readiness: Readiness, liveness: Liveness
) -> None:
    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset in content_type=, so the header is set directly.
            response = web.Response(
                body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )
            return cast(Response, response)

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            body, status = healthz(liveness)
            return self.json(body, status=status)

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            body, status = readyz(
                readiness,
                rebalancing=app.rebalancing,
                recovery_done=recovery_completed(app),
            )
            return self.json(body, status=status)


def _credentials(settings: Settings) -> Any:
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(ssl_context(settings))
    assert settings.kafka_sasl_password is not None
    return faust.SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )

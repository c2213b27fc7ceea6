"""The Faust application: topics, agents and web routes, wired from one :class:`Settings`.

:func:`build_app` has no side effects at import time and builds everything from the settings it
is given, so tests and the command line build apps the same way.  It only wires: each adapter
registers its own handlers, timers and rebalance hooks (the input and rekeyed streams in
:mod:`worker.agents.streams`, delivery in :mod:`worker.agents.deliver`, prompts in
:mod:`worker.agents.prompts`), and each calls the pure core.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import faust
from aiohttp import web
from faust.web import Request, Response, View

from worker.agents.deliver import install_delivery
from worker.agents.ingest import Ingest
from worker.agents.prompts import register_prompts
from worker.agents.streams import install_streams
from worker.agents.tables import changelogged_table
from worker.agents.windows import Windows
from worker.clock import Clock, SystemClock
from worker.faust_compat import (
    TableIO,
    count_gaps,
    honour_rocksdb_options,
    keep_dropped_records,
    recovery_completed,
    report_lost_changelogs,
    seek_before_fetch,
)
from worker.health import Liveness, Readiness, healthz, readyz, stop_on_failure, supervised
from worker.kafka import WINDOWS_TABLE, ensure_topics, rekey_topic_name, ssl_context
from worker.metrics import CONTENT_TYPE_LATEST, Metrics
from worker.producing import Headers, Producer
from worker.rules import RuleConfig
from worker.validation import RecentIds, ValidationLimits

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["FeedbackApp", "build_app", "rule_config"]

log = logging.getLogger(__name__)

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
    """Build the worker's Faust app from ``settings`` (nothing connects until it starts).

    Wiring only: each adapter is built whole from what it needs and registers its own
    handlers, timers and rebalance hooks; nothing is set on an object after it is built.
    """
    clock = clock or SystemClock()
    app = _faust_app(settings)
    metrics = Metrics()
    readiness = Readiness()
    liveness = Liveness(clock=clock, on_crash=metrics.agent_crashed)
    rekey_topic = rekey_topic_name(settings)
    topics = {
        name: app.topic(name, key_type=bytes, value_type=bytes,
                        partitions=settings.topic_partitions, internal=False)
        for name in (
            settings.topic_ui_events,
            rekey_topic,
            settings.topic_invalid,
            settings.topic_late,
            settings.topic_outbox,
            settings.topic_dlq,
        )
    }
    producer = _FaustProducer(app)
    windows = _windows(app, settings, producer=producer, metrics=metrics, clock=clock)
    next_stage = register_prompts(
        app,
        windows.on_event,
        settings=settings,
        rules=rule_config(settings),
        metrics=metrics.prompts,
        clock=clock,
        producer=producer,
        supervise=lambda name, agent: supervised(name, agent, liveness),
    )
    ingest = Ingest(
        limits=ValidationLimits.from_settings(settings),
        partitions=settings.topic_partitions,
        input_topic=settings.topic_ui_events,
        invalid_topic=settings.topic_invalid,
        rekey_topic=rekey_topic,
        producer=producer,
        next_stage=next_stage,
        defer_ack=windows.hold,
        metrics=metrics,
        clock=clock,
        recent=RecentIds(settings.dedupe_cache_size),
    )
    install_streams(
        app,
        topics=topics,
        input_topic=settings.topic_ui_events,
        rekey_topic=rekey_topic,
        partitions=settings.topic_partitions,
        fetch_max_wait_ms=settings.kafka_fetch_max_wait_ms,
        ingest=ingest,
        windows=windows,
        metrics=metrics,
        liveness=liveness,
        clock=clock,
    )
    _install_patches(app, metrics)
    _watch_topics(app, settings)
    install_delivery(
        app, settings=settings, metrics=metrics, topics=topics, producer=producer,
        readiness_checks=readiness.checks, liveness=liveness, clock=clock,
        on_failure=stop_on_failure(app),
    )
    _add_routes(app, metrics, readiness, liveness)
    return FeedbackApp(app, settings, metrics, ingest, windows, readiness, topics)


@dataclass(frozen=True)
class _FaustProducer:
    """:class:`~worker.producing.Producer` over the app's own producer.  Faust's
    ``Topic.send`` ends in the same call and costs several times more per record
    (serialisers, sensors, a future per message) for nothing the worker uses."""

    app: faust.App

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        *,
        partition: int | None = None,
        headers: Headers | None = None,
    ) -> Awaitable[Any]:
        queued: Awaitable[Any] = await self.app.producer.send(
            topic, key, value, partition, None, list(headers) if headers else None
        )
        return queued


def _windows(
    app: faust.App, settings: Settings, *, producer: Producer, metrics: Metrics, clock: Clock
) -> Windows:
    """The windows adapter over its changelogged table."""
    table = changelogged_table(app, settings, WINDOWS_TABLE, key_type=str,
                               help="Each request's open windows and its partition's stream time.")
    return Windows(
        io=TableIO(table, producer),
        config=rule_config(settings),
        grace_ms=int(settings.window_grace_s * 1000),
        idle_close_ms=int(settings.idle_close_s * 1000),
        max_signals=settings.max_signals_per_window,
        cache_keys=settings.window_cache_keys,
        clock=clock,
        metrics=metrics,
        producer=producer,
        outbox_topic=settings.topic_outbox,
        sources=settings.topic_partitions,
        late_topic=settings.topic_late,
        on_failure=stop_on_failure(app),
    )


def _install_patches(app: faust.App, metrics: Metrics) -> None:
    """Faust's consumer patches (worker.faust_compat), before the first rebalance: Faust's
    own order lets commits skip records."""
    seek_before_fetch(app)
    keep_dropped_records(app)
    count_gaps(app, lambda topic, missing: metrics.offsets_skipped.labels(topic=topic).inc(missing))
    report_lost_changelogs(app, lambda *_: metrics.changelog_behind_store.inc())
    honour_rocksdb_options()


def _watch_topics(app: faust.App, settings: Settings) -> None:
    """A broker that lost its data (or topics deleted under a running worker) no longer has
    the worker's topics; the group rebalances when it comes back, so check after every
    assignment and create them again, as at start (a worker that only produced to them
    would wait)."""
    checks: set[asyncio.Future[None]] = set()  # referenced until done

    async def recreate() -> None:
        try:
            created = await ensure_topics(settings, request_timeout_ms=10_000)
        except Exception as exc:  # the next rebalance checks again
            log.warning("could not check the worker's topics after a rebalance: %s", exc)
            return
        if created:
            log.warning("topics were missing after a rebalance and are created again: %s",
                        ", ".join(created))

    @app.on_partitions_assigned.connect
    def _assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        check = asyncio.ensure_future(recreate())
        checks.add(check)
        check.add_done_callback(checks.discard)


def _add_routes(
    app: faust.App, metrics: Metrics, readiness: Readiness, liveness: Liveness
) -> None:
    @app.on_rebalance_complete.connect
    def _joined(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        readiness.joined = True

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

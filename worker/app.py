"""The Faust application: topics, agents and web routes, wired from one :class:`Settings`.

:func:`build_app` has no side effects at import time and builds everything from the settings it
is given, so tests and the command line build apps the same way.  The agents are thin: each
decodes the Faust event and calls an adapter (:class:`~worker.agents.ingest.Ingest`) that calls
the pure core.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import faust
from aiohttp import web
from faust.tables.manager import TableManager
from faust.web import Request, Response, View

from worker.agents.ingest import Ingest
from worker.clock import Clock, SystemClock
from worker.ingest import Accepted, IngestLimits, RecentIds
from worker.kafka import rekey_topic_name, ssl_context
from worker.metrics import CONTENT_TYPE_LATEST, Metrics

if TYPE_CHECKING:
    from worker.config import Settings

__all__ = ["FeedbackApp", "Readiness", "build_app"]

log = logging.getLogger(__name__)


@dataclass
class FeedbackApp:
    """The assembled worker: the Faust app and the parts tests and commands reach into."""

    faust_app: faust.App
    settings: Settings
    metrics: Metrics
    ingest: Ingest
    readiness: Readiness
    topics: dict[str, faust.TopicT] = field(default_factory=dict)


def build_app(settings: Settings, *, clock: Clock | None = None) -> FeedbackApp:
    """Build the worker's Faust app from ``settings`` (nothing connects until it starts)."""
    clock = clock or SystemClock()
    app = faust.App(
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
        producer_max_batch_size=settings.kafka_producer_batch_bytes,
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=True,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_host,
        web_in_thread=False,
        autodiscover=False,
    )
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
        return await topics[topic].send(
            key=key, value=value, partition=partition, headers=headers
        )

    async def next_stage(partition: int, accepted: Accepted) -> None:
        """Until the window engine consumes them, valid events end here (counted at ingest)."""

    ingest = Ingest(
        limits=IngestLimits(
            max_event_bytes=settings.max_event_bytes,
            tolerance_ms=int(settings.clock_skew_tolerance_s * 1000),
            max_future_ms=int(settings.event_max_future_s * 1000),
            max_age_ms=int(settings.event_max_age_s * 1000),
        ),
        partitions=settings.topic_partitions,
        input_topic=settings.topic_ui_events,
        invalid_topic=settings.topic_invalid,
        rekey_topic=rekey_topic_name(settings),
        send=send,
        next_stage=next_stage,
        metrics=metrics,
        clock=clock,
        recent=RecentIds(settings.dedupe_cache_size),
    )

    async def ingest_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            await ingest.on_input(
                key=message.key,
                value=message.value,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=round(message.timestamp * 1000),
            )

    async def rekeyed_agent(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            message = event.message
            await ingest.on_rekeyed(
                key=message.key,
                value=message.value,
                partition=message.partition,
                offset=message.offset,
                timestamp_ms=round(message.timestamp * 1000),
                headers=list(message.headers or ()),
            )

    app.agent(topics[settings.topic_ui_events], name="ingest")(ingest_agent)
    app.agent(topics[rekey_topic_name(settings)], name="rekeyed")(rekeyed_agent)

    @app.on_rebalance_complete.connect
    def _joined(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        readiness.joined = True

    _add_routes(app, metrics, readiness)
    return FeedbackApp(app, settings, metrics, ingest, readiness, topics)


@dataclass
class Readiness:
    """What ``/readyz`` checks; components add their own named checks (e.g. delivery)."""

    #: Set once the first rebalance completed: before that the worker owns no partitions.
    joined: bool = False
    checks: dict[str, Callable[[], bool]] = field(default_factory=dict)


def _add_routes(app: faust.App, metrics: Metrics, readiness: Readiness) -> None:
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
            return self.json({"status": "ok"})

    @app.page("/readyz")
    class ReadyView(View):
        async def get(self, request: Request) -> Response:
            checks = {
                "joined_group": readiness.joined and not app.rebalancing,
                "recovery_done": cast(TableManager, app.tables).recovery.completed.is_set(),
                **{name: check() for name, check in readiness.checks.items()},
            }
            ready = all(checks.values())
            return self.json(
                {"ready": ready, "checks": checks}, status=200 if ready else 503
            )


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

"""The deliver handlers: a thin Faust adapter around :mod:`worker.delivery_engine`.

It declares the internal retry topic and the changelogged ``delivery-state`` table, hands the
outbox's and the retry topic's records to the engine in batches off Faust's per-record path
(:func:`worker.agents.streams.consume`), runs the sender task and the timer, rebuilds the
engine's due index after every recovery, and on revocation waits for the revoked partitions'
calls in flight.  The engine's docstring says what holds and why.

The table is written in batches: the engine's writes are buffered per partition and each
record is acknowledged only once the changelog holds what it changed
(:mod:`worker.agents.buffered`, flushed every ``FLUSH_INTERVAL_S``), and a merged state is
sent only once the changelog holds it (:meth:`Delivery.durable` says why).

With ``HELICONE_EVIDENCE_PROPERTIES`` it also declares the changelogged ``evidence-properties``
table, flushed with ``delivery-state`` so that an outbox record is acknowledged only once
both hold what it changed, hands the evidence lane its ``property`` records from the retry
topic, and restores the lane's waiting properties after every recovery
(:mod:`worker.evidence_store` says why).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from worker.agents.buffered import BufferedTable, Checkpoints
from worker.agents.ingest import Ack
from worker.agents.streams import consume
from worker.agents.tables import changelogged_table
from worker.delivery_engine import (
    TICK_INTERVAL_S,
    Connect,
    Delivery,
    DeliveryConfig,
    Poster,
    Send,
)
from worker.envelopes import KIND_HEADER, REDRIVE_HEADER, dead_letter_record, header
from worker.evidence_store import PROPERTY_KIND, PendingStore
from worker.faust_compat import Bypass, TableIO
from worker.kafka import DELIVERY_STATE_TABLE, EVIDENCE_TABLE

if TYPE_CHECKING:
    import faust

    from worker.clock import Clock
    from worker.config import Settings
    from worker.health import Liveness
    from worker.metrics import Metrics
    from worker.producing import Producer

__all__ = [
    "KIND_HEADER",
    "REDRIVE_HEADER",
    "Delivery",
    "DeliveryConfig",
    "dead_letter_record",
    "install_delivery",
]

log = logging.getLogger(__name__)

def install_delivery(
    app: faust.App,
    *,
    settings: Settings,
    metrics: Metrics,
    topics: dict[str, faust.TopicT],
    producer: Producer,
    readiness_checks: dict[str, Callable[[], bool]],
    liveness: Liveness,
    clock: Clock,
    on_failure: Callable[[BaseException], object] = lambda exc: None,
) -> Delivery:
    """Add delivery to the app: retry topic, state table, the deliver handler, the sender task.

    The HTTP client is created here (it connects lazily); without an API key and outside dry
    run there is none, and the first call raises :class:`ConfigError` (``run`` checks first).
    A crash of the handler is counted on ``liveness`` like the other agents'; ``on_failure``
    is called when the broker refuses a flush's changelog records (the worker must stop).
    """
    config = DeliveryConfig.from_settings(settings)
    partitions = settings.topic_partitions
    topics[config.retry_topic] = app.topic(
        config.retry_topic, key_type=bytes, value_type=bytes, partitions=partitions,
        internal=False,
    )
    states = _table(app, settings, DELIVERY_STATE_TABLE, producer,
                    "Each request's and session's whole feedback state and how far delivery got.")
    send = _sender(producer)
    evidence = _install_evidence(app, settings, send, config.retry_topic, producer)
    delivery = Delivery(config, states=states, send=send, metrics=metrics, clock=clock,
                        connect=_connect(settings, evidence), send_when_durable=True)

    def durable(table: BufferedTable, partition: int, keys: list[bytes]) -> None:
        if table is states:
            delivery.durable(partition, keys)

    checkpoints = Checkpoints(
        [states, *([evidence[0]] if evidence is not None else [])],
        on_failure=on_failure,
        on_durable=durable,
    )

    outbox_name = settings.topic_outbox

    async def on_record(message: Any, ack: Ack) -> None:
        await _handle(delivery, message, config.retry_topic, outbox_name)
        checkpoints.hold(message.partition, ack)
        if checkpoints.full(message.partition):
            await checkpoints.flush(message.partition)

    # One handler per topic, like one actor each: merging takes microseconds, and a
    # partition's merges and results are applied in the order they were read.
    bypasses = consume(
        app,
        [
            (topics[outbox_name], "deliver", on_record),
            (topics[config.retry_topic], "deliver-retry", on_record),
        ],
        liveness,
    )
    _on_rebalance(app, settings, delivery, states, evidence, checkpoints, bypasses)
    _start_tasks(app, delivery, states, checkpoints)
    readiness_checks["delivery_not_paused"] = lambda: not delivery.auth.paused
    return delivery


def _start_tasks(
    app: faust.App, delivery: Delivery, states: BufferedTable, checkpoints: Checkpoints
) -> None:
    """The sender, the timer (gauges, read-backs, sweeps) and the flusher of the tables."""

    async def sender() -> None:
        try:
            await delivery.run()
        finally:
            await delivery.aclose()

    async def timer() -> None:
        while True:
            await asyncio.sleep(TICK_INTERVAL_S)
            try:
                await delivery.tick(states.items)
            except Exception:  # the timer must outlive one bad tick
                log.exception("delivery timer tick failed; continuing")

    async def flusher() -> None:  # Faust hands the app to a task that takes an argument
        await checkpoints.run()

    app.task(sender)
    app.task(timer)
    app.task(flusher)


def _table(
    app: faust.App, settings: Settings, name: str, producer: Producer, help: str
) -> BufferedTable:
    """A changelogged table of bytes keyed ``<partition>/...``, written in batches
    (:mod:`worker.agents.buffered`)."""
    table = changelogged_table(app, settings, name, help=help)
    io: TableIO[bytes] = TableIO(table, producer)
    return BufferedTable(io, table.items)


def _sender(producer: Producer) -> Send:
    """Sends one record and waits for the broker's acknowledgement."""

    async def send(
        topic: str,
        key: bytes,
        value: bytes,
        partition: int | None,
        headers: list[tuple[str, bytes]],
    ) -> None:
        acked = await producer.send(topic, key, value, partition=partition, headers=headers)
        await acked

    return send


def _on_rebalance(
    app: faust.App,
    settings: Settings,
    delivery: Delivery,
    states: BufferedTable,
    evidence: tuple[BufferedTable, PendingStore] | None,
    checkpoints: Checkpoints,
    bypasses: list[Bypass],
) -> None:
    """After every recovery rebuild the engine's due index (and restore the evidence lane's
    waiting properties) for the owned partitions; on revocation drop the revoked partitions'
    unflushed writes and held acks, stop sending their states and wait for their calls in
    flight."""
    outbox_name = settings.topic_outbox

    def owned_partitions() -> set[int]:
        return {tp.partition for tp in app.assignor.assigned_actives() if tp.topic == outbox_name}

    async def recovered() -> None:
        delivery.rebuild(list(states.items()), owned_partitions())

    states.io.table.on_recover(recovered)
    if evidence is not None:
        table = evidence[0]

        async def evidence_recovered() -> None:
            if delivery.properties is not None:
                delivery.properties.restore(list(table.items()), owned_partitions())

        table.io.table.on_recover(evidence_recovered)

    @app.on_partitions_revoked.connect
    async def _revoked(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        revoked = args[0] if args else kwargs.get("revoked", ())
        partitions = {tp.partition for tp in revoked if tp.topic == outbox_name}
        for bypass in bypasses:  # fetched before the rebalance: the seek after it refetches
            bypass.clear()
        checkpoints.on_revoked(partitions)
        delivery.on_revoked(partitions)
        await delivery.wait_revoked(partitions)

    @app.on_partitions_assigned.connect
    def _assigned(sender: Any, /, *args: Any, signal: Any, **kwargs: Any) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        checkpoints.on_assigned({tp.partition for tp in assigned if tp.topic == outbox_name})


async def _handle(delivery: Delivery, message: Any, retry_topic: str, outbox: str) -> None:
    """One record for the deliver handlers: an outbox decision, or a retry-topic record (the
    evidence lane's ``property`` records go to the lane, the rest to the engine)."""
    arguments: dict[str, Any] = {
        "key": message.key,
        "value": message.value,
        "partition": message.partition,
        "offset": message.offset,
        "headers": list(message.headers or ()),
    }
    if message.topic != retry_topic:
        await delivery.on_outbox(topic=outbox, **arguments)
    elif header(arguments["headers"], KIND_HEADER) != PROPERTY_KIND:
        await delivery.on_retry(**arguments)
    elif delivery.properties is not None:  # else the option was turned off: nothing to keep
        delivery.properties.apply(message.value, message.partition)


def _install_evidence(
    app: faust.App, settings: Settings, send: Send, retry_topic: str, producer: Producer
) -> tuple[BufferedTable, PendingStore] | None:
    """With HELICONE_EVIDENCE_PROPERTIES: the changelogged ``evidence-properties`` table and
    its store (:mod:`worker.evidence_store`); :func:`_on_rebalance` restores the waiting
    properties of the owned partitions into the lane after every recovery."""
    if not settings.helicone_evidence_properties:
        return None
    table = _table(app, settings, EVIDENCE_TABLE, producer,
                   "Evidence properties waiting to be set on their requests in Helicone.")
    store = PendingStore(
        table, send, retry_topic=retry_topic, partitions=settings.topic_partitions
    )
    return table, store


def _connect(
    settings: Settings, evidence: tuple[BufferedTable, PendingStore] | None
) -> Connect:
    """The engine's ``connect``: the Helicone client, reporting every call to the engine's
    observer (None without an API key outside dry run), and with HELICONE_EVIDENCE_PROPERTIES
    the evidence lane after the ratings, which shares the engine's budget.

    A factory given the engine, because both need it and the engine needs both: the engine
    builds them last in its constructor, so nothing is set on it after it exists.
    """
    from worker.evidence_sender import EvidenceConfig, PropertySender
    from worker.helicone import HeliconeClient

    def connect(delivery: Delivery) -> tuple[Poster | None, PropertySender | None]:
        if not (settings.feedback_dry_run or settings.helicone_api_key is not None):
            return None, None
        client = HeliconeClient.from_settings(settings, observer=delivery.observe)
        config = EvidenceConfig.from_settings(settings)
        if not config.enabled:
            return client, None
        store = evidence[1] if evidence is not None else None
        return client, PropertySender(delivery, client, config, store)

    return connect
